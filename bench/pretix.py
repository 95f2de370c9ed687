"""pretix: the tier's scenarios against a real pretix 2026.8 cluster (tests/pretix/), with numbers.

One cluster (two gunicorn nodes behind nginx, celery, PostgreSQL primary + replica, Redis, haproxy
with the shipped configuration, the agent on the load balancer and on each node), orders at 5 a
second through the REST API, open loop. For the node faults (SIGKILL, SIGSTOP) the orders take turns
over three frontends of the same haproxy, each with its own backend of the same two nodes: `pretix`
(the shipped backend, gated by the agent), `pretix_equal` (haproxy's own checks at the agent's
interval, fall, rise and timeout) and `pretix_default` (haproxy's own checks at haproxy's defaults:
inter 2s, fall 3, rise 2, timeout check 5s as shipped). So the three detectors see the same fault
at the same instant, and each frontend's orders are reckoned apart: ok, failed (an error the client
saw, nothing committed), committed with an error (the client saw an error, the shop sold it), lost
(a 201 without an order), duplicated.

Figures: time from the fault to the server leaving rotation in each backend, and its ratio to each
haproxy baseline; orders per frontend; a planned drain against the same stop without a drain; the
celery queue check after the worker stops (how long after max_queue_length or max_queue_age was
passed it failed, in check intervals); a stopped replica to a failing postgres check; the lock.

Issue 13 (decisions over the whole backend), each beside haproxy alone in the same run:
- `redis_killed`: Redis killed for 15 s under orders, with the agents naming Redis a shared cause
  (and app1 closing its shop for it, app2 not), and `redis_killed_without_shared_checks`, the same
  agents without: servers out per backend, orders per frontend, what customers' pages answered.
- `slow_node`: one node slowed until the agent takes it out: back within rise x interval + 1 s of
  recovering? (haproxy alone: when it took it out at all.)
- `replica_stopped`: pretix's read path (app1 through the agent's `pretix_replica`) with the
  replica stopped for 15 one-second probes, against app2 reading through the same section gated by
  haproxy's TCP check alone at the agent's interval and fall, as shipped without the agent, and
  directly from the replica (no proxy: how pretix.cfg had it): failed probes and why.
- `replay_paused`: replay paused under orders: when the replica left the agent's read path
  against when its lag passed max_lag_seconds, and who still reads the paused replica.
Issue 18: `lock_holder_stopped`: a node hung while one of its workers holds the quota lock, with
lock fencing and with its dry run (the same scenario without fencing): when orders resumed on the
other node, which orders failed, whether the healthy node was taken out.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from tests.pretix import lock_holder, read_path, scenarios, shared_causes
from tests.pretix.cluster import (
    AGENT_FALL,
    AGENT_INTERVAL,
    AGENT_RISE,
    AGENT_TIMEOUT,
    BACKENDS,
    HX_DEFAULT_FALL,
    HX_DEFAULT_INTER,
    HX_DEFAULT_RISE,
    REPLICA_MAX_LAG,
    PretixCluster,
)

from .common import ratio


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _node_faults(cluster: PretixCluster, name: str, trials: int) -> dict[str, Any]:
    runs = []
    for trial in range(trials):
        node = ("app1", "app2")[trial % 2]
        outcome = scenarios.kill(cluster, node) if name == "kill" else scenarios.sigstop(cluster, node)
        runs.append(outcome.as_dict())
    out_s = {backend: [r["figures"]["time_to_out_s"][backend] for r in runs if backend in r["figures"]["time_to_out_s"]]
             for backend in BACKENDS}
    medians = {backend: _median(values) for backend, values in out_s.items()}
    totals: dict[str, dict[str, int]] = {}
    for backend in BACKENDS:
        keys = ("sent", "ok", "failed", "committed_with_error", "lost", "duplicated", "not_sent")
        totals[backend] = {key: sum(r["orders"][backend][key] for r in runs) for key in keys}
    agent = medians["pretix"]
    return {
        "trials": trials,
        "time_to_out_s_median": medians,
        "never_out": {backend: trials - len(values) for backend, values in out_s.items()},
        "ratio_agent_to_haproxy_equal": None if agent is None or not medians["pretix_equal"]
        else ratio(agent, medians["pretix_equal"]),
        "ratio_agent_to_haproxy_defaults": None if agent is None or not medians["pretix_default"]
        else ratio(agent, medians["pretix_default"]),
        "orders": totals,
        "runs": runs,
    }


def _planned(cluster: PretixCluster) -> dict[str, Any]:
    drained = scenarios.planned_stop(cluster, "app1", drain=True).as_dict()
    plain = scenarios.planned_stop(cluster, "app2", drain=False).as_dict()

    def failures(run: dict[str, Any]) -> int:
        orders = run["orders"]["pretix"]
        return orders["failed"] + orders["committed_with_error"] + orders["lost"]

    return {"drain": drained, "stop_without_drain": plain,
            "failed_orders": {"drain": failures(drained), "stop_without_drain": failures(plain)}}


def _redis(cluster: PretixCluster) -> dict[str, Any]:
    runs = {"with_shared_checks": shared_causes.redis_killed(cluster).as_dict(),
            "without_shared_checks": shared_causes.redis_killed(cluster, shared=False).as_dict()}
    summary = {}
    for name, run in runs.items():
        figures = run["figures"]
        summary[name] = {
            "servers_out": figures["servers_out_count"], "agent_took_out": len(figures["agent_took_out"]),
            "agent_check_answers": figures["agent_check_answers"],
            "orders_ok_failed": {backend: (orders["ok"], orders["failed"] + orders["committed_with_error"])
                                 for backend, orders in run["orders"].items()},
            "pages_during_outage": {node: pages["statuses"] for node, pages in figures["pages_during_outage"].items()},
            "first_order_after_redis_back_s": figures["first_order_after_redis_back_s"]}
    return {"summary": summary, "runs": runs}


def _slow(cluster: PretixCluster, trials: int) -> dict[str, Any]:
    runs = [shared_causes.slow_node(cluster, ("app2", "app1")[trial % 2]).as_dict() for trial in range(trials)]
    back = {backend: [r["figures"]["back_after_recovery_s"][backend] for r in runs] for backend in BACKENDS}
    return {"trials": trials, "bound_s": AGENT_RISE * AGENT_INTERVAL + 1.0,
            "back_after_recovery_s": back,
            "agent_within_bound": all(r["figures"]["agent_within_bound"] for r in runs),
            "held_by_flap_damping": [r["figures"]["held_by_flap_damping"] for r in runs], "runs": runs}


def _read_path(cluster: PretixCluster) -> dict[str, Any]:
    runs = {compare: read_path.replica_stopped(cluster, compare=compare).as_dict()
            for compare in ("pretix_replica_equal", "pretix_replica_default", "direct")}
    failed = {"agent": [r["figures"]["pages"]["app1"]["failed"] for r in runs.values()]}
    errors = {"agent": [r["figures"]["pages"]["app1"]["errors"] for r in runs.values()]}
    for compare, r in runs.items():
        failed[compare] = [r["figures"]["pages"]["app2"]["failed"]]
        errors[compare] = [r["figures"]["pages"]["app2"]["errors"]]
    out = {"agent": [r["figures"]["replica_out_after_stop_s"]["pretix_replica"] for r in runs.values()],
           "pretix_replica_equal": runs["pretix_replica_equal"]["figures"]["replica_out_after_stop_s"]
           ["pretix_replica_equal"],
           "pretix_replica_default": runs["pretix_replica_default"]["figures"]["replica_out_after_stop_s"]
           ["pretix_replica_default"]}
    paused = read_path.replay_paused(cluster).as_dict()
    return {"replica_stopped": {"probes_per_run": 15, "failed_probes": failed, "why": errors,
                                "replica_out_after_stop_s": out, "runs": runs},
            "replay_paused": {"max_lag_seconds": REPLICA_MAX_LAG,
                              "lag_crossed_after_pause_s": paused["figures"]["lag_crossed_after_pause_s"],
                              "replica_out_after_pause_s": paused["figures"]["replica_out_after_pause_s"],
                              "out_before_lag_plus_interval": paused["figures"]["out_before_lag_plus_interval"],
                              "workers_on_replica_at_end": paused["figures"]["workers_on_replica_at_end"],
                              "run": paused}}


def _fencing(cluster: PretixCluster, trials: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"with_fencing": [], "without_fencing": []}
    for _ in range(trials):
        runs["with_fencing"].append(lock_holder.lock_holder_stopped(cluster, fencing=True).as_dict())
        runs["without_fencing"].append(lock_holder.lock_holder_stopped(cluster, fencing=False).as_dict())
    summary = {}
    for name, done in runs.items():
        summary[name] = {
            "orders_resumed_on_healthy_node_s": [r["figures"]["orders_resumed_on_healthy_node_s"] for r in done],
            "healthy_node_answers_while_stopped": [r["figures"]["healthy_node_answers_while_stopped"] for r in done],
            "failed_orders": [r["figures"]["failed_orders"] for r in done],
            "failed_orders_not_on_stopped_node": [len(r["figures"]["failed_orders_not_on_stopped_node"])
                                                  for r in done],
            "orders_in_flight_on_stopped_node": [r["figures"]["orders_in_flight_on_stopped_node"] for r in done],
            "healthy_node_out": [r["figures"]["healthy_node_out"] for r in done],
            "stopped_node_out_after_s": [r["figures"]["stopped_node_out_after_s"] for r in done],
            "fence_after_stop_s": [r["figures"]["fence"]["after_stop_s"] for r in done],
            "latency_p95_s": [r["orders"]["pretix"]["latency_p95_s"] for r in done]}
    return {"trials": trials, "hold_s": 8.0, "summary": summary, "runs": runs}


def run(quick: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    trials = 1 if quick else 3
    with PretixCluster() as cluster:
        results: dict[str, Any] = {
            "config": {
                "pretix": cluster.venv.version, "rate_orders_per_s": scenarios.RATE,
                "gunicorn_workers_per_node": cluster.workers,
                "agent": {"interval_s": AGENT_INTERVAL, "timeout_s": AGENT_TIMEOUT, "fall": AGENT_FALL,
                          "rise": AGENT_RISE},
                "haproxy_equal": {"inter_s": AGENT_INTERVAL, "timeout_check_s": AGENT_TIMEOUT, "fall": AGENT_FALL,
                                  "rise": AGENT_RISE},
                "haproxy_defaults": {"inter_s": HX_DEFAULT_INTER, "fall": HX_DEFAULT_FALL, "rise": HX_DEFAULT_RISE,
                                     "timeout_check_s": 5.0},
                "broker_check": {"interval_s": 1.0, "fall": 1, "max_queue_length": cluster.max_queue_length,
                                 "max_queue_age_s": cluster.max_queue_age},
                "startup_s": cluster.timings,
            },
        }
        results["lock"] = scenarios.lock(cluster).as_dict()
        results["sigkill"] = _node_faults(cluster, "kill", trials)
        results["sigstop"] = _node_faults(cluster, "sigstop", trials)
        results["planned_stop"] = _planned(cluster)
        celery = scenarios.celery_stopped(cluster).as_dict()
        celery["within_two_intervals"] = {
            "age": celery["figures"]["age"]["failing_after_max_queue_age_intervals"] <= 2,
            "length": (celery["figures"]["length"]["over_max_queue_length_to_failing_intervals"] or 99) <= 2}
        results["celery_stopped"] = celery
        results["replica_stopped"] = scenarios.replica_stopped(cluster).as_dict()
        results["redis_killed"] = _redis(cluster)
        results["slow_node"] = _slow(cluster, 1 if quick else 2)
        results["read_path"] = _read_path(cluster)
        results["lock_holder_stopped"] = _fencing(cluster, 1 if quick else 2)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    return results
