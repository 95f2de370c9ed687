"""Issue 18 against the real pretix: a node hangs while one of its workers holds pretix's quota lock.

pretix takes `pg_advisory_xact_lock` on a quota (with a size) for every order of it, with
`lock_timeout = 3s` (pretix/base/services/locking.py). A worker stopped inside that transaction
keeps the lock: PostgreSQL sees its session idle in transaction, and every order of the quota on
every other node waits 3 s and fails with 409.

    lock_holder_stopped(cluster, fencing=True)

Orders of the shop's limited ticket (a quota of a million) go through the agent's frontend. The
condition is forced, not hoped for: pg_locks is polled for a gunicorn worker's session holding the
quota's exclusive advisory lock (the workers name their sessions pretix-<node>-<pid>); that worker
is SIGSTOPped at once, and kept stopped only if its session then sits idle in transaction with the
lock still granted (else it is continued and the next holder is tried); then the rest of its node
is stopped too, for `hold` s. An agent with `[lock_fencing]` runs meanwhile, as on the database
node (cluster.fencing_agent: the documented least-privilege role, its password in a passfile):
enforcing (`fencing=True`) or as a dry run, which terminates nothing (the same scenario without
fencing, and proof that its condition was met).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from tests.integration.processes import FixtureError, process_state

from .cluster import PretixCluster, worker_of
from .scenarios import RATE, Outcome, StateWatcher, run_id

# A worker's session holding an exclusive advisory lock (pretix's quota lock; its shared lock on the
# event is ShareLock), by the worker's name for its sessions.
HOLDERS = """
SELECT l.pid, a.application_name, l.classid, l.objid
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' AND a.application_name LIKE 'pretix-app%'
"""
STILL_HOLDING = """
SELECT a.state FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.pid = %s AND l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock'
  AND l.classid = %s AND l.objid = %s
"""


@dataclass(frozen=True)
class Caught:
    node: str
    worker: int  # the gunicorn worker's pid
    backend: int  # its session's pid on the primary
    lock_key: int  # as pretix passed it to pg_advisory_xact_lock
    attempts: int
    stopped_at: float  # monotonic: the worker's SIGSTOP
    stopped_at_wall: float


def catch_holder(cluster: PretixCluster, timeout: float = 30.0, settle: float = 1.0) -> Caught:
    """SIGSTOP a gunicorn worker while its session holds the quota lock, idle in transaction (its
    transaction then stays open with the lock for as long as the worker is stopped); then its whole
    node. Orders must be running. Raise FixtureError if none is caught within `timeout`."""
    deadline = time.monotonic() + timeout
    attempts = 0
    with psycopg.connect(cluster.pg.primary.superuser_dsn("pretix"), autocommit=True) as conn:
        while time.monotonic() < deadline:
            holders = [(pid, found, classid, objid) for pid, name, classid, objid in conn.execute(HOLDERS).fetchall()
                       if (found := worker_of(name)) is not None]
            if not holders:
                time.sleep(0.002)
                continue
            backend, (node, worker), classid, objid = holders[0]
            attempts += 1
            stopped_at, stopped_at_wall = time.monotonic(), time.time()
            try:
                os.kill(worker, signal.SIGSTOP)
            except ProcessLookupError:  # the worker exited (max-requests) in the meantime
                continue
            # Kept only if the session, with the lock, now waits for its stopped client: idle in
            # transaction. A worker caught between sending COMMIT and its answer releases the lock.
            state = None
            confirm_until = time.monotonic() + settle
            while time.monotonic() < confirm_until:
                row = conn.execute(STILL_HOLDING, [backend, classid, objid]).fetchone()
                state = None if row is None else row[0]
                if state in (None, "idle in transaction"):
                    break
                time.sleep(0.005)
            if state == "idle in transaction":
                cluster.nodes[node].sigstop()  # the rest of the node: master and the other workers
                if process_state(worker) != "T":
                    raise FixtureError(f"worker {worker} of {node} is not stopped")
                return Caught(node, worker, backend, (int(classid) << 32) | int(objid), attempts, stopped_at,
                              stopped_at_wall)
            os.kill(worker, signal.SIGCONT)
    raise FixtureError(f"no worker caught holding the quota lock in {timeout:g} s ({attempts} tries)")


def lock_holder_stopped(cluster: PretixCluster, *, fencing: bool, hold: float = 8.0, before: float = 2.0,
                        after: float = 2.0) -> Outcome:
    """Orders of the limited ticket through the agent's frontend; a worker holding its quota's lock
    (and then its node) stopped for `hold` s; then continued. `fencing`: the fencing agent enforces
    (else: its dry run)."""
    outcome = Outcome("lock_holder_stopped" if fencing else "lock_holder_stopped_without_fencing")
    cluster.wait_settled()
    nodes = list(cluster.nodes)
    with cluster.fencing_agent(enforce=fencing) as fencer:
        log_from = cluster.agent_log_lines()
        driver = cluster.driver(run_id(outcome.name), rate=RATE, backends=("pretix",), limited=True)
        caught: Caught | None = None
        with StateWatcher(cluster, ("pretix",)) as servers:
            driver.start()
            try:
                time.sleep(before)
                caught = catch_holder(cluster)
                time.sleep(max(0.0, caught.stopped_at + hold - time.monotonic()))
            finally:
                continued_at = time.monotonic()
                if caught is not None:
                    cluster.nodes[caught.node].sigcont()
            time.sleep(after)  # the stopped node's requests finish
            driver.stop()
        fencing_status = fencer.status()["lock_fencing"]
        events = [" ".join(line.split()[2:]) for line in fencer.log().splitlines()
                  if "lock_fencing.terminated" in line or "lock_fencing.would_terminate" in line]
    assert caught is not None
    healthy = next(name for name in nodes if name != caught.node)
    outcome.figures.update(_figures(cluster, driver, servers, caught, healthy, continued_at, fencing_status, events))
    outcome.figures["agent_changes"] = cluster.agent_changes(log_from)
    outcome.orders = {"pretix": driver.reckon(cluster.orders_in_db(driver.run_id)).as_dict()}
    cluster.wait_settled()
    return outcome


def _figures(cluster: PretixCluster, driver: Any, servers: StateWatcher, caught: Caught, healthy: str,
             continued_at: float, fencing_status: dict[str, Any], events: list[str]) -> dict[str, Any]:
    stopped_at = caught.stopped_at
    answered = [(order, order.answer) for order in driver.orders if order.answer is not None]
    after_stop = [(order, answer) for order, answer in answered if order.scheduled + answer.seconds > stopped_at]
    # The healthy node's first success for an order sent after the stop: orders resume.
    resumed = [order.scheduled + answer.seconds - stopped_at for order, answer in after_stop
               if order.scheduled >= stopped_at and answer.status == 201
               and answer.headers.get("x-tier-server") == healthy]
    in_flight_on_stopped = [order for order, answer in after_stop
                            if answer.headers.get("x-tier-server") == caught.node]
    failed = [(order, answer) for order, answer in answered if answer.status != 201] + [
        (order, None) for order in driver.orders if order.sent and order.answer is None]
    failed_elsewhere = [(order.number, None if answer is None else answer.status,
                         None if answer is None else answer.headers.get("x-tier-server"))
                        for order, answer in failed
                        if answer is None or answer.headers.get("x-tier-server") != caught.node]
    healthy_statuses: dict[str, int] = {}
    for order, answer in after_stop:
        if answer.headers.get("x-tier-server") == healthy and order.scheduled < continued_at:
            healthy_statuses[str(answer.status)] = healthy_statuses.get(str(answer.status), 0) + 1
    last = fencing_status.get("last_fence") or {}
    fenced_after = (None if not last or last.get("pid") != caught.backend
                    else round(last["at"] - caught.stopped_at_wall, 3))
    stopped_out = servers.out_at(("pretix", caught.node), stopped_at)
    return {
        "caught": {"node": caught.node, "worker": caught.worker, "session": caught.backend,
                   "lock_key": caught.lock_key, "attempts": caught.attempts},
        "hold_s": round(continued_at - stopped_at, 3),
        "healthy_node": healthy,
        "orders_resumed_on_healthy_node_s": round(min(resumed), 3) if resumed else None,
        "orders_resumed_while_stopped": bool(resumed) and min(resumed) < continued_at - stopped_at,
        "healthy_node_answers_while_stopped": healthy_statuses,
        "healthy_node_out": servers.out_at(("pretix", healthy), stopped_at) is not None,
        "stopped_node_out_after_s": None if stopped_out is None else round(stopped_out - stopped_at, 3),
        "orders_in_flight_on_stopped_node": len(in_flight_on_stopped),
        "failed_orders": len(failed),
        "failed_orders_not_on_stopped_node": failed_elsewhere,
        "fence": {"outcome": last.get("outcome"), "session": last.get("pid"), "lock_key": last.get("lock_key"),
                  "held_for_s": last.get("held_for"), "waiters": last.get("waiters"),
                  "after_stop_s": fenced_after},
        "fences_total": fencing_status.get("fences_total"),
        "would_fence_total": fencing_status.get("would_fence_total"),
        "fencing_events": events,
    }
