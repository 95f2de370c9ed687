"""The one shape every capability has, and what a cycle hands from one capability to the next.

Modelled on systemd's unit vtable (every kind of unit implements the same few operations and the
manager knows only those) and on controller-runtime's Reconcile (level-triggered and idempotent;
an error is reported and retried, never fatal to the manager). A controller:

    check(config) -> problems      what start would refuse, found without opening anything
                                   (--check-config runs exactly this, so the two never disagree)
    prepare(config) -> Change      open what the configuration needs beside the running one
    change.commit() | discard()    switch to it (cannot fail), or drop it untouched
    observe(facts) -> observation  gather: no decision
    decide(observation) -> decision   pure: no I/O, no clock, no logging; `decision.sentence`
    act(decision, facts) -> facts  carry the decision out; return the facts with its own share
    status() -> section            its section of the status document (status.Document)
    stop()

The daemon runs the controllers in a fixed order each cycle, so a later one reads what an earlier
one found in the same cycle (`Facts`: the check states, why the node is drained, maintenance). A
controller that raises is reported and skipped for that cycle; the others go on.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from . import status
from .check_results import CheckState
from .config import Config
from .errors import ConfigProblem
from .events import Event


@dataclass(frozen=True)
class MaintenanceFact:
    """Maintenance as this cycle decided it."""

    on: bool
    cause: str | None  # lock, window, hand_edit while on


@dataclass(frozen=True)
class Facts:
    """What one cycle knows so far; each controller returns it with its own share added."""

    now: datetime  # wall clock, timezone-aware: schedules and file times
    monotonic: float  # intervals and deadlines
    trigger: tuple[str, ...] = ()  # why this cycle runs: "file:maintenance.lock", "check:db", "backstop"
    checks: Mapping[str, CheckState] = field(default_factory=dict)
    drain: str | None = None  # why this node is drained right now, or None
    maintenance: MaintenanceFact | None = None
    flush_logs: bool = False  # something wants the log shipper to send at once (a shutdown drain)


class Decided(Protocol):
    @property
    def sentence(self) -> str: ...


class Change(Protocol):
    """A prepared configuration change of one controller: exactly one of the two is called."""

    def commit(self) -> None: ...

    def discard(self) -> None: ...


@dataclass(frozen=True)
class Swap:
    """A Change made of two functions; `Swap()` changes nothing."""

    on_commit: Callable[[], None] = lambda: None
    on_discard: Callable[[], None] = lambda: None

    def commit(self) -> None:
        self.on_commit()

    def discard(self) -> None:
        self.on_discard()


@dataclass(frozen=True)
class Services:
    """What the daemon lends every controller."""

    wake: Callable[[str], None]  # queue a trigger and run a cycle at once (any thread, signal-safe)
    emit: Callable[[Event], None]  # log an event (any thread)
    # The status document as it would be published now (every controller's section and the daemon's
    # counters), for a controller that exports it: metrics. None where there is no daemon (tests).
    document: Callable[[], status.Document | None] = lambda: None


@dataclass
class Worker:
    """A thread a controller runs: dead, or silent longer than `max_silence`, means stuck."""

    name: str
    alive: Callable[[], bool]
    max_silence: float | None = None  # None: it need not beat
    last_beat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.last_beat = time.monotonic()


class Workers:
    """A controller's threads, for systemd's watchdog gate."""

    def __init__(self) -> None:
        self._workers: dict[str, Worker] = {}

    def add(self, name: str, alive: Callable[[], bool], max_silence: float | None = None) -> Worker:
        worker = Worker(name, alive, max_silence)
        self._workers[name] = worker
        return worker

    def put(self, worker: Worker) -> None:
        self._workers[worker.name] = worker

    def remove(self, name: str) -> None:
        self._workers.pop(name, None)

    def unhealthy(self, now: float) -> list[str]:
        """Names of the workers that died or went silent for too long."""
        return [w.name for w in self._workers.values()
                if not w.alive() or (w.max_silence is not None and now - w.last_beat > w.max_silence)]


Obs = TypeVar("Obs")
D = TypeVar("D", bound=Decided)


class Controller(ABC, Generic[Obs, D]):
    name: ClassVar[str]
    section: ClassVar[str]  # the status.Document field its status() fills
    # A failed cycle of an essential controller withholds systemd's watchdog (the daemon gets
    # restarted); any other controller's failure is reported and isolated, because restarting the
    # whole daemon for a bug in, say, Loki shipping would also interrupt maintenance mode.
    essential: ClassVar[bool] = False

    def __init__(self, services: Services) -> None:
        self.services = services
        self.workers = Workers()

    @classmethod
    def check(cls, config: Config) -> list[ConfigProblem]:
        """Return what `prepare` would refuse in `config` (directories, addresses, files), each with
        its TOML path, without opening or changing anything."""
        return []

    @abstractmethod
    def prepare(self, config: Config) -> Change:
        """Open what `config` needs, without disturbing the running configuration. Raise ConfigError
        (every problem with its path) or AgentError (one line) if it cannot be used."""

    @abstractmethod
    def observe(self, facts: Facts) -> Obs: ...

    @abstractmethod
    def decide(self, observation: Obs) -> D:
        """Pure: delegate to a module-level function of plain values."""

    @abstractmethod
    def act(self, decision: D, facts: Facts) -> Facts: ...

    @abstractmethod
    def status(self) -> Any: ...

    def stop(self) -> None:
        """Close everything it opened; bounded in time."""

    def reconcile(self, facts: Facts) -> tuple[Facts, str]:
        """One cycle: observe, decide, act. Return the facts and this controller's clause."""
        decision = self.decide(self.observe(facts))
        return self.act(decision, facts), decision.sentence

    def fds(self) -> Mapping[int, Callable[[], str]]:
        """File descriptors the loop should wait on, each with the function that reads it and
        returns the cycle's trigger (it must not raise: it runs in the loop itself)."""
        return {}

    def due(self) -> float | None:
        """The monotonic time at which this controller needs a cycle, if any."""
        return None

    def degraded(self) -> list[str]:
        """What works worse than configured right now, and why (shown in status)."""
        return []

    def unhealthy(self, now: float) -> list[str]:
        return self.workers.unhealthy(now)


def switch(controllers: list[Controller[Any, Any]], config: Config,
           on_commit_error: Callable[[Controller[Any, Any], Exception], object]) -> None:
    """Prepare every controller for `config`, then commit all of them, or discard all and re-raise
    the first refusal: a configuration is used whole or not at all."""
    changes: list[Change] = []
    try:
        for controller in controllers:
            changes.append(controller.prepare(config))
    except BaseException:
        for change in changes:
            change.discard()
        raise
    for controller, change in zip(controllers, changes, strict=True):
        try:
            change.commit()
        except Exception as error:  # a bug: the others still switch, and the failure is reported
            on_commit_error(controller, error)
