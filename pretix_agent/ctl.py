"""`pretix-agentctl`: the operator's command. Files are the interface to the daemon.

Output for people goes to stdout (one JSON document with --json); errors are one line on stderr.
Exit codes (SPEC 8): 0 ok, 1 something failing or not applied, 2 usage or configuration error,
3 daemon not running or its status stale.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, maintenance, status
from . import config as config_module
from .adapters import files
from .config import parse_duration
from .drain import drain_path
from .errors import ConfigError, FileWriteError, StatusUnavailable

EXIT_OK = 0
EXIT_FAILING = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

POLL_SECONDS = 0.02


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"pretix-agentctl: {message} (see pretix-agentctl --help)\n")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pretix-agentctl", description="Operate the pretix-agent on this node.")
    p.add_argument("-c", "--config", type=Path, default=config_module.DEFAULT_PATH,
                   help=f"configuration file (default {config_module.DEFAULT_PATH})")
    p.add_argument("--version", action="version", version=f"pretix-agentctl {__version__}")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True
    lock = verbs.add_parser("lock", help="turn maintenance on until unlock (works with the daemon down)")
    lock.add_argument("--reason", help="why, recorded in the lock file and shown by status")
    lock.add_argument("--timeout", type=_duration, default=10.0, help='how long to wait for the daemon '
                      '(default "10s")')
    unlock = verbs.add_parser("unlock", help="remove the lock; a window keeps maintenance on until it ends")
    unlock.add_argument("--timeout", type=_duration, default=10.0, help='how long to wait for the daemon '
                        '(default "10s")')
    drain = verbs.add_parser("drain", help="take this node out of haproxy for planned work (agent-check answers "
                             "drain; local servers drained through the socket)")
    drain.add_argument("--reason", help="why, shown by status and in the agent-check answer's log")
    drain.add_argument("--timeout", type=_duration, default=10.0, help='how long to wait for the daemon '
                       '(default "10s")')
    ready = verbs.add_parser("ready", help="end a drain: this node takes requests again")
    ready.add_argument("--timeout", type=_duration, default=10.0, help='how long to wait for the daemon '
                       '(default "10s")')
    show = verbs.add_parser("status", help="maintenance, checks and the daemon's liveness")
    show.add_argument("--json", action="store_true", help="print exactly one JSON document")
    return p


def invoking_user() -> str:
    """Return who runs this command: the sudo caller if any, else the real user."""
    sudo_user = os.environ.get("SUDO_USER")
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    if sudo_user and os.getuid() == 0:
        return f"{sudo_user} (via sudo)"
    return name


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = config_module.load(args.config)
    except ConfigError as error:
        for problem in error.problems:
            print(f"pretix-agentctl: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.verb == "lock":
            return lock(config, args.reason, args.timeout)
        if args.verb == "unlock":
            return unlock(config, args.timeout)
        if args.verb == "drain":
            return drain(config, args.reason, args.timeout)
        if args.verb == "ready":
            return ready(config, args.timeout)
        return show_status(config, args.json)
    except FileWriteError as error:
        print(f"pretix-agentctl: {error}", file=sys.stderr)
        return EXIT_FAILING
    except KeyboardInterrupt:
        return EXIT_FAILING


# -- lock / unlock --------------------------------------------------------------------------------


def lock(config: config_module.Config, reason: str | None, timeout: float) -> int:
    section = config.maintenance
    now = datetime.now(timezone.utc)
    lock_id = secrets.token_hex(8)
    content = maintenance.encode_lock(lock_id, invoking_user(), now, reason, config.agent.node or
                                      socket.gethostname())
    if files.create_exclusive(section.lock, content):
        print(f"locked: maintenance is pinned on until pretix-agentctl unlock ({section.lock})")
    else:
        existing = files.read_small(section.lock)
        current = maintenance.parse_lock(existing.content, existing.error) if existing.present else None
        if current is None:  # removed between our attempt and our look: try once more
            return lock(config, reason, timeout)
        print(f"already {current.describe()}; nothing changed")
        lock_id = current.lock_id or ""
    # The marker is ours to write too, so that maintenance starts even while the daemon is down.
    if not files.read_small(section.marker).present:
        files.write_atomic(section.marker, maintenance.encode_marker("lock", now))

    def applied(document: dict[str, Any]) -> bool:
        state = document.get("maintenance") or {}
        seen = state.get("lock") or {}
        return bool(state.get("on")) and bool(seen.get("present")) and (not lock_id or seen.get("id") == lock_id)

    # Maintenance is on either way (the marker exists): a daemon that is down is no failure here.
    return _confirm(config, applied, timeout, _maintenance_line, EXIT_OK,
                    "maintenance is on (the marker exists); the daemon is not running, so nothing else "
                    "watches it until it starts",
                    f"maintenance is on (the marker exists) but the daemon did not confirm within {timeout:g} s")


def unlock(config: config_module.Config, timeout: float) -> int:
    section = config.maintenance
    started = time.time()
    if files.remove(section.lock):
        print(f"unlocked: removed {section.lock}")
    else:
        print("not locked; nothing changed")

    def applied(document: dict[str, Any]) -> bool:
        state = document.get("maintenance") or {}
        seen = state.get("lock") or {}
        return float(document.get("written_at_unix", 0)) >= started and not seen.get("present", True) and bool(
            state.get("applied"))

    marker = "the marker stays" if files.read_small(section.marker).present else "no marker exists"
    return _confirm(config, applied, timeout, _maintenance_line, EXIT_NOT_RUNNING,
                    f"the daemon is not running: {marker} until it runs and applies the schedule",
                    f"the daemon did not confirm within {timeout:g} s")


def drain(config: config_module.Config, reason: str | None, timeout: float) -> int:
    path = drain_path(config)
    drain_id = secrets.token_hex(8)
    content = maintenance.encode_lock(drain_id, invoking_user(), datetime.now(timezone.utc), reason,
                                      config.agent.node)
    if files.create_exclusive(path, content):
        print(f"draining: this node stays out of haproxy until pretix-agentctl ready ({path})")
    else:
        existing = files.read_small(path)
        current = maintenance.parse_lock(existing.content, existing.error)
        print(f"already draining ({current.describe().replace('locked', 'requested', 1)}); nothing changed")
        drain_id = current.lock_id or ""

    def applied(document: dict[str, Any]) -> bool:
        seen = document.get("drain") or {}
        return bool(seen.get("present")) and (not drain_id or seen.get("id") == drain_id)

    return _confirm(config, applied, timeout, _drain_line, EXIT_NOT_RUNNING,
                    "the daemon is not running: the drain takes effect when it starts",
                    f"the daemon did not confirm the drain within {timeout:g} s")


def ready(config: config_module.Config, timeout: float) -> int:
    path = drain_path(config)
    started = time.time()
    print("drain ended: removed " + str(path) if files.remove(path) else "not draining; nothing changed")

    def applied(document: dict[str, Any]) -> bool:
        return float(document.get("written_at_unix", 0)) >= started and not (document.get("drain") or {}).get(
            "present", True)

    return _confirm(config, applied, timeout, _drain_line, EXIT_NOT_RUNNING,
                    "the daemon is not running: this node is taken back when it starts",
                    f"the daemon did not confirm within {timeout:g} s")


def _drain_line(document: dict[str, Any]) -> str:
    seen = document.get("drain") or {}
    answer = (document.get("agent_check") or {}).get("answer")
    line = "this node is DRAINING" if seen.get("present") else "this node is ready"
    return line + (f"; agent-check answers {answer.strip()!r}" if answer else "")


def _confirm(config: config_module.Config, applied: Any, timeout: float, describe: Any, down_code: int,
             down: str, late: str) -> int:
    """Wait for the daemon to show `applied`; print what is now true (or why it is not known)."""
    outcome = _wait_for_daemon(config, applied, timeout)
    if outcome is None:
        print(down, file=sys.stdout if down_code == EXIT_OK else sys.stderr)
        return down_code
    if not isinstance(outcome, dict):
        print(late, file=sys.stderr)
        return EXIT_FAILING
    print(describe(outcome))
    return EXIT_OK


def _wait_for_daemon(config: config_module.Config, applied: Any, timeout: float) -> dict[str, Any] | bool | None:
    """Poll the status until `applied(document)`. Return the document, False on timeout, None if down."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            document = status.read(config.agent.status_file)
        except StatusUnavailable:
            return None
        if not status.judge(document, time.time()).alive:
            return None
        if applied(document):
            return document
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)  # bounded poll of a small file; the daemon reacts through inotify


def _maintenance_line(document: dict[str, Any]) -> str:
    state = document.get("maintenance") or {}
    if state.get("on"):
        return f"maintenance is ON: {_why(state)}"
    nxt = state.get("next_change")
    return "maintenance is OFF" + (f"; next window starts {_when(nxt)}" if nxt else "")


def _why(state: dict[str, Any]) -> str:
    lock = state.get("lock") or {}
    parts = []
    if lock.get("present"):
        details = " ".join(x for x in (f"by {lock['by']}" if lock.get("by") else "",
                                       f"since {lock['at']}" if lock.get("at") else "",
                                       f"({lock['reason']})" if lock.get("reason") else "") if x)
        parts.append("locked" + (f" {details}" if details else "") +
                     (f" [lock content unreadable: {lock['problem']}]" if lock.get("problem") else ""))
    if state.get("inside_window"):
        parts.append(f"inside a weekly window until {_when(state.get('window_until'))}")
    if not parts and state.get("cause"):
        parts.append(str(state["cause"]))
    return "; ".join(parts)


def _when(moment: dict[str, str] | None) -> str:
    if not moment:
        return "never"
    local, utc = moment.get("local", ""), moment.get("utc", "")
    return f"{local} ({utc})" if local != utc else utc


# -- status ---------------------------------------------------------------------------------------


def show_status(config: config_module.Config, as_json: bool) -> int:
    try:
        document = status.read(config.agent.status_file)
    except StatusUnavailable as error:
        if as_json:
            print(json.dumps({"daemon": {"alive": False, "reason": str(error)}}))
        else:
            print(f"pretix-agentctl: {error}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    liveness = status.judge(document, time.time())
    state = document.get("maintenance") or {}
    checks = document.get("checks") or {}
    failing = (not document.get("healthy", False) or bool(state.get("errors")) or not state.get("applied", True)
               or any(check.get("state") != "passing" for check in checks.values()))
    code = EXIT_NOT_RUNNING if not liveness.alive else (EXIT_FAILING if failing else EXIT_OK)
    if as_json:
        document["daemon"] = {"alive": liveness.alive, "reason": liveness.reason, "age": round(liveness.age, 3)}
        print(json.dumps(document, default=str))
        return code
    print(f"daemon:      {'running' if liveness.alive else 'NOT RUNNING'}: {liveness.reason}")
    print(f"node:        {document.get('node')} (pretix-agent {document.get('version')})")
    if "on" in state:
        print(f"maintenance: {'ON' if state.get('on') else 'off'}" + (f": {_why(state)}" if state.get("on") else ""))
        if state.get("next_change"):
            print(f"next change: {_when(state['next_change'])}")
        elif state.get("on"):
            print("next change: none until pretix-agentctl unlock")
        for failure in state.get("errors") or []:
            print(f"error:       {failure}")
    seen_drain = document.get("drain") or {}
    if seen_drain.get("present"):
        who = " ".join(x for x in (f"by {seen_drain['by']}" if seen_drain.get("by") else "",
                                   f"since {seen_drain['at']}" if seen_drain.get("at") else "",
                                   f"({seen_drain['reason']})" if seen_drain.get("reason") else "") if x)
        print(f"drain:       DRAINING {who}".rstrip())
    print(f"marker:      {state.get('marker')}")
    print(f"lock file:   {state.get('lock_file')}")
    windows = state.get("windows") or []
    print("windows:     " + (", ".join(f"{w['start']} - {w['end']}" for w in windows) + f" ({state.get('timezone')})"
                             if windows else "none"))
    for name, check in sorted(checks.items()):
        values = " ".join(f"{k}={_short(v)}" for k, v in (check.get("values") or {}).items())
        print(f"check {name}: {check.get('state')} ({check.get('type')}) {check.get('reason') or ''}"
              + (f" [{values}]" if values else ""))
    haproxy = document.get("haproxy")
    if haproxy is not None:
        if not haproxy.get("reachable", False):
            print(f"haproxy:     UNREACHABLE at {haproxy.get('socket')}: {haproxy.get('error')}")
        for server in haproxy.get("servers") or []:
            actual, desired = server.get("actual"), server.get("desired")
            state = actual if actual == desired else f"{actual} (desired {desired})"
            print(f"haproxy {server.get('backend')}/{server.get('server')}: {state}: {server.get('why')}")
    agent_check = document.get("agent_check")
    if agent_check is not None:
        answer = agent_check.get("answer")
        print(f"agent-check: {agent_check.get('listen')} answers "
              + (repr(answer.strip()) if answer else "nothing yet (checks undecided: haproxy keeps its state)"))
    loki = document.get("loki")
    if loki is not None:
        line = f"loki:        {loki.get('state')} ({loki.get('source')}), last success {loki.get('last_success_at')}"
        if loki.get("last_error"):
            line += f", last error: {loki['last_error']}"
        drops = {k: v for k, v in (loki.get("drops") or {}).items() if v}
        if drops:
            line += ", dropped " + ", ".join(f"{k}={v}" for k, v in drops.items())
        print(line)
    print(f"decision:    {document.get('sentence')}")
    return code


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


if __name__ == "__main__":
    sys.exit(main())
