"""The [lock_fencing] section of the configuration: defaults, what builds it, what is refused."""

from __future__ import annotations

import textwrap

import pytest

from pretix_agent import config
from pretix_agent.errors import ConfigError


def parse(text: str) -> config.Config:
    return config.parse(textwrap.dedent(text), "agent.toml")


def problems_of(text: str) -> list[tuple[str, str, int | None]]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return [(p.path, p.message, p.line) for p in caught.value.problems]


def test_lock_fencing_is_off_without_a_dsn():
    assert config.defaults().lock_fencing is None
    assert parse('[lock_fencing]\ndsn = ""\n').lock_fencing is None


def test_a_dsn_alone_turns_lock_fencing_on_with_the_defaults():
    section = parse('[lock_fencing]\ndsn = "host=10.0.0.10 dbname=postgres user=pretix_agent_fencing"\n').lock_fencing
    assert section == config.LockFencingSection(
        dsn="host=10.0.0.10 dbname=postgres user=pretix_agent_fencing", max_hold=2.0, interval=1.0, timeout=0.5,
        enforce=True, databases=(), users=())


def test_every_key_is_read():
    section = parse("""
        [lock_fencing]
        dsn = "postgresql://fencing@db/postgres"
        max_hold = "1500ms"
        interval = "500ms"
        timeout = "250ms"
        enforce = false
        databases = ["pretix"]
        users = ["pretix"]
        """).lock_fencing
    assert section is not None
    assert (section.max_hold, section.interval, section.timeout, section.enforce) == (1.5, 0.5, 0.25, False)
    assert (section.databases, section.users) == (("pretix",), ("pretix",))


@pytest.mark.parametrize(("text", "path", "words", "line"), [
    pytest.param('dsn = "x"\nmax_hold = "3s"', "lock_fencing.max_hold", "must be less than pretix's lock timeout", 4,
                 id="max-hold-at-pretix-lock-timeout-comes-too-late"),
    pytest.param('dsn = "x"\nmax_hold = "200ms"\ninterval = "100ms"\ntimeout = "50ms"', "lock_fencing.max_hold",
                 "must be at least 500ms", 4, id="max-hold-too-short-would-fence-healthy-transactions"),
    pytest.param('dsn = "x"\ninterval = "2500ms"', "lock_fencing.interval", "must be at most max_hold (2 s)", 4,
                 id="interval-longer-than-max-hold"),
    pytest.param('dsn = "x"\ntimeout = "1s"', "lock_fencing.timeout", "must be less than interval (1 s)", 4,
                 id="timeout-not-less-than-interval"),
    pytest.param('dsn = "x"\nenforce = "no"', "lock_fencing.enforce", "expected true or false", 4,
                 id="enforce-is-a-boolean"),
    pytest.param('dsn = "mysql://db"', "lock_fencing.dsn", "expected a libpq DSN", 3, id="dsn-of-another-kind"),
    pytest.param('dsn = "x"\nusers = "pretix"', "lock_fencing.users", "expected an array of non-empty strings", 4,
                 id="users-is-a-list"),
    pytest.param('dsn = "x"\nmax_hlod = "2s"', "lock_fencing.max_hlod", 'did you mean "max_hold"?', 4,
                 id="misspelt-key"),
])
def test_a_bad_value_is_one_problem_with_its_path_and_line(text, path, words, line):
    (problem,) = problems_of("\n[lock_fencing]\n" + text + "\n")
    assert problem[0] == path and words in problem[1] and problem[2] == line, problem


def test_a_password_in_a_wrong_dsn_is_not_echoed():
    (problem,) = problems_of('[lock_fencing]\ndsn = "mysql://fencing:s3cret@db/x"\n')
    assert "s3cret" not in problem[1]


def test_a_disabled_section_still_reports_its_problems():
    assert [p[0] for p in problems_of('[lock_fencing]\ntimeout = "5s"\n')] == ["lock_fencing.timeout"]
