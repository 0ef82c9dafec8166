"""What every part of the store shares: its errors and the sealed listing cursor."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os


class StoreError(Exception):
    """The database could not be used (unreachable, locked by another process, corrupt)."""


class Conflict(Exception):
    """The request contradicts what the store holds; ``str()`` is a sentence for the caller."""


class BadCursor(ValueError):
    """A listing cursor this server did not hand to this tenant (another tenant's, tampered
    with, or garbage). Its message is fixed: it repeats nothing of what was sent."""

    MESSAGE = "cursor is not one this server gave out"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


# A cursor: version byte, 16-byte random nonce, the position (8 bytes, big-endian) under an
# HMAC-SHA256 keystream, and a 16-byte HMAC-SHA256 tag over all of it and the tenant.
# Encrypt-then-MAC with keys derived from one server key: the cursor reveals nothing (not
# even how far apart two positions are), and only the tenant it was made for can use it.
_VERSION = b"\x01"
_NONCE, _POSITION, _TAG = 16, 8, 16
_SEALED = len(_VERSION) + _NONCE + _POSITION + _TAG


def _subkeys(key: bytes) -> tuple[bytes, bytes]:
    return (
        hmac.new(key, b"bridge cursor: encryption", hashlib.sha256).digest(),
        hmac.new(key, b"bridge cursor: authentication", hashlib.sha256).digest(),
    )


def _tag(mac_key: bytes, tenant: str, sealed: bytes) -> bytes:
    message = tenant.encode("utf-8", "surrogatepass") + b"\x00" + sealed
    return hmac.new(mac_key, message, hashlib.sha256).digest()[:_TAG]


def _xor(enc_key: bytes, nonce: bytes, data: bytes) -> bytes:
    stream = hmac.new(enc_key, nonce, hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(data, stream, strict=False))


def seal_cursor(key: bytes, tenant: str, position: int, nonce: bytes | None = None) -> str:
    """An opaque cursor for ``tenant``'s listing position ``position``."""
    enc_key, mac_key = _subkeys(key)
    nonce = os.urandom(_NONCE) if nonce is None else nonce
    body = _VERSION + nonce + _xor(enc_key, nonce, position.to_bytes(_POSITION, "big"))
    sealed = body + _tag(mac_key, tenant, body)
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def open_cursor(key: bytes, tenant: str, cursor: str) -> int:
    """The position a cursor stands for; BadCursor unless this server made it for ``tenant``."""
    if len(cursor) != -(-_SEALED * 4 // 3) or not cursor.isascii():
        raise BadCursor
    try:
        sealed = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except ValueError:
        raise BadCursor from None
    if len(sealed) != _SEALED or sealed[:1] != _VERSION:
        raise BadCursor
    if base64.urlsafe_b64encode(sealed).decode().rstrip("=") != cursor:
        raise BadCursor  # another spelling of the same bytes: not what was handed out
    enc_key, mac_key = _subkeys(key)
    body, tag = sealed[:-_TAG], sealed[-_TAG:]
    if not hmac.compare_digest(tag, _tag(mac_key, tenant, body)):
        raise BadCursor
    nonce, data = body[1 : 1 + _NONCE], body[1 + _NONCE :]
    return int.from_bytes(_xor(enc_key, nonce, data), "big")
