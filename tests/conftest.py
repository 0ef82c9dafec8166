"""Shared fixtures: settings on a temporary SQLite file, and the app on a real loopback server."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohappyeyeballs
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge import settings as settings_mod
from bridge.app import create_app
from bridge.logs import redactor
from bridge.settings import Settings

ALPHA = "alpha-secret-0123456789"
BETA = "beta-secret-9876543210"
UC_PUBLIC = "demopublickey"
UC_SECRET = "demosecretkey"
LOOPBACK_HOSTS = "127.0.0.0/8,::1/128,localhost"
ROOT = Path(__file__).resolve().parent.parent  # the repository
FIXTURES = Path(__file__).parent / "fixtures"
UPLOADCARE_FIXTURES = FIXTURES / "uploadcare"


# The tiers that `make test-fast` runs: no subprocess there (and no wall-clock waiting).
FAST_TIERS = ("unit", "contract", "service")


def pytest_configure(config: pytest.Config) -> None:
    # CI must exercise PostgreSQL: refuse to run there without it rather than skip quietly.
    if os.environ.get("CI") == "true" and not os.environ.get("BRIDGE_TEST_POSTGRES_URL"):
        raise pytest.UsageError("CI=true but BRIDGE_TEST_POSTGRES_URL is not set")


@pytest.fixture(autouse=True)
def _fast_tiers_start_no_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hold the fast tiers to their promise: a test there that starts a process fails."""
    parts = Path(request.node.path).resolve().relative_to(ROOT / "tests").parts
    if len(parts) < 2 or parts[0] not in FAST_TIERS:
        return

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"tests/{parts[0]} starts no process: this test belongs in tests/e2e")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", refuse)
    monkeypatch.setattr(asyncio, "create_subprocess_shell", refuse)


@pytest.fixture(autouse=True)
def _fresh_redactor() -> Iterator[None]:
    """Each test's apps register their own secrets with the process-wide log redactor.

    Without this the set grows across the whole run (every app generates signing secrets)
    and recompiling its pattern came to a third of the fast tiers' time.
    """
    redactor.forget()
    yield


@pytest.fixture(autouse=True)
def _callbacks_match_the_catalog() -> Iterator[None]:
    """Every callback body a test's receiver saw validates against its event type's schema
    (tests/catalog.py): a test that saw one that does not fails, saying which and why."""
    from tests import catalog

    catalog.INVALID.clear()
    yield
    invalid = list(catalog.INVALID)
    catalog.INVALID.clear()
    assert not invalid, f"callback bodies outside the event catalog: {invalid}"


@pytest.fixture(autouse=True)
def dialled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Every (address, port) aiohttp dials in this test's process; off loopback is refused.

    Tests reach loopback only. A dial elsewhere fails like an unreachable network, so the
    code under test sees an ordinary connection error, and the test then fails here.
    """
    seen: list[tuple[str, int]] = []
    real = aiohappyeyeballs.start_connection

    async def guarded(addr_infos: Sequence[Any], **kwargs: Any) -> socket.socket:
        for info in addr_infos:
            host, port = str(info[4][0]), int(info[4][1])
            seen.append((host, port))
            if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
                raise OSError(f"test guard: refused to dial {host}")
        return await real(addr_infos, **kwargs)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", guarded)
    yield seen
    off_loopback = [
        (h, p) for h, p in seen if not ipaddress.ip_address(h.split("%")[0]).is_loopback
    ]
    assert not off_loopback, f"the bridge tried to leave loopback: {off_loopback}"


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def base_env(tmp_path: Path, **overrides: str | None) -> dict[str, str]:
    """The test bridge's environment; an override of None leaves that variable unset (an
    empty value would be a bad value, not the default)."""
    env: dict[str, str | None] = {
        "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}",
        "BRIDGE_API_KEYS": f"alpha:{ALPHA},beta:{BETA}",
        "UPLOADCARE_PUBLIC_KEY": UC_PUBLIC,
        "UPLOADCARE_SECRET_KEY": UC_SECRET,
        "BRIDGE_CALLBACK_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
        # And the only hosts a test bridge may call back to: a test that means to register
        # another host sets its own value (or None for no list) and says why.
        "BRIDGE_CALLBACK_HOSTS": LOOPBACK_HOSTS,
        "BRIDGE_LOG_LEVEL": "warning",
        # Nothing listens on the discard port: no test ever polls a real Uploadcare.
        "BRIDGE_UPSTREAM_URL": "http://127.0.0.1:9",
    }
    env.update(overrides)
    return {name: value for name, value in env.items() if value is not None}


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: str | None) -> Settings:
        return settings_mod.load(base_env(tmp_path, **overrides))

    return make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def auth() -> Callable[[str], dict[str, str]]:
    def headers(secret: str = ALPHA) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    return headers


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(make_settings(), clock=clock)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


@pytest.fixture
def callback_url() -> Iterator[str]:
    # Loopback only, allowed by BRIDGE_CALLBACK_ALLOW_NETWORKS in base_env; port 9 (discard).
    yield "http://127.0.0.1:9/hooks/uc"
