"""Standard Webhooks: secrets, key pairs and signatures (https://www.standardwebhooks.com/).

Two schemes. ``v1``: HMAC-SHA256 keyed with a shared ``whsec_`` secret. ``v1a``: Ed25519,
the bridge holding the private key (``whsk_``, the raw 32-byte seed in base64) and the
receiver only the public one (``whpk_``, the raw 32-byte key in base64), so no receiver
can forge a callback. Both sign ``{webhook-id}.{webhook-timestamp}.{body}``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bridge.model import SigningKey
from bridge.settings import WebhookSecret
from bridge.store.engine import Store

__all__ = [
    "ConfiguredSecrets",
    "SecretBook",
    "SigningKey",
    "generate_keypair",
    "generate_secret",
    "public_key_of",
    "sign",
]

# How long a replica signs with the keys it read before reading them again: the bound on
# learning of another replica's rotation when its notice was lost (the contract says 5 s).
REFRESH = 2.0


def generate_secret() -> str:
    """A fresh ``whsec_`` secret with 32 random bytes of key."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def generate_keypair() -> tuple[str, str]:
    """A fresh Ed25519 pair: (``whsk_`` private key, ``whpk_`` public key)."""
    private = "whsk_" + _b64(os.urandom(32))
    return private, public_key_of(private)


def public_key_of(private: str) -> str:
    """The ``whpk_`` public key of a ``whsk_`` private key."""
    raw = _ed25519(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "whpk_" + _b64(raw)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


@functools.lru_cache(maxsize=1024)
def _ed25519(private: str) -> Ed25519PrivateKey:
    # Parsed once per key, not at every attempt.
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(private.removeprefix("whsk_")))


def _one(key: SigningKey | str, signed: bytes) -> str:
    if isinstance(key, str):  # a whsec_ secret as it is configured
        key = SigningKey("v1", key, generated=False)
    if key.scheme == "v1a":
        return "v1a," + _b64(_ed25519(key.secret).sign(signed))
    return "v1," + _b64(hmac.new(_key(key.secret), signed, hashlib.sha256).digest())


def sign(keys: Sequence[SigningKey | str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<sig>`` or ``v1a,<sig>`` for each key,
    space-separated (a bare string is a ``v1`` secret)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(_one(k, signed) for k in keys)


class ConfiguredSecrets(Exception):
    """The tenant signs with ``BRIDGE_WEBHOOK_SECRETS`` entries: rotated by configuration."""


@dataclass
class _Cached:
    keys: list[SigningKey]
    read_at: float
    epoch: int


class SecretBook:
    """Which keys sign a tenant's callbacks.

    A ``v1`` tenant: its own ``tenant:whsec_…`` entries if it has any; else the shared
    ``whsec_…`` entries; else its generated secret(s), kept in the store (the same for
    every replica). A ``v1a`` tenant (``BRIDGE_SIGNATURE_SCHEMES``): its generated Ed25519
    key pair(s), whatever the entries say.

    Generated keys are cached and read again after ``refresh`` seconds, or at once when a
    replica announces a rotation (``forget``): a rotation anywhere reaches every replica's
    next signature within ``refresh`` seconds even if the notice is lost. A key retired by
    a rotation stops signing at its ``expires_at``, on this book's clock.
    """

    def __init__(
        self,
        configured: Sequence[WebhookSecret],
        store: Store,
        clock: Callable[[], float],
        on_generated: Callable[[str], None] = lambda secret: None,
        *,
        schemes: Sequence[tuple[str, str]] = (),
        overlap: float = 86400.0,
        refresh: float = REFRESH,
    ) -> None:
        self._configured = tuple(configured)
        self._store = store
        self._clock = clock
        self._on_generated = on_generated
        self._schemes = dict(schemes)
        self._overlap = overlap
        self._refresh = refresh
        self._cache: dict[str, _Cached] = {}
        self._epochs: dict[str, int] = {}
        self._reading: dict[str, asyncio.Future[list[SigningKey]]] = {}
        self._announced: set[str] = set()

    def scheme(self, tenant: str) -> str:
        return self._schemes.get(tenant, "v1")

    def configured_for(self, tenant: str) -> list[SigningKey]:
        """The ``BRIDGE_WEBHOOK_SECRETS`` entries that sign the tenant's callbacks."""
        if self.scheme(tenant) != "v1":
            return []
        own = [w.secret for w in self._configured if w.tenant == tenant]
        chosen = own or [w.secret for w in self._configured if w.tenant is None]
        return [SigningKey("v1", s, generated=False) for s in chosen]

    async def for_tenant(self, tenant: str) -> list[SigningKey]:
        """The keys that sign the tenant's callbacks now, the current one first."""
        configured = self.configured_for(tenant)
        if configured:
            return configured
        now = self._clock()
        cached = self._cache.get(tenant)
        if (
            cached is None
            or cached.epoch != self._epochs.get(tenant, 0)
            or now - cached.read_at >= self._refresh
        ):
            keys = await self._read(tenant)
        else:
            keys = cached.keys
        return [k for k in keys if k.expires_at is None or k.expires_at > now]

    async def _read(self, tenant: str) -> list[SigningKey]:
        # One read per tenant at a time, however many attempts want its keys at once.
        if (pending := self._reading.get(tenant)) is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[list[SigningKey]] = asyncio.get_running_loop().create_future()
        self._reading[tenant] = future
        try:
            epoch = self._epochs.get(tenant, 0)
            scheme = self.scheme(tenant)
            keys = await self._store.signing_keys(
                tenant, scheme, generate=_generator(scheme), now=self._clock()
            )
            self._learn(tenant, keys, epoch)
            future.set_result(keys)
            return keys
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._reading[tenant]

    def _learn(self, tenant: str, keys: list[SigningKey], epoch: int) -> None:
        for k in keys:
            if k.secret not in self._announced:
                self._announced.add(k.secret)
                self._on_generated(k.secret)
        self._cache[tenant] = _Cached(keys, self._clock(), epoch)

    def forget(self, tenant: str) -> None:
        """Read the tenant's keys again before signing with them (a rotation elsewhere)."""
        self._epochs[tenant] = self._epochs.get(tenant, 0) + 1

    async def rotate(self, tenant: str) -> SigningKey:
        """Make the tenant a new current key; the one it replaces signs ``overlap`` seconds
        more. ConfiguredSecrets when ``BRIDGE_WEBHOOK_SECRETS`` entries apply to it."""
        if self.configured_for(tenant):
            raise ConfiguredSecrets(tenant)
        scheme = self.scheme(tenant)
        self.forget(tenant)  # a read in flight must not bring back the old keys
        keys = await self._store.rotate_signing_key(
            tenant, scheme, generate=_generator(scheme), now=self._clock(), overlap=self._overlap
        )
        self._learn(tenant, keys, self._epochs.get(tenant, 0))
        return keys[0]

    async def shared_between(self, tenants: Sequence[str]) -> list[tuple[str, str]]:
        """Pairs of tenants that hold a secret in common (each can forge the other's callbacks)."""
        owners: dict[str, list[str]] = {}
        for tenant in tenants:
            for key in await self.for_tenant(tenant):
                if key.scheme == "v1":
                    owners.setdefault(key.secret, []).append(tenant)
        pairs: list[tuple[str, str]] = []
        for names in owners.values():
            pairs += [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        return sorted(set(pairs))


def _generator(scheme: str) -> Callable[[], tuple[str, str | None]]:
    if scheme == "v1a":
        return generate_keypair
    return lambda: (generate_secret(), None)
