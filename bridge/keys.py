"""Typed keys for what lives on the application and on each request."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from bridge.auth import Authenticator
from bridge.metrics import Metrics
from bridge.netpolicy import NetworkPolicy
from bridge.pacing import PauseBoard
from bridge.scheduler import Scheduler
from bridge.settings import Settings
from bridge.store.engine import Store
from bridge.webhooks import SecretBook

SETTINGS = web.AppKey("settings", Settings)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
STORE = web.AppKey("store", Store)
METRICS = web.AppKey("metrics", Metrics)
POLICY = web.AppKey("policy", NetworkPolicy)
AUTH = web.AppKey("auth", Authenticator)
SECRETS = web.AppKey("secrets", SecretBook)
PAUSES = web.AppKey("pauses", PauseBoard)
SCHEDULER = web.AppKey("scheduler", Scheduler)

TENANT = web.RequestKey("tenant", str)
