"""`pretix-agentctl`: the operator's command. Files are the interface to the daemon.

Output for people goes to stdout (one JSON document with --json); errors are one line on stderr.
Everything printed that came from a file or a server passes through `display.printable`, so a lock
reason cannot clear a terminal or fake a status line. A reader that goes away (`status | head`)
costs the output, never a traceback, and the exit code still says what is true.
Exit codes (SPEC 8): 0 ok, 1 something failing or not applied, 2 usage or configuration error,
3 daemon not running or its status stale.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import socket
import sys
import time
import unicodedata
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, shapes, status
from . import config as config_module
from .adapters import files
from .adapters.status_file import load
from .config import parse_duration
from .display import printable
from .drain.request import drain_path
from .errors import ConfigError, FileWriteError, StatusUnavailable
from .maintenance.decide import CLUSTER_ORIGIN, LockInfo, encode_lock, encode_marker, parse_lock
from .render import maintenance_line, ready_line, status_lines
from .terminal import EXIT_FAILING, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE, POLL_SECONDS, invoking_user, say

# A reason is for people: a sentence, not a file. Far below what the daemon reads of a lock (64 KiB).
MAX_REASON = 1000
VALUE_OPTIONS = ("--reason", "--timeout")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"pretix-agentctl: {printable(message)} (see pretix-agentctl --help)\n")


def _duration(text: str) -> float:
    """A duration on the command line: "10s", "500ms", or a bare number of seconds ("2")."""
    try:
        return parse_duration(f"{text}s" if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text) else text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _reason(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("the reason is not valid UTF-8 text") from None
    if len(text) > MAX_REASON:
        raise argparse.ArgumentTypeError(f"the reason has {len(text)} characters, at most {MAX_REASON} are kept")
    control = next((char for char in text if unicodedata.category(char) in ("Cc", "Cf")), None)
    if control is not None:
        raise argparse.ArgumentTypeError(f"the reason contains a control character ({printable(control)}): "
                                         "write it on one line of plain text")
    return text


def _join_values(argv: list[str]) -> list[str]:
    """["--timeout", "-1s"] -> ["--timeout=-1s"]: argparse takes a value that starts with "-" for an
    option and says "expected one argument", when the value itself is what is wrong."""
    out: list[str] = []
    index = 0
    while index < len(argv):
        if argv[index] in VALUE_OPTIONS and index + 1 < len(argv) and argv[index + 1].startswith("-") and \
                argv[index + 1] != "--":
            out.append(f"{argv[index]}={argv[index + 1]}")
            index += 2
            continue
        out.append(argv[index])
        index += 1
    return out


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pretix-agentctl", description="Operate the pretix-agent on this node.")
    p.add_argument("-c", "--config", type=Path, default=config_module.DEFAULT_PATH,
                   help=f"configuration file (default {config_module.DEFAULT_PATH})")
    p.add_argument("--version", action="version", version=f"pretix-agentctl {__version__}")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True
    timeout = {"type": _duration, "default": 10.0, "help": 'how long to wait for the daemon ("10s", or seconds)'}
    lock = verbs.add_parser("lock", help="turn maintenance on until unlock (works with the daemon down)")
    lock.add_argument("--reason", type=_reason, help=f"why (one line, at most {MAX_REASON} characters), recorded "
                      "in the lock file and shown by status")
    lock.add_argument("--cluster", action="store_true", help="set the cluster lock: every node of the cluster "
                      "locks (through this node's daemon and the cluster's database)")
    lock.add_argument("--timeout", **timeout)  # type: ignore[arg-type]
    unlock = verbs.add_parser("unlock", help="remove the lock; a window keeps maintenance on until it ends")
    unlock.add_argument("--cluster", action="store_true", help="end the cluster lock on every node (a node's own "
                        "lock stays)")
    unlock.add_argument("--timeout", **timeout)  # type: ignore[arg-type]
    drain = verbs.add_parser("drain", help="take this node out of haproxy for planned work (agent-check answers "
                             "drain; local servers drained through the socket)")
    drain.add_argument("--reason", type=_reason, help="why, shown by status and in the agent-check answer")
    drain.add_argument("--timeout", **timeout)  # type: ignore[arg-type]
    ready = verbs.add_parser("ready", help="end a drain: this node takes requests again")
    ready.add_argument("--timeout", **timeout)  # type: ignore[arg-type]
    show = verbs.add_parser("status", help="maintenance, checks and the daemon's liveness")
    show.add_argument("--json", action="store_true", help="print exactly one JSON document")
    show.add_argument("--cluster", action="store_true", help="every node of the cluster, the cluster lock, and "
                      "what disagrees (exit 1 if a node disagrees, is silent or fails)")
    cluster = verbs.add_parser("cluster", help="the cluster's database: init, forget")
    actions = cluster.add_subparsers(dest="cluster_verb", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    init = actions.add_parser("init", help="create the agent's schema (idempotent), through the daemon")
    init.add_argument("--print", action="store_true", dest="print_only", help="print the SQL (and the role set-up) "
                      "for a DBA instead")
    init.add_argument("--timeout", **timeout)  # type: ignore[arg-type]
    forget = actions.add_parser("forget", help="remove a node taken out of the cluster from the view")
    forget.add_argument("node", type=_node_name, help="the node's name, as status --cluster shows it")
    forget.add_argument("--timeout", **timeout)  # type: ignore[arg-type]
    return p


def _node_name(text: str) -> str:
    if not text or len(text) > 255 or any(unicodedata.category(char) in ("Cc", "Cf") for char in text):
        raise argparse.ArgumentTypeError("expected a node's name as status --cluster shows it")
    return text


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")  # a file name in any encoding prints
    args = parser().parse_args(_join_values(list(sys.argv[1:] if argv is None else argv)))
    if args.verb == "cluster" and args.cluster_verb == "init" and args.print_only:
        from .cluster.schema import script  # for a DBA: needs no configuration

        for line in script().rstrip("\n").split("\n"):  # our own text: its lines are lines
            say(line)
        return EXIT_OK
    try:
        config = config_module.load(args.config)
    except ConfigError as error:
        for problem in error.problems:
            say(f"pretix-agentctl: {problem}", error=True)
        return EXIT_USAGE
    try:
        if args.verb in ("lock", "unlock", "status", "cluster") and (args.verb == "cluster" or args.cluster):
            from .cluster import command  # the cluster's verbs, through the daemon

            if args.verb == "status":
                return command.show(config, args.json)
            if args.verb == "cluster" and args.cluster_verb == "init":
                return command.init(config, args.print_only, args.timeout)
            if args.verb == "cluster":
                return command.request(config, "forget", args.timeout, node=args.node)
            return command.request(config, args.verb, args.timeout, reason=getattr(args, "reason", None))
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
        say(f"pretix-agentctl: {error}", error=True)
        return EXIT_FAILING
    except KeyboardInterrupt:
        return EXIT_FAILING


# -- lock / unlock --------------------------------------------------------------------------------


def _existing(path: Path) -> LockInfo | None:
    state = files.read_small(path)
    return parse_lock(state.content, state.error) if state.present else None


def _create(path: Path, content: bytes, word: str) -> tuple[bool, LockInfo | None]:
    """Create a lock-format file unless one exists. Return (created, the one found instead).

    An existing file is looked at first, so a second `lock` on a full disk says "already locked"
    instead of failing to write a temporary file it does not need."""
    current = _existing(path)
    if current is not None:
        return False, current
    if files.create_exclusive(path, content):
        return True, None
    return False, _existing(path) or LockInfo(True, problem=f"{word} and removed again meanwhile")


def lock(config: config_module.Config, reason: str | None, timeout: float) -> int:
    section = config.maintenance
    now = datetime.now(timezone.utc)
    lock_id = secrets.token_hex(8)
    content = encode_lock(lock_id, invoking_user(), now, reason, config.agent.node or socket.gethostname())
    created, current = _create(section.lock, content, "locked")
    if created:
        say(f"locked: maintenance is pinned on until pretix-agentctl unlock ({section.lock})")
    else:
        assert current is not None
        say(f"already {current.describe()}; nothing changed")
        lock_id = current.lock_id or ""
    # The marker is ours to write too, so that maintenance starts even while the daemon is down.
    if not files.read_small(section.marker).present:
        files.write_atomic(section.marker, encode_marker("lock", now))

    def applied(document: status.Document) -> bool:
        state = document.maintenance
        seen = state.lock if state is not None else None
        return bool(state and state.on and seen and seen.present and (not lock_id or seen.id == lock_id))

    # Maintenance is on either way (the marker exists): a daemon that is down is no failure here.
    return _confirm(config, applied, timeout, maintenance_line, EXIT_OK,
                    "maintenance is on (the marker exists); the daemon is not running, so nothing else "
                    "watches it until it starts",
                    f"maintenance is on (the marker exists) but the daemon did not confirm within {timeout:g} s")


def unlock(config: config_module.Config, timeout: float) -> int:
    section = config.maintenance
    started = time.time()
    removed = _existing(section.lock)
    say(f"unlocked: removed {section.lock}" if files.remove(section.lock) else "not locked; nothing changed")
    if removed is not None and removed.origin == CLUSTER_ORIGIN:
        say("that was the cluster lock: this node leaves it until the cluster lock changes, the other nodes stay "
            "locked (pretix-agentctl unlock --cluster ends it everywhere)")

    def applied(document: status.Document) -> bool:
        state = document.maintenance
        lock = state.lock if state is not None else None
        # While the cluster is locked, a node's own lock removed gives way to the cluster lock.
        mirrored = bool(lock and lock.present and lock.origin == CLUSTER_ORIGIN and (
            removed is None or lock.id != removed.lock_id))
        return bool(document.written_at_unix >= started and state is not None and state.applied
                    and (not (lock and lock.present) or mirrored))

    marker = "the marker stays" if files.read_small(section.marker).present else "no marker exists"
    return _confirm(config, applied, timeout, maintenance_line, EXIT_NOT_RUNNING,
                    f"the daemon is not running: {marker} until it runs and applies the schedule",
                    f"the daemon did not confirm within {timeout:g} s")


def drain(config: config_module.Config, reason: str | None, timeout: float) -> int:
    path = drain_path(config)
    drain_id = secrets.token_hex(8)
    content = encode_lock(drain_id, invoking_user(), datetime.now(timezone.utc), reason, config.agent.node)
    created, current = _create(path, content, "requested")
    if created:
        say(f"draining: this node stays out of haproxy until pretix-agentctl ready ({path})")
    else:
        assert current is not None
        say(f"already draining ({current.describe('requested')}); nothing changed")
        drain_id = current.lock_id or ""

    def applied(document: status.Document) -> bool:
        seen = document.drain.request if document.drain is not None else None
        return bool(seen and seen.present and (not drain_id or seen.id == drain_id)) and settled(document)

    return _confirm(config, applied, timeout, ready_line, EXIT_NOT_RUNNING,
                    "the daemon is not running: the drain takes effect when it starts",
                    f"the daemon did not confirm the drain within {timeout:g} s")


def ready(config: config_module.Config, timeout: float) -> int:
    path = drain_path(config)
    started = time.time()
    say(f"drain ended: removed {path}" if files.remove(path) else "not draining; nothing changed")

    def applied(document: status.Document) -> bool:
        return (document.written_at_unix >= started and not (document.drain and document.drain.request.present)
                and settled(document))

    return _confirm(config, applied, timeout, ready_line, EXIT_NOT_RUNNING,
                    "the daemon is not running: this node is taken back when it starts",
                    f"the daemon did not confirm within {timeout:g} s")


def settled(document: status.Document) -> bool:
    """Whether haproxy control has acted on the daemon's latest inputs (or there is none): only then
    does the status say what haproxy does now rather than what it did."""
    return document.haproxy is None or not document.haproxy.pending


def _confirm(config: config_module.Config, applied: Callable[[status.Document], bool], timeout: float,
             describe: Callable[[status.Document], str], down_code: int, down: str, late: str) -> int:
    """Wait for the daemon to show `applied`; print what is now true (or why it is not known)."""
    outcome = _wait_for_daemon(config, applied, timeout)
    if outcome is None:
        say(down, error=down_code != EXIT_OK)
        return down_code
    if not isinstance(outcome, status.Document):
        say(late, error=True)
        return EXIT_FAILING
    say(describe(outcome))
    return EXIT_OK


def _wait_for_daemon(config: config_module.Config, applied: Callable[[status.Document], bool],
                     timeout: float) -> status.Document | bool | None:
    """Poll the status until `applied(document)`. Return the document, False on timeout, None if down."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            document = load(config.agent.status_file)
        except StatusUnavailable:
            return None
        if not status.judge(document, time.time()).alive:
            return None
        if applied(document):
            return document
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)  # bounded poll of a small file; the daemon reacts through inotify


# -- status ---------------------------------------------------------------------------------------


def show_status(config: config_module.Config, as_json: bool) -> int:
    try:
        document = load(config.agent.status_file)
    except StatusUnavailable as error:
        if as_json:
            say(json.dumps({"daemon": {"alive": False, "reason": str(error)}}))
        else:
            say(f"pretix-agentctl: {error}", error=True)
        return EXIT_NOT_RUNNING
    liveness = status.judge(document, time.time())
    code = EXIT_NOT_RUNNING if not liveness.alive else (EXIT_FAILING if failing(document) else EXIT_OK)
    if as_json:
        out = shapes.encode(document)
        out["daemon"] = {"alive": liveness.alive, "reason": liveness.reason, "age": round(liveness.age, 3)}
        say(json.dumps(out))
        return code
    for line in status_lines(document, liveness):
        say(line)
    return code


def failing(document: status.Document) -> bool:
    """Whether `status` exits 1: anything unhealthy, degraded, not applied, or a check not passing."""
    state = document.maintenance
    return (not document.healthy or bool(document.degraded) or any(not c.ok for c in document.controllers.values())
            or state is None or bool(state.errors)
            or state.applied is False or any(check.state != "passing" for check in document.checks.values()))


if __name__ == "__main__":
    sys.exit(main())
