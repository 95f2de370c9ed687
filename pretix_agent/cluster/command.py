"""The ctl verbs of the cluster: `lock|unlock --cluster`, `status --cluster`, `cluster init|forget`.

ctl never connects to the database (operators never need its credentials): it writes a request
file the local daemon picks up (request.py), and reads the outcome, and every node's row, from the
daemon's status file. When the database cannot be reached, the request fails at once with one line
that says what to do instead (lock or unlock each node).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from .. import shapes, status, terminal
from ..adapters import files
from ..adapters.status_file import load
from ..config import Config
from ..errors import StatusUnavailable
from ..render import cluster_lines, node_line
from . import schema
from .model import FORGET, INIT, LOCK, UNLOCK, Request
from .request import encode, parse, request_path

FALLBACK = {
    LOCK: "lock each node instead: pretix-agentctl lock on every node",
    UNLOCK: "unlock each node instead: pretix-agentctl unlock on every node (the cluster lock itself ends with "
            "unlock --cluster once the database answers)",
    INIT: "or have a DBA run the SQL of pretix-agentctl cluster init --print",
    FORGET: "try again once the database answers",
}


def _document(config: Config) -> status.Document | None:
    try:
        document = load(config.agent.status_file)
    except StatusUnavailable:
        return None
    return document if status.judge(document, time.time()).alive else None


def _refuse(message: str, code: int) -> int:
    terminal.say(f"pretix-agentctl: {message}", error=True)
    return code


def request(config: Config, action: str, timeout: float, reason: str | None = None, node: str | None = None) -> int:
    """Ask the daemon to carry out `action` against the cluster's database; wait for its outcome
    (and, for lock and unlock, for every node); say what is now true. Return the exit code."""
    if config.cluster is None:
        return _refuse(f"this node is not in a cluster: set [cluster] dsn in {config.source}", terminal.EXIT_USAGE)
    document = _document(config)
    if document is None:
        return _refuse("the daemon is not running on this node, and cluster requests go through it: start it "
                       f"(systemctl start pretix-agent), or {FALLBACK[action]}", terminal.EXIT_NOT_RUNNING)
    if document.cluster is None:
        return _refuse("the daemon runs without [cluster]: reload it (systemctl reload pretix-agent) to use "
                       f"{config.source}", terminal.EXIT_FAILING)
    started = time.time()
    wanted = Request(id=secrets.token_hex(8), action=action, by=terminal.invoking_user(), at=started,
                     host=config.agent.node, expires_at=started + timeout, reason=reason, node=node)
    path = request_path(config)
    if not _place(path, wanted, started):
        return terminal.EXIT_FAILING
    deadline = time.monotonic() + timeout
    outcome = _wait(config, deadline, lambda doc: _outcome(doc, wanted.id))
    if not isinstance(outcome, status.ClusterRequest):
        _withdraw(path, wanted.id)
        if outcome is None:
            return _refuse(f"the daemon stopped before it answered: {FALLBACK[action]}", terminal.EXIT_NOT_RUNNING)
        return _refuse(f"the daemon did not answer within {timeout:g} s; nothing is known to have changed: "
                       f"{FALLBACK[action]}", terminal.EXIT_FAILING)
    if outcome.state != "done":
        return _refuse(f"{_verb(action)} failed: {outcome.detail}; {FALLBACK[action]}", terminal.EXIT_FAILING)
    terminal.say(outcome.detail)
    if action == LOCK and outcome.lock is not None:
        return _follow(config, deadline, timeout, lambda n: _holds(n, outcome.lock.id if outcome.lock else ""),
                       "in maintenance")
    if action == UNLOCK and outcome.lock is not None:
        ended = outcome.lock.id
        return _follow(config, deadline, timeout, lambda n: n.cluster_lock_id != ended, "free of the cluster lock")
    return terminal.EXIT_OK


def _verb(action: str) -> str:
    return {LOCK: "lock --cluster", UNLOCK: "unlock --cluster", INIT: "cluster init", FORGET: "cluster forget"}[action]


def _place(path: Path, wanted: Request, now: float) -> bool:
    """Create the request file; replace one only if it expired (its ctl gave up). Say why not."""
    for _ in range(2):
        if files.create_exclusive(path, encode(wanted)):
            return True
        state = files.read_small(path)
        if not state.present:
            continue
        other = parse(state.content, state.error).request
        if other is not None and other.expires_at < now:
            files.remove(path)
            continue
        who = f" ({other.action} by {other.by})" if other is not None else ""
        terminal.say(f"pretix-agentctl: another cluster request is pending{who}: try again in a moment", error=True)
        return False
    terminal.say("pretix-agentctl: the cluster request file keeps changing under us: try again in a moment", error=True)
    return False


def _withdraw(path: Path, request_id: str) -> None:
    """Remove our request if the daemon has not taken it yet, so it is not carried out late."""
    state = files.read_small(path)
    seen = parse(state.content, state.error) if state.present else None
    if seen is not None and seen.id == request_id:
        files.remove(path)


def _outcome(document: status.Document, request_id: str) -> status.ClusterRequest | None:
    cluster = document.cluster
    for entry in cluster.requests if cluster is not None else []:
        if entry.id == request_id and entry.state != "pending":
            return entry
    return None


def _wait(config: Config, deadline: float, found: Callable[[status.Document], object]) -> object:
    """Poll the status file until `found(document)` is truthy. Return that, False at the deadline,
    None if the daemon stopped."""
    while True:
        document = _document(config)
        if document is None:
            return None
        result = found(document)
        if result:
            return result
        if time.monotonic() >= deadline:
            return False
        time.sleep(terminal.POLL_SECONDS)  # a bounded poll of a small file; the daemon reacts through inotify


def _holds(node: status.ClusterNode, lock_id: str) -> bool:
    return bool(node.maintenance) and (node.cluster_lock_id == lock_id or node.locked == "local")


def _silent(node: status.ClusterNode) -> bool:
    return any(problem.startswith("silent") for problem in node.problems)


def _follow(config: Config, deadline: float, timeout: float, done: Callable[[status.ClusterNode], bool],
            goal: str) -> int:
    """Wait until every node that is not silent shows `done`; say how every node stands."""

    def settled(document: status.Document) -> status.Document | None:
        cluster = document.cluster
        if cluster is None or cluster.state != "connected":
            return None
        return document if all(done(n) for n in cluster.nodes if not _silent(n)) else None

    result = _wait(config, deadline, settled)
    document = result if isinstance(result, status.Document) else _document(config)
    cluster = document.cluster if document is not None else None
    if cluster is None:
        return _refuse("the daemon stopped before every node confirmed: see pretix-agentctl status --cluster",
                       terminal.EXIT_NOT_RUNNING)
    behind = [n for n in cluster.nodes if not done(n)]
    for node in cluster.nodes:
        terminal.say(node_line(node))
    if not behind:
        terminal.say(f"all {len(cluster.nodes)} nodes {goal}" if len(cluster.nodes) != 1 else f"the one node {goal}")
        return terminal.EXIT_OK
    names = ", ".join(n.node for n in behind)
    silent = [n.node for n in behind if _silent(n)]
    why = f" ({', '.join(silent)} silent: it follows when it is back)" if silent else ""
    terminal.say(f"pretix-agentctl: not confirmed within {timeout:g} s by {names}{why}: check those nodes "
            "(pretix-agentctl status there)", error=True)
    return terminal.EXIT_FAILING


def show(config: Config, as_json: bool) -> int:
    """`status --cluster`: every node, the cluster lock, and what disagrees. Exit 1 if anything does."""
    if config.cluster is None:
        return _refuse(f"this node is not in a cluster: set [cluster] dsn in {config.source}", terminal.EXIT_USAGE)
    try:
        document = load(config.agent.status_file)
    except StatusUnavailable as error:
        if as_json:
            terminal.say(json.dumps({"daemon": {"alive": False, "reason": str(error)}, "cluster": None}))
        else:
            terminal.say(f"pretix-agentctl: {error}", error=True)
        return terminal.EXIT_NOT_RUNNING
    now = time.time()
    liveness = status.judge(document, now)
    cluster = document.cluster
    if not liveness.alive:
        code = terminal.EXIT_NOT_RUNNING
    elif cluster is None or failing(cluster, now):
        code = terminal.EXIT_FAILING
    else:
        code = terminal.EXIT_OK
    if as_json:
        terminal.say(json.dumps({"node": document.node, "cluster": shapes.encode(cluster),
                            "daemon": {"alive": liveness.alive, "reason": liveness.reason,
                                       "age": round(liveness.age, 3)}}))
        return code
    if cluster is None:
        terminal.say(f"daemon:      {liveness.reason}")
        return _refuse("the daemon runs without [cluster]: reload it (systemctl reload pretix-agent)", code)
    for line in cluster_lines(document, liveness, now):
        terminal.say(line)
    return code


def failing(cluster: status.Cluster, now: float) -> bool:
    """Whether `status --cluster` exits 1: the view is not current, or a node disagrees, is silent or fails."""
    if cluster.state != "connected" or cluster.view_at_unix is None:
        return True
    if now - cluster.view_at_unix > 3 * cluster.heartbeat_interval + 5:
        return True  # the worker stopped reporting
    return bool(cluster.problems)


def init(config: Config, print_only: bool, timeout: float) -> int:
    if print_only:
        for line in schema.script().rstrip("\n").split("\n"):  # our own text: its lines are lines
            terminal.say(line)
        return terminal.EXIT_OK
    return request(config, INIT, timeout)
