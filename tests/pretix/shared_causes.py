"""Issue 13 against the real pretix: haproxy decisions that see the whole backend.

    redis_killed(cluster)          Redis killed under orders: a cause every node shares. The agent on
                                   the load balancer names its own Redis check in `[haproxy]
                                   shared_checks`, the nodes' agents answer haproxy's agent-check
                                   from their own /healthcheck/ check with `[agent_check]
                                   shared_checks = ["redis"]`, and app1 (not app2) closes its shop
                                   while Redis fails (`[maintenance] on_failing = ["redis"]`).
    slow_node(cluster)             one node slowed until the agent takes it out, then at full speed
                                   again: how soon it is back in each backend.

Both leave the cluster as they found it (the agents' configurations too). Orders take turns over
the three frontends (the agent's backend, haproxy alone at the agent's interval and fall, haproxy's
defaults), as the node fault scenarios do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.integration.agent_fixture import Agent
from tests.integration.processes import FixtureError, wait_until

from .cluster import AGENT_INTERVAL, AGENT_RISE, BACKENDS, FLAP_WINDOW, PretixCluster
from .scenarios import RATE, Outcome, PageProber, Poller, StateWatcher, _reckon_per_frontend, run_id, statuses


class StatusWatcher(Poller):
    """Polls agents' status every `step` s on its own thread and records each new value `pick`
    takes from it: `seen[name]` is a list of (monotonic time, value)."""

    def __init__(self, agents: dict[str, Agent], pick: Callable[[dict[str, Any]], Any], step: float = 0.05):
        self.agents = agents
        self.pick = pick
        self.step = step
        self.seen: dict[str, list[tuple[float, Any]]] = {name: [] for name in agents}
        super().__init__("watch-status")

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, agent in self.agents.items():
                try:
                    value = self.pick(agent.status())
                except (OSError, ValueError, KeyError):  # the status file is being replaced: next time
                    continue
                seen = self.seen[name]
                if not seen or seen[-1][1] != value:
                    seen.append((time.monotonic(), value))
            self._stop.wait(self.step)

    def values(self, name: str, start: float = float("-inf"), end: float = float("inf")) -> list[Any]:
        """Every value `name` had between `start` and `end` (the one it had at `start` first)."""
        seen = self.seen[name]
        before = [value for t, value in seen if t <= start][-1:]
        return before + [value for t, value in seen if start < t < end]

    def first(self, name: str, predicate: Callable[[Any], bool], after: float) -> float | None:
        return next((t for t, value in self.seen[name] if t >= after and predicate(value)), None)


def _node_view(status: dict[str, Any]) -> tuple[str | None, str | None]:
    """A node agent's agent-check answer and maintenance cause."""
    answer = (status.get("agent_check") or {}).get("answer")
    maintenance = status.get("maintenance") or {}
    return (answer.strip() if answer else None), (maintenance.get("cause") if maintenance.get("on") else None)


def redis_killed(cluster: PretixCluster, *, shared: bool = True, down: float = 15.0, before: float = 3.0,
                 after: float = 3.0, closing_node: str = "app1") -> Outcome:
    """Kill Redis under orders for `down` s, then start it again. `shared`: the agents name Redis as
    a shared cause (on the load balancer and in the nodes' agent-check); without, the same agents
    with no shared check (the figures without the feature). `closing_node` alone has
    `[maintenance] on_failing = ["redis"]`: its shop pages show the maintenance page, the other
    node's show pretix's own errors."""
    outcome = Outcome("redis_killed" if shared else "redis_killed_without_shared_checks")
    shared_checks = ["redis"] if shared else []
    try:
        cluster.reconfigure_nodes(gate_on_web=True, shared_checks=shared_checks,
                                  on_failing={closing_node: ["redis"]})
        if not shared:
            cluster.reconfigure_lb(shared_checks=())
        for name, node in cluster.nodes.items():
            assert node.agent is not None
            wait_until(lambda node=node: _node_view(node.agent.status()) == ("up 100%", None), timeout=30,
                       what=f"{name}'s agent to answer up with its checks decided",
                       details=lambda node=node: node.agent.log()[-2000:])
        cluster.wait_settled()
        outcome.figures.update(_redis_outage(cluster, outcome, down=down, before=before, after=after,
                                             closing_node=closing_node))
    finally:
        if not cluster.redis.running:
            cluster.redis.start()
        cluster.reconfigure_nodes()
        if not shared:
            cluster.reconfigure_lb()
        if not cluster.celery.running:
            cluster.celery.start()
    cluster.wait_settled()
    return outcome


def _redis_outage(cluster: PretixCluster, outcome: Outcome, *, down: float, before: float, after: float,
                  closing_node: str) -> dict[str, Any]:
    assert cluster.lb_agent is not None
    agents = {name: node.agent for name, node in cluster.nodes.items() if node.agent is not None}
    log_from = cluster.agent_log_lines()
    driver = cluster.driver(run_id(outcome.name), rate=RATE, backends=BACKENDS)
    with StateWatcher(cluster, BACKENDS) as servers, StatusWatcher(agents, _node_view) as nodes, \
            StatusWatcher({"lb": cluster.lb_agent}, lambda s: dict(s["haproxy"]["shared"])) as lb, \
            PageProber(cluster, period=1.0) as pages:
        driver.start()
        time.sleep(before)  # load before the fault: the steady state
        killed_at = time.monotonic()
        cluster.redis.kill()
        time.sleep(down)  # the outage lasts this long whatever anyone does
        restarted_at = time.monotonic()
        cluster.redis.start()
        for name, node in cluster.nodes.items():
            wait_until(lambda node=node: node.healthcheck() == 200, timeout=60,
                       what=f"{name}'s /healthcheck/ to pass with Redis back")
        healthy_at = time.monotonic()
        wait_until(lambda: all(_node_view(a.status())[1] is None for a in agents.values()), timeout=30,
                   what="maintenance for check:redis to end by itself")
        reopened_at = time.monotonic()
        time.sleep(after)  # a little load with Redis back: orders resume
        driver.stop()
    figures: dict[str, Any] = {"down_s": round(restarted_at - killed_at, 3)}
    out = servers.ever_out(killed_at, restarted_at)
    figures["servers_out"] = out
    figures["servers_out_count"] = {backend: len(names) for backend, names in out.items()}
    figures["first_out_s"] = {
        backend: min((round(t - killed_at, 3) for key in servers.changes if key[0] == backend
                      if (t := servers.out_at(key, killed_at)) is not None and t < restarted_at), default=None)
        for backend in BACKENDS}
    changes = cluster.agent_changes(log_from)
    figures["agent_changes"] = changes
    figures["agent_took_out"] = [c for c in changes if "backend=pretix " in c and "state=ready" not in c]
    figures["agent_check_answers"] = {name: sorted({value[0] for value in nodes.values(name, killed_at, healthy_at)
                                                    if value[0] is not None}) for name in agents}
    figures["lb_shared_causes"] = sorted({cause for value in lb.values("lb", killed_at, healthy_at)
                                          for cause in value.values()})
    assert cluster.lb_agent is not None
    figures["lb_shared_cause_events"] = [
        " ".join(line.split()[2:]) for line in cluster.lb_agent.log().splitlines()[log_from:]
        if "haproxy.shared_cause" in line]
    closed_at = nodes.first(closing_node, lambda value: value[1] == "check:redis", killed_at)
    figures["maintenance"] = {
        "node": closing_node,
        "causes": {name: sorted({str(value[1]) for value in nodes.values(name, killed_at, reopened_at)})
                   for name in agents},
        "closed_after_kill_s": None if closed_at is None else round(closed_at - killed_at, 3),
        "reopened_after_redis_back_s": round(reopened_at - restarted_at, 3),
        "reopened_after_healthy_s": round(reopened_at - healthy_at, 3),
    }
    # The shop pages from the moment the closing node's maintenance is on until Redis is back: that
    # node shows the maintenance page with Retry-After, the other pretix's own 500s.
    seen_from = closed_at if closed_at is not None else restarted_at
    figures["pages_during_outage"] = {
        name: {"statuses": statuses(pages.between(name, seen_from, restarted_at)),
               "with_retry_after": sum(1 for _, status, retry in pages.between(name, seen_from, restarted_at)
                                       if status == 503 and retry)}
        for name in cluster.nodes}
    figures["pages_before"] = {name: statuses(pages.between(name, 0, killed_at)) for name in cluster.nodes}
    outcome.orders = _reckon_per_frontend(cluster, driver)
    resumed: dict[str, float | None] = {}
    for index, backend in enumerate(BACKENDS):
        done = [order.scheduled + order.answer.seconds for order in driver.orders
                if order.number % len(BACKENDS) == index and order.answer is not None and order.answer.status == 201
                and order.scheduled > restarted_at]
        resumed[backend] = round(min(done) - restarted_at, 3) if done else None
    figures["first_order_after_redis_back_s"] = resumed
    figures["redis_back_to_healthcheck_200_s"] = round(healthy_at - restarted_at, 3)
    return figures


# ------------------------------------------------------------------------------------------- slow


def _server_report(cluster: PretixCluster, backend: str, server: str) -> dict[str, Any]:
    assert cluster.lb_agent is not None
    for report in cluster.lb_agent.status()["haproxy"]["servers"]:
        if (report["backend"], report["server"]) == (backend, server):
            return dict(report)
    raise FixtureError(f"the load balancer's agent does not report {backend}/{server}")


def slow_node(cluster: PretixCluster, node: str = "app2", *, running: float = 0.01, stopped: float = 0.49,
              at_least: float = 2.0, before: float = 2.0, timeout: float = 30.0) -> Outcome:
    """Slow `node` (its processes stopped and continued in turn, `running` s of every
    `running + stopped`: 2 % by default, so that /healthcheck/ takes longer than the checks' 0.8 s
    every time; at 5 % it answered in 0.6-0.8 s and failed two probes in a row only now and then)
    under orders for at least `at_least` s and until the agent took it out (a soft failure: its
    /healthcheck/ times out while the other node's passes), then let it run at full speed again:
    when is it back in each backend? Its last take-out is older than the flap window first (this is
    a first take-out): it must come back after its check's `rise`, with no hold."""
    outcome = Outcome("slow_node")
    key = ("pretix", node)
    cluster.wait_settled()
    wait_until(lambda: (ago := cluster.seconds_since_take_out(*key)) is None or ago > FLAP_WINDOW, timeout=120,
               what=f"pretix/{node}'s last take-out to leave the flap window")
    log_from = cluster.agent_log_lines()
    driver = cluster.driver(run_id("slow"), rate=RATE, backends=BACKENDS)
    bound = AGENT_RISE * AGENT_INTERVAL + 1.0
    with StateWatcher(cluster, BACKENDS) as servers:
        driver.start()
        try:
            time.sleep(before)
            slowed_at = time.monotonic()
            cluster.nodes[node].slow(running, stopped)
            wait_until(lambda: servers.out_at(key, slowed_at), timeout=timeout,
                       what=f"the agent to take the slowed {node} out",
                       details=lambda: str(_server_report(cluster, *key)))
            time.sleep(max(0.0, slowed_at + at_least - time.monotonic()))
        finally:
            recovered_at = time.monotonic()
            cluster.nodes[node].unslow()
        wait_until(lambda: servers.back_at(key, recovered_at), timeout=timeout,
                   what=f"pretix/{node} to be back in rotation", details=lambda: str(_server_report(cluster, *key)))
        # haproxy alone: back once its own checks rise, if it took the node out at all
        others = [(backend, node) for backend in BACKENDS if backend != "pretix"]
        with_deadline = time.monotonic() + timeout
        while time.monotonic() < with_deadline and not all(servers.usable_now(k) for k in others):
            time.sleep(0.05)
        time.sleep(1.0)
        driver.stop()
    assert cluster.lb_agent is not None
    lb_log = cluster.lb_agent.log().splitlines()
    out_s: dict[str, float | None] = {}
    back_s: dict[str, float | None] = {}
    for backend in BACKENDS:
        out = servers.out_at((backend, node), slowed_at)
        back = servers.back_at((backend, node), recovered_at) if out is not None else None
        out_s[backend] = None if out is None else round(out - slowed_at, 3)
        back_s[backend] = None if back is None else round(back - recovered_at, 3)
    outcome.figures.update({
        "node": node, "duty": f"{running:g} s running of every {running + stopped:g} s",
        "slow_s": round(recovered_at - slowed_at, 3),
        "time_to_out_s": out_s, "back_after_recovery_s": back_s,
        "bound_s": bound, "agent_within_bound": back_s["pretix"] is not None and back_s["pretix"] <= bound,
        "held_by_flap_damping": any("out (flap damping)" in line and f"pretix/{node}" in line
                                    for line in lb_log[log_from:]),
        "agent_changes": cluster.agent_changes(log_from),
    })
    outcome.orders = _reckon_per_frontend(cluster, driver)
    cluster.wait_settled()
    return outcome
