"""Sealing donor keys: AES-256-GCM under a key ring, bound to the row that holds them.

A stored value reads `<key id>:<base64(nonce | ciphertext | tag)>`. Each secret in the ring (the
current `key_encryption_secret` plus older ones kept for decryption) is stretched into an AES key
with HKDF-SHA256; the key id is derived from the AES key itself, not from its position in the
ring, so a secret can be removed once `rotate-secret` has re-sealed every row under the newest.

The associated data binds a ciphertext to its row id, its owner and its base URL's origin: copied
to another row, or left behind when the base URL is changed outside the gateway, it fails to
open, and the key is excluded (fail closed) rather than sent anywhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.net.ssrf import origin

NONCE_BYTES = 12
HKDF_SALT = b"sharekey/key-ring/v1"
HKDF_INFO_AES = b"sharekey aes-256-gcm donor keys"
# The fingerprint's MAC key: the same secret, its own salt and label, so it is not the sealing key.
HKDF_SALT_FINGERPRINT = b"sharekey/key-fingerprint/v1"
HKDF_INFO_FINGERPRINT = b"sharekey hmac-sha256 donor key fingerprints"


class SealError(Exception):
    """A sealed value could not be opened: wrong secret, wrong row, tampered, or malformed."""


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    aead: AESGCM = field(repr=False)
    mac_key: bytes = field(repr=False)


def _hkdf(secret: str, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret.encode())


def _derive(secret: str) -> _Key:
    raw = _hkdf(secret, HKDF_SALT, HKDF_INFO_AES)
    kid = hashlib.sha256(b"sharekey key id\x00" + raw).hexdigest()[:12]
    return _Key(kid, AESGCM(raw), _hkdf(secret, HKDF_SALT_FINGERPRINT, HKDF_INFO_FINGERPRINT))


def _mac(key: _Key, api_key: str) -> str:
    return hmac.new(key.mac_key, api_key.strip().encode(), hashlib.sha256).hexdigest()


def associated_data(key_id: str, owner_id: str, base_url: str) -> bytes:
    return b"\x00".join([b"sharekey/v1", str(key_id).encode(), str(owner_id).encode(), origin(base_url).encode()])


class KeyRing:
    """The current secret seals; every secret in the ring opens."""

    def __init__(self, current: str, old: tuple[str, ...] | list[str] = ()) -> None:
        if len(current) < 32:
            raise ValueError("the key encryption secret must be at least 32 characters")
        self._current = _derive(current)
        self._keys = {self._current.kid: self._current}
        for secret in old:
            key = _derive(secret)
            self._keys.setdefault(key.kid, key)

    def __repr__(self) -> str:
        return f"KeyRing(current={self._current.kid!r}, keys={len(self._keys)})"

    @property
    def current_kid(self) -> str:
        return self._current.kid

    def seal(self, plaintext: str, *, key_id: str, owner_id: str, base_url: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        aad = associated_data(key_id, owner_id, base_url)
        blob = nonce + self._current.aead.encrypt(nonce, plaintext.encode(), aad)
        return f"{self._current.kid}:{base64.b64encode(blob).decode()}"

    def open(self, sealed: str, *, key_id: str, owner_id: str, base_url: str) -> str:
        kid, _, payload = sealed.partition(":")
        key = self._keys.get(kid)
        if key is None:
            raise SealError(f"no secret in the key ring has id {kid!r}")
        try:
            blob = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise SealError("sealed value is not valid base64") from None
        if len(blob) < NONCE_BYTES + 16:
            raise SealError("sealed value is too short")
        aad = associated_data(key_id, owner_id, base_url)
        try:
            return key.aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad).decode()
        except InvalidTag:
            raise SealError("sealed value does not open for this row") from None

    def fingerprint(self, api_key: str) -> str:
        """The key's keyed fingerprint under the current secret (hex HMAC-SHA256 of the stripped
        key): what `shared_keys.key_fingerprint` stores, so the same key is never stored twice.
        `rotate-secret` computes it again with the ciphertext, so it follows the current secret."""
        return _mac(self._current, api_key)

    def fingerprints(self, api_key: str) -> list[str]:
        """The key's fingerprint under every secret of the ring, the current first: a row sealed
        under an older secret (before `rotate-secret` reached it) still carries that one's."""
        return [_mac(key, api_key) for key in self._keys.values()]

    def needs_rotation(self, sealed: str) -> bool:
        return sealed.partition(":")[0] != self._current.kid


def mask(api_key: str) -> str:
    """`sk-…abcd`: a recognisable prefix and the last four characters, never more.

    Short keys show less, so that the mask never gives away a meaningful part of the key.
    """
    key = api_key.strip()
    if len(key) < 12:
        return "…"
    head = key[:3] if key[:3].isascii() and key[2] in "-_" else ""
    return f"{head}…{key[-4:]}"


KEYRING: web.AppKey[KeyRing] = web.AppKey("keyring", KeyRing)
