"""Sealing donor keys: AES-256-GCM, bound to row, owner and base-URL origin; a rotating key ring."""

from __future__ import annotations

import base64

import pytest

from gateway.store.crypto import KeyRing, SealError, mask

A = "a" * 40
B = "b" * 40
ROW = {"key_id": "11111111-1111-1111-1111-111111111111", "owner_id": "u1", "base_url": "https://api.example.com/v1"}


def test_round_trip_and_fresh_nonce() -> None:
    ring = KeyRing(A)
    one, two = ring.seal("sk-secret-value", **ROW), ring.seal("sk-secret-value", **ROW)
    assert one != two, "a fresh nonce per encryption"
    assert "sk-secret-value" not in one
    kid, _, payload = one.partition(":")
    assert kid == ring.current_kid and len(base64.b64decode(payload)) == 12 + len("sk-secret-value") + 16
    assert ring.open(one, **ROW) == "sk-secret-value"


@pytest.mark.parametrize(
    "change",
    [
        {"key_id": "22222222-2222-2222-2222-222222222222"},
        {"owner_id": "u2"},
        {"base_url": "https://evil.example.net/v1"},
        {"base_url": "http://api.example.com/v1"},
        {"base_url": "https://api.example.com:8443/v1"},
    ],
)
def test_bound_to_row_owner_and_origin(change: dict[str, str]) -> None:
    ring = KeyRing(A)
    sealed = ring.seal("sk-secret-value", **ROW)
    with pytest.raises(SealError):
        ring.open(sealed, **{**ROW, **change})


def test_same_origin_other_path_still_opens() -> None:
    ring = KeyRing(A)
    sealed = ring.seal("k" * 20, **ROW)
    assert ring.open(sealed, **{**ROW, "base_url": "https://API.example.com:443/openai/v1"}) == "k" * 20


def test_tampering_and_garbage_fail_closed() -> None:
    ring = KeyRing(A)
    sealed = ring.seal("sk-secret-value", **ROW)
    kid, _, payload = sealed.partition(":")
    raw = bytearray(base64.b64decode(payload))
    raw[-1] ^= 1
    for bad in [f"{kid}:{base64.b64encode(bytes(raw)).decode()}", f"{kid}:not base64!", f"{kid}:", "nokid", ""]:
        with pytest.raises(SealError):
            ring.open(bad, **ROW)


def test_rotation_by_key_id_not_position() -> None:
    old = KeyRing(A)
    sealed = old.seal("sk-secret-value", **ROW)
    rotated = KeyRing(B, [A])
    assert rotated.needs_rotation(sealed)
    assert rotated.open(sealed, **ROW) == "sk-secret-value"
    resealed = rotated.seal(rotated.open(sealed, **ROW), **ROW)
    assert not rotated.needs_rotation(resealed)
    # The old secret can go once every row is resealed; order in the ring does not matter.
    assert KeyRing(B).open(resealed, **ROW) == "sk-secret-value"
    assert KeyRing(B, [A, "c" * 40]).open(sealed, **ROW) == "sk-secret-value"
    with pytest.raises(SealError):
        KeyRing(B).open(sealed, **ROW)


def test_short_secret_refused_and_repr_is_safe() -> None:
    with pytest.raises(ValueError):
        KeyRing("too short")
    assert A not in repr(KeyRing(A))


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        ("sk-proj-abcdefghijklmnop1234", "sk-…1234"),
        ("sk_live_0123456789abcd", "sk_…abcd"),
        ("AIzaSyD-0123456789xyzw", "…xyzw"),
        ("short", "…"),
    ],
)
def test_mask(key: str, masked: str) -> None:
    assert mask(key) == masked


def test_a_fingerprint_is_keyed_stable_and_not_the_sealing_key() -> None:
    import hashlib

    ring = KeyRing(A)
    key = "AIzaSy-some-google-key-0123456789"
    fp = ring.fingerprint(key)
    assert fp == ring.fingerprint(f"  {key}\n") == KeyRing(A).fingerprint(key), "stripped, deterministic"
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp != hashlib.sha256(key.encode()).hexdigest(), "never a plain hash"
    assert key not in fp and ring.fingerprint("AIzaSy-another-key") != fp
    other = KeyRing("another-secret-" + "y" * 32)
    assert other.fingerprint(key) != fp, "keyed by the secret"
    both = KeyRing("another-secret-" + "y" * 32, [A])
    assert both.fingerprints(key) == [other.fingerprint(key), fp], "every secret of the ring, the current first"
    assert fp not in repr(ring) and fp not in ring.seal(key, key_id="k", owner_id="o", base_url="https://a.example")
