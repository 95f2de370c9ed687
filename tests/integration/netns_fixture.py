"""A small network of our own for tests: network namespaces, a bridge, veth pairs (ip netns). Root only.

    with Network() as net:                            # unique names per run: pa<hex>-<name>
        hub = net.hub("pg", ["10.213.7.1/24", "10.213.7.2/24"])   # a namespace with a bridge
        node = net.node("n1", "10.213.7.11/24")       # a namespace joined to the hub by a veth pair
        server = hub.call(lambda: start_server())     # anything started inside runs in the namespace
        net.link_down(node); net.link_up(node)        # the node's end of its link

Processes are placed in a namespace by starting them from a thread that entered it (setns(2)
with CLONE_NEWNET applies to the calling thread only, and a forked child inherits the thread's
namespace). Each namespace keeps one such thread for its lifetime, so a server started there with
PR_SET_PDEATHSIG (pg_fixture) does not die when a short-lived thread ends. Sockets on paths (Unix
sockets) work across namespaces, so a test still reaches a server's Unix socket from anywhere.

Cleanup (`close`, also at interpreter exit) deletes every namespace, which takes its interfaces
with it; processes started inside must be stopped first by whoever started them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import secrets
import shutil
import subprocess
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from .processes import FixtureError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_unavailable_reason() -> str | None:
    """Why network namespace tests cannot run here, or None (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise FixtureError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


class Namespace:
    """One network namespace and the thread that runs calls inside it."""

    def __init__(self, name: str):
        self.name = name
        _ip("netns", "add", name)
        self._calls: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        entered: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(entered,), name=f"netns-{name}", daemon=True)
        self._thread.start()
        entered.result(timeout=10)
        self.ip("link", "set", "lo", "up")

    def _run(self, entered: Future[None]) -> None:
        try:
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {self.name}")
            finally:
                os.close(fd)
        except OSError as error:
            entered.set_exception(error)
            return
        entered.set_result(None)
        while (item := self._calls.get()) is not None:
            function, result = item
            try:
                result.set_result(function())
            except BaseException as error:  # handed to the caller, whatever it is
                result.set_exception(error)

    def call(self, function: Callable[[], T], timeout: float = 120.0) -> T:
        """Run `function` inside this namespace (on its thread); return its result or raise its error."""
        result: Future[T] = Future()
        self._calls.put((function, result))
        return result.result(timeout=timeout)

    def ip(self, *args: str) -> None:
        _ip("-n", self.name, *args)

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join(timeout=10)
        with contextlib.suppress(FixtureError):
            _ip("netns", "del", self.name)


class _Resources:
    def __init__(self) -> None:
        self.namespaces: list[Namespace] = []

    def close(self) -> None:
        for namespace in reversed(self.namespaces):
            namespace.close()
        self.namespaces.clear()


class Network:
    """A hub namespace with a bridge, and node namespaces each joined to it by a veth pair."""

    def __init__(self) -> None:
        reason = netns_unavailable_reason()
        if reason:
            raise FixtureError(reason)
        self.prefix = f"pa{secrets.token_hex(3)}"
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.close)
        self._hub: Namespace | None = None
        self._links: dict[str, str] = {}  # node namespace name -> its interface
        self.subnet = 213  # 10.213.x.y: private, and only inside these namespaces

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._finalizer()

    def _namespace(self, name: str) -> Namespace:
        namespace = Namespace(f"{self.prefix}-{name}")
        self._res.namespaces.append(namespace)
        return namespace

    def hub(self, name: str, addresses: list[str]) -> Namespace:
        """The namespace the nodes are joined to, with a bridge holding `addresses` (CIDR)."""
        hub = self._namespace(name)
        hub.ip("link", "add", "br0", "type", "bridge")
        for address in addresses:
            hub.ip("addr", "add", address, "dev", "br0")
        hub.ip("link", "set", "br0", "up")
        self._hub = hub
        return hub

    def node(self, name: str, address: str) -> Namespace:
        """A namespace joined to the hub's bridge by a veth pair; its end (eth0) holds `address`."""
        assert self._hub is not None, "create the hub first"
        node = self._namespace(name)
        port = f"v{len(self._links)}"
        self._hub.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", node.name)
        self._hub.ip("link", "set", port, "master", "br0")
        self._hub.ip("link", "set", port, "up")
        node.ip("addr", "add", address, "dev", "eth0")
        node.ip("link", "set", "eth0", "up")
        self._links[node.name] = "eth0"
        return node

    def link_down(self, node: Namespace) -> None:
        """Take the node's end of its link down: nothing reaches the hub from there, or back."""
        node.ip("link", "set", self._links[node.name], "down")

    def link_up(self, node: Namespace) -> None:
        node.ip("link", "set", self._links[node.name], "up")
