"""Starting the servers of a run: upstream, receiver, reference poller, and the bridge."""

from __future__ import annotations

import argparse
import base64
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.children import ROOT, Child, Fleet, free_port, module_path, python_path
from bench.serving import HOST

PUBLIC_KEY: Final = "benchpublickey"
TENANT: Final = "bench"
# The bridge's settings that the bench decides; anything else of the caller's own
# environment (a BRIDGE_DATABASE_URL, say) must not leak into the measurement.
OWN_PREFIXES: Final = ("BRIDGE_", "UPLOADCARE_")
# The rate limit lifted: the bridge against the reference, which has none.
UNLIMITED_RPS: Final = 100_000.0
# Callbacks whose signature the receiver checks: 1 in this many.
VERIFY_EVERY: Final = 10


@dataclass(frozen=True)
class Secrets:
    """Fresh for each run: nothing measured depends on a value someone else knows."""

    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    uploadcare: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    webhook: str = field(
        default_factory=lambda: "whsec_" + base64.b64encode(os.urandom(32)).decode(), repr=False
    )

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def seconds_text(value: float) -> str:
    """A duration the bridge's settings parse (they take no exponent)."""
    return format(value, ".6f").rstrip("0").rstrip(".") or "0"


def bridge_env(
    args: argparse.Namespace,
    *,
    workdir: Path,
    upstream: Child,
    port: int,
    rps: float,
    keys: Secrets,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(
        {
            # --bridge-src first: an older checkout measured by this bench.
            "PYTHONPATH": python_path(args.bridge_src or ROOT),
            "BRIDGE_HOST": HOST,
            "BRIDGE_PORT": str(port),
            "BRIDGE_DATABASE_URL": f"sqlite:///{workdir.resolve() / 'bench.db'}",
            "BRIDGE_API_KEYS": f"{TENANT}:{keys.api_key}",
            "BRIDGE_WEBHOOK_SECRETS": keys.webhook,
            "UPLOADCARE_PUBLIC_KEY": PUBLIC_KEY,
            "UPLOADCARE_SECRET_KEY": keys.uploadcare,
            "BRIDGE_UPSTREAM_URL": upstream.url,
            "BRIDGE_UPSTREAM_AUTH": "signed",
            "BRIDGE_UPSTREAM_RPS": seconds_text(rps),
            # The receiver is on loopback, which the callback network policy refuses.
            "BRIDGE_CALLBACK_ALLOW_NETWORKS": f"{HOST}/32",
            "BRIDGE_CALLBACK_HOSTS": f"{HOST}/32",  # and callbacks may go nowhere else
            "BRIDGE_POLL_INITIAL_DELAY": seconds_text(args.initial_delay),
            "BRIDGE_POLL_MIN_INTERVAL": seconds_text(args.min_interval),
            "BRIDGE_POLL_MAX_INTERVAL": seconds_text(args.max_interval),
            "BRIDGE_LOG_LEVEL": "info",
            # The figures are read before the stop; a long grace would only slow the bench.
            "BRIDGE_SHUTDOWN_GRACE": "2s",
        }
    )
    env.update(args.bridge_env)
    return env


async def start_upstream(fleet: Fleet, keys: Secrets, seed: int) -> Child:
    config = {"public_key": PUBLIC_KEY, "secret_key": keys.uploadcare, "seed": seed}
    return await fleet.server("upstream", "bench.upstream", config)


async def start_receiver(fleet: Fleet, keys: Secrets) -> Child:
    config = {"webhook_secret": keys.webhook, "verify_every": VERIFY_EVERY}
    return await fleet.server("receiver", "bench.receiver", config)


async def start_reference(
    fleet: Fleet, args: argparse.Namespace, upstream: Child, keys: Secrets
) -> Child:
    config = {
        "upstream_url": upstream.url,
        "public_key": PUBLIC_KEY,
        "secret_key": keys.uploadcare,
        "webhook_secret": keys.webhook,
        "initial_delay": args.initial_delay,
        "min_interval": args.min_interval,
        "max_interval": args.max_interval,
    }
    return await fleet.server("reference", "bench.reference", config)


async def start_bridge(
    fleet: Fleet, args: argparse.Namespace, upstream: Child, keys: Secrets, rps: float
) -> tuple[Child, dict[str, str]]:
    """The bridge, ready; and which tree it runs from (``path``) and its ``version``."""
    port = free_port()
    env = bridge_env(args, workdir=fleet.workdir, upstream=upstream, port=port, rps=rps, keys=keys)
    where = await module_path(env, fleet.workdir)
    return await fleet.bridge(env, port), where
