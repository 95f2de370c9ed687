"""The agent-check responder as the daemon runs it: bound at prepare, answering at commit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import status
from ..check_results import CheckState
from ..config import AgentCheckSection, Config, split_host_port
from ..controller import Change, Controller, Facts, Services, Swap
from ..errors import ConfigError, ConfigProblem
from ..events import Event
from ..haproxy.agent_check import AgentCheckResponder
from .verdict import Verdict, verdict


@dataclass(frozen=True)
class Observed:
    section: AgentCheckSection
    checks: dict[str, CheckState]
    drain: str | None


# How a responder is made for a section (the tests hand in one that opens no socket).
MakeResponder = Callable[[AgentCheckSection, Callable[[], str], Callable[[str], None]], AgentCheckResponder]


def _responder(section: AgentCheckSection, answer: Callable[[], str],
               on_refused: Callable[[str], None]) -> AgentCheckResponder:
    return AgentCheckResponder.for_section(section, answer, on_refused=on_refused)


class AgentCheckController(Controller[Observed, Verdict]):
    name = "agent_check"
    section = "agent_check"

    def __init__(self, services: Services, make_responder: MakeResponder = _responder):
        super().__init__(services)
        self.make_responder = make_responder
        self.settings: AgentCheckSection | None = None
        self.responder: AgentCheckResponder | None = None
        self.verdict: Verdict | None = None

    @classmethod
    def check(cls, config: Config) -> list[ConfigProblem]:
        import socket

        section = config.agent_check
        if section is None:
            return []
        host, port = split_host_port(section.listen)
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError) as error:
            return [config.problem(("agent_check", "listen"), f"cannot resolve {host}: {error}")]
        return []

    def prepare(self, config: Config) -> Change:
        problems = self.check(config)
        if problems:
            raise ConfigError(problems)
        new = config.agent_check
        old = self.settings
        if new is not None and old is not None and new.listen == old.listen and self.responder is not None:
            running = self.responder

            def keep() -> None:
                running.configure(new)  # same address: new rules, the socket stays
                self.settings = new
            return Swap(keep)
        responder: AgentCheckResponder | None = None
        if new is not None:
            responder = self.make_responder(new, self._answer, self._refused)
            responder.bind()  # AgentCheckError (one line) refuses the configuration

        def commit() -> None:
            self._stop_responder()
            self.settings, self.responder = new, responder
            if responder is not None:
                assert new is not None
                responder.start()
                self.workers.add("agent-check", responder.alive)
                self.services.emit(Event("agent_check.listening", "info", {"address": new.listen}))

        return Swap(commit, responder.stop if responder is not None else lambda: None)

    def _refused(self, address: str) -> None:
        """From the responder's thread, once per source it refused."""
        self.services.emit(Event("agent_check.refused", "warning", {
            "address": address, "detail": "closed unanswered: not in [agent_check] allow"}))

    def _answer(self) -> str:
        """For the responder's thread: the prepared answer, or no answer at all."""
        current = self.verdict
        if current is None or current.answer is None:
            raise LookupError("no verdict yet")  # the responder closes without answering
        return current.answer

    def observe(self, facts: Facts) -> Observed:
        assert self.settings is not None
        return Observed(self.settings, dict(facts.checks), facts.drain)

    def decide(self, observation: Observed) -> Verdict:
        return verdict(observation.section, observation.checks, observation.drain)

    def act(self, decision: Verdict, facts: Facts) -> Facts:
        self.verdict = decision
        return facts

    def reconcile(self, facts: Facts) -> tuple[Facts, str]:
        if self.settings is None:
            return facts, ""
        facts, _ = super().reconcile(facts)
        return facts, ""  # the answer is in status; the sentence names only what the node decides

    def status(self) -> status.AgentCheck | None:
        if self.settings is None:
            return None
        current = self.verdict
        responder = self.responder
        return status.AgentCheck(listen=self.settings.listen, answer=None if current is None else current.answer,
                                 why=None if current is None else current.why,
                                 answered=responder.answered if responder else 0,
                                 refused=responder.refused if responder else 0,
                                 evicted=responder.evicted if responder else 0,
                                 last_refused=responder.last_refused if responder else None)

    def _stop_responder(self) -> None:
        if self.responder is not None:
            self.responder.stop()
            self.responder = None
            self.workers.remove("agent-check")

    def stop(self) -> None:
        self._stop_responder()
