"""Tests for pretix_agent.loki.journal_fields: timestamps, fields, command line, cursor, host facts."""

from __future__ import annotations

import os

import pytest

from pretix_agent.loki import journal_fields

CURSOR = "s=65b1b9ad3fa44629841d1972706a799d;i=3e9;b=2e26ca920064408981493b28740a9a7c;m=2;t=660e00115948e;x=b3e"


def test_timestamp_is_the_journal_microseconds_in_nanoseconds_plus_the_sequence_number_mod_1000():
    assert journal_fields.timestamp_ns(1_700_000_000_123_456, CURSOR) == 1_700_000_000_123_456_000 + (0x3E9 % 1000)


def test_the_same_entry_always_gets_the_same_timestamp_so_a_resend_is_an_exact_duplicate():
    assert journal_fields.timestamp_ns(5, CURSOR) == journal_fields.timestamp_ns(5, CURSOR)


def test_neighbouring_entries_in_the_same_microsecond_get_different_timestamps():
    first = journal_fields.timestamp_ns(5, "s=a;i=10;b=c")
    second = journal_fields.timestamp_ns(5, "s=a;i=11;b=c")
    assert first != second and first // 1000 == second // 1000 == 5


def test_a_cursor_without_a_sequence_number_gives_the_plain_microseconds():
    assert journal_fields.timestamp_ns(7, None) == 7000
    assert journal_fields.timestamp_ns(7, "garbage") == 7000


@pytest.mark.parametrize(("value", "text"), [
    pytest.param("plain", "plain", id="string"),
    pytest.param([104, 105, 0, 255], "hi\x00\ufffd", id="bytes-as-numbers"),
    pytest.param(["first", "second"], "first", id="repeated-field"),
    pytest.param([[104, 105], "x"], "hi", id="repeated-binary"),
    pytest.param(None, None, id="null"),
    pytest.param([], None, id="empty-list"),
])
def test_journal_json_field_values_become_text(value, text):
    assert journal_fields.field_text(value) == text


UNITS = frozenset({"pretix-agent.service", "pretix-web.service"})


def test_a_units_own_lines_are_labelled_with_that_unit():
    assert journal_fields.unit_of({"_SYSTEMD_UNIT": "pretix-web.service"}, UNITS) == "pretix-web.service"


def test_systemds_lines_about_a_unit_are_labelled_with_that_unit_not_init_scope():
    fields = {"_SYSTEMD_UNIT": "init.scope", "UNIT": "pretix-web.service", "_PID": "1"}
    assert journal_fields.unit_of(fields, UNITS) == "pretix-web.service"


def test_a_coredump_of_a_unit_is_labelled_with_that_unit():
    fields = {"_SYSTEMD_UNIT": "systemd-coredump@0-1-0.service", "COREDUMP_UNIT": "pretix-web.service"}
    assert journal_fields.unit_of(fields, UNITS) == "pretix-web.service"


def test_an_entry_naming_no_wanted_unit_keeps_its_own_unit():
    assert journal_fields.unit_of({"_SYSTEMD_UNIT": "other.service"}, UNITS) == "other.service"
    assert journal_fields.unit_of({}, UNITS) is None


def test_journalctl_follows_from_after_the_cursor_with_every_line_and_no_boot_filter():
    command = journal_fields.journalctl_command(["journalctl"], ["pretix-agent.service", "nginx.service"],
                                         ["--directory", "/j"], CURSOR, since=100.0)
    assert command[0] == "journalctl"
    for flag in ("--output=json", "--all", "--merge", "--follow", "--lines=all", "--no-pager",
                 "--unit=pretix-agent.service", "--unit=nginx.service", f"--after-cursor={CURSOR}"):
        assert flag in command
    assert command[command.index("--directory") + 1] == "/j"
    assert not any(flag.startswith("--since") for flag in command)


def test_journalctl_starts_at_since_without_a_cursor():
    command = journal_fields.journalctl_command(["journalctl"], ["a.service"], [], None, since=1700000000.25)
    assert "--since=@1700000000.250000" in command
    assert not any(flag.startswith("--after-cursor") for flag in command)


def test_journalctl_is_asked_only_for_the_fields_we_use():
    command = journal_fields.journalctl_command(["journalctl"], ["a.service"], [], None, None)
    fields = next(flag for flag in command if flag.startswith("--output-fields="))
    assert set(fields.split("=", 1)[1].split(",")) == set(journal_fields.FIELDS)


def test_the_agents_journal_lines_carry_their_level_and_event_name_as_metadata():
    fields = {"PRIORITY": "3", "PRETIX_AGENT_EVENT": "check.failing", "MESSAGE": "check.failing check=db"}
    assert journal_fields.journal_metadata(fields, "check.failing check=db", own=True) == (
        ("level", "error"), ("event", "check.failing"))


def test_an_agent_event_that_reached_the_journal_through_the_stream_is_named_by_its_first_word():
    # The native protocol refused the datagram: the line went to stderr with its <4> prefix, which
    # journald turned into PRIORITY=4; there is no PRETIX_AGENT_EVENT field.
    metadata = journal_fields.journal_metadata({"PRIORITY": "4"}, "maintenance.marker_restored why=lock", own=True)
    assert metadata == (("level", "warning"), ("event", "maintenance.marker_restored"))


def test_an_agent_line_that_is_no_event_carries_only_its_level():
    assert journal_fields.journal_metadata({"PRIORITY": "3"}, "Traceback (most recent call last):", own=True) == (
        ("level", "error"),)


def test_other_units_lines_carry_their_level_and_never_an_event():
    fields = {"PRIORITY": "6", "PRETIX_AGENT_EVENT": "forged.event"}
    assert journal_fields.journal_metadata(fields, "check.failing of a look-alike", own=False) == (("level", "info"),)


def test_cursor_file_is_read_back_and_anything_else_is_no_cursor(tmp_path):
    path = tmp_path / "loki.cursor"
    assert journal_fields.read_cursor(path) is None
    path.write_text(CURSOR + "\n")
    assert journal_fields.read_cursor(path) == CURSOR
    path.write_text("not a cursor")
    assert journal_fields.read_cursor(path) is None
    path.write_bytes(b"\xff\xfe")
    assert journal_fields.read_cursor(path) is None


def test_own_unit_comes_from_the_cgroup(tmp_path):
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/system.slice/pretix-agent.service\n")
    assert journal_fields.own_unit(cgroup) == "pretix-agent.service"
    cgroup.write_text("0::/user.slice/user-0.slice/session-3.scope\n")
    assert journal_fields.own_unit(cgroup) == "pretix-agent.service"
    assert journal_fields.own_unit(tmp_path / "missing") == "pretix-agent.service"


def test_machine_id_is_read_only_when_it_looks_like_one(tmp_path):
    path = tmp_path / "machine-id"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    assert journal_fields.local_machine_id(path) == "0123456789abcdef0123456789abcdef"
    path.write_text("uninitialized\n")
    assert journal_fields.local_machine_id(path) is None


def test_process_start_time_is_in_the_past_and_recent():
    import time

    started = journal_fields.process_start_time(os.getpid())
    assert time.time() - 7 * 86400 < started <= time.time() + 1


def test_message_prefix_is_decoded_from_the_start_of_an_oversized_entry():
    head = b'{"__CURSOR":"s=1","MESSAGE":"caf\\u00e9 ' + b"x" * 50
    assert journal_fields.message_prefix(head, 1000) == "café " + "x" * 50


def test_message_prefix_backs_off_a_cut_escape():
    head = b'{"MESSAGE":"ab\\u00'
    assert journal_fields.message_prefix(head, 1000) == "ab"


def test_message_prefix_of_an_entry_without_a_readable_message_is_empty():
    assert journal_fields.message_prefix(b'{"MESSAGE":[1,2,3', 100) == ""


def test_root_may_read_the_journal():
    assert journal_fields.access_problem(euid=0, groups=set()) is None


def test_a_member_of_systemd_journal_may_read_the_journal():
    import grp

    try:
        gid = grp.getgrnam("systemd-journal").gr_gid
    except KeyError:
        pytest.skip("no systemd-journal group here")
    assert journal_fields.access_problem(euid=995, groups={gid}) is None


def test_a_system_user_in_no_journal_group_is_told_what_to_add():
    problem = journal_fields.access_problem(euid=995, groups={65534})
    assert problem is not None and "SupplementaryGroups=systemd-journal" in problem
