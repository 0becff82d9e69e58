"""The SSRF policy as pure functions: address ranges, base-URL checks, normalisation, origins.

Nothing here opens a connection; public addresses only ever go through `address_allowed`.
"""

from __future__ import annotations

import ipaddress

import pytest

from gateway.net import ssrf
from gateway.net.ssrf import UnsafeUpstream, address_allowed, check_base_url, normalize_base_url, origin


def teredo(client: str, server: str = "65.54.227.120") -> ipaddress.IPv6Address:
    """A Teredo address (2001::/32) whose client IPv4 is stored XOR 0xffffffff in the last 32 bits."""
    n = (
        (0x20010000 << 96)
        | (int(ipaddress.IPv4Address(server)) << 64)
        | (int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF)
    )
    return ipaddress.IPv6Address(n)


REFUSED = [
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "127.0.0.1",
    "127.0.0.2",
    "169.254.169.254",  # cloud metadata
    "169.254.1.1",
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "100.100.100.200",  # Alibaba metadata
    "168.63.129.16",  # Azure WireServer
    "224.0.0.1",
    "239.255.255.250",
    "0.0.0.0",
    "0.1.2.3",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "192.0.2.10",  # documentation
    "::1",
    "::",
    "fd00::1",
    "fc00::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fe80::1",
    "fec0::1",  # deprecated site-local
    "ff02::1",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:127.0.0.1",
    "::ffff:10.1.2.3",
    "::169.254.169.254",  # IPv4-compatible
    "::127.0.0.1",
    "::ffff:0:10.0.0.1",  # IPv4-translated (SIIT)
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix, 169.254.169.254
    "64:ff9b::7f00:1",
    "64:ff9b:1::a9fe:a9fe",  # NAT64 local-use prefix, /96 layout
    "64:ff9b:1:a9fe:a9:fe00::",  # NAT64 local-use prefix, RFC 6052 /48 layout
    "64:ff9b:1:a9fe:a9:fe00:808:808",  # /48 layout says 169.254.169.254 though the low bits look public
    "2002:a9fe:a9fe::1",  # 6to4
    "2002:7f00:1::",
    "2002:c0a8:101::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_refused_addresses(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert address_allowed(ip, allow_private=False) is False
    # Operators running a local upstream opt in, and then everything is allowed.
    assert address_allowed(ip, allow_private=True) is True


@pytest.mark.parametrize("client", ["192.168.1.1", "127.0.0.1", "169.254.169.254", "10.0.0.1"])
def test_teredo_wrapping_a_private_ipv4_is_refused(client: str) -> None:
    ip = teredo(client)
    assert ip.teredo is not None and str(ip.teredo[1]) == client  # the helper builds what it says
    assert address_allowed(ip, allow_private=False) is False


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "203.0.114.1",
        "2606:4700::1111",
        "2a00:1450:4001::200e",
        "::ffff:8.8.8.8",  # mapped public IPv4
        "64:ff9b::808:808",  # NAT64 of a public IPv4
        "2002:808:808::1",  # 6to4 of a public IPv4
    ],
)
def test_public_addresses_allowed(address: str) -> None:
    assert address_allowed(ipaddress.ip_address(address), allow_private=False) is True


def test_teredo_wrapping_a_public_ipv4_is_allowed() -> None:
    assert address_allowed(teredo("8.8.8.8"), allow_private=False) is True


def test_scoped_ipv6_is_refused() -> None:
    assert address_allowed(ipaddress.IPv6Address("2606:4700::1111%eth0"), allow_private=False) is False


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://api.openai.com", "https://api.openai.com/v1"),
        ("https://api.openai.com/", "https://api.openai.com/v1"),
        ("  https://api.openai.com/v1/  ", "https://api.openai.com/v1"),
        ("HTTPS://API.OpenAI.com/v1", "https://api.openai.com/v1"),
        ("https://api.example.com:443/openai/v1", "https://api.example.com/openai/v1"),
        ("http://api.example.com:80", "http://api.example.com/v1"),
        ("https://api.example.com:8443/v1", "https://api.example.com:8443/v1"),
        ("https://api.example.com/api/paas/v4/", "https://api.example.com/api/paas/v4"),
        ("https://[2606:4700::1111]/v1", "https://[2606:4700::1111]/v1"),
        ("https://[2606:4700::1111]:443", "https://[2606:4700::1111]/v1"),
        ("https://bücher.example/v1", "https://xn--bcher-kva.example/v1"),
    ],
)
def test_normalize_base_url(given: str, expected: str) -> None:
    assert normalize_base_url(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "https://api.example.com/v1?x=1",
        "https://api.example.com/v1?",
        "https://api.example.com/v1#frag",
        "api.example.com/v1",
        "ftp://api.example.com/v1",
        "https:///v1",
        "https://api.example.com:0/v1",
        "https://api.example.com:99999/v1",
        "https://exa\tmple.com/v1",
        "https://exa mple.com/v1",
        "https://user:pass@api.example.com/v1",
        "https://127.0.0.%31/v1",
        "https://[not-an-ip]/v1",
        "",
    ],
)
def test_normalize_refuses(given: str) -> None:
    with pytest.raises(UnsafeUpstream) as e:
        normalize_base_url(given)
    assert e.value.message and e.value.message == str(e.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "https://api.openai.com",
        "https://openrouter.ai/api/v1",
        "https://8.8.8.8/v1",
        "https://[2606:4700::1111]/v1",
        "https://my-host.example.co.uk:8443/v1",
    ],
)
def test_check_base_url_accepts(url: str) -> None:
    assert check_base_url(url, allow_http=False, allow_private=False) == normalize_base_url(url)


REFUSED_URLS = [
    "http://api.openai.com/v1",  # http without allow_http
    "https://user:pass@api.openai.com/v1",
    "https://api.openai.com@evil.example/v1",
    "https://localhost/v1",
    "https://LOCALHOST./v1",
    "https://app.localhost/v1",
    "https://printer.local/v1",
    "https://metadata.google.internal/computeMetadata/v1",
    "https://nas.lan/v1",
    "https://router.home.arpa/v1",
    "https://localhost.localdomain/v1",
    "https://metadata/v1",
    "https://redis:6379/v1",
    "https://127.0.0.1/v1",
    "https://127.0.0.2:8080/v1",
    "https://10.1.2.3/v1",
    "https://169.254.169.254/latest/meta-data",
    "https://100.64.0.1/v1",
    "https://0.0.0.0/v1",
    "https://[::1]/v1",
    "https://[::ffff:127.0.0.1]/v1",
    "https://[::ffff:a9fe:a9fe]/v1",
    "https://[fd00:ec2::254]/v1",
    "https://[fe80::1%25eth0]/v1",
    "https://2130706433/v1",  # 127.0.0.1 as one number
    "https://0x7f.1/v1",
    "https://017700000001/v1",
    "https://127.1/v1",
    "https://0x7f000001/v1",
    "https://134744072/v1",  # 8.8.8.8 spelled oddly: public, but refused for its spelling
    "https://ｌｏｃａｌｈｏｓｔ/v1",  # full-width letters map to localhost under IDNA
    "https://printer.local\uff0e/v1",  # a full-width dot
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_check_base_url_refuses(url: str) -> None:
    with pytest.raises(UnsafeUpstream) as e:
        check_base_url(url, allow_http=False, allow_private=False)
    # Our words only: the message never echoes the URL or its host.
    host = url.split("//", 1)[1].split("/", 1)[0]
    assert host.lower() not in e.value.message.lower()
    assert e.value.message.startswith(("the base URL", "write the IP address"))


def test_check_base_url_messages() -> None:
    def message(url: str) -> str:
        with pytest.raises(UnsafeUpstream) as e:
            check_base_url(url, allow_http=False, allow_private=False)
        return e.value.message

    assert message("http://api.openai.com") == (
        "the base URL must start with https:// "
        "(http:// is refused unless the operator sets security.allow_http_upstreams = true)"
    )
    assert message("https://localhost") == (
        "the base URL points to a local or internal host name, "
        "refused unless the operator sets security.allow_private_upstreams = true"
    )
    assert message("https://10.0.0.1") == (
        "the base URL points to a private, local or reserved address, "
        "refused unless the operator sets security.allow_private_upstreams = true"
    )
    assert message("https://u@api.openai.com") == "the base URL must not contain a user name or password"


HTTP_SETTING = "security.allow_http_upstreams = true"
PRIVATE_SETTING = "security.allow_private_upstreams = true"


@pytest.mark.parametrize(
    ("url", "allow_http", "setting"),
    [
        ("http://api.openai.com/v1", False, HTTP_SETTING),
        ("http://127.0.0.1:8080/v1", False, HTTP_SETTING),  # the scheme is checked first
        ("http://127.0.0.1:8080/v1", True, PRIVATE_SETTING),
        ("https://[::1]/v1", False, PRIVATE_SETTING),
        ("https://192.168.1.20/v1", False, PRIVATE_SETTING),
        ("https://169.254.169.254/v1", False, PRIVATE_SETTING),
        ("https://ollama/v1", False, PRIVATE_SETTING),
        ("https://printer.local/v1", False, PRIVATE_SETTING),
    ],
)
def test_refusals_name_the_setting_that_allows_them(url: str, allow_http: bool, setting: str) -> None:
    with pytest.raises(UnsafeUpstream) as e:
        check_base_url(url, allow_http=allow_http, allow_private=False)
    assert setting in e.value.message
    assert ({HTTP_SETTING, PRIVATE_SETTING} - {setting}).pop() not in e.value.message
    # Turning the named setting on lifts this refusal (the other one may still follow).
    if setting == PRIVATE_SETTING:
        assert check_base_url(url, allow_http=allow_http, allow_private=True) == normalize_base_url(url)
    else:
        try:
            check_base_url(url, allow_http=True, allow_private=False)
        except UnsafeUpstream as after:
            assert PRIVATE_SETTING in after.message


def test_refusals_without_a_setting_name_none() -> None:
    for url in ("https://u@api.openai.com", "ftp://api.openai.com", "https://8.8.8.8:99999", "https://134744072/v1"):
        with pytest.raises(UnsafeUpstream) as e:
            check_base_url(url, allow_http=False, allow_private=False)
        assert "security." not in e.value.message, url


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/v1", "http://localhost:11434/v1", "http://[::1]:8000", "http://ollama/v1"],
)
def test_check_base_url_allow_private_and_http(url: str) -> None:
    assert check_base_url(url, allow_http=True, allow_private=True) == normalize_base_url(url)
    with pytest.raises(UnsafeUpstream):
        check_base_url(url, allow_http=True, allow_private=False)
    with pytest.raises(UnsafeUpstream):
        check_base_url(url, allow_http=False, allow_private=True)


def test_user_info_refused_even_when_private_allowed() -> None:
    with pytest.raises(UnsafeUpstream):
        check_base_url("http://a:b@127.0.0.1/v1", allow_http=True, allow_private=True)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.example.com/v1", "https://api.example.com"),
        ("HTTPS://API.example.com:443/openai/v1", "https://api.example.com"),
        ("https://api.example.com:8443/v1", "https://api.example.com:8443"),
        ("http://api.example.com:80/", "http://api.example.com"),
        ("http://api.example.com:443/", "http://api.example.com:443"),
        ("https://[2606:4700::1111]:443/v1", "https://[2606:4700::1111]"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
    ],
)
def test_origin(url: str, expected: str) -> None:
    assert origin(url) == expected
    assert origin(normalize_base_url(url)) == expected  # stable under normalisation


def test_ip_literal_reads_legacy_forms() -> None:
    assert ssrf.ip_literal("2130706433") == ipaddress.IPv4Address("127.0.0.1")
    assert ssrf.ip_literal("0x7f.1") == ipaddress.IPv4Address("127.0.0.1")
    assert ssrf.ip_literal("017700000001") == ipaddress.IPv4Address("127.0.0.1")
    assert ssrf.ip_literal("::1") == ipaddress.IPv6Address("::1")
    assert ssrf.ip_literal("api.openai.com") is None
