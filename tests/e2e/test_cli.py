"""``bridge`` as users run it: real subprocesses, real signals, a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from bridge.store.queries import migrations
from tests.conftest import ALPHA, BETA, UC_SECRET, base_env
from tests.proc import BridgeProcess, run_bridge

URL = "http://127.0.0.1:9/hooks/uc"


def serve_env(tmp_path: Path, **extra: str | None) -> dict[str, str]:
    env = base_env(tmp_path, BRIDGE_PORT="0", BRIDGE_LOG_LEVEL="info", **extra)
    return env


async def test_kill_9_after_a_burst_loses_no_acknowledged_job(tmp_path: Path) -> None:
    env = serve_env(tmp_path)
    bridge = await BridgeProcess(["serve"], env).start()
    acknowledged: set[str] = set()
    headers = {"Authorization": f"Bearer {ALPHA}"}
    async with aiohttp.ClientSession() as http:

        async def one(token: int) -> None:
            body = {"token": token, "callback_url": URL, "metadata": {"n": token}}
            async with http.post(f"{bridge.url}/v1/jobs", json=body, headers=headers) as resp:
                if resp.status == 201:
                    acknowledged.add((await resp.json())["id"])

        await asyncio.gather(*(one(t) for t in range(1, 201)))
        # Killed right after the last 201: no chance to flush or close anything.
        await bridge.stop(signal.SIGKILL)
        assert len(acknowledged) == 200

        again = await BridgeProcess(["serve"], env).start()
        try:
            seen: set[str] = set()
            cursor = None
            while True:
                query = "?limit=500" + (f"&cursor={cursor}" if cursor else "")
                async with http.get(f"{again.url}/v1/jobs{query}", headers=headers) as resp:
                    page = await resp.json()
                seen |= {j["id"] for j in page["items"]}
                cursor = page["next_cursor"]
                if not cursor:
                    break
            assert acknowledged <= seen
        finally:
            assert await again.stop() == 0


async def test_second_serve_on_the_same_file_refuses(tmp_path: Path) -> None:
    env = serve_env(tmp_path)
    first = await BridgeProcess(["serve"], env).start()
    try:
        code, out, err = await run_bridge(["serve"], env)
        assert code == 1
        assert "in use by another bridge process" in err
        assert len(err.strip().splitlines()) == 1
        assert "Traceback" not in err + out
    finally:
        assert await first.stop() == 0


async def test_sigterm_exits_0_and_logs_are_json_without_secrets(tmp_path: Path) -> None:
    env = serve_env(
        tmp_path,
        BRIDGE_WEBHOOK_SECRETS="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    bridge = await BridgeProcess(["serve"], env).start()
    async with aiohttp.ClientSession() as http:
        for secret in (ALPHA, "wrong"):
            await http.post(
                f"{bridge.url}/v1/jobs",
                json={"token": 5, "callback_url": "http://u:hunter2@127.0.0.1:9/x"},
                headers={"Authorization": f"Bearer {secret}", "X-Request-Id": "req-1"},
            )
        await http.get(
            f"{bridge.url}/v1/signing-secrets", headers={"Authorization": f"Bearer {BETA}"}
        )
    assert await bridge.stop(signal.SIGTERM) == 0
    events = bridge.events()  # every stdout line parses as JSON
    names = [e["event"] for e in events]
    assert "serving" in names and "job_registered" in names and names[-1] == "stopped"
    requests = [e for e in events if e["event"] == "http_request"]
    assert requests and all("request_id" in e for e in requests)
    assert any(e["request_id"] == "req-1" for e in requests)
    registered = next(e for e in events if e["event"] == "job_registered")
    assert {"job_id", "kind", "token"} <= set(registered)
    everything = "".join(bridge.lines)
    for secret in (ALPHA, BETA, UC_SECRET, "hunter2", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"):
        assert secret not in everything


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"BRIDGE_POLL_MAX_INTERVAL": "fast"}, "BRIDGE_POLL_MAX_INTERVAL"),
        (
            {"BRIDGE_POLL_MIN_INTERVAL": "2m", "BRIDGE_POLL_MAX_INTERVAL": "1m"},
            "BRIDGE_POLL_MIN_INTERVAL",
        ),
        ({"BRIDGE_LEASE": "5s"}, "BRIDGE_LEASE"),
        ({"UPLOADCARE_SECRET_KEY": ""}, "UPLOADCARE_SECRET_KEY"),
        ({"BRIDGE_API_KEYS": ""}, "BRIDGE_API_KEYS"),
        ({"BRIDGE_DATABASE_URL": "oracle://db"}, "BRIDGE_DATABASE_URL"),
    ],
)
async def test_bad_settings_stop_the_start_with_one_line_and_status_2(
    tmp_path: Path, env: dict[str, str], var: str
) -> None:
    code, out, err = await run_bridge(["serve"], serve_env(tmp_path, **env))
    assert code == 2
    assert err.startswith(f"bridge: {var}: ")
    assert len(err.strip().splitlines()) == 1
    assert out == ""


async def test_flags_are_checked_like_the_environment(tmp_path: Path) -> None:
    code, _, err = await run_bridge(["serve", "--poll-max-interval", "1x"], serve_env(tmp_path))
    assert code == 2 and err.startswith("bridge: BRIDGE_POLL_MAX_INTERVAL: ")


async def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = await run_bridge(["serve", "--port", str(port)], serve_env(tmp_path))
    assert code == 1
    assert "address is in use" in err and "BRIDGE_PORT" in err
    assert len(err.strip().splitlines()) == 1


async def test_insecure_no_auth_serves_tenant_default(tmp_path: Path) -> None:
    env = serve_env(tmp_path, BRIDGE_API_KEYS=None)
    bridge = await BridgeProcess(["serve", "--insecure-no-auth"], env).start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{bridge.url}/v1/jobs", json={"token": 1, "callback_url": URL}) as r,
        ):
            assert r.status == 201
        assert any(e["event"] == "auth_disabled" for e in bridge.events())
    finally:
        assert await bridge.stop() == 0


async def test_migrate_and_secret_commands(tmp_path: Path) -> None:
    env = serve_env(tmp_path)
    # `bridge secret` never creates a database: it says where it looked.
    code, out, err = await run_bridge(["secret"], env)
    assert code == 1 and out == "" and not (tmp_path / "bridge.db").exists()
    assert f"no database at sqlite:{tmp_path / 'bridge.db'}" in err
    code, out, _ = await run_bridge(["migrate"], env)
    latest = migrations("sqlite")[-1][0]
    assert code == 0 and f"schema at version {latest}" in out
    code, out, _ = await run_bridge(["secret", "--tenant", "alpha"], env)
    assert code == 0
    alpha_secret = out.strip()
    assert alpha_secret.startswith("whsec_") and len(alpha_secret.splitlines()) == 1
    code, out, _ = await run_bridge(["secret"], env)
    lines = out.strip().splitlines()
    assert lines[0] == f"alpha: {alpha_secret}" and lines[1].startswith("beta: whsec_")
    code, _, err = await run_bridge(["secret", "--tenant", "gamma"], env)
    assert code == 2 and "no tenant 'gamma'" in err

    # serve signs with the same stored secret that `bridge secret` printed.
    bridge = await BridgeProcess(["serve"], env).start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{bridge.url}/v1/signing-secrets", headers={"Authorization": f"Bearer {ALPHA}"}
            ) as resp,
        ):
            assert (await resp.json())["secrets"] == [alpha_secret]
        # And `bridge secret` works while serve holds the file.
        code, out, _ = await run_bridge(["secret", "--tenant", "alpha"], env)
        assert code == 0 and out.strip() == alpha_secret
    finally:
        assert await bridge.stop() == 0


async def test_secret_prints_what_a_v1a_receiver_configures(tmp_path: Path) -> None:
    shared = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    env = serve_env(tmp_path, BRIDGE_SIGNATURE_SCHEMES="alpha:v1a", BRIDGE_WEBHOOK_SECRETS=shared)
    assert (await run_bridge(["migrate"], env))[0] == 0
    code, out, _ = await run_bridge(["secret"], env)
    assert code == 0
    alpha, beta = out.strip().splitlines()
    assert alpha.startswith("alpha: whpk_") and beta == f"beta: {shared}"
    assert "whsk_" not in out
    # A configured secret naming a v1a tenant: a bad value, showing no secret.
    bad = {**env, "BRIDGE_WEBHOOK_SECRETS": f"alpha:{shared}"}
    code, out, err = await run_bridge(["secret"], bad)
    assert code == 2 and err.startswith("bridge: BRIDGE_WEBHOOK_SECRETS: names tenant 'alpha'")
    assert shared.removeprefix("whsec_") not in err


async def test_shared_webhook_secret_is_warned_about(tmp_path: Path) -> None:
    env = serve_env(tmp_path, BRIDGE_WEBHOOK_SECRETS="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    bridge = await BridgeProcess(["serve"], env).start()
    assert await bridge.stop() == 0
    warnings = [e for e in bridge.events() if e["event"] == "webhook_secret_shared"]
    assert len(warnings) == 1 and warnings[0]["tenants"] == ["alpha", "beta"]
    assert warnings[0]["level"] == "warning"


async def test_own_secrets_are_not_warned_about(tmp_path: Path) -> None:
    env = serve_env(
        tmp_path,
        BRIDGE_WEBHOOK_SECRETS="alpha:whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    bridge = await BridgeProcess(["serve"], env).start()
    assert await bridge.stop() == 0
    assert not [e for e in bridge.events() if e["event"] == "webhook_secret_shared"]


async def test_help_lists_the_commands() -> None:
    code, out, _ = await run_bridge(["--help"], {})
    assert code == 0
    for command in ("serve", "fake-upstream", "migrate", "secret"):
        assert command in out
    code, out, _ = await run_bridge(["serve", "--help"], {})
    assert "--poll-max-interval" in out and "--insecure-no-auth" in out
    assert "--api-keys" not in out and "--database-url" not in out
    code, out, _ = await run_bridge(["fake-upstream", "--help"], {})
    assert code == 0 and "development tool" in out.lower()
    json.dumps(out)
