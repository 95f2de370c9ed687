"""A booted Debian (12 or 13) in systemd-nspawn, and running commands in it.

The container is `systemd-nspawn --boot` started as our child process. Its systemd (PID 1 inside)
is that process's child; commands run inside with `nsenter -t <its pid> -a`, so they see the
container's file system, users, systemd and journal. It shares the host's network (apt reaches
the Debian archive), unless it is made with `private_network=True`: then it has a loopback of its
own, and whatever its tests bind there can clash with nothing on the host. It is stopped by its
PID only: SIGRTMIN+3 to its init is a clean poweroff, and if that hangs, SIGKILL to the nspawn
process we started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.waiting import wait_until

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 120.0
POWEROFF_TIMEOUT = 60.0


class CommandFailed(AssertionError):
    pass


class Container:
    def __init__(self, root: Path, name: str, log: Path, *, private_network: bool = False):
        self.root = root
        self.name = name
        self.log = log
        self.private_network = private_network
        self.process: subprocess.Popen[bytes] | None = None
        self.leader = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def boot(self) -> None:
        """Start the container and return once its systemd reports the boot finished."""
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "-D", str(self.root), f"--machine={self.name}", "--register=no",
                 "--keep-unit", "--console=read-only", *(["--private-network"] if self.private_network else []),
                 "--boot"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.leader = wait_until(self._find_init, timeout=30, interval=0.05,
                                 message=lambda: f"the container's init to start; log:\n{self.console()}")
        state = wait_until(self._boot_finished, timeout=BOOT_TIMEOUT, interval=0.2,
                           message=lambda: f"the container to boot; log:\n{self.console()}")
        if state != "running":
            failed = self.run(["systemctl", "--failed", "--no-pager"], check=False).stdout
            raise AssertionError(f"the container booted {state}:\n{failed}")

    def _find_init(self) -> int:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited with {self.process.returncode}:\n{self.console()}")
        for child in _children(self.process.pid):
            # PID 1 in the container's PID namespace: the last NSpid field is 1.
            try:
                status = Path(f"/proc/{child}/status").read_text()
            except OSError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if len(nspid) > 1 and nspid[-1] == "1":
                return int(child)
        return 0

    def _boot_finished(self) -> str:
        """Return the system state once boot has finished ("running", "degraded"), else ""."""
        result = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=BOOT_TIMEOUT)
        state = result.stdout.strip()
        return state if state in ("running", "degraded") else ""

    def poweroff(self) -> None:
        """Stop the container cleanly (SIGRTMIN+3 to its init); kill our nspawn process if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.leader:
            try:
                os.kill(self.leader, signal.SIGRTMIN + 3)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=POWEROFF_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def console(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    # -- commands --------------------------------------------------------------------------------

    def run(self, command: Sequence[str], *, user: str | None = None, input: str | None = None,
            check: bool = True, timeout: float = 60, env: dict[str, str] | None = None,
            cwd: str = "/") -> subprocess.CompletedProcess[str]:
        """Run `command` inside (as root, or as `user` via runuser); raise CommandFailed if check fails."""
        environment = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb", "SYSTEMD_PAGER": "",
                       "SYSTEMD_COLORS": "0", **(env or {})}
        inner = ["runuser", "-u", user, "--", *command] if user else list(command)
        # nsenter's --wd resolves the directory before it enters the container's root: cd inside.
        chdir = ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", cwd] if cwd != "/" else []
        full = ["nsenter", "-t", str(self.leader), "-a", "env", "-i",
                *(f"{k}={v}" for k, v in environment.items()), *chdir, *inner]
        result = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout,
                                env={"PATH": PATH})
        if check and result.returncode != 0:
            raise CommandFailed(f"{' '.join(inner)} exited with {result.returncode}\n"
                                f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}")
        return result

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-ec", script], **kwargs)

    def write(self, path: str, text: str) -> None:
        """Replace the content of `path` inside, keeping an existing file's owner and mode."""
        self.run(["sh", "-ec", 'cat > "$1"', "sh", path], input=text)

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def exists(self, path: str, user: str | None = None) -> bool:
        return self.run(["test", "-e", path], user=user, check=False).returncode == 0

    def stat(self, path: str) -> str:
        """Return "mode owner group" of `path` inside, e.g. "2775 pretix-agent pretix-agent"."""
        return self.run(["stat", "-c", "%a %U %G", path]).stdout.strip()

    # -- systemd ---------------------------------------------------------------------------------

    def show(self, unit: str, prop: str) -> str:
        return self.run(["systemctl", "show", "--value", "-p", prop, unit]).stdout.strip()

    def cursor(self) -> str:
        """Return the journal's current end, for journal(after=...)."""
        out = self.run(["journalctl", "-n", "1", "-o", "json", "--no-pager"]).stdout.strip()
        return json.loads(out.splitlines()[-1])["__CURSOR"] if out else ""

    def journal(self, unit: str, after: str = "") -> list[dict[str, Any]]:
        """Return the unit's journal entries (oldest first), after the cursor `after` if given."""
        command = ["journalctl", "-u", unit, "-o", "json", "--no-pager", "--output-fields=MESSAGE,PRIORITY,"
                   "SYSLOG_IDENTIFIER,_PID,_SYSTEMD_UNIT,UNIT"]
        if after:
            command.append(f"--after-cursor={after}")
        out = self.run(command).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        for entry in entries:  # journald gives bytes as a list of numbers when not valid UTF-8
            if isinstance(entry.get("MESSAGE"), list):
                entry["MESSAGE"] = bytes(entry["MESSAGE"]).decode("utf-8", "replace")
        return entries

    def messages(self, unit: str, after: str = "") -> str:
        return "\n".join(str(e.get("MESSAGE", "")) for e in self.journal(unit, after))


def _children(pid: int) -> list[str]:
    """Return the PIDs of `pid`'s children (from /proc/PID/task/*/children, or by scanning /proc)."""
    try:
        return [child for task in Path(f"/proc/{pid}/task").iterdir()
                for child in task.joinpath("children").read_text().split()]
    except OSError:
        pass
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The field after the parenthesised command name: state, then the parent's PID.
                parent = entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            if parent == str(pid):
                children.append(entry.name)
    return children
