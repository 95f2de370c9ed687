"""The haproxy worker's act step, with a hand-written Runtime API: one exchange per cycle, sessions
shut right after the state is set, and a report that says what haproxy does now."""

from __future__ import annotations

import pytest

from pretix_agent.checks.health import CheckState
from pretix_agent.checks.model import failed, passed
from pretix_agent.config import HaproxySection, HaproxyServer
from pretix_agent.haproxy.decide import Decision
from pretix_agent.haproxy.runtime import ProcessIdentity, RuntimeApiError, ServerState
from pretix_agent.haproxy.worker import HaproxyWorker, Report

FAILING = CheckState("failing", last=failed("replay paused, 3.1 MiB / 4.0 s behind"))
PASSING = CheckState("passing", last=passed("standby streaming"))


def state(backend: str, server: str, admin_flags: int = 0) -> ServerState:
    return ServerState(backend, server, 1, 1, "127.0.0.1", 5432, 2, admin_flags, 1, 1, 0)


class FakeApi:
    """Answers like haproxy 2.6: silence for every accepted command."""

    def __init__(self, servers: list[ServerState], refuse: str | None = None):
        self.servers = servers
        self.refuse = refuse
        self.exchanges: list[list[str]] = []

    def process_identity(self) -> ProcessIdentity:
        return ProcessIdentity(1234, 1700000000)

    def servers_state(self) -> list[ServerState]:
        return self.servers

    def run_silent(self, commands: list[str]) -> list[RuntimeApiError | None]:
        self.exchanges.append(list(commands))
        return [RuntimeApiError("haproxy refused it", "rejected") if self.refuse and self.refuse in command else None
                for command in commands]


def worker(tmp_path, api: FakeApi, shutdown_sessions: bool = True):
    section = HaproxySection(socket="/run/haproxy/admin.sock", timeout=2.0, interval=2.0, min_ready=1, hold_down=10.0,
                             max_changes_per_minute=6, state_file=None,
                             servers=(HaproxyServer("pretix_replica", "replica", ("replica",), "maint",
                                                    shutdown_sessions=shutdown_sessions),))
    reports: list[Report] = []
    events: list = []
    made = HaproxyWorker(section, tmp_path, reports.append, events.append, lambda: None)
    made.api = api  # type: ignore[assignment]
    return made, reports, events


REPLICA_AND_BACKUP = [state("pretix_replica", "replica"), state("pretix_replica", "primary")]


def test_a_server_taken_out_gets_its_sessions_shut_in_the_same_exchange(tmp_path):
    api = FakeApi(REPLICA_AND_BACKUP)
    made, reports, events = worker(tmp_path, api)
    made.update({"replica": FAILING}, None, 1)
    made.cycle()
    assert api.exchanges == [["set server pretix_replica/replica state maint",
                              "shutdown sessions server pretix_replica/replica"]]
    assert [e.name for e in events] == ["haproxy.server_state_changed", "haproxy.sessions_shut"]
    (server,) = [s for s in reports[-1].servers if s.server == "replica"]
    assert (server.actual, server.desired, server.checks) == ("maint", "maint", ["replica"])
    assert reports[-1].taken_out == ["pretix_replica/replica"] and reports[-1].generation == 1


def test_without_shutdown_sessions_only_the_state_is_set(tmp_path):
    api = FakeApi(REPLICA_AND_BACKUP)
    made, _, _ = worker(tmp_path, api, shutdown_sessions=False)
    made.update({"replica": FAILING}, None, 1)
    made.cycle()
    assert api.exchanges == [["set server pretix_replica/replica state maint"]]


def test_a_refused_shutdown_is_reported_and_the_state_change_still_counts(tmp_path):
    api = FakeApi(REPLICA_AND_BACKUP, refuse="shutdown")
    made, reports, events = worker(tmp_path, api)
    made.update({"replica": FAILING}, None, 1)
    made.cycle()
    assert [e.name for e in events] == ["haproxy.server_state_changed", "haproxy.command_failed"]
    assert reports[-1].taken_out == ["pretix_replica/replica"] and reports[-1].error == "haproxy refused it"


def test_returning_a_server_shuts_no_sessions_and_nothing_to_do_sends_nothing(tmp_path):
    api = FakeApi(REPLICA_AND_BACKUP)
    made, _, _ = worker(tmp_path, api)
    made.update({"replica": FAILING}, None, 1)
    made.cycle()
    api.servers = [state("pretix_replica", "replica", admin_flags=1), state("pretix_replica", "primary")]
    made.update({"replica": PASSING}, None, 2)
    made.cycle()
    assert api.exchanges[1] == ["set server pretix_replica/replica state ready"]
    api.servers = REPLICA_AND_BACKUP
    made.cycle()
    assert len(api.exchanges) == 2


def test_the_next_look_comes_when_what_waits_is_due_and_never_later_than_the_interval(tmp_path):
    made, _, _ = worker(tmp_path, FakeApi(REPLICA_AND_BACKUP))
    assert made.cycle() == 2.0  # nothing waits: one interval

    def decision(**waiting) -> Decision:
        return Decision((), (), (), frozenset(), "", **waiting)

    assert made._next_look(decision(deferred=True, wake_at=100.3), 100.0) == pytest.approx(0.3)
    assert made._next_look(decision(deferred=True, wake_at=160.0), 100.0) == 2.0
    assert made._next_look(decision(deferred=True), 100.0) == 1.0
