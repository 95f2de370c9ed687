"""haproxy: how fast a dead backend leaves rotation, what a kill costs under load, and what one
reconcile cycle costs on a large farm.

1. Kill to out of rotation: a backend of a real haproxy 2.6 (tests/integration/haproxy_fixture.py)
   stops accepting connections (refused) at a random phase of the detector's cycle; the admin
   socket is polled every couple of milliseconds until `show servers state` says the server is
   not usable (admin maint/drain, or operationally down). Variant `agent`: the real daemon with an
   HTTP check per backend gating its `[[haproxy.server]]`, haproxy's own checks off. Two baselines,
   haproxy's own HTTP checks without an agent: `haproxy_equal` at the agent's interval, fall, rise
   and timeout (so the ratio shows what the design gives, not a faster interval), and
   `haproxy_defaults` at haproxy's defaults (inter 2s, fall 3, rise 2: what a cluster without the
   agent runs). The agent acts on a hard failure (refused) at the first failed probe, haproxy only
   after `fall` failed checks, so the ratio to haproxy_equal is expected near 1 / fall.
2. Failed requests around such a kill, under HTTP load through haproxy's frontend (client threads
   on fresh connections, from shortly before the kill to after the slower detector's worst case).
   The fixture's backend retries connection failures on the other server (`retry-on conn-failure`,
   `option redispatch`), so refused connections are mostly invisible to clients in both variants;
   what remains are requests in flight on the killed backend (their connections are cut: haproxy
   answers 502, and must not retry them, SPEC 5). Reported as counted, with latencies.
3. One reconcile cycle of the agent's real `HaproxyController.cycle()` (show info, show servers
   state, the pure `decide`, one `set server` per difference, the server-state file) against a
   real haproxy with 1,000 servers, when nothing differs and when 10% must change, beside the bare
   `show servers state` round trip and a naive reconciler that sets every server's state
   unconditionally, measured in the same run.
"""

from __future__ import annotations

import collections
import http.client
import random
import tempfile
import threading
import time
from pathlib import Path

from pretix_agent.checks.health import FAILING, PASSING, CheckState
from pretix_agent.checks.model import failed, passed
from pretix_agent.config import HaproxySection, HaproxyServer
from pretix_agent.haproxy.controller import HaproxyController, actual_from
from pretix_agent.haproxy.decide import Memory, decide
from pretix_agent.haproxy.runtime import RuntimeApi, ServerState
from tests.integration.agent_fixture import Agent, write_config
from tests.integration.haproxy_fixture import BACKEND, HEALTHCHECK_HOST, HOST, HaproxyFixture, free_port

from .common import percentiles, ratio, wait_for

# The agent's checks and haproxy section (variant `agent`).
INTERVAL, TIMEOUT, FALL, RISE = 0.5, 0.4, 2, 2
HAPROXY_INTERVAL = 0.5
# haproxy's own checks: at the agent's interval, fall, rise and timeout (`haproxy_equal`), and at
# haproxy's defaults (`haproxy_defaults`; timeout check 1s as the fixture writes it).
HX_EQUAL = {"inter": INTERVAL, "fall": FALL, "rise": RISE, "timeout": TIMEOUT}
HX_INTER, HX_FALL, HX_RISE = 2.0, 3, 2
HX_DEFAULTS = {"inter": HX_INTER, "fall": HX_FALL, "rise": HX_RISE, "timeout": 1.0}
BASELINES = {"haproxy_equal": HX_EQUAL, "haproxy_defaults": HX_DEFAULTS}

POLL_STEP = 0.002  # between two `show servers state` polls while waiting for the server to leave
LOAD_THREADS = 4
LOAD_BEFORE, LOAD_AFTER = 1.0, 7.0  # s around the kill; 7 s covers haproxy's worst case (fall x inter = 6 s)
LOAD_MAX_REQUESTS = 200_000

FARM_BACKENDS, FARM_PER_BACKEND = 4, 250  # 1,000 servers
FARM_CHANGED_EVERY = 10  # every 10th server's gating check fails hard: 10% must change


def _round(stats: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}


def _usable(state: ServerState) -> bool:
    return state.admin == "ready" and state.up


def _server(api: RuntimeApi, name: str) -> ServerState:
    for state in api.servers_state(BACKEND):
        if state.server == name:
            return state
    raise LookupError(f"show servers state has no {BACKEND}/{name}")


def _all_usable(api: RuntimeApi, names) -> bool:
    states = {s.server: s for s in api.servers_state(BACKEND)}
    return all(_usable(states[name]) for name in names)


# ------------------------------------------------------------------------------- the two variants


def _agent_config(hx: HaproxyFixture) -> str:
    text = ""
    for name, backend in hx.backends.items():
        text += f"""
[checks.web-{name}]
type = "http"
url = "http://{HOST}:{backend.port}/healthcheck/"
host = "{HEALTHCHECK_HOST}"
interval = "{int(INTERVAL * 1000)}ms"
timeout = "{int(TIMEOUT * 1000)}ms"
fall = {FALL}
rise = {RISE}
"""
    # hold_down and max_changes_per_minute are loosened so that putting the revived server back
    # between trials is not damped; hard failures (what is measured) act at once regardless.
    text += f"""
[haproxy]
socket = "{hx.admin_socket}"
interval = "{int(HAPROXY_INTERVAL * 1000)}ms"
hold_down = "1s"
max_changes_per_minute = 10000
min_ready = 1
state_file = "{hx.state_file}"
"""
    for name in hx.backends:
        text += f"""
[[haproxy.server]]
backend = "{BACKEND}"
server = "{name}"
checks = ["web-{name}"]
"""
    return text


class Variant:
    """One detector in front of a two-server haproxy: `agent` (the daemon, haproxy's checks off)
    or a baseline of BASELINES (haproxy's own HTTP checks, no agent)."""

    def __init__(self, name: str, root: Path):
        self.name = name
        checks = BASELINES.get(name)
        self.phase = INTERVAL if checks is None else checks["inter"]  # the detector's cycle
        if checks is None:
            self.hx = HaproxyFixture(servers=2)
        else:
            self.hx = HaproxyFixture(servers=2, http_check=True, check_inter=f"{int(checks['inter'] * 1000)}ms",
                                     fall=int(checks["fall"]), rise=int(checks["rise"]),
                                     check_timeout=f"{int(checks['timeout'] * 1000)}ms")
        self.agent: Agent | None = None
        self.root = root

    def __enter__(self) -> Variant:
        self.hx.start()
        try:
            if self.name == "agent":
                self.agent = Agent(self.root, write_config(self.root, _agent_config(self.hx)))
                try:
                    self.agent.wait_ready(30)
                    self.agent.wait_status(lambda d: all(c["state"] == "passing" for c in d["checks"].values()),
                                           timeout=30)
                except AssertionError:
                    raise RuntimeError(f"the daemon did not start:\n{self.agent.log()}") from None
            self.settle()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
        self.hx.close()

    @property
    def api(self) -> RuntimeApi:
        return self.hx.runtime(timeout=1.0)

    def settle(self) -> None:
        """Every backend serving and usable in haproxy (for the agent: its checks passed `rise`
        times and it put the server back; for haproxy: `rise` checks passed)."""
        for backend in self.hx.backends.values():
            if backend.mode != "serving":
                backend.revive()
        wait_for(lambda: _all_usable(self.api, self.hx.backends), timeout=60, step=0.01)

    def kill_at_random_phase(self, server: str) -> float:
        """Wait a random part of the detector's cycle, kill `server`; return the monotonic time the
        kill took effect (the listening socket is closed when kill() returns)."""
        time.sleep(random.uniform(0, self.phase))
        self.hx.backends[server].kill()
        return time.monotonic()

    def wait_out(self, server: str, timeout: float = 30.0, step: float = POLL_STEP) -> float:
        api = self.api
        return wait_for(lambda: not _usable(_server(api, server)), timeout=timeout, step=step)


def _detection(variant: Variant, trials: int) -> list[float]:
    seconds = []
    for trial in range(trials):
        server = ("app1", "app2")[trial % 2]
        variant.settle()
        killed = variant.kill_at_random_phase(server)
        seconds.append(variant.wait_out(server) - killed)
    variant.settle()
    return seconds


def _load_trial(variant: Variant) -> dict:
    """HTTP load through the frontend from LOAD_BEFORE s before a kill to LOAD_AFTER s after it."""
    hx = variant.hx
    server = "app1"
    variant.settle()
    time.sleep(random.uniform(0, variant.phase))  # the kill lands LOAD_BEFORE s later: a random phase too
    results: list[tuple[float, float, str]] = []  # (start, latency, "200" | status | error name)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set() and len(results) < LOAD_MAX_REQUESTS:
            started = time.monotonic()
            try:
                outcome = str(hx.request("/", timeout=5.0).status)
            except (OSError, http.client.HTTPException) as error:  # a body cut short is a failure too
                outcome = type(error).__name__
            results.append((started, time.monotonic() - started, outcome))

    workers = [threading.Thread(target=load, name=f"load-{n}", daemon=True) for n in range(LOAD_THREADS)]
    load_started = time.monotonic()
    for worker in workers:
        worker.start()
    time.sleep(LOAD_BEFORE)
    out_at: list[float] = []

    def watch() -> None:
        try:
            out_at.append(variant.wait_out(server, timeout=LOAD_AFTER + 5, step=0.005))
        except TimeoutError:
            pass

    watcher = threading.Thread(target=watch, name="watch", daemon=True)
    hx.backends[server].kill()
    killed = time.monotonic()
    watcher.start()
    time.sleep(max(0.0, killed + LOAD_AFTER - time.monotonic()))
    stop.set()
    for worker in workers:
        worker.join(10)
    watcher.join(LOAD_AFTER + 10)
    window = time.monotonic() - load_started
    variant.settle()

    failures = [(start - killed, outcome) for start, _, outcome in results if outcome != "200"]
    latencies = [latency for _, latency, _ in results]
    return {
        "requests": len(results),
        "failed": len(failures),
        "failed_kinds": dict(collections.Counter(outcome for _, outcome in failures)),
        "failed_requests_started_s_after_kill": [round(t, 3) for t, _ in failures[:10]],
        "requests_per_s": round(len(results) / window, 1),
        "latency_s": _round(percentiles(latencies)) if latencies else None,
        "out_of_rotation_s_after_kill": round(out_at[0] - killed, 4) if out_at else None,
    }


def _failover(quick: bool) -> tuple[dict, dict]:
    trials = 3 if quick else 15
    load_trials = 1 if quick else 2
    detection: dict[str, list[float]] = {}
    load: dict[str, list[dict]] = {}
    for name in ("agent", *BASELINES):
        with tempfile.TemporaryDirectory(prefix="pa-bench-haproxy-") as directory, \
                Variant(name, Path(directory)) as variant:
            detection[name] = _detection(variant, trials)
            load[name] = [_load_trial(variant) for _ in range(load_trials)]
    stats = {name: percentiles(seconds) for name, seconds in detection.items()}
    kill_to_out = {name: {"seconds": _round(s)} for name, s in stats.items()}
    for baseline in BASELINES:
        kill_to_out[f"ratio_agent_to_{baseline}"] = {
            "p50": ratio(stats["agent"]["p50"], stats[baseline]["p50"]),
            "p99": ratio(stats["agent"]["p99"], stats[baseline]["p99"])}
    kill_to_out["ratio_to_interval"] = {  # expected about 0.5 (agent: first probe after the kill)
        "agent_p50_to_check_interval": ratio(stats["agent"]["p50"], INTERVAL),
        **{f"{baseline}_p50_to_inter_x_fall": ratio(stats[baseline]["p50"], checks["inter"] * checks["fall"])
           for baseline, checks in BASELINES.items()}}
    totals = {}
    for name, runs in load.items():
        requests, failures = sum(r["requests"] for r in runs), sum(r["failed"] for r in runs)
        totals[name] = {"requests": requests, "failed": failures,
                        "failed_per_10k": round(failures / requests * 10_000, 2) if requests else None,
                        "trials": runs}
    for baseline in BASELINES:
        totals[f"ratio_failed_agent_to_{baseline}"] = ratio(totals["agent"]["failed"], totals[baseline]["failed"])
    return kill_to_out, totals


# ----------------------------------------------------------------------------- 1,000 servers


class Farm(HaproxyFixture):
    """The fixture's haproxy (process handling, sockets, cleanup) with a generated configuration of
    FARM_BACKENDS x FARM_PER_BACKEND servers, all pointing at one closed port: with no checks and
    no traffic haproxy never connects to them."""

    def __init__(self) -> None:
        super().__init__(servers=0)
        self.target_port = free_port()
        self.farm = {f"farm{b}": [f"s{n:03d}" for n in range(1, FARM_PER_BACKEND + 1)]
                     for b in range(1, FARM_BACKENDS + 1)}

    def config_text(self) -> str:
        lines = [
            "global",
            f"    stats socket {self.admin_socket} mode 600 level admin expose-fd listeners",
            "    stats timeout 10s",
            f"    server-state-file {self.state_file}",
            "",
            "defaults",
            "    mode http",
            "    timeout connect 1s",
            "    timeout client 10s",
            "    timeout server 10s",
            "    load-server-state-from-file global",
            "",
            "frontend fe",
            f"    bind {HOST}:{self.frontend_port}",
            "    default_backend farm1",
        ]
        for backend, servers in self.farm.items():
            lines += ["", f"backend {backend}", "    balance roundrobin"]
            lines += [f"    server {server} {HOST}:{self.target_port}" for server in servers]
        return "\n".join(lines) + "\n"


def _p50(seconds: list[float]) -> float:
    return percentiles(seconds)["p50"]


def _reconcile(quick: bool) -> dict:
    cycles = 3 if quick else 7
    passing = CheckState(state=PASSING, passes=RISE, probes=RISE, last=passed("HTTP 200"))
    failing = CheckState(state=FAILING, misses=1, probes=RISE + 1,
                         last=failed("connection refused by 127.0.0.1", hard=True))
    with tempfile.TemporaryDirectory(prefix="pa-bench-farm-") as directory, Farm() as farm:
        keys = [(backend, server) for backend, servers in farm.farm.items() for server in servers]
        section = HaproxySection(
            socket=str(farm.admin_socket), timeout=5.0, interval=HAPROXY_INTERVAL, min_ready=1,
            hold_down=0.0, max_changes_per_minute=10000, state_file=farm.state_file,
            servers=tuple(HaproxyServer(b, s, (f"web-{b}-{s}",), "maint") for b, s in keys))
        changed = {f"web-{b}-{s}" for b, s in keys[::FARM_CHANGED_EVERY]}
        all_pass = {f"web-{b}-{s}": passing for b, s in keys}
        some_fail = {name: failing if name in changed else passing for name in all_pass}
        events: list = []
        controller = HaproxyController(section, Path(directory), report=lambda _doc: None,
                                       log_event=events.append, beat=lambda: None)
        api = RuntimeApi(section.socket, timeout=5.0)

        def timed(function) -> float:
            started = time.perf_counter()
            function()
            return time.perf_counter() - started

        controller.update(all_pass, None)
        controller.cycle()  # warm-up: learns haproxy's identity
        steady = [timed(controller.cycle) for _ in range(cycles)]
        take_out, put_back = [], []
        for _ in range(cycles):
            controller.update(some_fail, None)
            take_out.append(timed(controller.cycle))
            controller.update(all_pass, None)
            put_back.append(timed(controller.cycle))
        controller.update(some_fail, None)
        controller.cycle()
        in_maint_after_take_out = sum(s.admin == "maint" for s in api.servers_state())
        controller.update(all_pass, None)
        controller.cycle()
        ready_at_end = sum(s.admin == "ready" for s in api.servers_state())

        round_trip = [timed(lambda: api.execute("show servers state")) for _ in range(cycles)]
        parsed = [timed(api.servers_state) for _ in range(cycles)]
        actual = actual_from(api.servers_state())
        decide_only = [timed(lambda: decide(section, all_pass, actual, Memory(), time.monotonic()))
                       for _ in range(cycles)]

        def naive() -> None:  # every server, unconditionally, one exchange each (as set_server_state does)
            for backend, server in keys:
                api.set_server_state(backend, server, "ready")

        naive_all = [timed(naive) for _ in range(max(2, cycles // 2))]

    figures = {"steady": _p50(steady), "take_out_10pct": _p50(take_out), "put_back_10pct": _p50(put_back),
               "show_servers_state_round_trip": _p50(round_trip), "show_servers_state_parsed": _p50(parsed),
               "decide_only_steady": _p50(decide_only), "naive_set_every_server": _p50(naive_all)}
    base, naive_p50 = figures["show_servers_state_round_trip"], figures["naive_set_every_server"]
    return {
        "servers": len(keys), "backends": FARM_BACKENDS, "changed_servers": len(changed), "cycles": cycles,
        "p50_seconds": {k: round(v, 5) for k, v in figures.items()},
        "ratio_to_show_servers_state_round_trip": {
            k: ratio(figures[k], base) for k in ("steady", "take_out_10pct", "put_back_10pct", "decide_only_steady",
                                                 "naive_set_every_server")},
        "ratio_to_naive_set_every_server": {
            k: ratio(figures[k], naive_p50) for k in ("steady", "take_out_10pct", "put_back_10pct")},
        "sanity": {"in_maint_after_take_out": in_maint_after_take_out, "ready_at_end": ready_at_end,
                   "events_logged": len(events)},
        "note": "cycle(): show info + show servers state + decide + one set server per change (+ the "
                "server-state file and the agent's memory file when something changed); events go to a list, "
                "not to a logger",
    }


def run(quick: bool = False) -> dict:
    started = time.monotonic()
    kill_to_out, load = _failover(quick)
    reconcile = _reconcile(quick)
    return {
        "config": {
            "agent": {"check_interval_s": INTERVAL, "check_timeout_s": TIMEOUT, "fall": FALL, "rise": RISE,
                      "haproxy_interval_s": HAPROXY_INTERVAL, "hold_down_s": 1.0, "haproxy_own_checks": False},
            **{baseline: {"inter_s": checks["inter"], "fall": checks["fall"], "rise": checks["rise"],
                          "timeout_check_s": checks["timeout"], "agent": False}
               for baseline, checks in BASELINES.items()},
            "poll_step_s": POLL_STEP,
            "load": {"threads": LOAD_THREADS, "before_kill_s": LOAD_BEFORE, "after_kill_s": LOAD_AFTER,
                     "fresh_connection_per_request": True, "retry_on": "conn-failure", "redispatch": True},
        },
        "kill_to_out_of_rotation": kill_to_out,
        "failed_requests_during_kill": load,
        "reconcile_1000_servers": reconcile,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
