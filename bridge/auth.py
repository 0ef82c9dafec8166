"""Bearer authentication: API secrets to tenants."""

from __future__ import annotations

import hashlib
import hmac


class Authenticator:
    """Bearer secrets to tenants, compared in constant time over every configured key."""

    def __init__(self, api_keys: tuple[tuple[str, str], ...]) -> None:
        self._keys = [(name, hashlib.sha256(s.encode()).digest()) for name, s in api_keys]

    @property
    def open(self) -> bool:
        return not self._keys

    def tenant(self, authorization: str | None) -> str | None:
        if not self._keys:
            return "default"
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        # A header byte that is not UTF-8 arrives as a surrogate escape: hash it as sent.
        digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).digest()
        found = None
        for name, expected in self._keys:
            # No early exit: the time taken does not depend on which key matched.
            if hmac.compare_digest(digest, expected):
                found = name
        return found
