"""The agent-check controller with a hand-written responder: bound at prepare, serving only after
commit, kept across a reload to the same address, and answering what the checks decide."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import pytest

from pretix_agent import config as config_module
from pretix_agent.agent_check.controller import AgentCheckController
from pretix_agent.check_results import CheckState
from pretix_agent.checks.model import failed, passed
from pretix_agent.config import AgentCheckSection
from pretix_agent.controller import Facts, Services
from pretix_agent.errors import ConfigError
from pretix_agent.events import Event
from pretix_agent.haproxy.agent_check import AgentCheckError

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
CONFIG = """
[agent_check]
listen = "{listen}"
checks = ["pretix"]
[checks.pretix]
type = "http"
url = "http://127.0.0.1:1/healthcheck/"
"""


class FakeResponder:
    """What the controller uses of AgentCheckResponder, with no socket: a log of what was done."""

    def __init__(self, section: AgentCheckSection, answer: Callable[[], str], on_refused: Callable[[str], None],
                 log: list[str], refuse_bind: bool):
        self.section, self.answer, self.on_refused = section, answer, on_refused
        self.log, self.refuse_bind = log, refuse_bind
        self.running = False
        self.answered = self.refused = self.evicted = 0
        self.last_refused: str | None = None

    def bind(self) -> None:
        if self.refuse_bind:
            raise AgentCheckError(f"agent-check listen {self.section.listen}: Address already in use")
        self.log.append(f"bind {self.section.listen}")

    def start(self) -> None:
        self.running = True
        self.log.append(f"start {self.section.listen}")

    def alive(self) -> bool:
        return self.running

    def configure(self, section: AgentCheckSection) -> None:
        self.section = section
        self.log.append(f"configure {section.listen}")

    def stop(self) -> None:
        self.running = False
        self.log.append(f"stop {self.section.listen}")


class Made:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.events: list[Event] = []
        self.responders: list[FakeResponder] = []
        self.refuse_bind = False
        self.controller = AgentCheckController(Services(lambda reason: None, self.events.append), self.make)

    def make(self, section: AgentCheckSection, answer: Callable[[], str],
             on_refused: Callable[[str], None]) -> FakeResponder:
        responder = FakeResponder(section, answer, on_refused, self.log, self.refuse_bind)
        self.responders.append(responder)
        return responder

    def load(self, listen: str = "127.0.0.1:18999") -> None:
        self.controller.prepare(config_module.parse(CONFIG.format(listen=listen))).commit()


@pytest.fixture
def made() -> Made:
    return Made()


def facts(state: CheckState, drain: str | None = None) -> Facts:
    return Facts(now=NOW, monotonic=100.0, checks={"pretix": state}, drain=drain)


PASSING = CheckState(state="passing", last=passed("HTTP 200 in 3 ms"))
FAILING = CheckState(state="failing", last=failed("HTTP 500"), failure=failed("HTTP 500"))


def test_without_the_section_nothing_listens_and_nothing_is_reported(made: Made):
    made.controller.prepare(config_module.parse("")).commit()
    assert made.responders == [] and made.controller.status() is None
    assert made.controller.reconcile(facts(FAILING)) == (facts(FAILING), "")


def test_prepare_binds_but_only_commit_serves_and_says_so(made: Made):
    change = made.controller.prepare(config_module.parse(CONFIG.format(listen="127.0.0.1:18999")))
    assert made.log == ["bind 127.0.0.1:18999"] and made.events == []
    change.commit()
    assert made.log == ["bind 127.0.0.1:18999", "start 127.0.0.1:18999"]
    assert [(e.name, e.fields["address"]) for e in made.events] == [("agent_check.listening", "127.0.0.1:18999")]
    assert made.controller.workers.unhealthy(0.0) == []
    made.responders[0].running = False  # its thread died: the daemon is told
    assert made.controller.workers.unhealthy(0.0) == ["agent-check"]


def test_a_discarded_prepare_closes_the_new_socket_and_keeps_the_running_one(made: Made):
    made.load("127.0.0.1:18999")
    made.controller.prepare(config_module.parse(CONFIG.format(listen="127.0.0.1:19000"))).discard()
    assert made.log[-2:] == ["bind 127.0.0.1:19000", "stop 127.0.0.1:19000"]
    assert made.responders[0].running and made.controller.responder is made.responders[0]
    assert made.controller.status().listen == "127.0.0.1:18999"  # type: ignore[union-attr]


def test_a_bind_that_fails_refuses_the_configuration_and_changes_nothing(made: Made):
    made.load("127.0.0.1:18999")
    made.refuse_bind = True
    with pytest.raises(AgentCheckError, match="Address already in use"):
        made.controller.prepare(config_module.parse(CONFIG.format(listen="127.0.0.1:19000")))
    assert made.responders[0].running and made.controller.status().listen == "127.0.0.1:18999"  # type: ignore[union-attr]


def test_an_unresolvable_host_is_a_configuration_problem_before_any_socket(made: Made):
    with pytest.raises(ConfigError, match=r"agent_check.*cannot resolve no-such-host\.invalid"):
        made.controller.prepare(config_module.parse(CONFIG.format(listen="no-such-host.invalid:18999")))
    assert made.responders == []


def test_a_reload_to_the_same_address_keeps_the_socket_and_takes_the_new_rules(made: Made):
    made.load("127.0.0.1:18999")
    reloaded = config_module.parse(CONFIG.format(listen="127.0.0.1:18999").replace(
        'checks = ["pretix"]', 'checks = ["pretix"]\nallow = ["10.0.0.0/8"]'))
    made.controller.prepare(reloaded).commit()
    assert len(made.responders) == 1 and made.log.count("bind 127.0.0.1:18999") == 1
    assert made.log[-1] == "configure 127.0.0.1:18999"
    assert [str(n) for n in made.responders[0].section.allow] == ["10.0.0.0/8"]


def test_a_reload_to_another_address_moves_the_listener(made: Made):
    made.load("127.0.0.1:18999")
    made.load("127.0.0.1:19000")
    assert made.log == ["bind 127.0.0.1:18999", "start 127.0.0.1:18999",
                        "bind 127.0.0.1:19000", "stop 127.0.0.1:18999", "start 127.0.0.1:19000"]


def test_no_answer_until_the_first_verdict_then_the_verdict_of_the_checks(made: Made):
    made.load()
    answer = made.responders[0].answer
    with pytest.raises(LookupError):
        answer()  # the responder closes without answering: haproxy keeps its last state
    made.controller.reconcile(facts(PASSING))
    assert answer() == "up 100%\n"
    made.controller.reconcile(facts(FAILING))
    assert answer() == "down 100% #pretix: HTTP 500\n"
    made.controller.reconcile(facts(PASSING, drain="kernel update"))
    assert answer().startswith("up 0% #")
    report = made.controller.status()
    assert report is not None and report.answer == answer() and report.why


def test_a_refused_source_is_one_warning_with_its_address(made: Made):
    made.load()
    made.responders[0].on_refused("192.0.2.7")
    assert [(e.name, e.level, e.fields["address"]) for e in made.events[1:]] == [
        ("agent_check.refused", "warning", "192.0.2.7")]


def test_stop_stops_the_responder_and_forgets_its_worker(made: Made):
    made.load()
    made.controller.stop()
    assert made.log[-1] == "stop 127.0.0.1:18999" and not made.responders[0].running
    assert made.controller.workers.unhealthy(0.0) == []
