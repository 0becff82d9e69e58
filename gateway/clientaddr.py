"""The client's address: the connection's peer, or what a trusted proxy says it forwarded.

    client_address(request) -> ip_address | None

The peer (`request.remote`) is the address unless it is in `server.trusted_proxies` (CIDRs; empty
by default, so a header is never believed). From a trusted peer, `X-Forwarded-For` is read from
the right: each proxy appends the address it got the request from, so the right-most entry that
is not itself a trusted proxy is the client. Everything left of it was written by whoever sent
it, and is ignored. An entry that is not an address ends the walk at the last one believed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from aiohttp import web

from gateway import appkeys

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


@functools.lru_cache(maxsize=8)
def networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ip_network(c, strict=False) for c in cidrs)


def parse(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        address = ip_address(text.strip().removeprefix("[").partition("]")[0] if "[" in text else text.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in net for net in trusted)


def forwarded_for(peer: Address | None, header: str, trusted: Sequence[Network]) -> Address | None:
    """The client behind `peer` by `X-Forwarded-For` (`header`), believing only trusted hops."""
    if peer is None or not trusted or not _trusted(peer, trusted):
        return peer
    client = peer
    for hop in reversed(header.split(",")):
        address = parse(hop)
        if address is None:
            break
        client = address
        if not _trusted(address, trusted):
            break
    return client


def client_address(request: web.Request) -> Address | None:
    """The request's client address (None when the transport has no peer, e.g. a Unix socket)."""
    trusted = networks(request.app[appkeys.config].server.trusted_proxies)
    header = ",".join(request.headers.getall("X-Forwarded-For", ())) if trusted else ""
    return forwarded_for(parse(request.remote), header, trusted)
