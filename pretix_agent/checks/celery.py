"""Celery queues on Redis: which lists hold a queue's tasks, and how long its oldest task has waited.

kombu's Redis transport (what celery uses with a redis:// broker) keeps a queue as one Redis list
per priority step: the bare name for step 0, `<queue><sep><step>` for the others
(kombu.transport.redis.Channel._q_for_pri). A producer LPUSHes, a worker BRPOPs the lists in step
order, so each list's oldest message is at its right end (`LINDEX key -1`). pretix configures
`sep ":"` and `priority_steps [0, 4, 8]` (pretix/settings.py, for a redis:// broker) and sends at
priority 5 by default, so its tasks wait in `default:4`, `checkout:4`, `mail:4` ...; kombu's own
defaults are `sep "\\x06\\x16"` and steps [0, 3, 6, 9].

The oldest task's age cannot be read from Redis: a kombu message carries no time it was sent
(celery's headers have eta/expires, kombu adds a random delivery tag). So it is measured by
observation: the identity of the message at a list's consuming end (its delivery tag), remembered
across probes with the time it was first seen there, says how long that message has been the
oldest. That is a lower bound of its wait, exact to one probe interval, and it is what matters:
a message that stays at the consuming end is one no worker takes.

Pure except `read_lists` (one Redis round trip per command, given a connected client):
`queue_keys` names the lists, `remember` advances the memory (a frozen value) with `now` as an
argument, `summarize` turns lists and memory into one reading per queue.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# pretix's layout (pretix/settings.py, CELERY_BROKER_TRANSPORT_OPTIONS for redis://).
PRETIX_SEPARATOR = ":"
PRETIX_PRIORITY_STEPS = (0, 4, 8)


def queue_keys(queue: str, separator: str = PRETIX_SEPARATOR,
               priority_steps: Sequence[int] = PRETIX_PRIORITY_STEPS) -> tuple[str, ...]:
    """Given a queue name, return the Redis lists kombu keeps its tasks in, in the order a worker
    takes from them: "default" -> ("default", "default:4", "default:8") for pretix's layout."""
    return tuple(queue if step == 0 else f"{queue}{separator}{step}" for step in sorted(set(priority_steps)))


def message_identity(raw: bytes | str) -> str:
    """The identity of a queued kombu message: its delivery tag (a UUID kombu gives every message),
    or, for a message without one (not kombu's JSON), a digest of its bytes."""
    try:
        tag = json.loads(raw)["properties"]["delivery_tag"]
    except (ValueError, TypeError, KeyError):
        tag = None
    if isinstance(tag, str) and tag:
        return tag
    data = raw.encode() if isinstance(raw, str) else raw
    return "sha1:" + hashlib.sha1(data).hexdigest()


@dataclass(frozen=True)
class ListHead:
    """What one list holds: its length (None: the key is not a list) and the identity of the
    message at its consuming end (None: empty, or not a list)."""

    length: int | None
    oldest: str | None = None


@dataclass(frozen=True)
class Oldest:
    """A message seen at a list's consuming end, and the (monotonic) time it was first seen there."""

    identity: str
    since: float


@dataclass(frozen=True)
class QueueMemory:
    """The oldest message of each list as remembered across probes (a state value)."""

    oldest: Mapping[str, Oldest] = field(default_factory=dict)


def remember(memory: QueueMemory, heads: Mapping[str, ListHead], now: float) -> QueueMemory:
    """Given the memory, what a probe read at `now`, return the new memory: a message still at its
    list's consuming end keeps the time it was first seen there; a new one starts at `now`; empty
    lists, and lists not read this time, are forgotten."""
    oldest: dict[str, Oldest] = {}
    for key, head in heads.items():
        if head.oldest is None:
            continue
        before = memory.oldest.get(key)
        oldest[key] = before if before is not None and before.identity == head.oldest else Oldest(head.oldest, now)
    return QueueMemory(oldest)


@dataclass(frozen=True)
class QueueReading:
    """One queue: tasks waiting (None: one of its keys is not a list), the length of each non-empty
    list, and how long its oldest message has been the oldest (None: empty) and in which list."""

    depth: int | None
    lists: Mapping[str, int] = field(default_factory=dict)
    oldest_seconds: float | None = None
    oldest_list: str | None = None


def summarize(keys_by_queue: Mapping[str, Sequence[str]], heads: Mapping[str, ListHead], memory: QueueMemory,
              now: float) -> dict[str, QueueReading]:
    """Given each queue's lists, what they hold, and the memory after `remember`, return one reading
    per queue. The age of a queue is that of its longest-waiting list head."""
    readings: dict[str, QueueReading] = {}
    for queue, keys in keys_by_queue.items():
        lengths = [heads[key].length if key in heads else None for key in keys]
        depth = None if any(length is None for length in lengths) else sum(lengths)  # type: ignore[arg-type]
        lists = {key: length for key, length in zip(keys, lengths, strict=True) if length}
        seen = [(now - memory.oldest[key].since, key) for key in keys if key in memory.oldest]
        age, where = max(seen, key=lambda item: item[0]) if seen else (None, None)
        readings[queue] = QueueReading(depth, lists, None if age is None else max(0.0, age), where)
    return readings


def read_lists(client: Any, keys: Sequence[str], response_error: type[Exception]) -> dict[str, ListHead]:
    """LLEN and `LINDEX key -1` of each key over a connected redis-py client; a key that is not a
    list (WRONGTYPE, `response_error`) reads as ListHead(None). Other errors propagate."""
    heads: dict[str, ListHead] = {}
    for key in keys:
        try:
            length = int(client.llen(key))
            raw = client.lindex(key, -1) if length else None
        except response_error:
            heads[key] = ListHead(None)
            continue
        # The list may have been emptied between the two commands: then it is empty.
        heads[key] = ListHead(length if raw is not None else 0, None if raw is None else message_identity(raw))
    return heads


class QueueMemoryCell:
    """Holds one check's QueueMemory between its probes (probes of one check never overlap: the
    runner starts no probe while the previous one still runs)."""

    def __init__(self) -> None:
        self.value = QueueMemory()
