"""The client address behind trusted proxies: X-Forwarded-For read from the right, believed only
from a trusted peer and only as far as the hops are trusted."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from gateway.clientaddr import forwarded_for, networks, parse

TRUSTED = networks(("10.0.0.0/8", "::1/128"))


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("203.0.113.1", "198.51.100.1", "203.0.113.1"),  # an untrusted peer: its header is ignored
        ("10.0.0.1", "", "10.0.0.1"),  # a trusted peer without a header is the client
        ("10.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.1", "1.1.1.1, 198.51.100.1", "198.51.100.1"),  # what the client wrote is left of it
        ("10.0.0.1", "198.51.100.1, 10.0.0.2", "198.51.100.1"),  # two trusted hops
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),  # every hop trusted: the left-most
        ("10.0.0.1", "198.51.100.1, junk", "10.0.0.1"),  # not an address: stop at the last believed
        ("::1", "2001:db8::5", "2001:db8::5"),
        ("::ffff:10.0.0.1", "198.51.100.1", "198.51.100.1"),  # an IPv4-mapped peer is its IPv4 address
    ],
)
def test_the_right_most_untrusted_address_is_the_client(peer: str, header: str, client: str) -> None:
    assert forwarded_for(parse(peer), header, TRUSTED) == ip_address(client)


def test_no_trusted_proxies_means_the_peer() -> None:
    assert forwarded_for(ip_address("10.0.0.1"), "198.51.100.1", ()) == ip_address("10.0.0.1")
