"""The connection keeper's lifecycle, with hand-written fake connections (no server, no sleeps)."""

from __future__ import annotations

import pytest

from pretix_agent.checks.keeper import ConnectionKeeper, ConnectionLost
from pretix_agent.checks.model import Deadline, ProbeStopped, failed, unknown
from pretix_agent.checks.sockets import SocketBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeConnection:
    """A connection whose every answer the test decides; it records what was done to it."""

    def __init__(self, number: int, refuse: ProbeStopped | None = None):
        self.number = number
        self.refuse = refuse
        self.established = False
        self.closed = 0
        self.is_stale = False
        self.is_sound = True
        self.watched_by: SocketBreaker | None = None

    def establish(self, deadline: Deadline, breaker: SocketBreaker) -> None:
        breaker.watch(self.socket)
        self.watched_by = breaker
        if self.refuse is not None:
            raise self.refuse
        self.established = True

    def socket(self) -> None:
        return None

    def stale(self) -> bool:
        return self.is_stale

    def sound(self) -> bool:
        return self.is_sound

    def close(self) -> None:
        self.closed += 1


class FakeServer:
    """Makes FakeConnections; `refusing` makes the next ones fail to connect (hard, as refused)."""

    def __init__(self) -> None:
        self.made: list[FakeConnection] = []
        self.refusing = False

    def new(self) -> FakeConnection:
        refuse = ProbeStopped(failed("connection refused", hard=True)) if self.refusing else None
        connection = FakeConnection(len(self.made) + 1, refuse)
        self.made.append(connection)
        return connection


def which(connection: FakeConnection, deadline: Deadline) -> int:
    return connection.number


def deadline(clock: FakeClock | None = None) -> Deadline:
    return Deadline(1.0, clock=clock or FakeClock())


def lose(number: int, reason: str = "connection lost: server closed the connection"):
    """Work that finds connection `number` broken under its request; other connections answer."""

    def work(connection: FakeConnection, _deadline: Deadline) -> int:
        if connection.number == number:
            connection.is_sound = False
            raise ConnectionLost(failed(reason))
        return connection.number

    return work


def test_the_first_probe_connects_and_the_next_ones_reuse_that_connection():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)
    assert [keeper.run(deadline(), which) for _ in range(3)] == [1, 1, 1]
    assert len(server.made) == 1 and keeper.opened == 1
    assert server.made[0].closed == 0 and keeper.has_idle()


def test_a_connection_the_server_closed_while_idle_is_replaced_within_the_same_probe():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)
    keeper.run(deadline(), which)
    server.made[0].is_stale = True
    assert keeper.run(deadline(), which) == 2
    assert server.made[0].closed == 1 and keeper.opened == 2


def test_a_kept_connection_lost_at_its_first_request_is_replaced_once_without_a_failure():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)
    keeper.run(deadline(), which)  # connection 1, kept
    assert keeper.run(deadline(), lose(1)) == 2  # 1 is lost under the request, 2 answers
    assert server.made[0].closed == 1
    assert keeper.run(deadline(), which) == 2 and keeper.opened == 2


def test_a_server_gone_behind_a_kept_connection_is_reported_as_refused_at_the_reconnect():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)
    keeper.run(deadline(), which)
    server.refusing = True
    with pytest.raises(ProbeStopped) as stopped:
        keeper.run(deadline(), lose(1))
    assert stopped.value.result.reason == "connection refused" and stopped.value.result.hard
    assert [c.closed for c in server.made] == [1, 1]  # the lost one and the refused attempt
    assert not keeper.has_idle()


def test_a_new_connection_lost_at_its_first_request_is_a_failure_not_retried():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)
    with pytest.raises(ConnectionLost) as lost:
        keeper.run(deadline(), lose(1, "connection lost: reset"))
    assert lost.value.result.reason == "connection lost: reset"
    assert len(server.made) == 1 and server.made[0].closed == 1
    assert keeper.run(deadline(), which) == 2  # the next probe reconnects


def test_a_lost_connection_is_not_retried_once_the_deadline_is_up():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)
    keeper.run(deadline(), which)
    clock = FakeClock()
    late = Deadline(1.0, clock=clock)

    def lost_at_the_deadline(connection: FakeConnection, _deadline: Deadline) -> int:
        clock.now = 1.0
        raise ConnectionLost(failed("connection lost"))

    with pytest.raises(ConnectionLost):
        keeper.run(late, lost_at_the_deadline)
    assert len(server.made) == 1 and server.made[0].closed == 1


def test_a_timed_out_probe_drops_its_connection_and_the_next_probe_reconnects():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)
    keeper.run(deadline(), which)

    def times_out(connection: FakeConnection, _deadline: Deadline) -> int:
        connection.is_sound = False  # the answer was never read to its end
        raise ProbeStopped(failed("timeout: no answer within 1 s (query)"))

    with pytest.raises(ProbeStopped):
        keeper.run(deadline(), times_out)
    assert server.made[0].closed == 1 and not keeper.has_idle()
    assert keeper.run(deadline(), which) == 2


def test_an_aborted_probe_never_leaves_its_connection_for_the_next_even_if_it_answered():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)
    keeper.run(deadline(), which)

    def answered_as_the_runner_aborted(connection: FakeConnection, running: Deadline) -> int:
        running.abort()  # the runner gave up just as the answer came: the socket is shut down
        return connection.number

    assert keeper.run(deadline(), answered_as_the_runner_aborted) == 1
    assert server.made[0].closed == 1
    assert keeper.run(deadline(), which) == 2


def test_an_answer_that_is_not_a_measurement_keeps_a_sound_connection():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)

    def refused_by_permissions(connection: FakeConnection, _deadline: Deadline) -> int:
        raise ProbeStopped(unknown("cannot measure: permission denied"))

    with pytest.raises(ProbeStopped):
        keeper.run(deadline(), refused_by_permissions)
    assert server.made[0].closed == 0 and keeper.has_idle()


def test_a_bug_in_the_work_drops_the_connection_and_passes_the_error_on():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)

    def buggy(connection: FakeConnection, _deadline: Deadline) -> int:
        raise KeyError("oops")

    with pytest.raises(KeyError):
        keeper.run(deadline(), buggy)
    assert server.made[0].closed == 1 and not keeper.has_idle()


def test_a_refused_connection_is_closed_and_nothing_is_kept():
    server = FakeServer()
    server.refusing = True
    keeper = ConnectionKeeper(server.new)
    with pytest.raises(ProbeStopped) as stopped:
        keeper.run(deadline(), which)
    assert stopped.value.result.hard
    assert server.made[0].closed == 1 and not keeper.has_idle()


def test_without_keeping_every_probe_gets_a_new_connection_closed_after_it():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new, keep=False)
    assert [keeper.run(deadline(), which) for _ in range(3)] == [1, 2, 3]
    assert [c.closed for c in server.made] == [1, 1, 1]


def test_close_closes_the_idle_connection_and_no_probe_connects_after_it():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)
    keeper.run(deadline(), which)
    keeper.close()
    keeper.close()  # idempotent
    assert server.made[0].closed == 1
    with pytest.raises(ProbeStopped) as stopped:
        keeper.run(deadline(), which)
    assert stopped.value.result.outcome == "unknown"
    assert len(server.made) == 1


def test_close_during_a_probe_closes_that_connection_when_the_probe_returns():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)

    def stopped_meanwhile(connection: FakeConnection, _deadline: Deadline) -> int:
        keeper.close()  # the runner stops while this (hung) probe still runs
        assert connection.closed == 0  # never under the feet of the probe using it
        return connection.number

    assert keeper.run(deadline(), stopped_meanwhile) == 1
    assert server.made[0].closed == 1 and not keeper.has_idle()


def test_the_breaker_is_released_before_a_connection_is_kept_or_closed():
    server = FakeServer()
    keeper = ConnectionKeeper(server.new)
    running = deadline()
    keeper.run(running, which)
    breaker = server.made[0].watched_by
    assert breaker is not None and breaker.release() is False  # released already, no abort seen
    running.abort()  # an abort after the probe returned
    assert server.made[0].closed == 0 and keeper.run(deadline(), which) == 1
