"""Standard Webhooks: secrets and signatures (https://www.standardwebhooks.com/)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable, Sequence

from bridge.settings import WebhookSecret
from bridge.store.engine import Store


def generate_secret() -> str:
    """A fresh ``whsec_`` secret with 32 random bytes of key."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<sig>`` for each secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(_key(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets
    )


class SecretBook:
    """Which secrets sign a tenant's callbacks.

    A tenant's own ``tenant:whsec_…`` entries if it has any; else the shared ``whsec_…``
    entries; else one generated for it and kept in the store (the same for every replica).
    """

    def __init__(
        self,
        configured: Sequence[WebhookSecret],
        store: Store,
        clock: Callable[[], float],
        on_generated: Callable[[str], None] = lambda secret: None,
    ) -> None:
        self._configured = tuple(configured)
        self._store = store
        self._clock = clock
        self._on_generated = on_generated
        self._generated: dict[str, str] = {}

    async def for_tenant(self, tenant: str) -> list[str]:
        own = [w.secret for w in self._configured if w.tenant == tenant]
        if own:
            return own
        shared = [w.secret for w in self._configured if w.tenant is None]
        if shared:
            return shared
        if tenant not in self._generated:
            secret = await self._store.signing_secret(
                tenant, generate=generate_secret, now=self._clock()
            )
            self._on_generated(secret)
            self._generated[tenant] = secret
        return [self._generated[tenant]]

    async def shared_between(self, tenants: Sequence[str]) -> list[tuple[str, str]]:
        """Pairs of tenants that hold a secret in common (each can forge the other's callbacks)."""
        owners: dict[str, list[str]] = {}
        for tenant in tenants:
            for secret in await self.for_tenant(tenant):
                owners.setdefault(secret, []).append(tenant)
        pairs: list[tuple[str, str]] = []
        for names in owners.values():
            pairs += [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        return sorted(set(pairs))
