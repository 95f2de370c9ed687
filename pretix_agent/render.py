"""The status document in words for people: one formatter for every line pretix-agentctl prints.

Pure: given the typed document, return lines. The caller escapes control characters on output.
"""

from __future__ import annotations

import json
from typing import Any

from . import status
from .display import holder
from .maintenance.decide import CHECK_CAUSE, describe_check_cause


def when(moment: status.Moment | None) -> str:
    if moment is None:
        return "never"
    return f"{moment.local} ({moment.utc})" if moment.local != moment.utc else moment.utc


def why_on(state: status.Maintenance) -> str:
    """Why maintenance is on: the lock and who holds it, the window and until when."""
    parts = []
    lock = state.lock
    if lock is not None and lock.present:
        details = holder(lock.by, lock.at, lock.reason)
        origin = " (the cluster lock)" if lock.origin == "cluster" else ""
        parts.append(f"locked{origin}" + (f" {details}" if details else "")
                     + (f" [lock content unreadable: {lock.problem}]" if lock.problem else ""))
    if state.inside_window:
        parts.append(f"inside a weekly window until {when(state.window_until)}")
    if state.cause and state.cause.startswith(CHECK_CAUSE):
        parts.append(f"{describe_check_cause(state.cause)}; ends by itself when it passes again")
    if not parts and state.cause:
        parts.append(state.cause)
    return "; ".join(parts)


def maintenance_line(document: status.Document) -> str:
    state = document.maintenance
    if state is None or state.on is None:
        return "maintenance is unknown: the daemon has not decided yet"
    if state.on:
        return f"maintenance is ON: {why_on(state)}"
    return "maintenance is OFF" + (f"; next window starts {when(state.next_change)}" if state.next_change else "")


def ready_line(document: status.Document) -> str:
    """What `drain` and `ready` leave true: whether the node is drained, what haproxy does with it now
    (the agent-check answer haproxy reads, the local servers' state in haproxy), and, when it is
    not in rotation, what it waits for ("back when pretix passes 2 probes in a row (1 so far)").

    Only states and counts, never a probe's reason: a reason can be from a failure long over, and
    this line is read as what is true now.
    """
    drain = document.drain
    draining = drain is not None and drain.reason is not None
    parts = [f"this node is DRAINING ({drain.reason})" if draining and drain else "this node is not drained"]
    waits: list[str] = []
    agent_check = document.agent_check
    if agent_check is not None:
        answer = agent_check.answer.strip() if agent_check.answer else None
        if answer is None:
            parts.append("agent-check gives no answer yet (haproxy keeps the state it has)")
        else:
            parts.append(f"agent-check answers {answer!r}: {_agent_meaning(answer)}")
            if answer.startswith("down"):
                waits.extend(_back_when(_failing_or_undecided(document, list(document.checks)), document))
    haproxy = document.haproxy
    for server in haproxy.servers if haproxy else []:
        if not server.local:
            continue
        parts.append(f"haproxy {server.backend}/{server.server} is {server.actual or 'unknown'}: "
                     f"{_admin_meaning(server.actual)}")
        if server.actual == "ready" or draining:
            continue
        if server.hold_until:
            waits.append(f"its flap damping ends at {server.hold_until} ({server.hold_seconds:g} s)")
        waits.extend(_back_when(_failing_or_undecided(document, server.checks), document))
    if haproxy is not None and haproxy.reachable is False:
        parts.append(f"haproxy is unreachable ({haproxy.error})")
    if draining:
        parts.append("back in rotation after pretix-agentctl ready")
    elif waits:
        parts.append("back when " + " and ".join(dict.fromkeys(waits)))
    return "; ".join(parts)


def _agent_meaning(answer: str) -> str:
    if answer.startswith("down"):
        return "haproxy marks this node down"
    if answer.startswith("up 0%"):
        return "haproxy sends it no new requests"
    return "haproxy sends it requests"


def _admin_meaning(admin: str | None) -> str:
    return {"ready": "it takes requests", "drain": "no new requests, current ones finish",
            "maint": "no requests"}.get(admin or "", "haproxy does not know it")


def _failing_or_undecided(document: status.Document, names: list[str]) -> list[str]:
    return [name for name in names if name in document.checks and document.checks[name].state != "passing"]


def _back_when(names: list[str], document: status.Document) -> list[str]:
    """For checks that do not pass: "pretix passes 2 probes in a row (1 so far)"."""
    waits = []
    for name in names:
        check = document.checks[name]
        so_far = f" ({check.passes} so far)" if check.passes else ""
        waits.append(f"{name} passes {check.rise} probe{'s' if check.rise != 1 else ''} in a row{so_far}")
    return waits


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def status_lines(document: status.Document, liveness: status.Liveness) -> list[str]:
    """Every line of `pretix-agentctl status`."""
    lines = [f"daemon:      {'running' if liveness.alive else 'NOT RUNNING'}: {liveness.reason}",
             f"node:        {document.node} (pretix-agent {document.version})"]
    for problem in document.degraded:
        lines.append(f"DEGRADED:    {problem}")
    state = document.maintenance
    if state is not None and state.on is not None:
        lines.append(f"maintenance: {'ON' if state.on else 'off'}" + (f": {why_on(state)}" if state.on else ""))
        if state.next_change is not None:
            lines.append(f"next change: {when(state.next_change)}")
        elif state.on:
            lines.append("next change: none until pretix-agentctl unlock")
        lines.extend(f"error:       {failure}" for failure in state.errors)
    drain = document.drain
    if drain is not None and drain.reason is not None:
        who = holder(drain.request.by, drain.request.at, None) if drain.request.present else ""
        lines.append(f"drain:       DRAINING ({drain.reason})" + (f" {who}" if who else ""))
    if state is not None:
        lines.append(f"marker:      {state.marker}")
        lines.append(f"lock file:   {state.lock_file}")
        windows = ", ".join(f"{w.start} - {w.end}" for w in state.windows)
        lines.append("windows:     " + (f"{windows} ({state.timezone})" if windows else "none"))
    for name, check in sorted(document.checks.items()):
        values = " ".join(f"{key}={_short(value)}" for key, value in check.values.items())
        reason = f"{check.failure} (latest probe: {check.reason})" if check.failure and check.outcome == "pass" else (
            check.failure or check.reason or "")
        lines.append(f"check {name}: {check.state} ({check.type}) {reason}" + (f" [{values}]" if values else ""))
    haproxy = document.haproxy
    if haproxy is not None:
        if haproxy.reachable is False:
            lines.append(f"haproxy:     UNREACHABLE at {haproxy.socket}: {haproxy.error}")
        elif haproxy.reachable is None:
            lines.append(f"haproxy:     not looked at yet ({haproxy.socket})")
        for backend, cause in sorted(haproxy.shared.items()):
            lines.append(f"haproxy {backend}: SHARED CAUSE: {cause}")
        for server in haproxy.servers:
            shown = server.actual if server.actual == server.desired else f"{server.actual} (desired {server.desired})"
            line = f"haproxy {server.backend}/{server.server}: {shown}: {server.why}"
            if server.hold_until:
                line += f" [flap damping: held out {server.hold_seconds:g} s, until {server.hold_until}]"
            elif server.flap_level:
                line += f" [flap damping level {server.flap_level}]"
            lines.append(line)
    agent_check = document.agent_check
    if agent_check is not None:
        lines.append(f"agent-check: {agent_check.listen} answers "
                     + (f"{agent_check.answer.strip()!r}" if agent_check.answer else
                        "nothing yet (checks undecided: haproxy keeps its state)")
                     + (f" ({agent_check.why})" if agent_check.why else ""))
    loki = document.loki
    if loki is not None:
        line = f"loki:        {loki.state} ({loki.source}), last success {loki.last_success_at}"
        if loki.last_error:
            line += f", last error: {loki.last_error}"
        drops = {key: value for key, value in loki.drops.items() if value}
        if drops:
            line += ", dropped " + ", ".join(f"{key}={value}" for key, value in drops.items())
        lines.append(line)
    fencing = document.lock_fencing
    if fencing is not None and fencing.enabled:
        line = (f"lock fencing: {'enforcing' if fencing.enforce else 'dry run'}, "
                + (f"primary NOT WATCHED: {fencing.error}" if fencing.error else "watching the primary")
                + f", {fencing.fences_total} fenced" + (f", {fencing.would_fence_total} would have been"
                                                          if not fencing.enforce else ""))
        last = fencing.last_fence
        if last is not None:
            line += (f"; last: pid {last.pid} ({last.application_name or 'no application name'}, "
                     f"{last.client_addr or 'local socket'}) held {last.lock_key} idle {last.held_for:.1f} s, "
                     f"{last.waiters} waiting: {last.outcome}")
        lines.append(line)
    cluster = document.cluster
    if cluster is not None:
        where = {"connected": f"connected to {cluster.server}", "connecting": "connecting",
                 "schema_missing": "schema missing (pretix-agentctl cluster init)"}.get(
            cluster.state, f"{'DATABASE CALLS FAIL' if cluster.state == 'failing' else 'DATABASE UNREACHABLE'} "
                           f"since {cluster.stale_since}")
        line = f"cluster:     {cluster.name}, {where}" + (f"; {cluster.mirror}" if cluster.mirror else "")
        if cluster.problems:
            line += f"; {len(cluster.problems)} problem(s): pretix-agentctl status --cluster"
        lines.append(line)
    metrics = document.metrics
    if metrics is not None:
        parts = ([f"{metrics.listen}/metrics ({metrics.scrapes} scrapes)"] if metrics.listen else []) + (
            [f"textfile {metrics.textfile} " + (f"NOT WRITTEN: {metrics.textfile_error}" if metrics.textfile_error
                                                 else f"written {metrics.textfile_written_at or 'not yet'}")]
            if metrics.textfile else [])
        lines.append("metrics:     " + "; ".join(parts))
    for name, health in sorted(document.controllers.items()):
        if not health.ok:
            lines.append(f"FAILED:      {name} since {health.since}: {health.error}")
    lines.append(f"decision:    {document.sentence}")
    return lines


# -- the cluster (status --cluster) --------------------------------------------------------------


def cluster_lock_text(lock: status.ClusterLock | None) -> str:
    if lock is None:
        return "not locked"
    details = holder(lock.by, lock.at, lock.reason)
    return f"LOCKED {details}" + (f" on {lock.host}" if lock.host else "")


def node_line(node: status.ClusterNode) -> str:
    """One node of `status --cluster`: maintenance and why, checks, last seen, clock, windows."""
    if node.maintenance is None:
        maintenance = "maintenance unknown"
    elif node.maintenance:
        lock = {"cluster": "the cluster lock", "local": "its own lock"}.get(node.locked or "", "")
        cause = lock if node.cause in ("lock", "hand_edit") and lock else (node.cause or "?")
        maintenance = f"maintenance ON ({cause})"
    else:
        maintenance = "maintenance off"
    checks = f"FAILING checks: {', '.join(node.failing_checks)}" if node.failing_checks else "checks ok"
    clock = "clock not measured" if node.clock_offset is None else f"clock {node.clock_offset:+.3f} s"
    line = (f"node {node.node}: {maintenance}, {checks}, seen {node.age:.1f} s ago, {clock}, "
            f"windows {node.windows_digest}")
    roles = ",".join(node.roles)
    line += f" [{roles}]" if roles else ""
    if node.problems:
        line += " -- " + "; ".join(node.problems)
    return line


def cluster_lines(document: status.Document, liveness: status.Liveness, now: float) -> list[str]:
    """Every line of `pretix-agentctl status --cluster`."""
    cluster = document.cluster
    assert cluster is not None
    lines = [f"daemon:      {'running' if liveness.alive else 'NOT RUNNING'}: {liveness.reason}"]
    age = f"{max(0.0, now - cluster.view_at_unix):.1f} s old" if cluster.view_at_unix is not None else "never read"
    if cluster.state == "connected":
        lines.append(f"cluster:     {cluster.name}, connected to {cluster.server}, view {age}")
    elif cluster.state == "connecting":
        lines.append(f"cluster:     {cluster.name}, connecting to the database ({cluster.database})")
    elif cluster.state == "schema_missing":
        lines.append(f"cluster:     {cluster.name}, connected to {cluster.server}, but the agent's schema is "
                     "missing: run pretix-agentctl cluster init")
    else:
        what = "DATABASE CALLS FAIL" if cluster.state == "failing" else "DATABASE UNREACHABLE"
        lines.append(f"cluster:     {cluster.name}, {what} since {cluster.stale_since}: {cluster.error}")
        lines.append(f"             the view below is {age} (read {cluster.view_at or 'never'}); every node keeps "
                     "its lock as it is")
    if cluster.locked is not None:
        lines.append(f"lock:        {cluster_lock_text(cluster.lock)}")
    if cluster.mirror:
        lines.append(f"this node:   {document.node}: {cluster.mirror}")
    lines.extend(node_line(node) for node in cluster.nodes)
    for problem in cluster.problems:
        lines.append(f"PROBLEM:     {problem}")
    if cluster.state == "connected" and not cluster.problems:
        lines.append(f"agreement:   all {len(cluster.nodes)} nodes agree")
    return lines
