"""Lock fencing: what a hung client holding pretix's quota lock costs the orders behind it, with
the agent's fencing and without, against a real PostgreSQL (tests/integration/pg_fixture.py).

One trial: a pretix-like client takes pretix's locks the way pretix does (shared on the event,
exclusive on the quota, `lock_timeout = 3s`) and is SIGSTOPped inside its transaction, like the
gunicorn worker of the issue. Then `ORDERS` orders arrive, one every `ORDER_SPACING` s, starting at
the stop; each is one pretix-like attempt at the quota lock (`lock_timeout = 3s`, no retry: pretix
answers 409 when it fails), in its own process on its own connection, connected beforehand so
only the lock wait is measured. Variant `fencing`: the real `LockFencer` with the shipped defaults
(max_hold 2 s, interval 1 s) as a role with only pg_signal_backend and pg_read_all_stats. Variant
`without`: no agent; every order waits the full lock timeout and fails.

Figures per variant: orders that got the lock and that failed, each order's wait (until it got the
lock, or until it failed), the first order's wait (the issue's "second client"), and, with
fencing, when the fence came after the stop. Ratios: the first order's wait and the worst wait
with fencing against the time an order waits to fail without, in the same run.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

from pretix_agent import config
from pretix_agent.fencing.worker import LockFencer
from tests.integration.lock_clients import LockClient
from tests.integration.pg_fixture import PgReplicationCluster

from .common import percentiles, ratio

QUOTA_KEY = (17 << 16) | 2  # pretix: quota 17, lock index 0
EVENT_KEY = (3 << 16) | 1  # pretix: event 3 (shared)
ORDERS, ORDER_SPACING = 8, 0.25  # orders arrive over 1.75 s from the stop
FENCING_ROLE, FENCING_PASSWORD = "pretix_agent_fencing", "bench-password"


def _prepare(pg: PgReplicationCluster) -> None:
    pg.primary.execute("CREATE ROLE pretix LOGIN")
    pg.primary.execute("CREATE DATABASE pretix OWNER pretix")
    pg.primary.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(FENCING_ROLE), sql.Literal(FENCING_PASSWORD)))
    pg.primary.execute(f"GRANT pg_signal_backend, pg_read_all_stats TO {FENCING_ROLE}")


def _trial(pg: PgReplicationCluster, fencing: bool) -> dict:
    pretix = pg.primary.tcp_dsn("pretix", dbname="pretix")
    fencer = None
    events: list = []
    if fencing:
        dsn = pg.primary.tcp_dsn(FENCING_ROLE, FENCING_PASSWORD)
        section = config.parse(f'[lock_fencing]\ndsn = "{dsn}"\nusers = ["pretix"]\n').lock_fencing
        assert section is not None
        statuses: list = []
        fencer = LockFencer(section, events.append, statuses.append, lambda: None)
        fencer.start()
        _wait(lambda: statuses and statuses[-1].connected, 15, "the fencer to connect")
    clients: list[LockClient] = []
    try:
        # The orders connect first, so the holder goes quiet right at the stop: the first order then
        # meets the worst case, a lock that has just begun to be held by a hung client.
        orders = [LockClient("wait", pretix, "--advisory", str(QUOTA_KEY), "--gate") for _ in range(ORDERS)]
        clients.extend(orders)
        for order in orders:
            order.expect("waiting")
        holder = LockClient("hold", pretix, "--advisory", str(QUOTA_KEY), "--shared", str(EVENT_KEY))
        clients.append(holder)
        holder.expect("ready")
        holder.sigstop()
        stopped = time.monotonic()
        for index, order in enumerate(orders):
            _sleep_until(stopped + index * ORDER_SPACING)  # the orders' arrival schedule
            order.send()
        waits, failed = [], 0
        for order in orders:
            outcome, seconds, _attempts = order.line(timeout=30).split()
            waits.append(float(seconds))
            failed += outcome != "acquired"
        lock_free = None
        if fencer is not None:
            terminated = [e for e in events if e.name == "lock_fencing.terminated"]
            lock_free = terminated[0].fields["held_for"] if terminated else None
        return {"orders": ORDERS, "ok": ORDERS - failed, "failed": failed, "first_order_wait_s": waits[0],
                "waits_s": [round(w, 3) for w in waits], "fenced_after_idle_s": lock_free,
                "fences": sum(e.name == "lock_fencing.terminated" for e in events)}
    finally:
        for client in clients:
            client.close()
        if fencer is not None:
            fencer.stop()


def _sleep_until(moment: float) -> None:
    # The load generator's arrival schedule, not a synchronisation.
    left = moment - time.monotonic()
    if left > 0:
        time.sleep(left)


def _wait(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def _summary(trials: list[dict]) -> dict:
    waits = [w for trial in trials for w in trial["waits_s"]]
    return {
        "trials": len(trials),
        "orders": sum(t["orders"] for t in trials), "ok": sum(t["ok"] for t in trials),
        "failed": sum(t["failed"] for t in trials),
        "first_order_wait_s": percentiles([t["first_order_wait_s"] for t in trials]),
        "order_wait_s": percentiles(waits),
        "fenced_after_idle_s": [t["fenced_after_idle_s"] for t in trials if t["fenced_after_idle_s"] is not None],
        "fences": sum(t["fences"] for t in trials),
        "per_trial": trials,
    }


def run(quick: bool = False) -> dict:
    started = time.monotonic()
    trials = 1 if quick else 5
    with PgReplicationCluster(with_replica=False) as pg:
        _prepare(pg)
        with psycopg.connect(pg.primary.superuser_dsn(), autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        fencing = _summary([_trial(pg, True) for _ in range(trials)])
        without = _summary([_trial(pg, False) for _ in range(trials)])
    defaults = config.parse('[lock_fencing]\ndsn = "host=x"\n').lock_fencing
    assert defaults is not None
    baseline = without["order_wait_s"]["mean"]
    return {
        "config": {"max_hold_s": defaults.max_hold, "interval_s": defaults.interval, "timeout_s": defaults.timeout,
                   "pretix_lock_timeout_s": config.PRETIX_LOCK_TIMEOUT, "orders_per_trial": ORDERS,
                   "order_spacing_s": ORDER_SPACING, "postgresql": version},
        "fencing": fencing,
        "without": without,
        "ratios": {
            "first_order_wait_fencing_vs_wait_to_fail_without": ratio(fencing["first_order_wait_s"]["mean"], baseline),
            "worst_order_wait_fencing_vs_wait_to_fail_without": ratio(fencing["order_wait_s"]["max"], baseline),
            "failed_orders_fencing_vs_without": ratio(fencing["failed"], without["failed"]),
        },
        "wall_seconds": round(time.monotonic() - started, 1),
    }
