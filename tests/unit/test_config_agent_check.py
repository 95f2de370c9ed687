"""`[agent_check] allow` and the connection limits, as the configuration parses them."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from pretix_agent import config
from pretix_agent.errors import ConfigError


def agent_check(extra: str) -> config.AgentCheckSection:
    section = config.parse(f'[agent_check]\nlisten = "0.0.0.0:8999"\n{extra}\n').agent_check
    assert section is not None
    return section


def test_the_defaults_allow_loopback_and_private_ranges_with_room_for_a_flood():
    section = agent_check("")
    assert section.allow == config.AGENT_CHECK_ALLOW
    assert [str(n) for n in section.allow] == ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                                               "192.168.0.0/16", "fc00::/7"]
    assert (section.idle_timeout, section.max_connections, section.max_per_source) == (1.0, 256, 8)


def test_ipv4_and_ipv6_networks_and_single_addresses_are_accepted():
    section = agent_check('allow = ["203.0.113.7/32", "2001:db8::/32", "198.51.100.9", " 10.0.0.0/8 "]\n'
                          'idle_timeout = "250ms"\nmax_connections = 32\nmax_per_source = 2')
    assert section.allow == tuple(ip_network(n) for n in ("203.0.113.7/32", "2001:db8::/32", "198.51.100.9/32",
                                                          "10.0.0.0/8"))
    assert (section.idle_timeout, section.max_connections, section.max_per_source) == (0.25, 32, 2)


@pytest.mark.parametrize(("line", "message"), [
    ("allow = []", 'agent_check.allow: expected at least one network; to allow every address write '
                   '["0.0.0.0/0", "::/0"]'),
    ('allow = ["10.0.0.1/8"]', 'agent_check.allow: "10.0.0.1/8" has host bits set: write "10.0.0.0/8"'),
    ('allow = ["2001:db8::1/32"]', 'agent_check.allow: "2001:db8::1/32" has host bits set: write "2001:db8::/32"'),
    ('allow = ["lb1.example.org"]', 'agent_check.allow: "lb1.example.org" is not a network: write an address '
                                    'with its prefix length, e.g. "10.0.0.0/8", "192.0.2.7/32" or "2001:db8::/32"'),
    ('allow = ["10.0.0.0/33"]', 'agent_check.allow: "10.0.0.0/33" is not a network'),
    ('allow = "10.0.0.0/8"', "agent_check.allow: expected an array of non-empty strings, got a string"),
    ("max_connections = 0", "agent_check.max_connections: expected an integer from 1 to 65536, got 0"),
    ("max_per_source = -1", "agent_check.max_per_source: expected an integer from 1 to 65536, got -1"),
    ('idle_timeout = "0s"', 'agent_check.idle_timeout: expected a duration greater than zero, got "0s"'),
])
def test_a_bad_value_is_one_line_with_its_path(line, message):
    with pytest.raises(ConfigError) as caught:
        config.parse(f'[agent_check]\nlisten = "0.0.0.0:8999"\n{line}\n')
    assert len(caught.value.problems) == 1
    assert message in str(caught.value)
    assert str(caught.value).count("\n") == 0
