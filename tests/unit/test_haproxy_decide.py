"""Which haproxy servers to change, decided from plain values: shared causes, a fast return, damping."""

import dataclasses

import pytest

from pretix_agent.checks.health import CheckState
from pretix_agent.checks.model import failed, passed
from pretix_agent.config import HaproxySection, HaproxyServer
from pretix_agent.haproxy.decide import Actual, Damping, Memory, SetState, decayed, decide, remember

PASS = CheckState("passing", last=passed("ok"))
HARD = CheckState("failing", last=failed("connection refused", hard=True))
SOFT = CheckState("failing", last=failed("timeout: no answer within 1 s"))
NEW = CheckState()

WITHIN = 1.8  # each check reports at least every interval (1 s) plus timeout (800 ms)


def passing(at):
    """A passing check whose latest probe arrived at `at` (monotonic)."""
    return CheckState("passing", passes=5, last=passed("HTTP 200", at=at), probed_at=at)


def missing(at):
    """A passing check whose latest probe failed (fall not reached yet)."""
    return CheckState("passing", misses=1, last=failed("HTTP 500", at=at), probed_at=at)


def failing(since, at=None, hard=False):
    """A check that turned failing at `since`, its latest probe (a failure) at `at`."""
    at = since if at is None else at
    result = failed("connection refused" if hard else "HTTP 500", hard=hard, at=at)
    return CheckState("failing", misses=3, last=result, failure=result, probed_at=at, failing_since=since)


def section(min_ready=1, hold_down=10.0, cap=6, on_failure="maint", servers=("app1", "app2"), shared=(),
            hold_down_max=300.0, flap_window=300.0, shutdown_sessions=False, backend="pretix"):
    return HaproxySection(socket="/run/haproxy/admin.sock", timeout=2.0, interval=2.0, min_ready=min_ready,
                          hold_down=hold_down, max_changes_per_minute=cap, state_file=None,
                          servers=tuple(HaproxyServer(backend, s, (f"web-{s}",), on_failure, False, tuple(shared),
                                                      shutdown_sessions) for s in servers),
                          hold_down_max=hold_down_max, flap_window=flap_window, shared_checks=tuple(shared))


def up(admin="ready"):
    return Actual(admin, True)


ALL_READY = {("pretix", "app1"): up(), ("pretix", "app2"): up()}


def out(server, reason, state="maint", **kwargs):
    return SetState("pretix", server, state, reason, failure=True, **kwargs)


def report(decision, server):
    return {r.server: r for r in decision.reports}[server]


# --------------------------------------------------------------------------------------------- the basics


def test_all_checks_passing_and_all_ready_changes_nothing():
    decision = decide(section(), {"web-app1": PASS, "web-app2": PASS}, ALL_READY, Memory(), 100.0)
    assert decision.actions == () and decision.events == ()
    assert decision.sentence == "haproxy: 2 server(s) as desired"


def test_hard_failure_takes_the_server_out_at_once():
    decision = decide(section(), {"web-app1": HARD, "web-app2": PASS}, ALL_READY, Memory(), 100.0)
    assert decision.actions == (out("app1", "web-app1: connection refused"),)


def test_hard_failure_acts_even_when_the_rate_limit_is_used_up():
    memory = Memory(changes=tuple((90.0 + i, "pretix", "x") for i in range(6)))
    decision = decide(section(), {"web-app1": HARD, "web-app2": PASS}, ALL_READY, memory, 100.0)
    assert [a.server for a in decision.actions] == ["app1"]


def test_soft_failure_acts_when_another_healthy_server_takes_the_load():
    decision = decide(section(on_failure="drain"), {"web-app1": SOFT, "web-app2": PASS}, ALL_READY, Memory(), 100.0)
    assert decision.actions == (out("app1", "web-app1: timeout: no answer within 1 s", "drain"),)


def test_a_server_out_for_a_soft_failure_comes_back_at_once_when_no_other_healthy_server_is_left():
    # The other server was drained (weight 0 through agent-check: not up for decide) meanwhile.
    actual = {("pretix", "app1"): Actual("ready", False), ("pretix", "app2"): up("maint")}
    memory = Memory(taken_out=frozenset({("pretix", "app2")}), changes=((99.0, "pretix", "app2"),))
    decision = decide(section(), {"web-app1": PASS, "web-app2": SOFT}, actual, memory, 100.0)
    assert decision.actions == (SetState("pretix", "app2", "ready", "web-app2: timeout: no answer within 1 s"),)
    report = {r.server: r for r in decision.reports}["app2"]
    assert report.why.endswith("put back: a soft failure, and no other server is left to take its load")


def test_a_server_out_for_a_soft_failure_stays_out_while_another_server_serves_even_a_failing_one():
    actual = {("pretix", "app1"): up(), ("pretix", "app2"): up("maint")}
    memory = Memory(taken_out=frozenset({("pretix", "app2")}))
    for app1 in (PASS, SOFT):  # a slow app1 still answers; app2's nginx may answer nothing but 502
        decision = decide(section(), {"web-app1": app1, "web-app2": SOFT}, actual, memory, 100.0)
        assert decision.actions == ()


def test_a_server_out_for_a_hard_failure_stays_out_even_when_it_was_the_last():
    actual = {("pretix", "app1"): Actual("ready", False), ("pretix", "app2"): up("maint")}
    memory = Memory(taken_out=frozenset({("pretix", "app2")}))
    decision = decide(section(), {"web-app1": PASS, "web-app2": HARD}, actual, memory, 100.0)
    assert decision.actions == ()


def test_a_server_someone_else_took_out_is_not_put_back_for_lack_of_others():
    actual = {("pretix", "app1"): Actual("ready", False), ("pretix", "app2"): up("maint")}
    decision = decide(section(), {"web-app1": PASS, "web-app2": SOFT}, actual, Memory(), 100.0)
    assert decision.actions == ()


def test_hard_failure_of_every_server_keeps_the_last_min_ready_and_says_why():
    decision = decide(section(), {"web-app1": HARD, "web-app2": HARD}, ALL_READY, Memory(), 100.0)
    assert [a.server for a in decision.actions] == ["app1"]
    assert decision.held == {("pretix", "app2")}
    (event,) = decision.events
    assert event.name == "haproxy.guard_held" and event.level == "error"
    assert report(decision, "app2").desired == "ready" and "min_ready is 1" in report(decision, "app2").why
    assert "holding" not in decision.sentence  # an action was sent; the held one is in the report


def test_the_guard_counts_servers_haproxy_already_marked_down():
    actual = {("pretix", "app1"): up(), ("pretix", "app2"): Actual("ready", False)}
    decision = decide(section(), {"web-app1": HARD, "web-app2": PASS}, actual, Memory(), 100.0)
    assert decision.actions == () and decision.held == {("pretix", "app1")}


def test_min_ready_zero_allows_taking_every_server_out_on_hard_failures():
    decision = decide(section(min_ready=0), {"web-app1": HARD, "web-app2": HARD}, ALL_READY, Memory(), 100.0)
    assert [a.server for a in decision.actions] == ["app1", "app2"]


def test_guard_is_reported_once_per_episode_and_its_release_too():
    checks = {"web-app1": HARD, "web-app2": HARD}
    first = decide(section(), checks, ALL_READY, Memory(), 100.0)
    memory = remember(Memory(), first, first.actions, 100.0, section())
    actual = {("pretix", "app1"): up("maint"), ("pretix", "app2"): up()}
    second = decide(section(), checks, actual, memory, 101.0)
    assert second.events == () and second.held == {("pretix", "app2")}
    third = decide(section(), {"web-app1": HARD, "web-app2": PASS}, actual, remember(memory, second, [], 101.0,
                                                                                      section()), 102.0)
    assert [e.name for e in third.events] == ["haproxy.guard_released"]


def test_a_server_someone_else_put_in_maint_stays_there():
    actual = {("pretix", "app1"): up("maint"), ("pretix", "app2"): up()}
    decision = decide(section(), {"web-app1": PASS, "web-app2": PASS}, actual, Memory(), 100.0)
    assert decision.actions == ()
    assert "set by someone else" in report(decision, "app1").why


def test_undecided_checks_leave_servers_as_they_are():
    actual = {("pretix", "app1"): up("maint"), ("pretix", "app2"): up()}
    memory = Memory(taken_out=frozenset({("pretix", "app1")}))
    decision = decide(section(), {"web-app1": NEW, "web-app2": NEW}, actual, memory, 100.0)
    assert decision.actions == ()
    assert "no verdict yet" in report(decision, "app1").why


def test_rate_limit_defers_soft_changes_per_backend_until_the_oldest_change_is_a_minute_old():
    servers = ("a", "b", "c", "d")
    actual = {("pretix", s): up() for s in servers}
    checks = {"web-a": SOFT, "web-b": PASS, "web-c": PASS, "web-d": PASS}
    memory = Memory(changes=tuple((90.0 + i, "pretix", "x") for i in range(6)))
    decision = decide(section(servers=servers, cap=6), checks, actual, memory, 100.0)
    assert decision.actions == () and decision.deferred and decision.wake_at == 150.0
    assert "max_changes_per_minute" in report(decision, "a").why


def test_a_server_haproxy_does_not_know_is_reported_not_changed():
    decision = decide(section(servers=("app1", "ghost")), {"web-app1": PASS, "web-ghost": HARD},
                      {("pretix", "app1"): up()}, Memory(), 100.0)
    assert decision.actions == ()
    assert report(decision, "ghost").why == "haproxy has no such server"


def test_memory_forgets_changes_older_than_a_minute_but_keeps_who_was_taken_out():
    first = decide(section(), {"web-app1": HARD, "web-app2": PASS}, ALL_READY, Memory(), 0.0)
    memory = remember(Memory(), first, first.actions, 0.0, section())
    later = remember(memory, dataclasses.replace(first, actions=()), [], 120.0, section())
    assert later.changes == () and later.taken_out == {("pretix", "app1")}


# --------------------------------------------------------------------------------------------- shared causes

# Measured on a real pretix with Redis killed: both nodes' /healthcheck/ answered 500, web1's check
# turned failing 20 ms before web2's. Each row: the checks as the decision at `now` sees them, and
# whether app1 goes out.
SHARED_CASES = {
    "every server fails, 20 ms apart: none out": (
        {"web-app1": failing(100.0), "web-app2": failing(100.02)}, 100.02, False, "2 of 2 servers failing at once"),
    "the other's latest probe failed too (fall not reached): none out": (
        {"web-app1": failing(100.0), "web-app2": missing(100.3)}, 100.3, False, "2 of 2 servers failing at once"),
    "the other has not reported since: wait, none out yet": (
        {"web-app1": failing(100.0), "web-app2": passing(99.4)}, 100.5, False, None),
    "the other reported passing since: one server failing alone, out": (
        {"web-app1": failing(100.0), "web-app2": passing(100.4)}, 100.4, True, None),
    "the other did not report within one report period: judged alone, out": (
        {"web-app1": failing(100.0), "web-app2": passing(99.4)}, 100.0 + WITHIN, True, None),
    "a named shared check failing: none out": (
        {"web-app1": failing(100.0), "web-app2": passing(100.4), "redis": failing(98.1, at=100.1, hard=True)},
        100.4, False, "redis failing: 1 of 2 servers failing"),
    "a named shared check whose latest probe failed: none out": (
        {"web-app1": failing(100.0), "web-app2": passing(100.4), "redis": missing(99.9)}, 100.4, False,
        "redis failing: 1 of 2 servers failing"),
    "a named shared check passing: one server failing alone, out": (
        {"web-app1": failing(100.0), "web-app2": passing(100.4), "redis": passing(100.2)}, 100.4, True, None),
}


@pytest.mark.parametrize("case", SHARED_CASES)
def test_a_soft_failure_is_judged_over_the_backend(case):
    checks, now, taken_out, cause = SHARED_CASES[case]
    within = dict.fromkeys(("web-app1", "web-app2", "redis"), WITHIN)
    shared = ("redis",) if "redis" in checks else ()
    decision = decide(section(shared=shared), checks, ALL_READY, Memory(), now, report_within=within)
    assert [a.server for a in decision.actions] == (["app1"] if taken_out else [])
    if cause:
        assert decision.shared == {"pretix": f"{cause}, none taken out"}
        assert decision.sentence == f"haproxy: pretix: {cause}, none taken out"
        assert f"{cause}, none taken out" in report(decision, "app1").why
        assert "haproxy.guard_held" not in [e.name for e in decision.events]
    else:
        assert decision.shared == {}


def test_while_it_settles_the_decision_says_when_to_look_again():
    checks = {"web-app1": failing(100.0), "web-app2": passing(99.4)}
    decision = decide(section(), checks, ALL_READY, Memory(), 100.5, report_within=dict.fromkeys(checks, WITHIN))
    assert decision.actions == () and decision.deferred and decision.wake_at == 100.0 + WITHIN
    assert "waiting until every check of pretix has reported" in report(decision, "app1").why
    assert decision.sentence == "haproxy: pretix: a soft failure, waiting until every check has reported"


def test_most_of_three_servers_failing_is_shared_and_one_of_three_is_not():
    servers = ("a", "b", "c")
    actual = {("pretix", s): up() for s in servers}
    two = {"web-a": failing(100.0), "web-b": failing(100.1), "web-c": passing(100.2)}
    decision = decide(section(servers=servers), two, actual, Memory(), 100.2)
    assert decision.actions == () and decision.shared == {"pretix": "2 of 3 servers failing at once, none taken out"}
    one = {"web-a": failing(100.0), "web-b": passing(100.1), "web-c": passing(100.2)}
    assert [a.server for a in decide(section(servers=servers), one, actual, Memory(), 100.2).actions] == ["a"]


def test_a_named_shared_check_never_keeps_a_hard_failure_in():
    checks = {"web-app1": failing(100.0, hard=True), "web-app2": passing(100.1), "redis": failing(99.0)}
    decision = decide(section(shared=("redis",)), checks, ALL_READY, Memory(), 100.1)
    assert [a.server for a in decision.actions] == ["app1"]


def test_a_shared_cause_is_one_event_per_episode_and_its_end_another():
    config = section(shared=("redis",))
    sick = {"web-app1": failing(100.0), "web-app2": failing(100.02), "redis": failing(98.1)}
    first = decide(config, sick, ALL_READY, Memory(), 100.02)
    (event,) = first.events
    assert (event.name, event.level, event.fields["backend"], event.fields["servers"]) == (
        "haproxy.shared_cause", "warning", "pretix", "app1,app2")
    assert event.fields["cause"] == "redis failing: 2 of 2 servers failing, none taken out"
    memory = remember(Memory(), first, [], 100.02, config)
    assert decide(config, sick, ALL_READY, memory, 101.0).events == ()
    healthy = {"web-app1": passing(110.0), "web-app2": passing(110.0), "redis": passing(110.0)}
    (ended,) = decide(config, healthy, ALL_READY, memory, 110.0).events
    assert (ended.name, ended.fields["cause"]) == ("haproxy.shared_cause_ended",
                                                   "redis failing: 2 of 2 servers failing, none taken out")


def rising(since, at):
    """A failing check (since `since`) whose latest probe, at `at`, passed: on its way back."""
    return CheckState("failing", passes=1, last=passed("HTTP 200", at=at), failure=failed("HTTP 500"), probed_at=at,
                      failing_since=since)


def test_servers_recovering_one_after_the_other_after_a_shared_cause_are_not_taken_out():
    config = section()
    both = {"web-app1": failing(100.0), "web-app2": failing(100.02)}
    first = decide(config, both, ALL_READY, Memory(), 100.02, report_within=dict.fromkeys(both, WITHIN))
    memory = remember(Memory(), first, [], 100.02, config)
    # app1 has risen; app2 passed once, its rise not reached yet: on its way back, never out.
    back = {"web-app1": passing(110.5), "web-app2": rising(100.02, 110.52)}
    decision = decide(config, back, ALL_READY, memory, 110.52, report_within=dict.fromkeys(both, WITHIN))
    assert decision.actions == () and [e.name for e in decision.events] == ["haproxy.shared_cause_ended"]
    assert "passing again: not taken out on its way back" in report(decision, "app2").why
    # app2's latest probe still failed when the episode ended: it gets a settle time from the end.
    laggard = {"web-app1": passing(110.5), "web-app2": failing(100.02, at=110.3)}
    ended = decide(config, laggard, ALL_READY, memory, 110.52, report_within=dict.fromkeys(both, WITHIN))
    assert ended.actions == () and ended.wake_at == 110.52 + WITHIN and ended.shared_ended == {"pretix": 110.52}
    memory = remember(memory, ended, [], 110.52, config)
    still = {"web-app1": passing(111.0), "web-app2": failing(100.02, at=111.3)}  # reported since: alone, out
    assert [a.server for a in decide(config, still, ALL_READY, memory, 111.3,
                                     report_within=dict.fromkeys(both, WITHIN)).actions] == ["app2"]


def test_a_probe_that_passes_now_and_then_during_an_outage_does_not_end_its_episode():
    config = section(shared=("redis",))
    sick = {"web-app1": failing(100.0), "web-app2": failing(100.02), "redis": failing(98.0)}
    first = decide(config, sick, ALL_READY, Memory(), 100.02)
    memory = remember(Memory(), first, [], 100.02, config)
    flicker = {**sick, "web-app2": rising(100.02, 101.0)}
    decision = decide(config, flicker, ALL_READY, memory, 101.0)
    assert decision.events == () and decision.shared == first.shared and decision.actions == ()


def test_a_lagging_replica_goes_out_to_its_backup_primary_with_its_sessions_shut():
    # listen pretix_replica: server replica (gated by its postgres check), server primary backup
    config = section(servers=("replica",), shutdown_sessions=True, backend="pretix_replica")
    actual = {("pretix_replica", "replica"): up(), ("pretix_replica", "primary"): up()}
    lag = {"web-replica": failing(100.0)}
    decision = decide(config, lag, actual, Memory(), 100.0)
    assert decision.actions == (SetState("pretix_replica", "replica", "maint", "web-replica: HTTP 500", failure=True,
                                         shutdown_sessions=True),)
    back = remember(Memory(), decision, decision.actions, 100.0, config)
    returned = decide(config, {"web-replica": passing(104.0)}, {**actual, ("pretix_replica", "replica"): up("maint")},
                      back, 104.0)
    assert returned.actions == (SetState("pretix_replica", "replica", "ready", "gating checks pass"),)


# ------------------------------------------------------------------------------- a fast return, damped flaps


def take_out(memory, at, config):
    decision = decide(config, {"web-app1": failing(at), "web-app2": passing(at)}, ALL_READY, memory, at)
    assert [a.server for a in decision.actions] == ["app1"], decision.reports
    return remember(memory, decision, decision.actions, at, config)


def put_back(memory, at, config):
    """Return the decision for app1 out and passing again at `at`, and the memory after it."""
    actual = {("pretix", "app1"): up("maint"), ("pretix", "app2"): up()}
    decision = decide(config, {"web-app1": passing(at), "web-app2": passing(at)}, actual, memory, at)
    return decision, remember(memory, decision, decision.actions, at, config)


def test_a_server_taken_out_for_the_first_time_returns_as_soon_as_its_checks_pass():
    config = section(hold_down=10.0)
    memory = take_out(Memory(), 100.0, config)
    decision, _ = put_back(memory, 102.2, config)  # the check's rise is behind it: passing again
    assert decision.actions == (SetState("pretix", "app1", "ready", "gating checks pass"),)


def test_a_flapping_server_is_held_out_twice_as_long_each_time_up_to_the_maximum():
    config = section(hold_down=10.0, hold_down_max=35.0, flap_window=300.0, cap=100)
    memory, at, holds = Memory(), 100.0, []
    for _ in range(5):
        memory = take_out(memory, at, config)
        holds.append(memory.damping[("pretix", "app1")].hold)
        while True:  # back once the hold allows, looking every second
            at += 1.0
            decision, memory = put_back(memory, at, config)
            if decision.actions:
                break
        at += 5.0
    assert holds == [0.0, 10.0, 20.0, 35.0, 35.0]


def test_a_held_server_shows_its_hold_and_when_it_ends_and_comes_back_then():
    config = section(hold_down=10.0)
    memory = take_out(Memory(), 100.0, config)
    _, memory = put_back(memory, 101.0, config)
    memory = take_out(memory, 110.0, config)  # the second time within flap_window: held 10 s
    early, _ = put_back(memory, 112.0, config)
    assert early.actions == () and early.deferred and early.wake_at == 120.0
    held = report(early, "app1")
    assert (held.level, held.hold, held.hold_until) == (1, 10.0, 120.0)
    assert "held out by its flap damping: 10 s after its 2nd take-out within 300 s" in held.why
    assert early.sentence == "haproxy: holding pretix/app1 out (flap damping)"
    later, _ = put_back(memory, 120.0, config)
    assert later.actions == (SetState("pretix", "app1", "ready", "gating checks pass"),)


def test_damping_decays_one_level_per_quiet_flap_window():
    config = section(hold_down=10.0, flap_window=300.0)
    memory = Memory()
    for at in (100.0, 110.0, 120.0):  # three take-outs within the window: level 2, held 20 s
        memory = take_out(memory, at, config)
        _, memory = put_back(memory, at + 25.0, config)
    assert memory.damping[("pretix", "app1")] == Damping(2, 120.0, 20.0)
    assert decayed(memory.damping[("pretix", "app1")], 120.0 + 350.0, 300.0) == 1
    memory = take_out(memory, 120.0 + 350.0, config)  # one quiet window: one level less, held 10 s
    assert memory.damping[("pretix", "app1")] == Damping(1, 470.0, 10.0)
    _, memory = put_back(memory, 500.0, config)
    memory = take_out(memory, 470.0 + 700.0, config)  # two quiet windows: back to a fast return
    assert memory.damping[("pretix", "app1")].hold == 0.0


def test_a_quiet_server_is_forgotten_once_its_damping_has_decayed():
    config = section(hold_down=10.0, flap_window=300.0)
    memory = take_out(Memory(), 100.0, config)
    _, memory = put_back(memory, 101.0, config)
    assert ("pretix", "app1") in memory.damping
    _, memory = put_back(memory, 500.0, config)
    assert memory.damping == {}


def test_a_planned_drain_is_no_flap():
    config = local_section()
    drained = decide(config, {"web-app1": PASS, "web-app2": PASS}, ALL_READY, Memory(), 100.0, drain_local="x")
    assert drained.actions[0].failure is False
    assert remember(Memory(), drained, drained.actions, 100.0, config).damping == {}


# --------------------------------------------------------------------------------------------- planned drain


def local_section(**kwargs):
    base = section(**kwargs)
    first = base.servers[0]
    return dataclasses.replace(base, servers=(dataclasses.replace(first, local=True), *base.servers[1:]))


def test_drain_of_this_node_drains_its_local_server_at_once_and_ready_puts_it_back():
    checks = {"web-app1": PASS, "web-app2": PASS}
    memory = Memory(changes=tuple((90.0 + i, "pretix", "x") for i in range(6)))  # a planned drain ignores the cap
    drained = decide(local_section(), checks, ALL_READY, memory, 100.0, drain_local="kernel update")
    assert drained.actions == (SetState("pretix", "app1", "drain", "draining this node: kernel update"),)
    memory = remember(Memory(), drained, drained.actions, 100.0, local_section())
    actual = {("pretix", "app1"): up("drain"), ("pretix", "app2"): up()}
    back = decide(local_section(), checks, actual, memory, 102.0)
    assert back.actions == (SetState("pretix", "app1", "ready", "gating checks pass"),)


def test_drain_of_this_node_never_takes_out_the_last_healthy_server():
    checks = {"web-app1": PASS, "web-app2": HARD}
    actual = {("pretix", "app1"): up(), ("pretix", "app2"): up("maint")}
    decision = decide(local_section(), checks, actual, Memory(), 100.0, drain_local="reboot")
    assert decision.actions == () and decision.held == {("pretix", "app1")}
