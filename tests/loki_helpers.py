"""Shared by the Loki tests: a `[loki]` section with the schema's defaults, and a hand-written fake
push client that answers from a script instead of the network."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

from pretix_agent import config
from pretix_agent.config import LokiSection
from pretix_agent.loki.entries import Entry
from pretix_agent.loki.push import Credentials, Outcome, PushResult, build_body, classify


def loki_section(url: str = "http://127.0.0.1:9", **overrides: Any) -> LokiSection:
    """The `[loki]` section an operator gets with only `url` set, with `overrides` applied."""
    section = config.parse(f'[loki]\nurl = "{url}"\n').loki
    assert section is not None
    return dataclasses.replace(section, **overrides)


class FakePushClient:
    """Answers pushes from `answers` (HTTP statuses; None means a network error), then 204 forever.

    Records every push's entries; `limit_bytes` answers 413 to bodies larger than that.
    """

    url = "http://fake/loki/api/v1/push"

    def __init__(self, answers: Sequence[int | None] = (), limit_bytes: int | None = None):
        self.answers = list(answers)
        self.limit_bytes = limit_bytes
        self.pushed: list[list[Entry]] = []
        self.accepted: list[Entry] = []
        self.credentials = Credentials()
        self.lock = threading.Lock()
        self.closed = False

    def push(self, entries: Sequence[Entry], timeout: float | None = None) -> PushResult:
        with self.lock:
            self.pushed.append(list(entries))
            status = self.answers.pop(0) if self.answers else 204
            body = build_body(entries)
            if status == 204 and self.limit_bytes is not None and len(body) > self.limit_bytes:
                status = 413
            if status == 204:
                self.accepted.extend(entries)
        outcome = classify(status)
        message = "network error" if status is None else f"fake {status}"
        return PushResult(outcome if status is not None else Outcome.RETRY, status, message, None, 0.0, len(body))

    def update_credentials(self, credentials: Credentials) -> None:
        self.credentials = credentials

    def abort(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def lines(self) -> list[str]:
        with self.lock:
            return [entry.line for entry in self.accepted]


class ListSource:
    """A source over a list the test appends to; records what the shipper committed."""

    kind = "list"

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.position = 0
        self.committed: list[Entry] = []
        self.started = False
        self.closed = False
        self.lock = threading.Lock()
        self.ready = threading.Event()

    def add(self, entries: Sequence[Entry]) -> None:
        with self.lock:
            self.entries.extend(entries)
        self.ready.set()

    def start(self, context: Any) -> None:
        self.started = True
        self.context = context

    def read(self, max_bytes: int, timeout: float) -> list[Entry]:
        if self.position >= len(self.entries) and timeout > 0:
            self.ready.wait(timeout)
        out: list[Entry] = []
        taken = 0
        with self.lock:
            while self.position < len(self.entries):
                entry = self.entries[self.position]
                if out and taken + entry.size > max_bytes:
                    break
                out.append(entry)
                taken += entry.size
                self.position += 1
                if taken >= max_bytes:
                    break
            if self.position >= len(self.entries):
                self.ready.clear()
        return out

    def wakeup(self) -> None:
        self.ready.set()

    def commit(self, entries: Sequence[Entry]) -> None:
        self.committed.extend(entries)

    def close(self) -> None:
        self.closed = True

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "unread": len(self.entries) - self.position}
