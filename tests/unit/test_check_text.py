"""One safe line from what a server or library said."""

from pretix_agent.checks.text import one_line, scrub


def test_one_line_keeps_the_first_non_empty_line_stripped():
    assert one_line("\n  FATAL: no  \n\tDETAIL: more\n") == "FATAL: no"
    assert one_line("") == ""


def test_one_line_shows_control_characters_as_question_marks_and_cuts_long_text():
    assert one_line("bad\x00\x1b[31mred") == "bad??[31mred"
    assert one_line("x" * 300, limit=10) == "x" * 9 + "…"


def test_scrub_replaces_every_secret_and_ignores_empty_ones():
    assert scrub("user a password s3cret, again s3cret", ["s3cret", ""]) == "user a password ***, again ***"
