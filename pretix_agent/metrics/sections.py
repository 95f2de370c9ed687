"""Every metric the agent exports: its name, its help, and where in the status document its value is.

One `Section` per part of status.Document, each a tuple of specs and one pure function from the
document to samples. A new capability (the cluster view, lock fencing) adds its section here and
appends it to SECTIONS; nothing else changes. A value a check's probe measures is one row of
CHECK_VALUES: the key in the probe's `values`, the metric, how to convert it.

Conventions (prometheus.io/docs/practices/naming): the `pretix_agent_` prefix; base units
(seconds, bytes, ratios); `_total` for counters; points in time as Unix time in
`_timestamp_seconds`; labels with few values (check, backend, server, queue, controller names, and
the values of an enumeration), never a reason, a DSN, a URL or anything else a person typed. An
enumeration is one series per possible value, 1 for the current one
(`pretix_agent_check_state{state="failing"} == 1`), so no series vanishes when the value changes.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import status
from .model import COUNTER, GAUGE, Sample, Section, Spec, sample

PYTHON = platform.python_version()


def timestamp(text: str | None) -> float | None:
    """Given an ISO 8601 time with its offset (as the status document writes them), return Unix
    time; None when absent, unreadable or without an offset (a hand-written lock, say)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _states(name: str, current: str | None, known: tuple[str, ...], label: str = "state",
            **labels: str) -> Iterator[Sample]:
    """One sample per possible value of an enumeration, 1 for `current` (which joins `known` if new),
    the value in the label `label`."""
    for value in known + ((current,) if current is not None and current not in known else ()):
        yield sample(name, current == value, **labels, **{label: value})


# ---------------------------------------------------------------------------------------------
# The daemon.


def _agent(document: status.Document) -> Iterator[Sample]:
    yield sample("pretix_agent_build_info", 1, version=document.version, python=PYTHON, node=document.node)
    yield sample("pretix_agent_start_time_seconds", timestamp(document.started_at))
    yield sample("pretix_agent_loop_cycles_total", document.cycles)
    yield sample("pretix_agent_healthy", document.healthy)
    yield sample("pretix_agent_degraded", len(document.degraded))
    yield sample("pretix_agent_watchdog_withheld_total", document.watchdog_withheld)
    for name in sorted(set(document.controllers) | set(document.controller_failures)):
        health = document.controllers.get(name)
        yield sample("pretix_agent_controller_healthy", None if health is None else health.ok, controller=name)
        yield sample("pretix_agent_controller_failures_total", document.controller_failures.get(name, 0),
                     controller=name)


AGENT = Section("agent", (
    Spec("pretix_agent_build_info", GAUGE, "Always 1: the agent's version, its Python and this node's name.",
         ("version", "python", "node")),
    Spec("pretix_agent_start_time_seconds", GAUGE, "When the daemon started (Unix time)."),
    Spec("pretix_agent_loop_cycles_total", COUNTER, "Cycles of the main loop; each runs every controller once."),
    Spec("pretix_agent_healthy", GAUGE, "1 while nothing calls for a restart: systemd's watchdog is fed."),
    Spec("pretix_agent_degraded", GAUGE, "How many things work worse than configured (pretix-agentctl status "
         "lists them)."),
    Spec("pretix_agent_watchdog_withheld_total", COUNTER, "WATCHDOG=1 pings withheld from systemd (a stuck worker "
         "or a failed essential controller); withheld for WatchdogSec, systemd restarts the daemon."),
    Spec("pretix_agent_controller_healthy", GAUGE, "1 while the controller's last cycle succeeded, 0 after it "
         "raised (the other controllers go on).", ("controller",)),
    Spec("pretix_agent_controller_failures_total", COUNTER, "Cycles and configuration commits in which the "
         "controller raised.", ("controller",)),
), _agent)


# ---------------------------------------------------------------------------------------------
# Maintenance and drain.

CAUSES = ("lock", "window", "hand_edit")


def _maintenance(document: status.Document) -> Iterator[Sample]:
    state = document.maintenance
    if state is None:
        return
    yield sample("pretix_agent_maintenance_on", state.on)
    if state.on is not None:
        yield from _states("pretix_agent_maintenance_cause", state.cause if state.on else None, CAUSES, "cause")
    yield sample("pretix_agent_maintenance_applied", state.applied)
    yield sample("pretix_agent_maintenance_inside_window", state.inside_window)
    lock = state.lock
    yield sample("pretix_agent_maintenance_lock_present", None if lock is None else lock.present)
    yield sample("pretix_agent_maintenance_lock_created_timestamp_seconds",
                 timestamp(lock.at) if lock is not None and lock.present else None)
    yield sample("pretix_agent_maintenance_next_change_timestamp_seconds",
                 timestamp(state.next_change.utc) if state.next_change is not None else None)
    yield sample("pretix_agent_maintenance_watch_ok", state.watch == "ok")


MAINTENANCE = Section("maintenance", (
    Spec("pretix_agent_maintenance_on", GAUGE, "1 while maintenance is on (the marker should exist and nginx "
         "answer 503)."),
    Spec("pretix_agent_maintenance_cause", GAUGE, "1 for why maintenance is on: lock, window or hand_edit (a "
         "hand-made marker adopted as a lock); all 0 while it is off.", ("cause",)),
    Spec("pretix_agent_maintenance_applied", GAUGE, "1 while the marker and lock are as decided; 0 while writing "
         "them fails."),
    Spec("pretix_agent_maintenance_inside_window", GAUGE, "1 while the time is inside a weekly window."),
    Spec("pretix_agent_maintenance_lock_present", GAUGE, "1 while the lock file exists."),
    Spec("pretix_agent_maintenance_lock_created_timestamp_seconds", GAUGE, "When the lock was taken (Unix time), "
         "as the lock file says; absent for an empty lock from touch."),
    Spec("pretix_agent_maintenance_next_change_timestamp_seconds", GAUGE, "When maintenance next turns on or off "
         "by the schedule (Unix time); absent when no window is configured."),
    Spec("pretix_agent_maintenance_watch_ok", GAUGE, "1 while changes of the lock and marker are seen at once "
         "(inotify); 0 while only the backstop sees them."),
), _maintenance)


def _drain(document: status.Document) -> Iterator[Sample]:
    drain = document.drain
    if drain is None:
        return
    yield sample("pretix_agent_drained", drain.reason is not None)
    yield sample("pretix_agent_drain_requested", drain.request.present)
    yield sample("pretix_agent_drain_shutdown", drain.shutdown)


DRAIN = Section("drain", (
    Spec("pretix_agent_drained", GAUGE, "1 while this node is drained (agent-check answers weight 0, local haproxy "
         "servers drain), for any reason."),
    Spec("pretix_agent_drain_requested", GAUGE, "1 while a drain requested with pretix-agentctl drain holds."),
    Spec("pretix_agent_drain_shutdown", GAUGE, "1 while the node is drained for a system shutdown."),
), _drain)


# ---------------------------------------------------------------------------------------------
# Checks, and what each type of check measures.


def _plain(value: Any) -> float | bool | None:
    return value if isinstance(value, int | float) else None


def _milliseconds(value: Any) -> float | None:
    return value / 1000 if isinstance(value, int | float) and not isinstance(value, bool) else None


def _equals(word: str) -> Callable[[Any], bool | None]:
    return lambda value: None if value is not None and not isinstance(value, str) else value == word


def _count(value: Any) -> int | None:
    return len(value) if isinstance(value, list) else None


def _streaming(value: Any) -> int | None:
    if not isinstance(value, list):
        return None
    return sum(1 for standby in value if isinstance(standby, dict) and standby.get("state") == "streaming")


@dataclass(frozen=True)
class CheckValue:
    """A value of a check's probe (`key` in its `values`) as a metric labelled with the check; with
    `per`, the value is a mapping and each of its keys is one sample, labelled `per`."""

    key: str
    spec: Spec
    convert: Callable[[Any], Any] = _plain
    per: str | None = None

    def samples(self, check: str, values: Mapping[str, Any]) -> Iterator[Sample]:
        if self.key not in values:
            return
        raw = values[self.key]
        if self.per is None:
            yield sample(self.spec.name, self.convert(raw), check=check)
        elif isinstance(raw, Mapping):
            for key, item in raw.items():
                yield sample(self.spec.name, self.convert(item), check=check, **{self.per: str(key)})


def _value(key: str, name: str, help: str, convert: Callable[[Any], Any] = _plain, per: str | None = None,
           kind: str = GAUGE) -> CheckValue:
    return CheckValue(key, Spec(name, kind, help, ("check", per) if per else ("check",)), convert, per)


CHECK_VALUES: dict[str, tuple[CheckValue, ...]] = {
    "postgres": (
        _value("role", "pretix_agent_postgres_in_recovery", "1 if the server is a standby (in recovery), 0 if a "
               "primary.", lambda role: {"standby": True, "primary": False}.get(role)),
        _value("lag_bytes", "pretix_agent_postgres_replay_lag_bytes", "On a standby: WAL received but not yet "
               "replayed."),
        _value("lag_seconds", "pretix_agent_postgres_replay_lag_seconds", "On a standby: how far replay is behind "
               "in time (0 once everything received is replayed: it does not grow on an idle primary)."),
        _value("primary_lag_bytes", "pretix_agent_postgres_primary_lag_bytes", "On a standby with primary_dsn: WAL "
               "the primary has written that the standby has not replayed."),
        _value("receiver_status", "pretix_agent_postgres_wal_receiver_streaming", "On a standby: 1 while its WAL "
               "receiver streams from the primary (0: cut off, however small its replay lag looks).",
               lambda status_: status_ == "streaming"),
        _value("replay_paused", "pretix_agent_postgres_replay_paused", "On a standby: 1 while replay is paused."),
        _value("read_only", "pretix_agent_postgres_read_only", "On a primary: 1 if transactions are read-only "
               "(default_transaction_read_only)."),
        _value("standbys", "pretix_agent_postgres_standbys", "On a primary: standbys connected "
               "(pg_stat_replication).", _count),
        _value("standbys", "pretix_agent_postgres_standbys_streaming", "On a primary: standbys connected and "
               "streaming.", _streaming),
    ),
    "redis": (
        _value("latency_ms", "pretix_agent_redis_ping_latency_seconds", "Time PING took.", _milliseconds),
        _value("writable", "pretix_agent_redis_writable", "1 if the write probe was accepted (0: read-only, out "
               "of memory or refused)."),
        _value("role", "pretix_agent_redis_replica", "1 if the server is a replica.", _equals("replica")),
        _value("master_link_status", "pretix_agent_redis_master_link_up", "On a replica: 1 while the link to "
               "its master is up.", _equals("up")),
        _value("master_last_io_seconds_ago", "pretix_agent_redis_master_last_io_seconds", "On a replica: time "
               "since the master was last heard of."),
        _value("used_memory", "pretix_agent_redis_memory_used_bytes", "Memory Redis uses (used_memory)."),
        _value("maxmemory", "pretix_agent_redis_memory_max_bytes", "The maxmemory setting; absent when unlimited."),
        _value("memory_ratio", "pretix_agent_redis_memory_used_ratio", "Used memory as a ratio of maxmemory; "
               "absent when unlimited."),
        _value("queues", "pretix_agent_celery_queue_tasks", "Tasks waiting in a celery queue (every priority "
               "list of it).", per="queue"),
        _value("queue_ages", "pretix_agent_celery_queue_oldest_task_age_seconds", "How long the oldest task of a "
               "celery queue has been waiting, as seen across probes.", per="queue"),
    ),
    "http": (
        _value("status", "pretix_agent_http_response_status_code", "HTTP status of the latest answer (200 "
               "passes)."),
    ),
    "systemd": (
        _value("units", "pretix_agent_systemd_units", "Units the check needs active."),
        _value("active", "pretix_agent_systemd_units_active", "Of those, the units that are active."),
    ),
}

CHECK_STATES = ("passing", "failing", "unknown")


def _checks(document: status.Document) -> Iterator[Sample]:
    for name, check in sorted(document.checks.items()):
        labels = {"check": name, "type": check.type}
        yield from _states("pretix_agent_check_state", check.state, CHECK_STATES, **labels)
        yield sample("pretix_agent_check_probes_total", check.probes, **labels)
        yield sample("pretix_agent_check_probe_duration_seconds", check.duration_seconds, **labels)
        yield sample("pretix_agent_check_hard_failure", check.hard, **labels)
        yield sample("pretix_agent_check_state_since_timestamp_seconds", timestamp(check.since), **labels)
        for value in CHECK_VALUES.get(check.type, ()):
            yield from value.samples(name, check.values)


CHECKS = Section("checks", (
    Spec("pretix_agent_check_state", GAUGE, "1 for the check's state: passing, failing or unknown (could not "
         "measure).", ("check", "type", "state")),
    Spec("pretix_agent_check_probes_total", COUNTER, "Probes the check ran.", ("check", "type")),
    Spec("pretix_agent_check_probe_duration_seconds", GAUGE, "How long the latest probe took.", ("check", "type")),
    Spec("pretix_agent_check_hard_failure", GAUGE, "1 if the latest probe failed hard (refused, unit gone: "
         "haproxy acts at once), 0 otherwise.", ("check", "type")),
    Spec("pretix_agent_check_state_since_timestamp_seconds", GAUGE, "When the check entered its state (Unix time).",
         ("check", "type")),
    *dict.fromkeys(value.spec for values in CHECK_VALUES.values() for value in values),
), _checks)


# ---------------------------------------------------------------------------------------------
# haproxy and the agent-check.

ADMIN_STATES = ("ready", "drain", "maint")


def _haproxy(document: status.Document) -> Iterator[Sample]:
    haproxy = document.haproxy
    if haproxy is None:
        return
    yield sample("pretix_agent_haproxy_reachable", haproxy.reachable)
    held = set(haproxy.held)
    for server in haproxy.servers:
        labels = {"backend": server.backend, "server": server.server}
        yield from _states("pretix_agent_haproxy_server_desired_state", server.desired, ADMIN_STATES, **labels)
        if server.actual is not None:
            yield from _states("pretix_agent_haproxy_server_actual_state", server.actual, ADMIN_STATES, **labels)
        yield sample("pretix_agent_haproxy_server_up", server.up, **labels)
        yield sample("pretix_agent_haproxy_server_held", f"{server.backend}/{server.server}" in held, **labels)
    yield sample("pretix_agent_haproxy_servers_held", len(haproxy.held))
    yield sample("pretix_agent_haproxy_servers_taken_out", len(haproxy.taken_out))
    for state in dict.fromkeys(ADMIN_STATES + tuple(sorted(haproxy.changes))):
        yield sample("pretix_agent_haproxy_changes_total", haproxy.changes.get(state, 0), state=state)
    yield sample("pretix_agent_haproxy_change_failures_total", haproxy.change_failures)


HAPROXY = Section("haproxy", (
    Spec("pretix_agent_haproxy_reachable", GAUGE, "1 while haproxy's Runtime API answers."),
    Spec("pretix_agent_haproxy_server_desired_state", GAUGE, "1 for the admin state the agent wants for the "
         "server: ready, drain or maint.", ("backend", "server", "state")),
    Spec("pretix_agent_haproxy_server_actual_state", GAUGE, "1 for the server's admin state in haproxy (absent "
         "while haproxy does not know the server).", ("backend", "server", "state")),
    Spec("pretix_agent_haproxy_server_up", GAUGE, "1 while haproxy counts the server as up and taking load.",
         ("backend", "server")),
    Spec("pretix_agent_haproxy_server_held", GAUGE, "1 while the min_ready guard keeps this failing server in.",
         ("backend", "server")),
    Spec("pretix_agent_haproxy_servers_held", GAUGE, "Failing servers the min_ready guard keeps in."),
    Spec("pretix_agent_haproxy_servers_taken_out", GAUGE, "Servers the agent has taken out (and will put back)."),
    Spec("pretix_agent_haproxy_changes_total", COUNTER, "Server state changes haproxy took from the agent, by the "
         "state set.", ("state",)),
    Spec("pretix_agent_haproxy_change_failures_total", COUNTER, "Server state changes haproxy refused or that "
         "could not be sent."),
), _haproxy)

ANSWERS = ("up", "drain", "down")


def agent_check_state(answer: str | None) -> str | None:
    """Given an agent-check answer ("up 100%", "up 0% #kernel update", "down 100% #db: refused"),
    return up, drain or down; None for no answer. A drain is weight 0 with a reason."""
    words = (answer or "").split()
    if not words:
        return None
    if words[0] == "up":
        return "drain" if "#" in (answer or "") else "up"
    return "down" if words[0] == "down" else None


def agent_check_weight(answer: str | None) -> float | None:
    """The weight an answer announces, as a ratio of haproxy.cfg's weight ("up 75%" -> 0.75)."""
    for word in (answer or "").split()[1:2]:
        if word.endswith("%") and word[:-1].isdigit():
            return int(word[:-1]) / 100
    return None


def _agent_check(document: status.Document) -> Iterator[Sample]:
    agent_check = document.agent_check
    if agent_check is None:
        return
    yield from _states("pretix_agent_agent_check_answer", agent_check_state(agent_check.answer), ANSWERS, "answer")
    yield sample("pretix_agent_agent_check_weight_ratio", agent_check_weight(agent_check.answer))
    yield sample("pretix_agent_agent_check_answers_total", agent_check.answered)


AGENT_CHECK = Section("agent_check", (
    Spec("pretix_agent_agent_check_answer", GAUGE, "1 for what this node answers haproxy's agent-check: up, drain "
         "(weight 0 with a reason) or down; all 0 before the first verdict.", ("answer",)),
    Spec("pretix_agent_agent_check_weight_ratio", GAUGE, "The weight announced, as a ratio of haproxy.cfg's "
         "weight."),
    Spec("pretix_agent_agent_check_answers_total", COUNTER, "Agent-check connections answered."),
), _agent_check)


# ---------------------------------------------------------------------------------------------
# Loki.


def _loki(document: status.Document) -> Iterator[Sample]:
    loki = document.loki
    if loki is None:
        return
    yield sample("pretix_agent_loki_shipper_running", loki.alive)
    yield sample("pretix_agent_loki_lines_sent_total", loki.shipped_lines)
    yield sample("pretix_agent_loki_sent_bytes_total", loki.shipped_bytes)
    yield sample("pretix_agent_loki_pushes_total", loki.pushes)
    yield sample("pretix_agent_loki_push_failures_total", loki.failed_pushes)
    for reason, lines in sorted(loki.drops.items()):
        yield sample("pretix_agent_loki_lines_dropped_total", lines, reason=reason)
    yield sample("pretix_agent_loki_backlog_lines", loki.backlog_lines)
    yield sample("pretix_agent_loki_buffered_lines", loki.buffered_lines)
    yield sample("pretix_agent_loki_buffered_bytes", loki.buffered_bytes)
    yield sample("pretix_agent_loki_oldest_unsent_age_seconds", loki.oldest_unsent_age_seconds or 0.0)
    yield sample("pretix_agent_loki_last_success_timestamp_seconds", loki.last_success_unix)
    yield sample("pretix_agent_loki_holding", loki.holding)
    yield sample("pretix_agent_loki_retry_backoff_seconds", loki.backoff_seconds)
    yield sample("pretix_agent_loki_internal_errors_total", loki.internal_errors)


LOKI = Section("loki", (
    Spec("pretix_agent_loki_shipper_running", GAUGE, "1 while the Loki shipper's thread runs."),
    Spec("pretix_agent_loki_lines_sent_total", COUNTER, "Lines Loki accepted."),
    Spec("pretix_agent_loki_sent_bytes_total", COUNTER, "Bytes of lines Loki accepted (uncompressed)."),
    Spec("pretix_agent_loki_pushes_total", COUNTER, "Push requests sent."),
    Spec("pretix_agent_loki_push_failures_total", COUNTER, "Push requests that failed (retried: nothing is lost)."),
    Spec("pretix_agent_loki_lines_dropped_total", COUNTER, "Lines lost, by reason: rejected_400, rejected_413, "
         "queue_full, unsent_at_stop; truncated counts lines shortened instead.", ("reason",)),
    Spec("pretix_agent_loki_backlog_lines", GAUGE, "Lines queued in memory for Loki (without a journal); absent "
         "under systemd, where the journal holds the backlog."),
    Spec("pretix_agent_loki_buffered_lines", GAUGE, "Lines read and not yet accepted by Loki."),
    Spec("pretix_agent_loki_buffered_bytes", GAUGE, "Bytes read and not yet accepted by Loki."),
    Spec("pretix_agent_loki_oldest_unsent_age_seconds", GAUGE, "Age of the oldest line read and not yet accepted "
         "by Loki (0 when none waits): grows while Loki is away."),
    Spec("pretix_agent_loki_last_success_timestamp_seconds", GAUGE, "When Loki last accepted a push (Unix time)."),
    Spec("pretix_agent_loki_holding", GAUGE, "1 while a batch is held for a configuration error (401, 403, 404)."),
    Spec("pretix_agent_loki_retry_backoff_seconds", GAUGE, "The current retry delay (0 while pushes succeed)."),
    Spec("pretix_agent_loki_internal_errors_total", COUNTER, "Times the shipper's loop failed and restarted."),
), _loki)


# ---------------------------------------------------------------------------------------------
# Lock fencing.


def _lock_fencing(document: status.Document) -> Iterator[Sample]:
    fencing = document.lock_fencing
    if fencing is None or not fencing.enabled:
        return
    yield sample("pretix_agent_lock_fencing_enforcing", fencing.enforce)
    yield sample("pretix_agent_lock_fencing_primary_watched", fencing.connected and fencing.error is None)
    yield sample("pretix_agent_lock_fencing_last_round_timestamp_seconds", fencing.last_round)
    yield sample("pretix_agent_lock_fencing_rounds_total", fencing.rounds)
    yield sample("pretix_agent_lock_fencing_terminated_total", fencing.fences_total)
    yield sample("pretix_agent_lock_fencing_would_terminate_total", fencing.would_fence_total)
    yield sample("pretix_agent_lock_fencing_failures_total", fencing.failures_total)


LOCK_FENCING = Section("lock_fencing", (
    Spec("pretix_agent_lock_fencing_enforcing", GAUGE, "1 if hung holders of pretix's advisory locks are "
         "terminated, 0 in a dry run."),
    Spec("pretix_agent_lock_fencing_primary_watched", GAUGE, "1 while the primary's locks can be looked at."),
    Spec("pretix_agent_lock_fencing_last_round_timestamp_seconds", GAUGE, "When the locks were last looked at "
         "(Unix time)."),
    Spec("pretix_agent_lock_fencing_rounds_total", COUNTER, "Looks at the primary's locks."),
    Spec("pretix_agent_lock_fencing_terminated_total", COUNTER, "Hung sessions terminated because others waited "
         "for their advisory lock."),
    Spec("pretix_agent_lock_fencing_would_terminate_total", COUNTER, "In a dry run: sessions that would have been "
         "terminated."),
    Spec("pretix_agent_lock_fencing_failures_total", COUNTER, "Terminations that failed."),
), _lock_fencing)


# ---------------------------------------------------------------------------------------------
# The cluster: this node's view of every node, through the cluster's PostgreSQL.


def _cluster(document: status.Document) -> Iterator[Sample]:
    cluster = document.cluster
    if cluster is None:
        return
    yield sample("pretix_agent_cluster_connected", cluster.state == "connected")
    yield sample("pretix_agent_cluster_view_timestamp_seconds", cluster.view_at_unix)
    if cluster.locked is not None:
        yield sample("pretix_agent_cluster_locked", cluster.locked)
    yield sample("pretix_agent_cluster_problems", len(cluster.problems))
    for node in cluster.nodes:
        yield sample("pretix_agent_cluster_node_heartbeat_age_seconds", node.age, node=node.node)
        if node.clock_offset is not None:
            yield sample("pretix_agent_cluster_node_clock_offset_seconds", node.clock_offset, node=node.node)
        if node.maintenance is not None:
            yield sample("pretix_agent_cluster_node_maintenance_on", node.maintenance, node=node.node)
        yield sample("pretix_agent_cluster_node_problems", len(node.problems), node=node.node)


CLUSTER = Section("cluster", (
    Spec("pretix_agent_cluster_connected", GAUGE, "1 while this node reads and writes the cluster's database."),
    Spec("pretix_agent_cluster_view_timestamp_seconds", GAUGE, "When this node last read the cluster's view (Unix "
         "time): it stops moving while the database is unreachable."),
    Spec("pretix_agent_cluster_locked", GAUGE, "1 while the cluster lock is set."),
    Spec("pretix_agent_cluster_problems", GAUGE, "Nodes that disagree (windows, clock), are silent or fail, as "
         "this node sees them."),
    Spec("pretix_agent_cluster_node_heartbeat_age_seconds", GAUGE, "Seconds since each node's last heartbeat, by "
         "the database's clock.", ("node",)),
    Spec("pretix_agent_cluster_node_clock_offset_seconds", GAUGE, "Each node's wall clock minus the database "
         "server's.", ("node",)),
    Spec("pretix_agent_cluster_node_maintenance_on", GAUGE, "1 while each node says it is in maintenance.",
         ("node",)),
    Spec("pretix_agent_cluster_node_problems", GAUGE, "What is wrong with each node, counted.", ("node",)),
), _cluster)


SECTIONS: tuple[Section, ...] = (AGENT, MAINTENANCE, DRAIN, CHECKS, HAPROXY, AGENT_CHECK, LOKI, LOCK_FENCING,
                                 CLUSTER)
