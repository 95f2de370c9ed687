"""Who may ask the agent-check port, and which answered connections to close when too many stay open.

Pure: addresses, networks and keys in, decisions out; no sockets, no clock. The responder
(agent_check.py) asks these at every accepted connection.

The design that keeps haproxy's polls answered under a flood: every allowed connection is answered
the moment it is accepted, so what the limits ration is only the time an *answered* connection may
stay open afterwards (haproxy closes at once; a hostile client need not). Over a limit, the oldest
answered connection of the busiest source is closed; a new connection is never refused for want of
room. One noisy address thus churns through its own connections and cannot take the others' slots;
and even a flood from haproxy's own address only closes connections whose answer is already out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

IPV6_SOURCE_PREFIX = 64  # one host gets a /64 to choose addresses from: count it as one source


def peer_address(sockaddr: tuple) -> Address:
    """Given accept()'s peer address, return the IP address; an IPv4-mapped IPv6 address (a
    dual-stack listener) becomes the IPv4 address it stands for."""
    address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])  # "fe80::1%eth0": the zone is not ours
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def allowed(address: Address, networks: Iterable[Network]) -> bool:
    """True if `address` lies in one of `networks` (IPv4 and IPv6 networks may be mixed)."""
    return any(address in network for network in networks)


def source_key(address: Address) -> str:
    """The source a connection is counted against: the IPv4 address, or the IPv6 /64 it is in."""
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False))
    return str(address)


class Lingering:
    """Answered connections still open, by source, oldest first (keys are increasing integers).

    `admit(key, source)` records a new connection and returns the keys to close now so that no
    source has more than `max_per_source` and all together no more than `max_total`; those keys are
    forgotten already. The new connection itself is never among them.
    """

    def __init__(self, max_total: int, max_per_source: int):
        if max_total < 1 or max_per_source < 1:
            raise ValueError("limits must be at least 1")
        self.max_total = max_total
        self.max_per_source = max_per_source
        self._sources: dict[str, dict[int, None]] = {}  # insertion order: oldest first
        self._source_of: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._source_of)

    def __contains__(self, key: int) -> bool:
        return key in self._source_of

    def sources(self) -> dict[str, int]:
        """How many connections each source has open."""
        return {source: len(keys) for source, keys in self._sources.items()}

    def admit(self, key: int, source: str) -> list[int]:
        members = self._sources.setdefault(source, {})
        members[key] = None
        self._source_of[key] = source
        evicted = []
        while len(members) > self.max_per_source:
            evicted.append(self._pop_oldest(source))
        while len(self._source_of) > self.max_total:
            # The busiest source; among equals the one whose oldest connection is oldest.
            busiest = max(self._sources, key=lambda name: (len(self._sources[name]), -next(iter(self._sources[name]))))
            evicted.append(self._pop_oldest(busiest))
        return evicted

    def oldest(self) -> int | None:
        """The oldest connection of all (to free a file descriptor), or None."""
        return min(self._source_of, default=None)

    def release(self, key: int) -> None:
        """Forget `key` (closed by its client or its timeout). Unknown keys are ignored."""
        source = self._source_of.pop(key, None)
        if source is None:
            return
        members = self._sources[source]
        del members[key]
        if not members:
            del self._sources[source]

    def _pop_oldest(self, source: str) -> int:
        key = next(iter(self._sources[source]))
        self.release(key)
        return key
