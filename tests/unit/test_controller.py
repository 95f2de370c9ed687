"""The controller shape: a configuration switched whole or not at all; workers judged for the watchdog."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pretix_agent.config import defaults
from pretix_agent.controller import Controller, Swap, Worker, Workers, switch
from pretix_agent.errors import AgentError


@dataclass
class Ledger:
    """What happened to the prepared changes, in order."""

    entries: list[str] = field(default_factory=list)


class FakeController(Controller):  # type: ignore[type-arg]
    name = "fake"
    section = "fake"

    def __init__(self, name: str, ledger: Ledger, refuse: bool = False, commit_breaks: bool = False):
        self.name = name
        self.ledger = ledger
        self.refuse = refuse
        self.commit_breaks = commit_breaks

    def prepare(self, config):
        if self.refuse:
            raise AgentError(f"{self.name} refuses")
        self.ledger.entries.append(f"prepare {self.name}")

        def commit():
            if self.commit_breaks:
                raise RuntimeError(f"{self.name} broke")
            self.ledger.entries.append(f"commit {self.name}")

        return Swap(commit, lambda: self.ledger.entries.append(f"discard {self.name}"))

    def observe(self, facts):
        return None

    def decide(self, observation):
        raise NotImplementedError

    def act(self, decision, facts):
        return facts

    def status(self):
        return None


def test_a_configuration_every_controller_prepares_is_committed_by_all_after_all_prepared():
    ledger = Ledger()
    controllers = [FakeController(name, ledger) for name in ("a", "b", "c")]
    switch(controllers, defaults(), lambda controller, error: None)
    assert ledger.entries == ["prepare a", "prepare b", "prepare c", "commit a", "commit b", "commit c"]


def test_one_refusal_discards_what_the_others_prepared_and_commits_nothing():
    ledger = Ledger()
    controllers = [FakeController("a", ledger), FakeController("b", ledger), FakeController("c", ledger, refuse=True)]
    with pytest.raises(AgentError, match="c refuses"):
        switch(controllers, defaults(), lambda controller, error: None)
    assert ledger.entries == ["prepare a", "prepare b", "discard a", "discard b"]


def test_a_commit_that_breaks_is_reported_and_the_others_still_commit():
    ledger = Ledger()
    broken = []
    controllers = [FakeController("a", ledger, commit_breaks=True), FakeController("b", ledger)]
    switch(controllers, defaults(), lambda controller, error: broken.append((controller.name, str(error))))
    assert broken == [("a", "a broke")]
    assert ledger.entries == ["prepare a", "prepare b", "commit b"]


def test_swap_without_functions_changes_nothing():
    Swap().commit()
    Swap().discard()


def test_a_dead_worker_and_a_silent_one_are_unhealthy_a_beating_one_is_not():
    workers = Workers()
    alive = workers.add("alive", lambda: True, max_silence=10.0)
    workers.add("dead", lambda: False)
    silent = workers.add("silent", lambda: True, max_silence=10.0)
    alive.last_beat = 100.0
    silent.last_beat = 80.0
    assert workers.unhealthy(105.0) == ["dead", "silent"]


def test_a_worker_that_need_not_beat_is_judged_by_being_alive_only():
    workers = Workers()
    workers.put(Worker("responder", lambda: True))
    assert workers.unhealthy(1e12) == []
    workers.remove("responder")
    assert workers.unhealthy(1e12) == []
