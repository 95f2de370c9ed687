"""pretix-like database clients in their own processes, for lock fencing's tests and bench.

Run as a program (`python3 -m tests.integration.lock_clients hold|wait ...`), one client is one
process with one connection, so a test can SIGSTOP it the way a hung gunicorn worker stops:

    hold --advisory K [--shared K] [--row TABLE:ID] [--then idle|active:SECONDS]
        BEGIN; take the locks (pretix's way: SET LOCAL lock_timeout = '3s', then
        pg_advisory_xact_lock); print "ready <backend pid>"; then either sit idle in the transaction
        until stdin closes (idle), or run SELECT pg_sleep(SECONDS) holding them (active) and print
        "done".
    wait --advisory K | --row TABLE:ID [--retry-for SECONDS] [--gate]
        print "waiting <backend pid>" (with --gate: then wait for a line on stdin), then try like a
        pretix order: BEGIN; SET LOCAL lock_timeout = '3s'; take the lock; COMMIT. On a lock timeout,
        try again until --retry-for is up. Print "acquired <seconds> <attempts>" or "gave_up
        <seconds> <attempts>", seconds counted from the first try.

`LockClient` starts one from a test and reads its lines with a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from .processes import FixtureError, die_with_parent, process_state, wait_stopped

ROOT = Path(__file__).resolve().parents[2]
APPLICATION_NAME = "pretix-test-client"  # every client's application_name, to find their sessions
PRETIX_LOCK_TIMEOUT = "3s"  # pretix/base/services/locking.py: LOCK_ACQUISITION_TIMEOUT = 3


class LockClient:
    """One client process. `line()` reads its next output line within a deadline."""

    def __init__(self, mode: str, dsn: str, *args: str):
        self.process = subprocess.Popen(
            ["/usr/bin/python3", "-m", "tests.integration.lock_clients", mode, "--dsn", dsn, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            preexec_fn=die_with_parent)
        self.pid = self.process.pid
        self._buffer = b""

    def line(self, timeout: float = 15.0) -> str:
        """The next line the client prints; FixtureError (with its stderr) if none comes in time."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise FixtureError(f"no line from the {self.process.args[3]} client within {timeout} s: "
                                   f"{self.stderr()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise FixtureError(f"the {self.process.args[3]} client exited ({self.process.wait(5)}): "
                                   f"{self.stderr()}")
            self._buffer += chunk
        text, self._buffer = self._buffer.split(b"\n", 1)
        return text.decode()

    def expect(self, word: str, timeout: float = 15.0) -> list[str]:
        """Read the next line, which must start with `word`; return its other words."""
        words = self.line(timeout).split()
        if not words or words[0] != word:
            raise FixtureError(f"expected {word!r} from the client, got {words}")
        return words[1:]

    def send(self, line: str = "") -> None:
        """Write a line to its stdin (opens a --gate)."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")[-2000:]

    def sigstop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        wait_stopped([self.pid])

    def sigcont(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)

    @property
    def stopped(self) -> bool:
        return process_state(self.pid) == "T"

    def close(self) -> None:
        """SIGCONT and SIGKILL it (by its PID), and reap it."""
        if self.process.poll() is None:
            self.sigcont()
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> LockClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# The client program.


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _lock_statement(advisory: list[int], shared: list[int], row: str | None) -> str:
    calls = [f"pg_advisory_xact_lock({key})" for key in advisory]
    calls += [f"pg_advisory_xact_lock_shared({key})" for key in shared]
    if row:
        table, _, row_id = row.partition(":")
        return f"SELECT id FROM {table} WHERE id = {int(row_id)} FOR UPDATE"
    return "SELECT " + ", ".join(calls)


def _hold(connection: psycopg.Connection, args: argparse.Namespace) -> None:
    with connection.transaction():
        connection.execute(f"SET LOCAL lock_timeout = '{PRETIX_LOCK_TIMEOUT}'")
        if args.advisory or args.shared:
            connection.execute(_lock_statement(args.advisory, args.shared, None))
        if args.row:
            connection.execute(_lock_statement([], [], args.row))
        connection.execute("SET LOCAL lock_timeout = '0'")
        if args.then == "idle":
            _say(f"ready {connection.info.backend_pid}")
            sys.stdin.readline()  # idle in transaction until the test closes stdin (or stops us)
        else:
            seconds = float(args.then.removeprefix("active:"))
            # One statement that takes the lock and keeps running: "active" all the time it holds it.
            _say(f"ready {connection.info.backend_pid}")
            connection.execute(f"SELECT pg_sleep({seconds})")
            _say("done")


def _wait(connection: psycopg.Connection, args: argparse.Namespace) -> None:
    _say(f"waiting {connection.info.backend_pid}")
    if args.gate:
        sys.stdin.readline()  # connected and ready: the caller says when the order comes in
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            with connection.transaction():
                connection.execute(f"SET LOCAL lock_timeout = '{PRETIX_LOCK_TIMEOUT}'")
                connection.execute(_lock_statement(args.advisory, [], args.row))
            _say(f"acquired {time.monotonic() - started:.3f} {attempts}")
            return
        except psycopg.errors.LockNotAvailable:
            if time.monotonic() - started >= args.retry_for:
                _say(f"gave_up {time.monotonic() - started:.3f} {attempts}")
                return


def main() -> int:
    parser = argparse.ArgumentParser(prog="lock_clients")
    parser.add_argument("mode", choices=("hold", "wait"))
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--advisory", type=int, action="append", default=[])
    parser.add_argument("--shared", type=int, action="append", default=[])
    parser.add_argument("--row")
    parser.add_argument("--then", default="idle")
    parser.add_argument("--retry-for", type=float, default=0.0)
    parser.add_argument("--gate", action="store_true")
    args = parser.parse_args()
    with psycopg.connect(args.dsn, autocommit=True, application_name=APPLICATION_NAME) as connection:
        (_hold if args.mode == "hold" else _wait)(connection, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
