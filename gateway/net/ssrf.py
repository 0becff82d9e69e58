"""Which upstreams the gateway may talk to: base-URL normalisation and the SSRF address policy.

Pure functions, no I/O. `check_base_url` runs when a key is registered and refuses what can be
refused from the URL alone. It is not the authority: a host name can resolve anywhere, and can
change what it resolves to. The authority is `address_allowed`, which `upstream` applies to
every address just before it connects.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = {"http": 80, "https": 443}

# Names that only mean something on a private network, or that clouds use for internals.
INTERNAL_NAMES = frozenset({"localhost", "localdomain"})
INTERNAL_SUFFIXES = (".localhost", ".localdomain", ".local", ".internal", ".lan", ".home.arpa")

# Refused even when no other rule catches them: instance metadata services. Azure's WireServer
# (168.63.129.16) is a public address that only answers from inside Azure.
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)
SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT; `is_private` misses it in 3.11
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

# After IDNA: what may appear in a host name. Anything else (%, \, spaces …) is a parser trick.
HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


class UnsafeUpstream(ValueError):
    """A base URL we will not use; `message` is ours and safe to show to the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Parts(NamedTuple):
    scheme: str
    host: str  # lower-case, IDNA-encoded, IPv6 without brackets
    port: int | None  # None when it is the scheme's default
    path: str

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def _split(url: str) -> _Parts:
    url = url.strip()
    if CONTROL_OR_SPACE.search(url):
        # urlsplit silently deletes tabs and newlines, so "exa\tmple" would become "example".
        raise UnsafeUpstream("the base URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUpstream("the base URL is not a valid URL") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
        raise UnsafeUpstream("the base URL must be a full URL such as https://api.example.com/v1")
    if "@" in parts.netloc:
        raise UnsafeUpstream("the base URL must not contain a user name or password")
    host = parts.hostname or ""
    if not host:
        raise UnsafeUpstream("the base URL has no host name")
    if ":" not in host and not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UnsafeUpstream("the base URL's host name is not valid") from None
    if ":" in host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UnsafeUpstream("the base URL's host name is not valid") from None
    elif not HOST_NAME.fullmatch(host):
        raise UnsafeUpstream("the base URL's host name is not valid")
    if port is not None and not 1 <= port <= 65535:
        raise UnsafeUpstream("the base URL's port is not valid")
    if port == DEFAULT_PORTS[parts.scheme]:
        port = None
    return _Parts(parts.scheme, host.lower(), port, parts.path)


def normalize_base_url(url: str, bare: str = "/v1") -> str:
    """The one spelling we store: `https://host[:port]/path`, no trailing slash; a bare origin
    gets `bare` (/v1; a `gemini` key's: /v1beta)."""
    url = url.strip()
    if "?" in url or "#" in url:
        raise UnsafeUpstream("the base URL must not contain a query string or fragment")
    parts = _split(url)
    path = parts.path.rstrip("/") or bare
    return f"{parts.scheme}://{parts.netloc}{path}"


def origin(url: str) -> str:
    """`scheme://host[:port]`, the same for every spelling of one origin (sealed keys are bound to it)."""
    parts = _split(url)
    return f"{parts.scheme}://{parts.netloc}"


# The refusals an operator can lift name the setting that lifts them.
HTTP_REFUSED = (
    "the base URL must start with https:// (http:// is refused unless the operator sets "
    "security.allow_http_upstreams = true)"
)
PRIVATE_HINT = "refused unless the operator sets security.allow_private_upstreams = true"
INTERNAL_NAME_REFUSED = f"the base URL points to a local or internal host name, {PRIVATE_HINT}"
PRIVATE_ADDRESS_REFUSED = f"the base URL points to a private, local or reserved address, {PRIVATE_HINT}"


def check_base_url(url: str, *, allow_http: bool, allow_private: bool, bare: str = "/v1") -> str:
    """Validate a base URL at registration time; return its normalised form or raise UnsafeUpstream."""
    normalized = normalize_base_url(url, bare)
    parts = _split(normalized)
    if parts.scheme != "https" and not allow_http:
        raise UnsafeUpstream(HTTP_REFUSED)
    if allow_private:
        return normalized
    address = ip_literal(parts.host)
    if address is None:
        if _internal_name(parts.host):
            raise UnsafeUpstream(INTERNAL_NAME_REFUSED)
        return normalized
    if not address_allowed(address, allow_private=False):
        raise UnsafeUpstream(PRIVATE_ADDRESS_REFUSED)
    if ":" not in parts.host and str(address) != parts.host:
        # 2130706433, 0x7f.1, 127.1 …: other parsers read these differently; insist on one spelling.
        raise UnsafeUpstream("write the IP address in its usual dotted form, such as 203.0.113.7")
    return normalized


def ip_literal(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, including the legacy IPv4 forms inet_aton accepts."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # inet_aton ignores anything after a space; _split has already refused spaces.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _internal_name(host: str) -> bool:
    name = host.rstrip(".")
    return name in INTERNAL_NAMES or name.endswith(INTERNAL_SUFFIXES) or "." not in name


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for, when it is one of the transition forms."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.teredo is not None:
        return [ip.teredo[1]]  # the client; ipaddress has already undone the XOR
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in NAT64 or ip in IPV4_TRANSLATED:
        return [low32]
    if ip in NAT64_LOCAL:
        # RFC 6052: with the /48 prefix the IPv4 bits sit at 48-63 and 72-87 (bits 64-71 are zero);
        # a translator may also use a /96 inside it. Check both readings.
        n = int(ip)
        rfc6052 = ipaddress.IPv4Address((((n >> 64) & 0xFFFF) << 16) | ((n >> 40) & 0xFFFF))
        return [rfc6052, low32]
    if ip in IPV4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are themselves, not IPv4
        return [low32]
    return []


def address_allowed(ip: IPAddress, *, allow_private: bool) -> bool:
    """May the gateway connect to this address? Transition forms are judged by the IPv4 they carry."""
    if allow_private:
        return True  # operators with a local upstream need loopback and private networks
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False  # a zone id only makes sense for link-local addresses
        inner = embedded_ipv4(ip)
        if inner:
            return all(_public(v4) for v4 in inner)
    return _public(ip)


def _public(ip: IPAddress) -> bool:
    if ip in METADATA or (isinstance(ip, ipaddress.IPv4Address) and ip in SHARED):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or not ip.is_global
    )


# --- at connect time: every address the resolver gives and every socket's ----------------------


class RefusedAddress(OSError):
    """Raised while connecting for an address the SSRF policy refuses (never shown to callers)."""

    MARK = "address refused by policy"

    def __init__(self) -> None:
        super().__init__(self.MARK)


class AddressGuard:
    """Applies `address_allowed` to resolver answers and to the sockaddr of every connect."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def allowed(self, host: str, scope_id: int = 0) -> bool:
        try:
            ip = ipaddress.ip_address(host if not scope_id else f"{host.partition('%')[0]}%{scope_id}")
        except ValueError:
            return False  # not an address we can judge: fail closed
        return address_allowed(ip, allow_private=self.allow_private)

    def socket(self, addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise RefusedAddress()
        scope_id = sockaddr[3] if family == socket.AF_INET6 and len(sockaddr) > 3 else 0
        if not self.allowed(sockaddr[0], scope_id):
            raise RefusedAddress()
        return socket.socket(family=family, type=type_, proto=proto)


class GuardedResolver(AbstractResolver):
    """The default resolver, minus the addresses the guard refuses; nothing left is a failure."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._guard.allowed(r["host"])]
        if not allowed:
            raise RefusedAddress()
        return allowed

    async def close(self) -> None:
        await self._inner.close()
