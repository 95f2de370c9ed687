"""The status document in words for people: one formatter for every line pretix-agentctl prints.

Pure: given the typed document, return lines. The caller escapes control characters on output.
"""

from __future__ import annotations

import json
from typing import Any

from . import status
from .display import holder


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
    """What `drain` and `ready` leave true: drained or not, what haproxy is told, what it waits for."""
    drain = document.drain
    draining = drain is not None and drain.reason is not None
    line = f"this node is DRAINING ({drain.reason})" if draining and drain else "this node is ready"
    agent_check = document.agent_check
    if agent_check is not None:
        if agent_check.answer:
            line += f"; agent-check answers {agent_check.answer.strip()!r}"
        else:
            line += "; agent-check gives no answer yet (haproxy keeps the state it has)"
        waiting = _waiting_for(document)
        if waiting and not draining:
            line += f"; back in rotation once {waiting}"
    local = [s for s in (document.haproxy.servers if document.haproxy else []) if s.actual != s.desired]
    for server in local:
        line += f"; haproxy {server.backend}/{server.server} {server.actual} -> {server.desired}"
    return line


def _waiting_for(document: status.Document) -> str:
    """The checks the agent-check answer still waits for, in words, e.g. "pretix passes 2 probes in a
    row (1 so far)"; "" when none."""
    waits = []
    for name, check in sorted(document.checks.items()):
        if check.state == "passing":
            continue
        if check.state == "failing" and check.outcome == "pass":
            waits.append(f"{name} passes {check.rise} probes in a row ({check.failure or 'failing'})")
        else:
            waits.append(f"{name} passes {check.rise} probes in a row (now {check.state}: "
                         f"{check.failure or check.reason or 'no probe yet'})")
    return "; ".join(waits)


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
        for server in haproxy.servers:
            shown = server.actual if server.actual == server.desired else f"{server.actual} (desired {server.desired})"
            lines.append(f"haproxy {server.backend}/{server.server}: {shown}: {server.why}")
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
