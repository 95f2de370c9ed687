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
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from tests.pretix import scenarios
from tests.pretix.cluster import (
    AGENT_FALL,
    AGENT_INTERVAL,
    AGENT_RISE,
    AGENT_TIMEOUT,
    BACKENDS,
    HX_DEFAULT_FALL,
    HX_DEFAULT_INTER,
    HX_DEFAULT_RISE,
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
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    return results
