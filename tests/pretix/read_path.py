"""Issue 13 against the real pretix: pretix's read path through haproxy (`listen pretix_replica`).

pretix reads its public pages (the event page here) from `[replica]`. In this tier app1 reads
through `pretix_replica`, whose replica server the agent on the load balancer gates on its postgres
check (`role = "standby"`, `primary_dsn`, `max_lag_seconds`) with `shutdown_sessions = true`;
app2 reads through a comparison path (cluster.READ_PATHS): `pretix_replica_equal` (haproxy's own
TCP check at the agent's interval and fall), `pretix_replica_default` (as shipped, without the
agent) or `direct` (no proxy: the replica itself, as pretix.cfg had it before). Both nodes see
the same fault at the same instant; their pages are probed one a second each, through their own
nginx.

    replica_stopped(cluster)      the replica stopped for 15 s: how many probes fail, and why
    replay_paused(cluster)        replay paused under orders: do reads leave the replica before
                                  its lag passes max_lag_seconds + one interval?

What a probe can fail on: a worker's persistent replica connection (pretix keeps them for
CONN_MAX_AGE, 120 s, and does not health-check [replica]'s: pretix/settings.py gives
CONN_HEALTH_CHECKS to [database] only) that the replica or haproxy closed: its next query fails
once ("stale"); or a new connection that could not be made ("connect"). Each node's pretix log
says which (Node.errors_since).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from tests.integration.processes import FixtureError, wait_until

from .cluster import AGENT_INTERVAL, READ_PATHS, REPLICA_MAX_LAG, PretixCluster, usable, worker_of
from .scenarios import RATE, Outcome, PageProber, Poller, StateWatcher, run_id, statuses

READ_LISTENS = tuple(path for path in READ_PATHS if path != "direct")
AGENT_PATH = "pretix_replica"


def _replica_check(cluster: PretixCluster) -> dict[str, Any]:
    assert cluster.lb_agent is not None
    return cluster.lb_agent.status()["checks"]["replica"]


def _replica_in(cluster: PretixCluster, listen: str = AGENT_PATH) -> bool:
    return usable(cluster.lb.states()[(listen, "replica")])


def _workers_on_replica(cluster: PretixCluster) -> dict[str, list[int]]:
    """Per node, its gunicorn workers that hold a session on the replica."""
    on: dict[str, list[int]] = {name: [] for name in cluster.nodes}
    for application_name in cluster.pretix_sessions("replica"):
        worker = worker_of(application_name)
        if worker is not None and worker[0] in on:
            on[worker[0]].append(worker[1])
    return on


def prepare(cluster: PretixCluster, compare: str, timeout: float = 60.0) -> dict[str, list[int]]:
    """app1 on the agent's read path, app2 on `compare` (restarted to get there), each of whose
    workers then holds a session on the replica: the steady state of a shop, every worker served a
    page within CONN_MAX_AGE. A worker whose read connection sits on the primary (it moved there in
    an earlier fault and pretix keeps it 120 s) is sent back: haproxy shuts the sessions it holds to
    the primary servers of the read paths, and the worker's next read reconnects, to the replica
    (its first read on the shut connection fails: not measured here). Returns the workers per node."""
    if cluster.pg.replica is None or not cluster.pg.replica.running:
        raise FixtureError("the replica must be running")
    wait_until(lambda: _replica_check(cluster)["state"] == "passing" and _replica_in(cluster), timeout=timeout,
               what="the replica check to pass and the replica to be in pretix's read path")
    cluster.nodes["app1"].set_read_path(AGENT_PATH)
    cluster.nodes["app2"].set_read_path(compare)
    cluster.wait_settled()
    if compare != "direct":
        wait_until(lambda: _replica_in(cluster, compare), timeout=timeout,
                   what=f"the replica to be usable in {compare}")
    runtime = cluster.lb.runtime()
    for listen in READ_LISTENS:
        runtime.shutdown_sessions(listen, "primary")

    def warm() -> bool:
        for node in cluster.nodes.values():
            node.get("/agent/tier/", timeout=10)
        on = _workers_on_replica(cluster)
        return all(set(on[name]) >= node.worker_pids() for name, node in cluster.nodes.items())

    wait_until(warm, timeout=timeout, what="every worker to hold a session on the replica",
               details=lambda: f"{cluster.pretix_sessions('replica')}; workers "
               f"{ {name: sorted(node.worker_pids()) for name, node in cluster.nodes.items()} }")
    return {name: sorted(node.worker_pids()) for name, node in cluster.nodes.items()}


def restore(cluster: PretixCluster) -> None:
    """Every node back on the agent's read path (the tier's default)."""
    for node in cluster.nodes.values():
        node.set_read_path(AGENT_PATH)
    cluster.wait_settled()


def _log_offsets(cluster: PretixCluster) -> dict[str, int]:
    return {name: node.log_offset() for name, node in cluster.nodes.items()}


def _page_figures(cluster: PretixCluster, pages: PageProber, before: dict[str, int],
                  after: dict[str, int]) -> dict[str, Any]:
    """Every probe `pages` made, and the errors pretix logged for the probed page meanwhile (the
    log offsets `before` the prober started and `after` it stopped)."""
    out = {}
    for name, node in cluster.nodes.items():
        answers = pages.answers[name]
        out[name] = {"read_path": node.read_path, "probes": len(answers),
                     "failed": sum(1 for _, status, _ in answers if status != 200),
                     "statuses": statuses(answers),
                     "errors": node.errors_since(before[name], after[name], pages.path)}
    return out


def replica_stopped(cluster: PretixCluster, *, compare: str = "pretix_replica_equal", probes: int = 15,
                    timeout: float = 60.0) -> Outcome:
    """Stop the replica (fast shutdown: it closes every session) for `probes` one-second probes of
    each node's event page, then start it again and wait until the agent returns it to the read
    path (its check's rise)."""
    outcome = Outcome("replica_stopped_read_path")
    replica = cluster.pg.replica
    assert replica is not None and cluster.lb_agent is not None
    try:
        workers = prepare(cluster, compare, timeout)
        log_from = cluster.agent_log_lines()
        with StateWatcher(cluster, READ_LISTENS) as servers:
            stopping_at = time.monotonic()
            replica.stop("fast")
            stopped_at = time.monotonic()
            before = _log_offsets(cluster)
            with PageProber(cluster, period=1.0) as pages:
                wait_until(lambda: all(len(a) >= probes for a in pages.answers.values()), timeout=probes + 30,
                           what=f"{probes} probes of each node")
            after = _log_offsets(cluster)
            restart_at = time.monotonic()
            replica.start()
            cluster.pg.wait_streaming()
            wait_until(lambda: _replica_in(cluster), timeout=timeout, what="the agent to return the replica")
            back_at = time.monotonic()
        outcome.figures.update({
            "compare": compare, "workers_on_replica_at_stop": workers,
            "stop_took_s": round(stopped_at - stopping_at, 3),
            "pages": _page_figures(cluster, pages, before, after),
            "replica_out_after_stop_s": {
                listen: None if (t := servers.out_at((listen, "replica"), stopping_at)) is None
                else round(t - stopping_at, 3) for listen in READ_LISTENS},
            "agent_returned_replica_after_start_s": round(back_at - restart_at, 3),
            "agent_changes": cluster.agent_changes(log_from),
        })
    finally:
        if not replica.running:
            replica.start()
            cluster.pg.wait_streaming()
        restore(cluster)
    return outcome


class LagWatcher(Poller):
    """Polls the replica every 20 ms on its own thread (as the superuser, on its own socket): when
    its replay lag first passed `limit` seconds: the age of the last replayed commit while WAL is
    received but not replayed. Start it once replay is paused under writes: the last replayed
    commit is then the last before the pause, the next one is unreplayed, and the age is the lag.
    (Before, the age of the last commit says nothing: after a quiet spell it is old while the
    replay is merely milliseconds behind.)"""

    def __init__(self, cluster: PretixCluster, limit: float):
        assert cluster.pg.replica is not None
        self.dsn = cluster.pg.replica.superuser_dsn()
        self.limit = limit
        self.crossed_at: float | None = None
        self.last: tuple[bool, float] | None = None
        super().__init__("watch-lag")

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                behind, age = conn.execute(
                    "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn(),"
                    " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8").fetchone() or (False, 0)
                self.last = (bool(behind), float(age or 0.0))
                if self.crossed_at is None and behind and (age or 0.0) > self.limit:
                    self.crossed_at = time.monotonic()
                self._stop.wait(0.02)


def replay_paused(cluster: PretixCluster, *, compare: str = "pretix_replica_equal", timeout: float = 60.0) -> Outcome:
    """Pause the replica's replay while orders are written (it keeps receiving WAL, its sessions
    live on and read older and older data), until its lag passed max_lag_seconds and one more
    check interval; then resume it. When did the replica leave the agent's read path, against when
    its lag passed max_lag_seconds; and where do the nodes read from at the end?"""
    outcome = Outcome("replay_paused_read_path")
    assert cluster.lb_agent is not None
    try:
        workers = prepare(cluster, compare, timeout)
        log_from = cluster.agent_log_lines()
        driver = cluster.driver(run_id("replay-paused"), rate=RATE, backends=("pretix",))
        with StateWatcher(cluster, READ_LISTENS) as servers:
            driver.start()
            before = _log_offsets(cluster)
            with PageProber(cluster, period=1.0) as pages:
                time.sleep(1.0)  # writes before the pause
                paused_at = time.monotonic()
                cluster.pg.pause_replay()
                with LagWatcher(cluster, REPLICA_MAX_LAG) as lag:
                    wait_until(lambda: lag.crossed_at, timeout=timeout,
                               what=f"the lag to pass {REPLICA_MAX_LAG:g} s", details=lambda: f"last: {lag.last}")
                assert lag.crossed_at is not None
                time.sleep(max(0.0, lag.crossed_at + AGENT_INTERVAL - time.monotonic()))
                # where the nodes read from now
                sessions = _workers_on_replica(cluster)
            after = _log_offsets(cluster)
            resumed_at = time.monotonic()
            cluster.pg.resume_replay()
            cluster.pg.wait_caught_up()
            wait_until(lambda: _replica_in(cluster), timeout=timeout, what="the agent to return the replica")
            back_at = time.monotonic()
            driver.stop()
        out = {listen: servers.out_at((listen, "replica"), paused_at) for listen in READ_LISTENS}
        crossed = lag.crossed_at
        outcome.figures.update({
            "compare": compare, "max_lag_seconds": REPLICA_MAX_LAG, "interval_s": AGENT_INTERVAL,
            "workers_on_replica_at_pause": workers,
            "lag_crossed_after_pause_s": round(crossed - paused_at, 3),
            "replica_out_after_pause_s": {listen: None if t is None or t > resumed_at else round(t - paused_at, 3)
                                          for listen, t in out.items()},
            "out_before_lag_plus_interval": {listen: t is not None and t <= crossed + AGENT_INTERVAL
                                             for listen, t in out.items()},
            "out_minus_lag_crossed_s": {listen: None if t is None or t > resumed_at else round(t - crossed, 3)
                                        for listen, t in out.items()},
            "workers_on_replica_at_end": sessions,
            "pages": _page_figures(cluster, pages, before, after),
            "agent_returned_replica_after_resume_s": round(back_at - resumed_at, 3),
            "agent_changes": cluster.agent_changes(log_from),
        })
        outcome.orders = {"pretix": driver.reckon(cluster.orders_in_db(driver.run_id)).as_dict()}
    finally:
        if cluster.pg.replay_pause_state() != "not paused":
            cluster.pg.resume_replay()
        restore(cluster)
    return outcome
