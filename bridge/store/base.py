"""What every part of the store shares: its two errors and the listing cursor."""

from __future__ import annotations

import base64


class StoreError(Exception):
    """The database could not be used (unreachable, locked by another process, corrupt)."""


class Conflict(Exception):
    """The request contradicts what the store holds; ``str()`` is a sentence for the caller."""


def encode_cursor(position: int) -> str:
    """An opaque cursor for the listing position ``position``."""
    return base64.urlsafe_b64encode(f"v1:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The position a cursor stands for; ValueError for anything this server did not hand out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not a cursor this server gave out") from None
    prefix, _, number = text.partition(":")
    if prefix != "v1" or not number.isdigit() or len(number) > 18:
        raise ValueError("not a cursor this server gave out")
    return int(number)
