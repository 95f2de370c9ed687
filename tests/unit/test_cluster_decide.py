"""The cluster, decided: the mirror, disagreements, one cycle's plan (pure: plain values in and out)."""

from __future__ import annotations

import dataclasses

from pretix_agent.cluster import decide as d
from pretix_agent.cluster.model import (
    CONNECTED,
    CONNECTING,
    SCHEMA_MISSING,
    UNREACHABLE,
    ClusterLock,
    NodeRow,
    NodeState,
    Outcome,
    Report,
    Request,
    View,
)
from pretix_agent.maintenance.decide import CLUSTER_ORIGIN, LockInfo

LOCK = ClusterLock(id="L1", by="alice", at=1000.0, reason="inventory", host="app1")
NEWER = ClusterLock(id="L2", by="bob", at=2000.0, reason=None, host="app2")
NO_FILE = LockInfo(False)
OWN = LockInfo(True, lock_id="own", by="carol")


def mirrored(lock: ClusterLock = LOCK) -> LockInfo:
    return LockInfo(True, lock_id=lock.id, by=lock.by, origin=CLUSTER_ORIGIN)


def names(events) -> list[str]:
    return [event.name for event in events]


# ---------------------------------------------------------------------------------------------
# The mirror.


def test_an_unknown_cluster_view_writes_and_removes_nothing():
    for file in (NO_FILE, OWN, mirrored()):
        result = d.mirror(False, None, file, d.Memory())
        assert result.action is None and result.events == ()
        assert result.clause == "the local lock is kept as it is"


def test_the_cluster_lock_is_written_where_no_lock_exists_with_an_event():
    result = d.mirror(True, LOCK, NO_FILE, d.Memory())
    assert result.action == d.WriteLock(LOCK)
    assert result.memory == d.Memory(mirrored="L1")
    assert names(result.events) == ["cluster.lock_mirrored"]
    assert result.events[0].fields["by"] == "alice" and result.events[0].fields["reason"] == "inventory"


def test_the_mirrored_lock_in_place_needs_nothing():
    result = d.mirror(True, LOCK, mirrored(), d.Memory(mirrored="L1"))
    assert result.action is None and result.events == ()
    assert result.clause.startswith("locked by alice at ") and result.clause.endswith(" on app1 (inventory)")


def test_a_nodes_own_lock_stays_while_the_cluster_is_locked():
    result = d.mirror(True, LOCK, OWN, d.Memory())
    assert result.action is None
    assert result.clause.endswith("; this node's own lock holds")


def test_a_newer_cluster_lock_replaces_the_older_one_the_mirror_wrote():
    result = d.mirror(True, NEWER, mirrored(LOCK), d.Memory(mirrored="L1"))
    assert result.action == d.ReplaceLock(NEWER, expected="L1")
    assert result.memory == d.Memory(mirrored="L2")


def test_the_end_of_the_cluster_lock_removes_only_the_lock_the_mirror_wrote():
    result = d.mirror(True, None, mirrored(), d.Memory(mirrored="L1"))
    assert result.action == d.RemoveLock(expected="L1")
    assert names(result.events) == ["cluster.lock_released"]
    assert d.mirror(True, None, OWN, d.Memory()).action is None


def test_a_mirrored_lock_removed_by_hand_is_dismissed_with_a_warning_and_not_written_again():
    result = d.mirror(True, LOCK, NO_FILE, d.Memory(mirrored="L1"))
    assert result.action is None
    assert result.memory == d.Memory(mirrored=None, dismissed="L1")
    assert names(result.events) == ["cluster.lock_dismissed"]
    assert result.events[0].level == "warning"
    again = d.mirror(True, LOCK, NO_FILE, result.memory)
    assert again.action is None and again.events == ()
    assert again.clause.endswith("but ended on this node by hand")


def test_a_mirrored_lock_removed_by_hand_while_the_database_is_away_is_dismissed_too():
    result = d.mirror(False, None, NO_FILE, d.Memory(mirrored="L1"))
    assert result.memory == d.Memory(mirrored=None, dismissed="L1")
    assert names(result.events) == ["cluster.lock_dismissed"]
    assert d.mirror(True, LOCK, NO_FILE, result.memory).action is None


def test_a_new_cluster_lock_is_mirrored_although_the_last_one_was_dismissed():
    result = d.mirror(True, NEWER, NO_FILE, d.Memory(dismissed="L1"))
    assert result.action == d.WriteLock(NEWER)
    assert result.memory == d.Memory(mirrored="L2")


def test_the_end_of_the_cluster_lock_forgets_a_dismissal():
    assert d.mirror(True, None, NO_FILE, d.Memory(dismissed="L1")).memory == d.Memory()


def test_the_mirror_removing_its_own_lock_is_no_dismissal():
    result = d.mirror(True, None, NO_FILE, d.Memory(mirrored="L1"))
    assert result.memory == d.Memory() and "cluster.lock_dismissed" not in names(result.events)


# ---------------------------------------------------------------------------------------------
# Disagreement.


def state(node: str, **changes) -> NodeState:
    base = NodeState(node=node, roles=("app",), version="0.1.0", heartbeat_interval=3.0, maintenance=False,
                     cause=None, locked=None, cluster_lock_id=None, dismissed=None, failing_checks=(), haproxy=(),
                     windows=(), timezone="UTC", windows_digest="none", started_at=0.0)
    return dataclasses.replace(base, **changes)


def row(node: str, seen_at: float = 999.0, clock_offset: float | None = 0.01, **changes) -> NodeRow:
    return NodeRow(state(node, **changes), seen_at=seen_at, clock_offset=clock_offset)


def view(*rows: NodeRow, lock: ClusterLock | None = None, changed_at: float | None = None,
         now: float = 1000.0) -> View:
    return View(lock=lock, changed_at=changed_at, nodes=rows, server_now=now)


def kinds(problems) -> list[tuple[str, str]]:
    return [(problem.node, problem.kind) for problem in problems]


def test_nodes_that_agree_raise_no_problem():
    assert d.problems(view(row("app1"), row("app2"), row("app3")), 1.0) == ()


def test_a_node_silent_for_three_of_its_heartbeats_is_flagged_and_not_before():
    assert d.problems(view(row("app1", seen_at=1000.0 - 9.0)), 1.0) == ()
    (problem,) = d.problems(view(row("app1", seen_at=1000.0 - 9.5)), 1.0)
    assert problem.kind == d.SILENT
    assert problem.line() == "app1: silent for 10 s (last seen 1970-01-01T00:16:30+00:00, heartbeat every 3 s)"


def test_a_clock_off_by_more_than_the_allowed_skew_is_flagged_either_way():
    found = d.problems(view(row("app1", clock_offset=1.5), row("app2", clock_offset=-2.0),
                            row("app3", clock_offset=0.9), row("app4", clock_offset=None)), 1.0)
    assert kinds(found) == [("app1", d.CLOCK), ("app2", d.CLOCK)]
    assert found[0].text == "clock off by +1.50 s against the database server (at most 1 s)"


def test_windows_that_differ_from_the_majority_of_the_app_nodes_are_flagged():
    sunday = {"windows": ("Sun 22:00 - Mon 05:00",), "windows_digest": "sun"}
    found = d.problems(view(row("app1", **sunday), row("app2", **sunday), row("app3")), 1.0)
    (problem,) = found
    assert (problem.node, problem.kind) == ("app3", d.WINDOWS)
    assert problem.text == "windows differ: no windows (UTC) against the other app nodes' Sun 22:00 - Mon 05:00 (UTC)"


def test_without_a_majority_every_app_node_is_flagged():
    found = d.problems(view(row("app1", windows_digest="a"), row("app2", windows_digest="b")), 1.0)
    assert kinds(found) == [("app1", d.WINDOWS), ("app2", d.WINDOWS)]
    assert found[0].text.endswith("against no majority among the app nodes")


def test_nodes_without_the_app_role_are_not_compared():
    found = d.problems(view(row("app1"), row("app2"), row("lb1", roles=("load-balancer",), windows_digest="x")), 1.0)
    assert found == ()


def test_a_node_out_of_maintenance_a_heartbeat_after_the_cluster_lock_is_flagged():
    (problem,) = d.problems(view(row("app1", seen_at=LOCK.at + 3.5), lock=LOCK, now=LOCK.at + 4), 1.0)
    assert (problem.kind, problem.text) == (d.LOCKED, "maintenance OFF while the cluster is locked")


def test_a_node_has_one_heartbeat_to_follow_the_cluster_lock():
    assert d.problems(view(row("app1", seen_at=LOCK.at + 2.9), lock=LOCK, now=LOCK.at + 3), 1.0) == ()


def test_a_node_in_maintenance_under_the_cluster_lock_or_its_own_lock_follows_it():
    following = row("app1", seen_at=LOCK.at + 5, maintenance=True, locked="cluster", cluster_lock_id="L1")
    own = row("app2", seen_at=LOCK.at + 5, maintenance=True, locked="local")
    assert d.problems(view(following, own, lock=LOCK, now=LOCK.at + 5), 1.0) == ()


def test_a_node_where_the_cluster_lock_was_ended_by_hand_says_so():
    (problem,) = d.problems(view(row("app1", seen_at=LOCK.at + 5, dismissed="L1"), lock=LOCK, now=LOCK.at + 5), 1.0)
    assert problem.text == "maintenance OFF while the cluster is locked (the cluster lock was ended there by hand)"


def test_a_node_still_holding_the_cluster_lock_a_heartbeat_after_it_ended_is_flagged():
    late = row("app1", seen_at=2000.0 + 4, maintenance=True, locked="cluster", cluster_lock_id="L1")
    (problem,) = d.problems(view(late, changed_at=2000.0, now=2004.5), 1.0)
    assert (problem.kind, problem.text) == (d.LOCKED, "still holds the cluster lock L1 after it ended")


def test_a_silent_node_is_not_also_blamed_for_the_lock():
    found = d.problems(view(row("app1", seen_at=LOCK.at + 1), lock=LOCK, now=LOCK.at + 60), 1.0)
    assert kinds(found) == [("app1", d.SILENT)]


def test_failing_checks_are_a_problem_but_no_disagreement():
    (problem,) = d.problems(view(row("app1", failing_checks=("pretix", "redis"))), 1.0)
    assert (problem.kind, problem.text) == (d.CHECKS, "checks failing: pretix, redis")
    assert d.CHECKS not in d.DISAGREEMENTS


# ---------------------------------------------------------------------------------------------
# Requests.

REQUEST = Request(id="r1", action="lock", by="alice", at=100.0, host="app1", expires_at=110.0, reason="why")


def test_a_request_is_taken_once():
    assert d.take_request(d.Seen(REQUEST, id="r1"), 105.0, frozenset()) == (REQUEST, None)
    assert d.take_request(d.Seen(REQUEST, id="r1"), 105.0, frozenset({"r1"})) == (None, None)


def test_an_expired_request_is_refused_saying_nothing_changed():
    request, refused = d.take_request(d.Seen(REQUEST, id="r1"), 111.0, frozenset())
    assert request is None and refused is not None and not refused.ok
    assert refused.detail.startswith("refused: it expired before the daemon saw it")
    assert refused.detail.endswith("nothing changed")


def test_a_request_file_that_is_no_request_is_refused_with_its_reason():
    _, refused = d.take_request(d.Seen(refusal="the request file is not JSON", id="?"), 1.0, frozenset())
    assert refused is not None and refused.detail == "refused: the request file is not JSON"


# ---------------------------------------------------------------------------------------------
# One cycle.

NODE = state("app1")


def observation(**changes) -> d.Observation:
    base = d.Observation(now=1000.0, report=Report(CONNECTED, server="db1:5432", view=view(row("app1"))),
                         file=NO_FILE, memory=d.Memory(), node=NODE, handed=NODE, request=None,
                         handled=frozenset(), announced=frozenset(), known=frozenset(), connection=CONNECTED,
                         max_clock_skew=1.0)
    return dataclasses.replace(base, **changes)


def test_a_disagreement_is_an_event_when_it_begins_and_when_it_ends():
    skewed = Report(CONNECTED, view=view(row("app1"), row("app2", clock_offset=3.0)))
    begun = d.plan(observation(report=skewed))
    assert names(begun.events) == ["cluster.disagreement"]
    assert begun.events[0].fields == {"node": "app2", "kind": "clock",
                                      "detail": "clock off by +3.00 s against the database server (at most 1 s)"}
    assert begun.known == {("app2", "clock")}
    again = d.plan(observation(report=skewed, known=begun.known))
    assert again.events == ()
    ended = d.plan(observation(known=begun.known))
    assert names(ended.events) == ["cluster.agreement"]
    assert ended.known == frozenset()


def test_while_the_view_is_stale_disagreements_are_neither_announced_nor_forgotten():
    stale = Report(UNREACHABLE, error="refused", failing_since=990.0, view=view(row("app2", clock_offset=3.0)))
    result = d.plan(observation(report=stale, known=frozenset({("app3", "windows")}), connection=UNREACHABLE))
    assert result.events == () and result.known == {("app3", "windows")}
    assert result.problems == ()


def test_connection_changes_are_logged_once_each():
    down = Report(UNREACHABLE, error="connection refused", failing_since=990.0)
    first = d.plan(observation(report=down))
    assert names(first.events) == ["cluster.unreachable"] and first.connection == UNREACHABLE
    assert d.plan(observation(report=down, connection=UNREACHABLE)).events == ()
    assert names(d.plan(observation(connection=UNREACHABLE)).events) == ["cluster.connected"]
    missing = d.plan(observation(report=Report(SCHEMA_MISSING, server="db1:5432")))
    assert names(missing.events) == ["cluster.schema_missing"]
    assert "pretix-agentctl cluster init" in missing.events[0].fields["detail"]


def test_each_outcome_is_logged_once():
    done = Outcome("r1", "lock", True, "cluster locked by alice", True, LOCK, 1000.0)
    failed = Outcome("r2", "unlock", False, "cannot reach the cluster database: refused", done_at=1001.0)
    report = Report(CONNECTED, view=view(row("app1"), lock=LOCK), outcomes=(done, failed))
    first = d.plan(observation(report=report))
    assert names(first.events).count("cluster.locked") == 1
    assert "cluster.request_failed" in names(first.events)
    assert first.announced == {"r1", "r2"}
    assert d.plan(observation(report=report, announced=first.announced, file=mirrored(),
                              memory=d.Memory("L1"))).events == ()


def test_a_request_is_handed_over_and_its_file_removed_and_a_refusal_is_logged():
    handed = d.plan(observation(request=d.Seen(REQUEST, id="r1"), now=105.0))
    assert handed.hand == REQUEST and handed.remove_request and handed.refused is None
    refused = d.plan(observation(request=d.Seen(refusal="the request file is not JSON"), now=105.0))
    assert refused.hand is None and refused.remove_request
    assert names(refused.events) == ["cluster.request_failed"]


def test_the_node_row_is_handed_over_only_when_it_changed():
    assert d.plan(observation()).publish is None
    changed = dataclasses.replace(NODE, maintenance=True)
    assert d.plan(observation(node=changed)).publish == changed


def test_the_sentence_says_what_the_cluster_lock_is_and_since_when_the_view_is_stale():
    assert d.plan(observation(report=None)).sentence == "cluster: connecting to the database"
    assert d.plan(observation()).sentence == "cluster: not locked"
    stale = Report(UNREACHABLE, error="refused", failing_since=0.0, view=view(row("app1"), lock=LOCK))
    sentence = d.plan(observation(report=stale, file=mirrored(), memory=d.Memory("L1"))).sentence
    assert sentence == ("cluster: database unreachable since 1970-01-01T00:00:00+00:00; the local lock is kept as "
                        "it is")
    odd = Report(CONNECTED, view=view(row("app1"), row("app2", clock_offset=5.0)))
    assert d.plan(observation(report=odd)).sentence == "cluster: not locked; app2 disagrees (clock)"


def test_a_stale_view_never_touches_the_lock_file():
    stale = Report(UNREACHABLE, error="refused", failing_since=0.0, view=view(row("app1"), lock=None))
    result = d.plan(observation(report=stale, file=mirrored(), memory=d.Memory("L1")))
    assert result.mirror.action is None


def test_connecting_is_no_event():
    assert d.plan(observation(report=Report(CONNECTING), connection=None)).events == ()
