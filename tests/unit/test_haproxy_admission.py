"""Who may ask the agent-check port, and which answered connections make room (haproxy/admission.py)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from pretix_agent.config import AGENT_CHECK_ALLOW
from pretix_agent.haproxy.admission import Lingering, allowed, peer_address, source_key

# --------------------------------------------------------------------------------------------- who may ask


@pytest.mark.parametrize(("sockaddr", "expected"), [
    (("10.1.2.3", 40000), "10.1.2.3"),
    (("::ffff:10.1.2.3", 40000, 0, 0), "10.1.2.3"),  # a dual-stack listener's IPv4 client
    (("2001:db8::7", 40000, 0, 0), "2001:db8::7"),
    (("fe80::1%eth0", 40000, 0, 2), "fe80::1"),
])
def test_the_peer_address_is_the_ip_a_network_can_contain(sockaddr, expected):
    assert peer_address(sockaddr) == ip_address(expected)


@pytest.mark.parametrize(("address", "networks", "expected"), [
    ("10.9.8.7", ["10.0.0.0/8"], True),
    ("11.0.0.1", ["10.0.0.0/8"], False),
    ("127.0.0.1", ["127.0.0.1/32"], True),
    ("127.0.0.2", ["127.0.0.1/32"], False),
    ("2001:db8::1", ["10.0.0.0/8", "2001:db8::/32"], True),
    ("2001:db9::1", ["2001:db8::/32"], False),
    ("10.0.0.1", ["::/0"], False),  # an IPv6 network never holds an IPv4 address
    ("10.0.0.1", ["0.0.0.0/0", "::/0"], True),
])
def test_an_address_is_allowed_only_inside_a_listed_network(address, networks, expected):
    assert allowed(ip_address(address), [ip_network(n) for n in networks]) is expected


@pytest.mark.parametrize(("address", "expected"), [
    ("192.168.1.10", True), ("172.31.255.1", True), ("10.0.0.1", True), ("127.0.0.1", True), ("::1", True),
    ("fd12:3456::1", True), ("203.0.113.7", False), ("172.32.0.1", False), ("2001:db8::1", False),
    ("100.64.0.1", False),
])
def test_by_default_loopback_and_the_private_ranges_may_ask(address, expected):
    assert allowed(ip_address(address), AGENT_CHECK_ALLOW) is expected


def test_an_ipv6_host_counts_as_one_source_whatever_address_of_its_64_it_uses():
    assert source_key(ip_address("2001:db8:1:2::1")) == source_key(ip_address("2001:db8:1:2:ffff::9"))
    assert source_key(ip_address("2001:db8:1:2::1")) == "2001:db8:1:2::/64"
    assert source_key(ip_address("2001:db8:1:3::1")) != source_key(ip_address("2001:db8:1:2::1"))
    assert source_key(ip_address("10.0.0.1")) != source_key(ip_address("10.0.0.2"))


# --------------------------------------------------------------------------------------------- who makes room


def admit_all(lingering: Lingering, arrivals: list[str]) -> list[list[int]]:
    return [lingering.admit(key, source) for key, source in enumerate(arrivals)]


def test_within_the_limits_nothing_is_closed():
    lingering = Lingering(max_total=4, max_per_source=2)
    assert admit_all(lingering, ["a", "a", "b", "c"]) == [[], [], [], []]
    assert len(lingering) == 4 and lingering.sources() == {"a": 2, "b": 1, "c": 1}


def test_beyond_its_own_limit_a_source_loses_its_oldest_connection_not_anyone_elses():
    lingering = Lingering(max_total=100, max_per_source=2)
    assert admit_all(lingering, ["haproxy", "noisy", "noisy", "noisy", "noisy"]) == [[], [], [], [1], [2]]
    assert lingering.sources() == {"haproxy": 1, "noisy": 2}
    assert 0 in lingering and 1 not in lingering


def test_beyond_the_total_the_busiest_source_loses_its_oldest_connection():
    lingering = Lingering(max_total=4, max_per_source=3)
    assert admit_all(lingering, ["lb1", "x", "x", "x", "lb2"]) == [[], [], [], [], [1]]
    assert lingering.sources() == {"lb1": 1, "x": 2, "lb2": 1}


def test_among_equally_busy_sources_the_oldest_connection_goes_and_never_the_new_one():
    lingering = Lingering(max_total=3, max_per_source=1)
    assert admit_all(lingering, ["a", "b", "c", "d", "e"]) == [[], [], [], [0], [1]]
    assert lingering.sources() == {"c": 1, "d": 1, "e": 1}


def test_with_room_for_one_each_new_connection_replaces_the_previous_one():
    lingering = Lingering(max_total=1, max_per_source=1)
    assert admit_all(lingering, ["a", "a", "b"]) == [[], [0], [1]]
    assert list(lingering.sources()) == ["b"]


def test_released_connections_free_their_room_and_unknown_keys_are_ignored():
    lingering = Lingering(max_total=2, max_per_source=2)
    admit_all(lingering, ["a", "a"])
    lingering.release(0)
    lingering.release(0)
    lingering.release(42)
    assert lingering.admit(2, "a") == []
    assert lingering.oldest() == 1
    lingering.release(1)
    lingering.release(2)
    assert len(lingering) == 0 and lingering.sources() == {} and lingering.oldest() is None


@pytest.mark.parametrize(("total", "per_source"), [(0, 1), (1, 0)])
def test_limits_below_one_are_refused(total, per_source):
    with pytest.raises(ValueError, match="at least 1"):
        Lingering(total, per_source)
