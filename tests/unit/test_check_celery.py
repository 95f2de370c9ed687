"""Celery queues on Redis: list names, message identity, and the oldest-task memory (pure)."""

from __future__ import annotations

import json

from pretix_agent.checks.celery import (
    ListHead,
    Oldest,
    QueueMemory,
    QueueReading,
    message_identity,
    queue_keys,
    read_lists,
    remember,
    summarize,
)


def kombu_message(tag: str) -> bytes:
    return json.dumps({"body": "W10=", "headers": {"task": "pretix.base.services.mail.mail_send_task"},
                       "properties": {"delivery_tag": tag, "priority": 5}}).encode()


def test_pretix_layout_names_the_bare_queue_then_its_colon_steps_in_the_order_a_worker_takes_them():
    assert queue_keys("default") == ("default", "default:4", "default:8")


def test_kombus_own_layout_is_a_matter_of_separator_and_steps():
    assert queue_keys("mail", "\x06\x16", (0, 3, 6, 9)) == ("mail", "mail\x06\x163", "mail\x06\x166", "mail\x06\x169")


def test_a_message_is_known_by_its_delivery_tag_and_anything_else_by_a_digest_of_its_bytes():
    assert message_identity(kombu_message("7b0c")) == "7b0c"
    assert message_identity(b"not json") == message_identity(b"not json")
    assert message_identity(b"not json").startswith("sha1:")
    assert message_identity(b'{"properties": {}}') != message_identity(b'{"properties": {"x": 1}}')


def test_a_message_still_at_the_consuming_end_keeps_the_time_it_was_first_seen():
    first = remember(QueueMemory(), {"default:4": ListHead(3, "a")}, now=100.0)
    later = remember(first, {"default:4": ListHead(5, "a")}, now=104.0)
    assert later.oldest == {"default:4": Oldest("a", 100.0)}


def test_a_new_message_at_the_consuming_end_starts_at_now_and_empty_lists_are_forgotten():
    memory = QueueMemory({"default:4": Oldest("a", 100.0), "mail": Oldest("m", 90.0)})
    after = remember(memory, {"default:4": ListHead(2, "b"), "mail": ListHead(0)}, now=104.0)
    assert after.oldest == {"default:4": Oldest("b", 104.0)}


def test_a_queues_reading_sums_its_lists_and_takes_the_age_of_its_longest_waiting_head():
    heads = {"default": ListHead(1, "h"), "default:4": ListHead(8, "a"), "default:8": ListHead(0)}
    memory = QueueMemory({"default": Oldest("h", 110.0), "default:4": Oldest("a", 100.0)})
    reading = summarize({"default": ("default", "default:4", "default:8")}, heads, memory, now=112.5)
    assert reading == {"default": QueueReading(depth=9, lists={"default": 1, "default:4": 8}, oldest_seconds=12.5,
                                               oldest_list="default:4")}


def test_an_empty_queue_has_no_age_and_a_key_that_is_not_a_list_has_no_depth():
    heads = {"mail": ListHead(0), "mail:4": ListHead(0), "x": ListHead(None), "x:4": ListHead(2, "t")}
    memory = remember(QueueMemory(), heads, now=5.0)
    readings = summarize({"mail": ("mail", "mail:4"), "x": ("x", "x:4")}, heads, memory, now=5.0)
    assert readings["mail"] == QueueReading(depth=0)
    assert readings["x"].depth is None
    assert readings["x"].oldest_seconds == 0.0 and readings["x"].oldest_list == "x:4"


def test_the_age_grows_from_probe_to_probe_while_no_worker_takes_the_oldest_task():
    keys = {"default": queue_keys("default")}
    memory = QueueMemory()
    ages = []
    for now, depth in ((0.0, 1), (2.0, 2), (4.0, 3)):
        heads = {"default": ListHead(0), "default:4": ListHead(depth, "first"), "default:8": ListHead(0)}
        memory = remember(memory, heads, now)
        ages.append(summarize(keys, heads, memory, now)["default"].oldest_seconds)
    assert ages == [0.0, 2.0, 4.0]


class FakeResponseError(Exception):
    pass


class FakeLists:
    """The two commands read_lists uses, over a dict of Python lists (index 0 = left end)."""

    def __init__(self, lists: dict[str, list[bytes]], strings: frozenset[str] = frozenset()):
        self.lists = lists
        self.strings = strings

    def llen(self, key: str) -> int:
        if key in self.strings:
            raise FakeResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return len(self.lists.get(key, []))

    def lindex(self, key: str, index: int) -> bytes | None:
        items = self.lists.get(key, [])
        return items[index] if items else None


def test_read_lists_takes_the_oldest_message_from_the_right_end_where_workers_take_them():
    client = FakeLists({"default:4": [kombu_message("newest"), kombu_message("oldest")]}, frozenset({"odd"}))
    heads = read_lists(client, ["default", "default:4", "odd"], FakeResponseError)
    assert heads == {"default": ListHead(0), "default:4": ListHead(2, "oldest"), "odd": ListHead(None)}
