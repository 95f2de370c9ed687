"""Which haproxy servers to change, decided from plain values."""

from pretix_agent.checks.health import CheckState
from pretix_agent.checks.model import failed, passed
from pretix_agent.config import HaproxySection, HaproxyServer
from pretix_agent.haproxy.decide import Actual, Memory, SetState, decide, remember

PASS = CheckState("passing", last=passed("ok"))
HARD = CheckState("failing", last=failed("connection refused", hard=True))
SOFT = CheckState("failing", last=failed("timeout: no answer within 1 s"))
NEW = CheckState()


def section(min_ready=1, hold_down=10.0, cap=6, on_failure="maint", servers=("app1", "app2")):
    return HaproxySection(socket="/run/haproxy/admin.sock", timeout=2.0, interval=2.0, min_ready=min_ready,
                          hold_down=hold_down, max_changes_per_minute=cap, state_file=None,
                          servers=tuple(HaproxyServer("pretix", s, (f"web-{s}",), on_failure) for s in servers))


def up(admin="ready"):
    return Actual(admin, True)


ALL_READY = {("pretix", "app1"): up(), ("pretix", "app2"): up()}


def test_all_checks_passing_and_all_ready_changes_nothing():
    decision = decide(section(), {"web-app1": PASS, "web-app2": PASS}, ALL_READY, Memory(), 100.0)
    assert decision.actions == () and decision.events == ()
    assert decision.sentence == "haproxy: 2 server(s) as desired"


def test_hard_failure_takes_the_server_out_at_once():
    decision = decide(section(), {"web-app1": HARD, "web-app2": PASS}, ALL_READY, Memory(), 100.0)
    assert decision.actions == (SetState("pretix", "app1", "maint", "web-app1: connection refused"),)


def test_hard_failure_acts_even_inside_hold_down():
    memory = Memory(changes=((95.0, "pretix", "app1"),))
    decision = decide(section(), {"web-app1": HARD, "web-app2": PASS}, ALL_READY, memory, 100.0)
    assert [a.server for a in decision.actions] == ["app1"]


def test_soft_failure_acts_when_another_healthy_server_takes_the_load():
    decision = decide(section(on_failure="drain"), {"web-app1": SOFT, "web-app2": PASS}, ALL_READY, Memory(), 100.0)
    assert decision.actions == (SetState("pretix", "app1", "drain", "web-app1: timeout: no answer within 1 s"),)


def test_soft_failure_of_every_server_takes_none_out():
    # Measured on a real pretix: haproxy's own checks timed out behind orders and took both nodes out.
    decision = decide(section(), {"web-app1": SOFT, "web-app2": SOFT}, ALL_READY, Memory(), 100.0)
    assert decision.actions == ()
    assert decision.held == {("pretix", "app1"), ("pretix", "app2")}
    assert [e.name for e in decision.events] == ["haproxy.guard_held"] * 2


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
    report = {r.server: r for r in decision.reports}["app2"]
    assert report.desired == "ready" and "min_ready is 1" in report.why
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
    memory = remember(Memory(), list(first.actions), first.held, 100.0)
    actual = {("pretix", "app1"): up("maint"), ("pretix", "app2"): up()}
    second = decide(section(), checks, actual, memory, 101.0)
    assert second.events == () and second.held == {("pretix", "app2")}
    third = decide(section(), {"web-app1": HARD, "web-app2": PASS}, actual, remember(memory, [], second.held, 101.0),
                   102.0)
    assert [e.name for e in third.events] == ["haproxy.guard_released"]


def test_recovered_server_is_put_back_after_hold_down():
    memory = remember(Memory(), [SetState("pretix", "app1", "maint", "x")], frozenset(), 100.0)
    actual = {("pretix", "app1"): up("maint"), ("pretix", "app2"): up()}
    checks = {"web-app1": PASS, "web-app2": PASS}
    early = decide(section(hold_down=10.0), checks, actual, memory, 105.0)
    assert early.actions == () and early.deferred
    assert "waiting (hold_down)" in {r.server: r for r in early.reports}["app1"].why
    later = decide(section(hold_down=10.0), checks, actual, memory, 110.5)
    assert later.actions == (SetState("pretix", "app1", "ready", "gating checks pass"),)
    assert ("pretix", "app1") not in remember(memory, list(later.actions), frozenset(), 110.5).taken_out


def test_a_server_someone_else_put_in_maint_stays_there():
    actual = {("pretix", "app1"): up("maint"), ("pretix", "app2"): up()}
    decision = decide(section(), {"web-app1": PASS, "web-app2": PASS}, actual, Memory(), 100.0)
    assert decision.actions == ()
    assert "set by someone else" in {r.server: r for r in decision.reports}["app1"].why


def test_undecided_checks_leave_servers_as_they_are():
    actual = {("pretix", "app1"): up("maint"), ("pretix", "app2"): up()}
    memory = Memory(taken_out=frozenset({("pretix", "app1")}))
    decision = decide(section(), {"web-app1": NEW, "web-app2": NEW}, actual, memory, 100.0)
    assert decision.actions == ()
    assert "no verdict yet" in {r.server: r for r in decision.reports}["app1"].why


def test_rate_limit_defers_soft_changes_per_backend():
    servers = ("a", "b", "c", "d")
    actual = {("pretix", s): up() for s in servers}
    checks = {"web-a": SOFT, "web-b": SOFT, "web-c": PASS, "web-d": PASS}
    memory = Memory(changes=tuple((90.0 + i, "pretix", "x") for i in range(6)))
    decision = decide(section(servers=servers, cap=6), checks, actual, memory, 100.0)
    assert decision.actions == () and decision.deferred
    assert "max_changes_per_minute" in {r.server: r for r in decision.reports}["a"].why


def test_a_server_haproxy_does_not_know_is_reported_not_changed():
    decision = decide(section(servers=("app1", "ghost")), {"web-app1": PASS, "web-ghost": HARD},
                      {("pretix", "app1"): up()}, Memory(), 100.0)
    assert decision.actions == ()
    assert {r.server: r.why for r in decision.reports}["ghost"] == "haproxy has no such server"


def test_memory_forgets_changes_older_than_the_horizon_but_keeps_who_was_taken_out():
    memory = remember(Memory(), [SetState("pretix", "app1", "maint", "x")], frozenset(), 0.0)
    later = remember(memory, [], frozenset(), 120.0, horizon=60.0)
    assert later.changes == () and later.taken_out == {("pretix", "app1")}


def local_section(**kwargs):
    base = section(**kwargs)
    first = base.servers[0]
    return HaproxySection(**{**base.__dict__, "servers": (
        HaproxyServer(first.backend, first.server, first.checks, first.on_failure, True), *base.servers[1:])})


def test_drain_of_this_node_drains_its_local_server_at_once_and_ready_puts_it_back():
    checks = {"web-app1": PASS, "web-app2": PASS}
    memory = Memory(changes=((99.0, "pretix", "app1"),))  # inside hold_down: a planned drain still acts
    drained = decide(local_section(), checks, ALL_READY, memory, 100.0, drain_local="kernel update")
    assert drained.actions == (SetState("pretix", "app1", "drain", "draining this node: kernel update"),)
    memory = remember(memory, list(drained.actions), frozenset(), 100.0)
    actual = {("pretix", "app1"): up("drain"), ("pretix", "app2"): up()}
    back = decide(local_section(hold_down=1.0), checks, actual, memory, 102.0)
    assert back.actions == (SetState("pretix", "app1", "ready", "gating checks pass"),)


def test_drain_of_this_node_never_takes_out_the_last_healthy_server():
    checks = {"web-app1": PASS, "web-app2": HARD}
    actual = {("pretix", "app1"): up(), ("pretix", "app2"): up("maint")}
    decision = decide(local_section(), checks, actual, Memory(), 100.0, drain_local="reboot")
    assert decision.actions == () and decision.held == {("pretix", "app1")}
