"""Run the real daemon as a subprocess, with a NOTIFY_SOCKET the test binds, and the real ctl."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


class NotifyListener:
    """A datagram socket standing in for systemd's notification socket; records every message."""

    def __init__(self, directory: Path):
        self.path = directory / "notify.sock"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(self.path))
        self.socket.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode("utf-8").splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def all(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def with_key(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in self.all() if key in m and (value is None or m[key] == value)]

    def wait_for(self, key: str, value: str | None = None, count: int = 1, timeout: float = 10.0) -> list:
        return wait_until(lambda: len(self.with_key(key, value)) >= count and self.with_key(key, value),
                          timeout, message=lambda: f"{count}x {key}={value}; got {self.all()}")

    def close(self) -> None:
        self._stop = True
        self.socket.close()
        self._thread.join(timeout=2)
        self.path.unlink(missing_ok=True)


def write_config(directory: Path, extra: str = "", windows: str = "", timezone: str = "UTC") -> Path:
    (directory / "state").mkdir(exist_ok=True)
    path = directory / "agent.toml"
    path.write_text(f"""
[agent]
node = "test-node"
status_file = "{directory}/status.json"
state_dir = "{directory}/state"
reconcile_interval = "2s"

[log]
level = "debug"
format = "console"

[maintenance]
marker = "{directory}/state/maintenance"
lock = "{directory}/state/maintenance.lock"
timezone = "{timezone}"
{windows}
{extra}
""")
    return path


class AgentExited(AssertionError):
    """The daemon exited before it said READY=1 (its log is in the message)."""


class Agent:
    """The daemon under test. Its stderr is collected in `log_path`."""

    def __init__(self, directory: Path, config: Path, watchdog_usec: int | None = None,
                 env: dict[str, str] | None = None):
        self.directory = directory
        self.config = config
        self.notify = NotifyListener(directory)
        self.log_path = directory / "agent.log"
        environ = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC",
                                                                      "WATCHDOG_PID", "JOURNAL_STREAM")}
        environ.update({"NOTIFY_SOCKET": str(self.notify.path), "PYTHONPATH": str(REPO),
                        "PRETIX_AGENT_TEST_HOOKS": "1"})
        if watchdog_usec is not None:
            environ["WATCHDOG_USEC"] = str(watchdog_usec)
        environ.update(env or {})
        self._log = open(self.log_path, "wb")
        self._stopped = False
        self.process = subprocess.Popen([sys.executable, "-m", "pretix_agent", "-c", str(config)],
                                        stdout=self._log, stderr=subprocess.STDOUT, env=environ, cwd=directory)

    @property
    def marker(self) -> Path:
        return self.directory / "state" / "maintenance"

    @property
    def lock(self) -> Path:
        return self.directory / "state" / "maintenance.lock"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait for READY=1; raise AgentExited at once if the daemon exits before it."""

        def ready() -> bool:
            if self.notify.with_key("READY", "1"):
                return True
            if self.process.poll() is not None:
                if self.notify.with_key("READY", "1"):  # sent just before it exited
                    return True
                raise AgentExited(f"the agent exited with {self.process.returncode} before READY=1; "
                                  f"log:\n{self.log()}")
            return False

        wait_until(ready, timeout, message=lambda: f"READY=1; got {self.notify.all()}; log:\n{self.log()}")

    def status(self) -> dict[str, Any]:
        return json.loads((self.directory / "status.json").read_text())

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            try:
                document = self.status()
            except (OSError, ValueError):
                return None
            return document if predicate(document) else None
        return wait_until(check, timeout, message=lambda: f"status; log:\n{self.log()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """Stop the daemon (SIGTERM, SIGKILL after `timeout`) and close the test's ends. Idempotent."""
        if self._stopped:
            return self.process.returncode
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.notify.close()
        self._log.close()
        return self.process.returncode


def ctl(config: Path, *args: str, timeout: float = 30.0, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "pretix_agent.ctl", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=timeout, env=environ)
