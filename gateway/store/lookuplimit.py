"""How often one client address may have an unknown token looked up in PostgreSQL.

A well-formed token the cache has never seen costs a query; a forger can make such tokens at will
(the checksum is public), so each address gets a token bucket: `per_minute` look-ups at once, then
`per_minute / 60` a second. A look-up that finds a token is given back (`give_back`), so callers
with real tokens never use the bucket up, however many share an address. In process, no I/O.

    limit = LookupLimit(60)
    wait = limit.take(address, now)   # 0.0: go ahead; > 0: seconds until the next look-up
    limit.give_back(address)          # the look-up found a token after all

Addresses are bounded (`max_addresses`, least recently seen forgotten first: a forgotten bucket
was full anyway unless it is under attack from more addresses than that). IPv6 clients count per
/64, the block one subscriber usually holds, so walking through one's own block gains nothing.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

MAX_ADDRESSES = 10_000


def client_key(address: str | None) -> str:
    """The bucket an address counts in: an IPv4 address, or the /64 of an IPv6 one (IPv4-mapped
    IPv6 as the IPv4 address). Anything else (a Unix socket, no address) shares one bucket."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return ""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LookupLimit:
    """Token buckets per client address; `per_minute` 0 (or less) lets every look-up through."""

    __slots__ = ("_burst", "_rate", "_max", "_buckets")

    def __init__(self, per_minute: int, max_addresses: int = MAX_ADDRESSES) -> None:
        self._burst = float(max(per_minute, 0))
        self._rate = self._burst / 60.0
        self._max = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, address: str | None, now: float) -> float:
        """0.0 and one look-up used, or the seconds until this address may look up again."""
        if self._rate <= 0:
            return 0.0
        key = client_key(address)
        tokens, at = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens, now)  # at the end: the most recently seen
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait

    def give_back(self, address: str | None) -> None:
        """Return the look-up `take` counted: it found a token."""
        entry = self._buckets.get(key := client_key(address))
        if entry is not None:
            self._buckets[key] = (min(self._burst, entry[0] + 1.0), entry[1])
