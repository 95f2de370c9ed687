"""PostgreSQL check: role, replication lag in bytes and seconds, WAL receiver, paused replay.

Observe, then decide: `observe()` asks the server over a connection and returns a
`PostgresObservation` of plain values; `classify()` turns an observation and the check's options
into a ProbeResult, with no I/O (tested with plain values in tests/unit/test_check_postgres.py).
`PostgresProbe` ties them together and keeps the connections between probes (checks/keeper.py).

Every query works for a role that is only a member of `pg_monitor`.

The connection (pg_connection.py) is driven through psycopg's libpq layer in non-blocking mode,
every wait bounded by the deadline, so the probe returns when the deadline is up whatever the
server does. psycopg is imported only when a probe is made, so the rest of the agent does not need it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .keeper import ConnectionKeeper
from .model import Deadline, ProbeResult, ProbeStopped, failed, passed, unknown
from .pg_connection import PgConnection, connection_factory

if TYPE_CHECKING:
    from ..config import PostgresCheck

APPLICATION_NAME = "pretix-agent"


# ---------------------------------------------------------------------------------------------
# What one probe sees.


@dataclass(frozen=True)
class Standby:
    """One row of the primary's `pg_stat_replication`."""

    name: str  # application_name
    client_addr: str | None
    state: str | None  # None: hidden, the role lacks pg_monitor
    sync_state: str | None
    lag_bytes: int | None  # primary's current WAL position minus the standby's replay position


@dataclass(frozen=True)
class PostgresObservation:
    """What one probe measured. LSNs are integers (see `parse_lsn`); None means not measured."""

    in_recovery: bool
    read_only: bool  # transaction_read_only of a new session
    # On a standby:
    receive_lsn: int | None = None  # pg_last_wal_receive_lsn()
    replay_lsn: int | None = None  # pg_last_wal_replay_lsn()
    replay_age: float | None = None  # now() - pg_last_xact_replay_timestamp(), seconds
    receiver_status: str | None = None  # pg_stat_wal_receiver.status; None: no WAL receiver
    replay_paused: bool = False
    primary_lsn: int | None = None  # the primary's pg_current_wal_lsn(), if primary_dsn is set
    primary_problem: str | None = None  # why primary_lsn is None although primary_dsn is set
    # Seconds since a probe of this check last saw the replay caught up with the received WAL
    # (PostgresProbe remembers it; None: none has since the agent started).
    caught_up_age: float | None = None
    # On a primary:
    standbys: tuple[Standby, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------
# Deciding (pure).


def parse_lsn(text: str | None) -> int | None:
    """Given an LSN as PostgreSQL prints it ("16/B374D848") or None, return it as an integer."""
    if text is None:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(lsn: int | None) -> str | None:
    return None if lsn is None else f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def format_bytes(count: int) -> str:
    """Given a byte count, return it for people: "0 B", "812 B", "3.4 KiB", "16.0 MiB"."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _behind(ahead: int | None, behind: int | None) -> int | None:
    # A position the replay has already passed counts as zero, not negative: right after the WAL
    # receiver (re)starts, its receive position can lie behind the replay position.
    if ahead is None or behind is None:
        return None
    return max(0, ahead - behind)


def classify(observation: PostgresObservation, options: PostgresCheck) -> ProbeResult:
    """Given what a probe saw and the check's options, return the check's outcome."""
    if observation.in_recovery:
        return _classify_standby(observation, options)
    return _classify_primary(observation, options)


def _classify_standby(seen: PostgresObservation, options: PostgresCheck) -> ProbeResult:
    lag_bytes = _behind(seen.receive_lsn, seen.replay_lsn)
    primary_lag_bytes = _behind(seen.primary_lsn, seen.replay_lsn)
    # The time lag must not grow on an idle primary: pg_last_xact_replay_timestamp() is the commit
    # time of the last replayed transaction, hours old when nothing is written. So when the replay
    # has reached everything received, the lag is measured as 0 (the LSNs say so). That alone would
    # also make a replica that no longer receives anything look caught up forever, which is why
    # "WAL receiver not streaming" fails on its own below.
    if lag_bytes == 0:
        lag_seconds: float | None = 0.0
    elif lag_bytes is not None and seen.replay_age is not None:
        lag_seconds = max(0.0, seen.replay_age)  # clock skew between the two hosts can make it < 0
        # The other side of the same coin: after a quiet spell, the first WAL that arrives is
        # received some milliseconds (a record cut at a page boundary: until the walwriter sends the
        # rest) before it is replayed, and a probe in that moment would see the replay as far behind
        # as the quiet spell was long. Measured in the pretix tier: "replay 21.6 s behind" with 24
        # bytes unreplayed, after 21 s without orders; the replica was taken out of pretix's read
        # path and every worker's connection to it shut. The replay cannot be further behind than
        # since a probe last saw it caught up.
        if seen.caught_up_age is not None:
            lag_seconds = min(lag_seconds, max(0.0, seen.caught_up_age))
    else:
        lag_seconds = None  # positions unknown, or no transaction replayed since the standby started
    values: dict[str, Any] = {
        "role": "standby",
        "receiver_status": seen.receiver_status,
        "replay_paused": seen.replay_paused,
        "lag_bytes": lag_bytes,
        "lag_seconds": None if lag_seconds is None else round(lag_seconds, 3),
        "primary_lag_bytes": primary_lag_bytes,
        "receive_lsn": format_lsn(seen.receive_lsn),
        "replay_lsn": format_lsn(seen.replay_lsn),
    }
    if options.primary_dsn:
        values["primary_lsn"] = format_lsn(seen.primary_lsn)
        values["primary_problem"] = seen.primary_problem

    behind = _lag_phrase(lag_bytes, lag_seconds)
    problems = []
    if options.role == "primary":
        problems.append("not writable: in recovery (a standby), expected a primary")
    if seen.receiver_status != "streaming":
        status = f"status {seen.receiver_status}" if seen.receiver_status else "no WAL receiver"
        problems.append(f"WAL receiver not streaming ({status}), replay {behind}")
    if seen.replay_paused:
        problems.append(f"replay paused, {behind}")
    if lag_bytes is not None and lag_bytes > options.max_lag_bytes:
        problems.append(f"replay {format_bytes(lag_bytes)} behind received WAL "
                        f"(max {format_bytes(options.max_lag_bytes)})")
    if primary_lag_bytes is not None and primary_lag_bytes > options.max_lag_bytes:
        problems.append(f"replay {format_bytes(primary_lag_bytes)} behind the primary "
                        f"(max {format_bytes(options.max_lag_bytes)})")
    if lag_seconds is not None and lag_seconds > options.max_lag_seconds:
        problems.append(f"replay {lag_seconds:.1f} s behind (max {options.max_lag_seconds:g} s)")
    if problems:
        return failed("; ".join(problems), **values)
    if lag_bytes is None:
        return unknown("standby streaming, but its receive/replay positions are unknown", **values)

    reason = f"standby streaming, replay {behind}"
    if primary_lag_bytes is not None:
        reason += f", {format_bytes(primary_lag_bytes)} behind the primary"
    elif seen.primary_problem:
        reason += f"; lag to the primary not measured: {seen.primary_problem}"
    return passed(reason, **values)


def _lag_phrase(lag_bytes: int | None, lag_seconds: float | None) -> str:
    size = "unknown bytes" if lag_bytes is None else format_bytes(lag_bytes)
    seconds = "unknown time" if lag_seconds is None else f"{lag_seconds:.1f} s"
    return f"{size} / {seconds} behind"


def _classify_primary(seen: PostgresObservation, options: PostgresCheck) -> ProbeResult:
    standbys = [
        {"name": s.name, "client_addr": s.client_addr, "state": s.state, "sync_state": s.sync_state,
         "lag_bytes": s.lag_bytes}
        for s in seen.standbys
    ]
    values: dict[str, Any] = {"role": "primary", "read_only": seen.read_only, "standbys": standbys}
    problems = []
    if options.role == "standby":
        problems.append("is a primary (not in recovery), expected a standby")
    if seen.read_only:
        problems.append("not writable: transaction_read_only is on (default_transaction_read_only set)")
    if problems:
        return failed("; ".join(problems), **values)
    return passed(f"primary, writable, {_standbys_phrase(seen.standbys)}", **values)


def _standbys_phrase(standbys: tuple[Standby, ...]) -> str:
    if not standbys:
        return "no standby connected"
    parts = []
    for standby in standbys:
        if standby.state is None:
            parts.append(f"{standby.name or '?'} (state hidden: the role needs pg_monitor)")
        else:
            lag = ("replay position unknown" if standby.lag_bytes is None
                   else f"{format_bytes(standby.lag_bytes)} behind")
            parts.append(f"{standby.name or '?'} ({standby.state}, {lag})")
    count = "1 standby" if len(standbys) == 1 else f"{len(standbys)} standbys"
    return f"{count}: " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Observing.


def require() -> None:
    """Raise ImportError with an installation hint if psycopg is missing."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ImportError("the postgres check needs psycopg 3: apt install python3-psycopg") from None


class PostgresProbe:
    """The probe of one postgres check. It keeps its connection to `options.dsn` (and one to
    `options.primary_dsn`) between probes (checks/keeper.py), in autocommit: every query is its own
    transaction, so nothing holds a snapshot or a lock between probes, and a standby's recovery
    never waits for the agent. The sessions show as `application_name` "pretix-agent check NAME"
    (unless the DSN sets its own). With `keep=False`, every probe connects anew (the benchmark's
    baseline)."""

    def __init__(self, options: PostgresCheck, check_name: str | None = None, keep: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.options = options
        self.clock = clock
        self.caught_up_at: float | None = None  # when a probe last saw the replay caught up (monotonic)
        application_name = f"{APPLICATION_NAME} check {check_name}" if check_name else APPLICATION_NAME
        self.server: ConnectionKeeper[PgConnection] = ConnectionKeeper(
            connection_factory(options.dsn, application_name), keep)
        self.primary: ConnectionKeeper[PgConnection] | None = None
        if options.primary_dsn:
            self.primary = ConnectionKeeper(connection_factory(options.primary_dsn, application_name), keep)

    def __call__(self, deadline: Deadline) -> ProbeResult:
        try:
            observation = self.server.run(deadline, observe)
        except ProbeStopped as stop:
            return stop.result
        if observation.in_recovery and self.primary is not None:
            primary_lsn, primary_problem = self._primary_lsn(self.primary, deadline)
            observation = dataclasses.replace(observation, primary_lsn=primary_lsn, primary_problem=primary_problem)
        if observation.in_recovery:
            now = self.clock()
            if _behind(observation.receive_lsn, observation.replay_lsn) == 0:
                self.caught_up_at = now
            if self.caught_up_at is not None:
                observation = dataclasses.replace(observation, caught_up_age=now - self.caught_up_at)
        return classify(observation, self.options)

    def close(self) -> None:
        self.server.close()
        if self.primary is not None:
            self.primary.close()

    @staticmethod
    def _primary_lsn(primary: ConnectionKeeper[PgConnection], deadline: Deadline) -> tuple[int | None, str | None]:
        """The primary's current WAL position, or None and why not. Its failures never fail the check:
        the standby is measured already, and a primary that hangs must not time the whole probe out, so
        it gets the remaining time minus a reserve for returning."""
        reserve = min(0.1, deadline.timeout * 0.1)
        own = Deadline(max(0.001, deadline.remaining() - reserve))
        deadline.on_abort(own.abort)
        try:
            return primary.run(own, observe_primary)
        except ProbeStopped as stop:
            return None, f"primary_dsn: {stop.result.reason}"


def probe(options: PostgresCheck, deadline: Deadline) -> ProbeResult:
    """One probe of the server at `options.dsn` (and `options.primary_dsn` on a standby) over new
    connections, closed after it: what every probe cost before connections were kept."""
    once = PostgresProbe(options, keep=False)
    try:
        return once(deadline)
    finally:
        once.close()


# One statement for both roles: with the connection kept, every round trip is a good part of what
# a probe costs. The role is read once (in FROM), and each branch runs only for its role: the
# standby's functions return nothing useful on a primary, pg_current_wal_lsn() fails on a standby.
# pg_is_wal_replay_paused() is true only once replay has stopped; since PostgreSQL 14 the pause
# state also shows a requested pause, which stops replay at the next record.
_OBSERVE = """SELECT r.in_recovery, current_setting('transaction_read_only') = 'on',
 CASE WHEN r.in_recovery THEN pg_last_wal_receive_lsn()::text END,
 CASE WHEN r.in_recovery THEN pg_last_wal_replay_lsn()::text END,
 CASE WHEN r.in_recovery THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END,
 CASE WHEN r.in_recovery THEN (SELECT status FROM pg_stat_wal_receiver LIMIT 1) END,
 CASE WHEN r.in_recovery THEN {paused} END,
 CASE WHEN NOT r.in_recovery THEN (SELECT json_agg(json_build_array(application_name, client_addr::text, state,
   sync_state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint) ORDER BY application_name, pid)
  FROM pg_stat_replication) END
FROM (SELECT pg_is_in_recovery() AS in_recovery) AS r"""
_PAUSED_SINCE_14 = "pg_get_wal_replay_pause_state() <> 'not paused'"
_PAUSED_BEFORE_14 = "pg_is_wal_replay_paused()"


def observe(connection: PgConnection, deadline: Deadline) -> PostgresObservation:
    """Measure the server over `connection`. Raise ProbeStopped with the result if that fails."""
    paused = _PAUSED_SINCE_14 if connection.server_version >= 140000 else _PAUSED_BEFORE_14
    in_recovery, read_only, receive, replay, age, receiver, replay_paused, standbys = connection.row(
        _OBSERVE.format(paused=paused), deadline)
    if in_recovery != "t":
        rows = json.loads(standbys) if standbys else []
        return PostgresObservation(
            in_recovery=False, read_only=read_only == "t",
            standbys=tuple(Standby(name or "", addr, state, sync, lag) for name, addr, state, sync, lag in rows))
    return PostgresObservation(
        in_recovery=True, read_only=read_only == "t", receive_lsn=parse_lsn(receive),
        replay_lsn=parse_lsn(replay), replay_age=None if age is None else float(age), receiver_status=receiver,
        replay_paused=replay_paused == "t")


def observe_primary(connection: PgConnection, deadline: Deadline) -> tuple[int | None, str | None]:
    """The current WAL position of the server at primary_dsn, or None and why not."""
    in_recovery, lsn = connection.row(
        "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL"
        " ELSE pg_current_wal_lsn()::text END", deadline)
    if in_recovery == "t":
        return None, "primary_dsn points to a server in recovery, not to the primary"
    return parse_lsn(lsn), None
