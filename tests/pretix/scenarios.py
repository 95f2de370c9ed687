"""The scenarios against a real pretix, as functions of a running PretixCluster that return what they
measured. The tests (test_*.py here) run each once and assert on what must hold; bench/pretix.py runs
the same functions and reports the numbers. Every scenario leaves the cluster as it found it: every
node serving, the celery worker and the replica running, every haproxy server usable.

Orders go through all three frontends of the load balancer in turn (`pretix`: the shipped backend,
gated by the agent; `pretix_equal`: haproxy's own checks at the agent's interval and fall;
`pretix_default`: haproxy's defaults), so one fault at one instant is seen by the three detectors
alike, and each frontend's orders are reckoned apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

from tests.integration.processes import FixtureError, wait_until

from .cluster import AGENT_FALL, AGENT_INTERVAL, BACKENDS, HX_DEFAULT_FALL, HX_DEFAULT_INTER, PretixCluster, usable
from .driver import Endpoint, OrderDriver, reckon, request

RATE = 5.0  # orders per second (300 a minute, as the issue measured), over all frontends together
LOCKED_PATHS = ("/agent/tier/", "/agent/")  # the shop's pages: 503 while locked
EXEMPT = {  # reachable while locked: path -> method
    "/control/": "GET", "/api/v1/organizers/": "GET", "/_stripe/webhook/": "POST", "/_paypal/webhook/": "POST",
    "/healthcheck/": "GET",
}


class Poller:
    """A thread that polls something until the `with` block ends: subclasses set their fields,
    call `super().__init__(name)` and poll in `_run` until `self._stop` is set, waiting on it
    between rounds (so leaving the block ends the thread at once)."""

    join_timeout = 5.0

    def __init__(self, name: str):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.join_timeout)


class OutWatcher(Poller):
    """Polls `show servers state` every `step` s on its own thread and records, per backend, the
    first time `server` stopped being usable (and, with `back`, the first time it was usable again)."""

    def __init__(self, cluster: PretixCluster, server: str, backends: Iterable[str] = BACKENDS, step: float = 0.01):
        self.cluster = cluster
        self.server = server
        self.backends = tuple(backends)
        self.step = step
        self.out_at: dict[str, float] = {}
        super().__init__(f"watch-{server}")

    def _run(self) -> None:
        api = self.cluster.lb.runtime(timeout=1.0)
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                states = {s.backend: s for s in api.servers_state() if s.server == self.server}
            except Exception:  # haproxy busy for a moment: poll again
                self._stop.wait(self.step)
                continue
            for backend in self.backends:
                state = states.get(backend)
                if state is not None and backend not in self.out_at and not usable(state):
                    self.out_at[backend] = now
            self._stop.wait(self.step)

    def all_out(self) -> bool:
        return all(backend in self.out_at for backend in self.backends)


class StateWatcher(Poller):
    """Polls `show servers state` every `step` s on its own thread and records, for every server of
    `backends`, when it stopped and started being usable: `changes[(backend, server)]` is a list of
    (monotonic time, usable), its state at the start first."""

    def __init__(self, cluster: PretixCluster, backends: Iterable[str], step: float = 0.01):
        self.cluster = cluster
        self.backends = tuple(backends)
        self.step = step
        self.changes: dict[tuple[str, str], list[tuple[float, bool]]] = {}
        self._lock = threading.Lock()
        super().__init__("watch-states")

    def __enter__(self) -> Self:
        self._poll(self.cluster.lb.runtime(timeout=2.0))  # the state at the start, before anything happens
        return super().__enter__()

    def _poll(self, api: Any) -> None:
        now = time.monotonic()
        states = [s for s in api.servers_state() if s.backend in self.backends]
        with self._lock:
            for state in states:
                key = (state.backend, state.server)
                seen = self.changes.setdefault(key, [])
                if not seen or seen[-1][1] != usable(state):
                    seen.append((now, usable(state)))

    def _run(self) -> None:
        api = self.cluster.lb.runtime(timeout=1.0)
        while not self._stop.is_set():
            try:
                self._poll(api)
            except Exception:  # haproxy busy for a moment: poll again
                pass
            self._stop.wait(self.step)

    def timeline(self, key: tuple[str, str]) -> list[tuple[float, bool]]:
        with self._lock:
            return list(self.changes.get(key, []))

    def out_at(self, key: tuple[str, str], after: float = float("-inf")) -> float | None:
        """When `key` first stopped being usable after `after` (None: it did not)."""
        return next((t for t, ok in self.timeline(key) if t >= after and not ok), None)

    def back_at(self, key: tuple[str, str], after: float) -> float | None:
        """When `key` was first usable again after `after` (None: not yet)."""
        return next((t for t, ok in self.timeline(key) if t >= after and ok), None)

    def usable_now(self, key: tuple[str, str]) -> bool:
        seen = self.timeline(key)
        return bool(seen) and seen[-1][1]

    def ever_out(self, after: float, until: float = float("inf")) -> dict[str, list[str]]:
        """Per backend, the servers that were not usable at some moment between `after` and `until`."""
        out: dict[str, list[str]] = {backend: [] for backend in self.backends}
        with self._lock:
            for (backend, server), seen in sorted(self.changes.items()):
                state_at_start = [ok for t, ok in seen if t <= after][-1:] or [True]
                if not state_at_start[0] or any(not ok for t, ok in seen if after < t <= until):
                    out[backend].append(server)
        return out


class PageProber(Poller):
    """GETs `path` on every node (through its own nginx, so each node's read path and maintenance
    page are seen alone) once every `period` s on its own thread; `answers[node]` is a list of
    (monotonic time sent, status or None, Retry-After or None). A probe waits up to `timeout` for
    its answer (a slow page is a slow page, not a failed one; the next probe waits for it)."""

    join_timeout = 15.0  # a probe in flight waits up to its own timeout

    def __init__(self, cluster: PretixCluster, path: str = "/agent/tier/", period: float = 1.0,
                 nodes: Iterable[str] | None = None, timeout: float = 10.0):
        self.cluster = cluster
        self.path = path
        self.period = period
        self.timeout = timeout
        self.nodes = tuple(nodes or cluster.nodes)
        self.answers: dict[str, list[tuple[float, int | None, str | None]]] = {name: [] for name in self.nodes}
        super().__init__("probe-pages")

    def _run(self) -> None:
        started = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            for name in self.nodes:
                sent = time.monotonic()
                answer = self.cluster.nodes[name].get(self.path, timeout=self.timeout)
                self.answers[name].append((sent, answer.status, answer.headers.get("retry-after")))
            tick += 1
            self._stop.wait(max(0.0, started + tick * self.period - time.monotonic()))

    def between(self, node: str, start: float, end: float) -> list[tuple[float, int | None, str | None]]:
        return [a for a in self.answers[node] if start <= a[0] < end]


def statuses(answers: Iterable[tuple[float, int | None, str | None]]) -> dict[str, int]:
    """{"200": 13, "500": 2, "None": 0, ...} of some PageProber answers."""
    counted: dict[str, int] = {}
    for _, status, _ in answers:
        counted[str(status)] = counted.get(str(status), 0) + 1
    return counted


@dataclass
class Outcome:
    """What one scenario measured."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # per frontend: the reckoning

    def as_dict(self) -> dict[str, Any]:
        return {"figures": self.figures, "orders": self.orders}


def _reckon_per_frontend(cluster: PretixCluster, driver: OrderDriver) -> dict[str, dict[str, Any]]:
    in_db = cluster.orders_in_db(driver.run_id)
    per: dict[str, dict[str, Any]] = {}
    for index, endpoint in enumerate(driver.endpoints):
        backend = _backend_of(endpoint)
        mine = [order for order in driver.orders if order.number % len(driver.endpoints) == index]
        per[backend] = reckon(mine, in_db, driver.started_at or 0.0).as_dict()
    return per


def _backend_of(endpoint: Endpoint) -> str:
    assert endpoint.unix_path is not None
    return endpoint.unix_path.rsplit("/fe-", 1)[1].removesuffix(".sock")


def _rounded(values: dict[str, float], since: float) -> dict[str, float]:
    return {k: round(v - since, 3) for k, v in values.items()}


_run_counter = iter(range(1, 1_000_000))


def run_id(name: str) -> str:
    return f"{name}-{int(time.time())}-{next(_run_counter)}"


# ------------------------------------------------------------------------------------------- lock


def lock(cluster: PretixCluster) -> Outcome:
    """`pretix-agentctl lock` on both nodes: the shop's pages answer 503 with Retry-After on both,
    while /control/, /api/v1/, /healthcheck/ and the payment webhooks reach pretix; unlock ends it."""
    outcome = Outcome("lock")
    headers = {"Authorization": f"Token {cluster.shop.token}"}
    pages: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for name in cluster.nodes:
        result = cluster.ctl(name, "lock", "--reason", "tier: lock scenario")
        if result.returncode != 0:
            raise FixtureError(f"ctl lock on {name} failed: {result.stdout}{result.stderr}")
    outcome.figures["lock_to_503_s"] = round(time.monotonic() - started, 3)  # ctl waits until the daemon applied it
    try:
        for name, node in cluster.nodes.items():
            seen: dict[str, Any] = {}
            for path in LOCKED_PATHS:
                answer = node.get(path)
                seen[path] = {"status": answer.status, "retry_after": answer.headers.get("retry-after"),
                              "maintenance_page": b"maintenance" in answer.body.lower()}
            for path, method in EXEMPT.items():
                answer = request(Endpoint(port=node.port), method, path, body=b"{}" if method == "POST" else None,
                                 headers={**headers, "Content-Type": "application/json"} if path.startswith("/api")
                                 or method == "POST" else headers)
                seen[path] = {"status": answer.status, "retry_after": answer.headers.get("retry-after"),
                              "maintenance_page": b"maintenance" in answer.body.lower()}
            pages[name] = seen
    finally:
        for name in cluster.nodes:
            cluster.ctl(name, "unlock")
    outcome.figures["after_unlock"] = {name: node.get(LOCKED_PATHS[0]).status for name, node in cluster.nodes.items()}
    outcome.figures["pages"] = pages
    return outcome


# ------------------------------------------------------------------------------------ node faults


def kill(cluster: PretixCluster, node: str = "app1", *, before: float = 3.0, after: float = 12.0) -> Outcome:
    """SIGKILL a node's gunicorn (master and workers) under load; start it again afterwards."""
    return _node_fault(cluster, "kill", node, lambda: cluster.nodes[node].kill(), before=before, after=after,
                       undo=lambda: cluster.nodes[node].start())


def sigstop(cluster: PretixCluster, node: str = "app1", *, before: float = 3.0, hold: float = 30.0) -> Outcome:
    """SIGSTOP a node's gunicorn under load until every detector took it out (at most `hold` s),
    then SIGCONT it."""
    return _node_fault(cluster, "sigstop", node, lambda: cluster.nodes[node].sigstop(), before=before, after=hold,
                       undo=lambda: cluster.nodes[node].sigcont(), until_all_out=True)


def _node_fault(cluster: PretixCluster, name: str, node: str, fault: Callable[[], None], *, before: float,
                after: float, undo: Callable[[], None], until_all_out: bool = False) -> Outcome:
    cluster.wait_settled()
    outcome = Outcome(name)
    log_from = cluster.agent_log_lines()
    driver = cluster.driver(run_id(name), rate=RATE, backends=BACKENDS)
    with OutWatcher(cluster, node) as watcher:
        driver.start()
        time.sleep(before)  # load before the fault: the steady state
        faulted_at = time.monotonic()
        fault()
        outcome.figures["fault_s_after_start"] = round(faulted_at - (driver.started_at or faulted_at), 3)
        deadline = faulted_at + after
        while time.monotonic() < deadline:
            if until_all_out and watcher.all_out():
                break
            time.sleep(0.05)
        outcome.figures["held_s"] = round(time.monotonic() - faulted_at, 3)
        agent = cluster.lb_agent
        check = None if agent is None else agent.status()["checks"][f"web-{node}"]
        outcome.figures["agent_check"] = None if check is None else {k: check[k] for k in ("state", "reason", "hard")}
        undo()
        time.sleep(1.0)  # a little load after the node is back: answers that waited on it arrive
        driver.stop()
    outcome.figures["time_to_out_s"] = _rounded(watcher.out_at, faulted_at)
    outcome.figures["not_out"] = [b for b in BACKENDS if b not in watcher.out_at]
    outcome.orders = _reckon_per_frontend(cluster, driver)
    outcome.figures["agent_changes"] = cluster.agent_changes(log_from)
    cluster.wait_settled()
    return outcome


# ------------------------------------------------------------------------------------------- drain


def planned_stop(cluster: PretixCluster, node: str = "app1", *, drain: bool, before: float = 3.0,
                 after: float = 6.0) -> Outcome:
    """Take a node down for maintenance under load through the shipped frontend: with `drain`,
    `pretix-agentctl drain` on the node first, wait until haproxy has the node at weight 0 (agent-check)
    and its last request ended, then stop gunicorn (SIGTERM, graceful); without, just stop gunicorn."""
    cluster.wait_settled()
    outcome = Outcome("drain" if drain else "stop_without_drain")
    log_from = cluster.agent_log_lines()
    driver = cluster.driver(run_id(outcome.name), rate=RATE, backends=("pretix",))
    lb = cluster.lb
    driver.start()
    try:
        time.sleep(before)
        if drain:  # what an operator looks at first: the other node serves
            wait_until(lambda: usable(lb.states()[("pretix", _other(cluster, node))]), timeout=30,
                       what="the other node to be usable before the drain")
        started = time.monotonic()
        if drain:
            result = cluster.ctl(node, "drain", "--reason", "tier: planned maintenance")
            if result.returncode != 0:
                raise FixtureError(f"ctl drain failed: {result.stdout}{result.stderr}")
            wait_until(lambda: lb.states()[("pretix", node)].weight == 0, timeout=30,
                       what=f"haproxy to drain pretix/{node} (agent-check weight 0)")
            outcome.figures["drain_to_weight_0_s"] = round(time.monotonic() - started, 3)
            wait_until(lambda: _sessions(cluster, node) == 0, timeout=60,
                       what=f"the last request on pretix/{node} to end")
            outcome.figures["drain_to_idle_s"] = round(time.monotonic() - started, 3)
        cluster.nodes[node].stop()
        time.sleep(after)
    finally:
        driver.stop()
        cluster.nodes[node].start()
        if drain:
            cluster.ctl(node, "ready")
    outcome.orders = _reckon_per_frontend(cluster, driver)
    outcome.figures["agent_changes"] = cluster.agent_changes(log_from)
    cluster.wait_settled()
    return outcome


def _other(cluster: PretixCluster, node: str) -> str:
    return next(name for name in cluster.nodes if name != node)


def _sessions(cluster: PretixCluster, node: str) -> int | None:
    for row in cluster.lb.runtime().stat():
        if row.proxy == "pretix" and row.name == node:
            return row.sessions
    return None


# ------------------------------------------------------------------------------------------ celery


class QueueWatcher(Poller):
    """Polls the broker's lists every 20 ms on its own thread: when a task first waited, and when a
    queue (all its lists) first held more than `limit` tasks."""

    def __init__(self, cluster: PretixCluster, limit: int):
        self.cluster = cluster
        self.limit = limit
        self.first_task_at: float | None = None
        self.over_at: float | None = None
        self.first_lists: dict[str, int] = {}
        super().__init__("watch-queues")

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            lists = _waiting(self.cluster)
            if lists and self.first_task_at is None:
                self.first_task_at, self.first_lists = now, lists
            depths: dict[str, int] = {}
            for key, length in lists.items():
                queue = key.split(":", 1)[0]
                depths[queue] = depths.get(queue, 0) + length
            if self.over_at is None and any(depth > self.limit for depth in depths.values()):
                self.over_at = now
            self._stop.wait(0.02)


def celery_stopped(cluster: PretixCluster, *, orders: int = 3, flood_seconds: float = 8.0,
                   timeout: float = 60.0) -> Outcome:
    """Stop the celery worker. First a few orders (their tasks stay under max_queue_length) from a
    quiet organizer: the check fails on the oldest task's age; then, from a passing check again,
    orders at RATE from an organizer pretix has downgraded to priority 5: it fails on the queue's
    length, counting notifications:4. Records what the check said and when against what Redis held and when
    (polled every 20 ms), and whether every probe that measured a queue over a limit was failing.
    Restarts the worker."""
    outcome = Outcome("celery_stopped")
    interval = _broker(cluster)["interval"]
    outcome.figures["interval_s"] = interval
    wait_until(lambda: _broker(cluster)["state"] == "passing", timeout=timeout, what="the broker check to pass")
    try:
        # 1. The age: a few orders, then the oldest task passes max_queue_age. pretix sends their
        # notification tasks at high priority (the bare list) while the organizer is quiet.
        cluster.set_notification_load(0)
        cluster.celery.stop()
        cluster.purge_queues()  # what earlier scenarios' tasks left, and what the last one sent
        driver = cluster.driver(run_id("celery-age"), rate=RATE, backends=("pretix",))
        with QueueWatcher(cluster, cluster.max_queue_length) as queues:
            driver.start()
            wait_until(lambda: len(driver.orders) >= orders, timeout=30, what=f"{orders} orders sent")
            driver.stop()
            aged = _watch_broker(cluster, lambda check: check["state"] == "failing", timeout)
        if queues.first_task_at is None:
            raise FixtureError("no task ever waited in Redis")
        # What a real pretix task looks like in Redis: what the oldest-task memory can go by.
        message = cluster.oldest_message(next(iter(_waiting(cluster))))
        outcome.figures["message"] = None if message is None else {
            "top_level_keys": sorted(message), "property_keys": sorted(message.get("properties", {})),
            "task": message.get("headers", {}).get("task")}
        waited = aged["at"] - queues.first_task_at
        outcome.figures["age"] = {
            "first_lists": queues.first_lists, "max_queue_age_s": cluster.max_queue_age,
            "first_task_to_failing_s": round(waited, 3),
            "failing_after_max_queue_age_s": round(waited - cluster.max_queue_age, 3),
            "failing_after_max_queue_age_intervals": round((waited - cluster.max_queue_age) / interval, 2),
            "reason": aged["check"]["reason"], "values": aged["check"]["values"], "consistent": aged["consistent"]}
        outcome.orders["age"] = driver.reckon(cluster.orders_in_db(driver.run_id)).as_dict()

        # 2. The length: from a passing check, orders at RATE until a queue passes max_queue_length.
        cluster.celery.start()
        wait_until(lambda: _broker(cluster)["state"] == "passing", timeout=timeout,
                   what="the broker check to pass with the worker running")
        # ... and at priority 5 (notifications:4) once it sends 50 a minute: as if it had.
        cluster.set_notification_load(60)
        cluster.celery.stop()
        cluster.purge_queues()  # the draining worker's last tasks may have sent more
        driver = cluster.driver(run_id("celery-length"), rate=RATE, backends=("pretix",))
        with QueueWatcher(cluster, cluster.max_queue_length) as queues:
            driver.start()
            long = _watch_broker(cluster, lambda check: "queue over" in check["reason"], timeout)
            time.sleep(max(0.0, flood_seconds - (time.monotonic() - (driver.started_at or 0.0))))
            driver.stop()
        # Every list of pretix's layout is counted: once the lists stop changing (no worker, no
        # new orders), the check's lists and depth are exactly what Redis holds.
        final = wait_until(lambda: (check := _broker(cluster))["values"].get("queue_lists") == _waiting(cluster)
                           and check, timeout=timeout, what="the check to count every list Redis holds")
        late = None if queues.over_at is None else long["at"] - queues.over_at
        outcome.figures["length"] = {
            "max_queue_length": cluster.max_queue_length,
            "over_max_queue_length_to_failing_s": None if late is None else round(late, 3),
            "over_max_queue_length_to_failing_intervals": None if late is None else round(late / interval, 2),
            "reason": long["check"]["reason"], "values": long["check"]["values"], "consistent": long["consistent"],
            "lists_at_end": final["values"]["queue_lists"], "depths_at_end": final["values"]["queues"]}
        outcome.orders["length"] = driver.reckon(cluster.orders_in_db(driver.run_id)).as_dict()
    finally:
        if not cluster.celery.running:
            cluster.celery.start()
    wait_until(lambda: _broker(cluster)["state"] == "passing", timeout=timeout,
               what="the broker check to pass once the worker runs again")
    outcome.figures["passing_again"] = True
    return outcome


def _broker(cluster: PretixCluster) -> dict[str, Any]:
    assert cluster.lb_agent is not None
    return cluster.lb_agent.status()["checks"]["broker"]


def _waiting(cluster: PretixCluster) -> dict[str, int]:
    return {key: length for key, length in cluster.redis_lists().items() if length}


def _watch_broker(cluster: PretixCluster, done: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """Poll the broker check's status until `done`; on the way, note whether every probe that
    measured a queue over max_queue_length, or an oldest task over max_queue_age, was failing."""
    consistent = True
    deadline = time.monotonic() + timeout
    while True:
        try:
            check = _broker(cluster)
        except (OSError, ValueError):  # the status file is being replaced: read it again
            time.sleep(0.01)
            continue
        values = check.get("values") or {}
        over = any(depth is not None and depth > cluster.max_queue_length
                   for depth in (values.get("queues") or {}).values()) or \
            any(age is not None and age > cluster.max_queue_age for age in (values.get("queue_ages") or {}).values())
        if over and check["state"] != "failing":
            consistent = False
        if done(check):
            return {"check": check, "at": time.monotonic(), "consistent": consistent}
        if time.monotonic() > deadline:
            raise FixtureError(f"the broker check never got there: {check}")
        time.sleep(0.02)


# ----------------------------------------------------------------------------------------- replica


def replica_stopped(cluster: PretixCluster, *, timeout: float = 60.0, load: float = 6.0) -> Outcome:
    """Stop the streaming replica (pretix's [replica]) under load: the agent's postgres check of it
    fails; start it again: the check passes once it streams."""
    agent = cluster.lb_agent
    assert agent is not None and cluster.pg.replica is not None
    outcome = Outcome("replica_stopped")

    def replica_check() -> dict[str, Any]:
        assert agent is not None
        return agent.status()["checks"]["replica"]

    wait_until(lambda: replica_check()["state"] == "passing", timeout=timeout, what="the replica check to pass")
    driver = cluster.driver(run_id("replica"), rate=RATE, backends=("pretix",))
    driver.start()
    try:
        time.sleep(1.0)
        stopped_at = time.monotonic()
        cluster.pg.replica.stop("fast")
        failing = wait_until(lambda: (c := replica_check())["state"] == "failing" and c, timeout=timeout,
                             what="the replica check to fail")
        outcome.figures["stop_to_failing_s"] = round(time.monotonic() - stopped_at, 3)
        outcome.figures["first_reason"] = failing["reason"]  # often "the database system is shutting down"
        # once it is down, no server answers at its socket: a hard failure
        gone = wait_until(lambda: (c := replica_check())["hard"] and c, timeout=timeout,
                          what="the replica check to fail hard")
        outcome.figures["stop_to_hard_failure_s"] = round(time.monotonic() - stopped_at, 3)
        outcome.figures["reason"] = gone["reason"]
        outcome.figures["state"] = gone["state"]
        shop = request(cluster.lb.frontend("pretix"), "GET", "/agent/tier/")
        outcome.figures["shop_page_while_replica_down"] = shop.status
        time.sleep(max(0.0, load - (time.monotonic() - stopped_at)))
    finally:
        driver.stop()
        cluster.pg.replica.start()
    cluster.pg.wait_streaming()
    wait_until(lambda: replica_check()["state"] == "passing", timeout=timeout, what="the replica check to pass again")
    outcome.orders = {"pretix": driver.reckon(cluster.orders_in_db(driver.run_id)).as_dict()}
    return outcome


def expected_baselines() -> dict[str, float]:
    """What the detectors' settings give as a rule of thumb, for reading the figures."""
    return {"agent_interval_x_fall_s": AGENT_INTERVAL * AGENT_FALL,
            "haproxy_default_inter_x_fall_s": HX_DEFAULT_INTER * HX_DEFAULT_FALL}
