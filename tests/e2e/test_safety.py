"""Safe by default, end to end through the bridge: the callback network policy, redirects,
the allow list, and no secret in any log line, metric, API answer or attempt record.

Traffic rule for this file: every connection goes to loopback. Public addresses are only
ever judged at registration (by a bridge whose scheduler never delivers), or reached
through a test resolver that maps names to loopback; an autouse guard refuses, and
fails the test on, any connection attempt to an address outside 127.0.0.0/8 and ::1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from bridge import logs
from bridge import settings as settings_mod
from bridge.app import create_app
from bridge.fake_upstream import FakeConfig, running
from bridge.netpolicy import BLOCKED_MESSAGE, POLICY_MESSAGE, NetworkPolicy
from tests.conftest import ALPHA, LOOPBACK_HOSTS, UC_PUBLIC, base_env
from tests.harness import FAST, Receiver, fake_upstream, receiver, register, wait_state
from tests.proc import BridgeProcess, run_bridge
from tests.resolvers import StaticResolver

Client = TestClient[Any, Any]
H = {"Authorization": f"Bearer {ALPHA}"}
PUBLIC_V4 = "93.184.216.34"  # judged only: never dialled (the guard below makes sure)


# -- helpers ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bridge(
    tmp_path: Path,
    *,
    policy_names: dict[str, Any] | None = None,
    with_scheduler: bool = True,
    **env: str | None,
) -> AsyncIterator[tuple[Client, StaticResolver]]:
    """A bridge on loopback whose policy resolves names only through a StaticResolver."""
    settings = settings_mod.load(base_env(tmp_path, **{**FAST, **env}))
    resolver = StaticResolver(policy_names or {})
    # The allow list comes from the settings, so BRIDGE_CALLBACK_ALLOW_NETWORKS is what is tested.
    policy = NetworkPolicy(allow=settings.callback_allow_networks, resolver=resolver)
    app = create_app(settings, policy=policy, with_scheduler=with_scheduler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, resolver


async def metric(client: Client, sample: str, **labels: str) -> float:
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def attempts(client: Client, job_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/jobs/{job_id}/attempts", headers=H)
    assert resp.status == 200
    return (await resp.json())["items"]  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def receiver_on(host: str) -> AsyncIterator[Receiver]:
    """Like tests.harness.receiver, on another loopback address (127.0.0.2, ...)."""
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    rec.url = f"http://{host}:{runner.addresses[0][1]}"
    try:
        yield rec
    finally:
        await runner.cleanup()


# -- 1. the policy at registration, through the API ------------------------------------------

NAMES: dict[str, Any] = {
    "public.test": [PUBLIC_V4],
    "public6.test": ["2606:2800:220:1:248:1893:25c8:1946"],
    "localhost": ["127.0.0.1", "::1"],
    "intranet.test": ["10.1.2.3"],
    "metadata.test": ["169.254.169.254"],
    "cgnat.test": ["100.64.0.1"],
    "azure-wire.test": ["168.63.129.16"],
    "mixed.test": [PUBLIC_V4, "192.168.1.1"],
    "mapped.test": ["::ffff:10.0.0.1"],
    "nat64.test": ["64:ff9b::a00:1"],
    "ula.test": ["fd12:3456::1"],
    "garbage.test": ["not-an-address"],
}

REFUSED = [
    # loopback in every spelling
    "http://127.0.0.1/hook",
    "http://127.1/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://127.0.0.1.:8080/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::1]/",
    "http://[::]/",
    "http://0.0.0.0/",
    "http://0/",
    # the rest of the IPv4 list
    "http://10.0.0.1/",
    "https://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://100.127.255.255/",
    "http://192.0.0.1/",
    "http://192.0.2.1/",
    "http://198.18.0.1/",
    "http://198.19.255.255/",
    "http://198.51.100.1/",
    "http://203.0.113.1/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://168.63.129.16/",
    # IPv6, and IPv6 forms that embed a refused IPv4 address
    "http://[fc00::1]/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://[2001::1]/",
    "http://[2001:db8::1]/",
    "http://[::a00:1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[2002:c0a8:101::1]/",
    "http://[2002:7f00:1::]/",
    # user-info tricks and credentials do not change the host that is judged
    "http://public.test@127.0.0.1/",
    "https://user:secret@10.0.0.1/",
    # names: resolving inside, partly inside, not at all, or to something unreadable
    "http://localhost:8080/",
    "http://intranet.test/",
    "http://metadata.test/",
    "http://cgnat.test/",
    "http://azure-wire.test/",
    "http://mixed.test/",
    "http://mapped.test/",
    "http://nat64.test/",
    "http://ula.test/",
    "http://nxdomain.test/",
    "http://garbage.test/",
]

ALLOWED = [
    f"http://{PUBLIC_V4}/hook",
    "https://8.8.8.8/",
    "http://1.1.1.1:8443/x?y=1",
    "http://0x5d.0xb8.0xd8.0x22/",  # 93.184.216.34 in hex
    "http://1572395042/",  # 93.184.216.34 as one number
    "http://11.0.0.1/",  # just past 10/8
    "http://100.128.0.1/",  # just past 100.64/10
    "http://126.255.255.255/",  # just before 127/8
    "http://128.0.0.1/",  # just past 127/8
    "http://169.255.0.1/",  # just past 169.254/16
    "http://172.32.0.1/",  # just past 172.16/12
    "http://192.0.3.1/",  # just past 192.0.2/24
    "http://198.20.0.1/",  # just past 198.18/15
    "http://223.255.255.255/",  # just before 224/4
    "http://[2606:4700:4700::1111]/",
    "http://[::ffff:8.8.8.8]/",  # mapped public
    "http://[64:ff9b::808:808]/",  # NAT64 of a public address
    "http://[2002:808:808::1]/",  # 6to4 of a public address
    "https://user:pw@public.test/hook",
    "http://public.test/",
    "http://public6.test:8080/x",
]

TABLE = [(url, False) for url in REFUSED] + [(url, True) for url in ALLOWED]


def test_table_is_big_enough() -> None:
    assert len(TABLE) >= 40
    assert len({url for url, _ in TABLE}) == len(TABLE)


async def test_policy_table_through_the_api(tmp_path: Path) -> None:
    """Every URL gets the right answer at registration: 422 with the one message, or 201.

    The scheduler does not run, and every 201 is canceled at once: nothing is delivered.
    """
    tokens = itertools.count(7000)
    wrong: list[str] = []
    # No allow list and no host list: the network policy alone is under test here.
    async with bridge(
        tmp_path,
        policy_names=NAMES,
        with_scheduler=False,
        BRIDGE_CALLBACK_ALLOW_NETWORKS=None,
        BRIDGE_CALLBACK_HOSTS=None,
    ) as (client, _):
        for url, ok in TABLE:
            body = {"token": next(tokens), "callback_url": url}
            resp = await client.post("/v1/jobs", json=body, headers=H)
            text = await resp.text()
            if ok:
                if resp.status != 201:
                    wrong.append(f"{url}: {resp.status} {text}")
                    continue
                job = json.loads(text)
                assert "secret" not in job["callback_url"] and ":pw@" not in job["callback_url"]
                gone = await client.delete(f"/v1/jobs/{job['id']}", headers=H)
                assert (await gone.json())["state"] == "canceled"
                continue
            if resp.status != 422:
                wrong.append(f"{url}: {resp.status} {text}")
                continue
            problem = json.loads(text)
            assert problem["errors"] == [{"field": "callback_url", "message": POLICY_MESSAGE}]
            # One message that names no address and no host, so DNS cannot be mapped with it.
            host = urlsplit(url).hostname or ""
            assert len(host) < 4 or host not in text, (url, text)
            assert not re.search(r"\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]", text), (url, text)
        assert not wrong, "\n".join(wrong)
        assert await metric(client, "bridge_jobs_registered_total", kind="video") == len(ALLOWED)


# -- 2. DNS rebinding: public at registration, loopback at delivery --------------------------


async def test_dns_rebinding_gets_a_blocked_attempt_and_no_connection(
    tmp_path: Path, dialled: list[tuple[str, int]]
) -> None:
    # No allow list: 127.0.0.1 is refused like any internal address.
    names = {"rebind.test": [[PUBLIC_V4], ["127.0.0.1"]]}  # first answer, then every later one
    async with (
        fake_upstream() as fake,
        receiver() as rec,
        bridge(
            tmp_path,
            policy_names=names,
            BRIDGE_UPSTREAM_URL=fake.url,
            BRIDGE_CALLBACK_ALLOW_NETWORKS=None,
            # A name on the host list is still judged by the policy at every attempt.
            BRIDGE_CALLBACK_HOSTS=f"{LOOPBACK_HOSTS},rebind.test",
        ) as (client, resolver),
    ):
        port = int(rec.url.rsplit(":", 1)[1])
        token = fake.fake.add_job("video", duration=0.2)
        job = await register(client, token, f"http://rebind.test:{port}/hook")
        assert resolver.calls == ["rebind.test"]  # registration saw the public address
        done = await wait_state(client, job["id"], ("undeliverable",))

        tries = await attempts(client, job["id"])
        assert len(tries) == len(FAST["BRIDGE_CALLBACK_RETRY_SCHEDULE"].split(",")) + 1
        for a in tries:
            assert a["error"] == BLOCKED_MESSAGE
            assert a["response_status"] is None
        assert done["delivery"]["last_error"] == BLOCKED_MESSAGE
        assert await metric(client, "bridge_callback_attempts_total", result="blocked") == len(
            tries
        )
        # Resolved again at every attempt, and never a connection: the receiver saw nothing.
        assert resolver.calls.count("rebind.test") >= 1 + len(tries)
        assert rec.calls == []
        assert all(p != port for _, p in dialled)
        assert all(h != PUBLIC_V4 for h, _ in dialled)


# -- 3. redirects are not followed -----------------------------------------------------------


async def test_redirect_to_an_internal_address_is_not_followed(
    tmp_path: Path, dialled: list[tuple[str, int]]
) -> None:
    async with (
        fake_upstream() as fake,
        receiver() as rec,
        receiver() as inside,
        bridge(tmp_path, BRIDGE_UPSTREAM_URL=fake.url) as (client, _),
    ):
        # base_env allows 127.0.0.0/8, so only "never follow" keeps `inside` unreached.
        url = rec.plan(
            "/hook",
            (302, {"Location": "http://169.254.169.254/latest/meta-data/"}),
            (307, {"Location": inside.url + "/stolen"}),
            (308, {"Location": "http://10.0.0.1/"}),
            200,
        )
        token = fake.fake.add_job("video", duration=0.2)
        job = await register(client, token, url)
        done = await wait_state(client, job["id"], ("delivered", "undeliverable"))
        assert done["state"] == "delivered"
        tries = await attempts(client, job["id"])
        assert [a["response_status"] for a in tries] == [302, 307, 308, 200]
        assert [a["error"] for a in tries] == ["HTTP 302", "HTTP 307", "HTTP 308", None]
        assert len(rec.at("/hook")) == 4
        assert inside.calls == []
        assert await metric(client, "bridge_callback_attempts_total", result="http_error") == 3
        assert {h for h, _ in dialled} == {"127.0.0.1"}


# -- 4. the allow list -----------------------------------------------------------------------


async def test_allow_list_lets_one_loopback_address_through(
    tmp_path: Path, dialled: list[tuple[str, int]]
) -> None:
    # flip.test: 127.0.0.1 (allowed) at registration, 127.0.0.2 (not allowed) at delivery.
    names = {"flip.test": [["127.0.0.1"], ["127.0.0.2"]]}
    async with (
        fake_upstream() as fake,
        receiver() as rec,
        receiver_on("127.0.0.2") as other,
        bridge(
            tmp_path,
            policy_names=names,
            BRIDGE_UPSTREAM_URL=fake.url,
            BRIDGE_CALLBACK_ALLOW_NETWORKS="127.0.0.1/32",
            BRIDGE_CALLBACK_HOSTS=None,  # the network policy's allow list is under test
        ) as (client, _),
    ):
        other_port = other.url.rsplit(":", 1)[1]
        for refused in (
            f"{other.url}/hook",  # 127.0.0.2
            "http://10.0.0.1/hook",
            "http://[::1]/hook",
            "http://127.0.0.3/hook",
        ):
            resp = await client.post(
                "/v1/jobs", json={"token": 5, "callback_url": refused}, headers=H
            )
            assert resp.status == 422, refused
            errors = (await resp.json())["errors"]
            assert errors == [{"field": "callback_url", "message": POLICY_MESSAGE}]

        ok_token = fake.fake.add_job("video", duration=0.2)
        flip_token = fake.fake.add_job("video", duration=0.2)
        ok = await register(client, ok_token, rec.plan("/hook", 200))
        flip = await register(client, flip_token, f"http://flip.test:{other_port}/hook")
        done = await wait_state(client, ok["id"], ("delivered", "undeliverable"))
        assert done["state"] == "delivered"
        assert len(rec.at("/hook")) == 1
        assert rec.at("/hook")[0].headers["webhook-signature"].startswith("v1,")

        flipped = await wait_state(client, flip["id"], ("delivered", "undeliverable"))
        assert flipped["state"] == "undeliverable"
        assert {a["error"] for a in await attempts(client, flip["id"])} == {BLOCKED_MESSAGE}
        assert other.calls == []
        assert all(h != "127.0.0.2" for h, _ in dialled)


# -- 5. no secret anywhere -------------------------------------------------------------------


def _whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Secrets:
    """Fresh secret values for one run, and every form in which each must never appear."""

    def __init__(self, db_password: str | None) -> None:
        self.alpha = "alpha-KEY-" + secrets.token_hex(12)
        self.beta = "beta-KEY-" + secrets.token_hex(12)
        self.gamma = "gamma-KEY-" + secrets.token_hex(12)  # signs with v1a
        self.uploadcare = "uc-SECRET-" + secrets.token_hex(12)
        self.wh_shared = _whsec()
        self.wh_alpha = _whsec()
        self.wh_beta = _whsec()
        self.cb_user = "cbuser"
        # Characters that URLs percent-encode, so both spellings are looked for.
        self.cb_password = "cb-P@ss/w0rd:" + secrets.token_hex(8)
        self.db_password = db_password

    def env(self) -> dict[str, str]:
        return {
            "BRIDGE_API_KEYS": f"alpha:{self.alpha},beta:{self.beta},gamma:{self.gamma}",
            "BRIDGE_SIGNATURE_SCHEMES": "gamma:v1a",
            "UPLOADCARE_SECRET_KEY": self.uploadcare,
            "BRIDGE_WEBHOOK_SECRETS": (
                f"{self.wh_shared},alpha:{self.wh_alpha},beta:{self.wh_beta}"
            ),
        }

    def userinfo(self) -> str:
        return f"{self.cb_user}:{quote(self.cb_password, safe='')}"

    def forms(self) -> dict[str, str]:
        """label -> text that must not appear."""
        out: dict[str, str] = {}
        raw = {
            "api key alpha": self.alpha,
            "api key beta": self.beta,
            "api key gamma": self.gamma,
            "uploadcare secret": self.uploadcare,
            "webhook secret (shared)": self.wh_shared,
            "webhook secret alpha": self.wh_alpha,
            "webhook secret beta": self.wh_beta,
            "callback password": self.cb_password,
        }
        if self.db_password:
            raw["database password"] = self.db_password
        for label, value in raw.items():
            out[label] = value
            out[f"{label}, URL-encoded"] = quote(value, safe="")
            out[f"{label}, URL-encoded but '/'"] = quote(value)
            out[f"{label}, base64"] = _b64(value)
        for label in ("webhook secret (shared)", "webhook secret alpha", "webhook secret beta"):
            out[f"{label}, key part"] = raw[label].removeprefix("whsec_")
        out["callback Basic credentials"] = _b64(f"{self.cb_user}:{self.cb_password}")
        out["alpha Basic credentials"] = _b64(f"alpha:{self.alpha}")
        out["upstream simple auth"] = f"{UC_PUBLIC}:{self.uploadcare}"
        return out


def find_secrets(
    text: str, forms: dict[str, str], where: str, allowed: frozenset[str] = frozenset()
) -> list[str]:
    return [
        f"{label} in {where}"
        for label, value in forms.items()
        if value in text and label not in allowed
    ]


@contextlib.asynccontextmanager
async def postgres_database(password: str) -> AsyncIterator[str]:
    """A fresh database on BRIDGE_TEST_POSTGRES_URL, as a URL that carries ``password``."""
    import asyncpg

    admin_url = os.environ["BRIDGE_TEST_POSTGRES_URL"]
    name = f"bridge_safety_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(admin_url)
        netloc = f"{parts.username or 'postgres'}:{quote(password, safe='')}@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        yield urlunsplit((parts.scheme, netloc, "/" + name, parts.query, ""))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _postgres_param() -> Any:
    try:
        import bridge.store.postgres_driver  # noqa: F401
    except ImportError:
        return pytest.param("postgres", marks=pytest.mark.skip(reason="no PostgreSQL store"))
    return pytest.param(
        "postgres",
        marks=pytest.mark.skipif(
            not os.environ.get("BRIDGE_TEST_POSTGRES_URL"),
            reason="BRIDGE_TEST_POSTGRES_URL is not set",
        ),
    )


class Recorder:
    """An HTTP client for the subprocess that keeps every answer, headers included."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.answers: list[str] = []
        self.by_design: list[str] = []  # answers that show a secret on purpose

    async def call(
        self,
        method: str,
        path: str,
        key: str | None,
        *,
        by_design: bool = False,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> tuple[int, Any]:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        async with self.http.request(method, self.base + path, headers=sent, **kw) as resp:
            text = await resp.text()
            record = "\n".join(f"{k}: {v}" for k, v in resp.headers.items()) + "\n\n" + text
            (self.by_design if by_design else self.answers).append(record)
            try:
                data = json.loads(text)
            except ValueError:
                data = text
            return resp.status, data


@pytest.mark.parametrize("database", ["sqlite", _postgres_param()])
async def test_no_secret_in_logs_metrics_answers_or_attempts(tmp_path: Path, database: str) -> None:
    if database == "postgres":
        password = "pg-PW/" + secrets.token_hex(8) + "?#"
        async with postgres_database(password) as url:
            await _redaction_run(tmp_path, Secrets(password), url)
    else:
        await _redaction_run(tmp_path, Secrets(None), f"sqlite:///{tmp_path / 'bridge.db'}")


async def _redaction_run(tmp_path: Path, s: Secrets, database_url: str) -> None:
    forms = s.forms()
    # The fake upstream first holds another secret key: the bridge's requests get 401s.
    config = FakeConfig(
        public_key=UC_PUBLIC, secret_key="not-" + s.uploadcare, min_duration=0.1, max_duration=0.3
    )
    async with running(config, host="127.0.0.1", port=0) as fake, receiver() as rec:
        env = base_env(
            tmp_path,
            **FAST,
            **s.env(),
            BRIDGE_DATABASE_URL=database_url,
            BRIDGE_UPSTREAM_URL=fake.url,
            BRIDGE_UPSTREAM_AUTH="simple",  # the secret itself travels upstream
            BRIDGE_PORT="0",
            BRIDGE_LOG_LEVEL="debug",
        )
        proc = await BridgeProcess(["serve"], env).start()
        try:
            async with aiohttp.ClientSession() as http:
                api = Recorder(http, proc.url)
                await _drive(api, s, fake, rec)
                metrics = await (await http.get(proc.url + "/metrics")).text()
        finally:
            code = await proc.stop()
        assert code == 0, proc.stderr

    # The private keys the bridge generated (gamma's v1a pairs, before and after a rotation)
    # are secrets too, as they are stored and as their base64 part.
    private = await _private_keys(database_url)
    assert len(private) == 2
    for i, key in enumerate(private):
        forms[f"v1a private key {i}"] = key
        forms[f"v1a private key {i}, key part"] = key.removeprefix("whsk_")

    # The callback really carried the credentials (so their absence elsewhere means something).
    basic = "Basic " + forms["callback Basic credentials"]
    assert any(c.headers.get("Authorization") == basic for c in rec.calls)

    found: list[str] = []
    for i, line in enumerate(proc.lines):
        found += find_secrets(line, forms, f"stdout line {i + 1}")
    found += find_secrets(proc.stderr, forms, "stderr")
    found += find_secrets(metrics, forms, "/metrics")
    for i, answer in enumerate(api.answers):
        found += find_secrets(answer, forms, f"API answer {i + 1}")
    # GET /v1/signing-secrets shows a tenant its own signing secret, and nothing else.
    own = frozenset(label for label in forms if label.startswith("webhook secret alpha"))
    for answer in api.by_design:
        found += find_secrets(answer, forms, "GET /v1/signing-secrets", allowed=own)
    assert not found, "\n".join(found)

    # Every line is JSON, and the run did what it was meant to: 401s upstream, a retry.
    events = proc.events()
    names = {e["event"] for e in events}
    assert {"upstream_paused", "upstream_resumed", "callback_retry_scheduled"} <= names
    assert "job_delivered" in names
    registered = [e for e in events if e["event"] == "job_registered"]
    assert registered and all("***@127.0.0.1" in e["callback_url"] for e in registered)


async def _private_keys(database_url: str) -> list[str]:
    """Every v1a private key in the bridge's database (read after it stopped)."""
    query = "SELECT secret FROM signing_keys WHERE scheme = 'v1a' ORDER BY id"
    if database_url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as db:
            return [str(r[0]) for r in db.execute(query)]
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return [str(r[0]) for r in await conn.fetch(query)]
    finally:
        await conn.close()


async def _wait_delivered(api: Recorder, key: str, job_id: str) -> None:
    for _ in range(600):
        _, current = await api.call("GET", f"/v1/jobs/{job_id}", key)
        if current["state"] == "delivered":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(current)


async def _drive_v1a(api: Recorder, s: Secrets, fake: Any, rec: Receiver) -> None:
    """gamma signs with Ed25519: a callback, a rotation, a callback under both key pairs."""
    port = rec.url.rsplit(":", 1)[1]
    body = {"token": fake.fake.add_job("video", duration=0.2)}
    body["callback_url"] = f"http://{s.userinfo()}@127.0.0.1:{port}/gamma"
    status, job = await api.call("POST", "/v1/jobs", s.gamma, json=body)
    assert status == 201, job
    await _wait_delivered(api, s.gamma, job["id"])
    status, made = await api.call("POST", "/v1/signing-secrets/rotate", s.gamma)
    assert status == 201 and made["public_key"].startswith("whpk_")
    assert (await api.call("POST", f"/v1/jobs/{job['id']}/redeliver", s.gamma))[0] == 202
    await _wait_delivered(api, s.gamma, job["id"])
    status, shown = await api.call("GET", "/v1/signing-secrets", s.gamma)
    assert status == 200 and shown["secrets"] == [] and len(shown["keys"]) == 2
    gamma = [c for c in rec.calls if c.path == "/gamma"]
    assert gamma[-1].headers["webhook-signature"].count("v1a,") == 2
    # alpha's secrets are configured: rotated by configuration, never through the API.
    assert (await api.call("POST", "/v1/signing-secrets/rotate", s.alpha))[0] == 409


async def _drive(api: Recorder, s: Secrets, fake: Any, rec: Receiver) -> None:
    """A full flow with every kind of refusal, a rejected upstream, a retry and a redelivery."""
    # 401s: no header, a wrong key, another secret as the key, Basic instead of Bearer.
    for key in (None, "wrong", s.uploadcare, s.wh_alpha):
        assert (await api.call("GET", "/v1/jobs", key))[0] == 401
    basic = {"Authorization": "Basic " + _b64(f"alpha:{s.alpha}")}
    assert (await api.call("GET", "/v1/jobs", None, headers=basic))[0] == 401
    assert (await api.call("POST", "/v1/jobs", s.beta + "x", json={"token": 1}))[0] == 401

    port = rec.url.rsplit(":", 1)[1]
    hook = f"http://{s.userinfo()}@127.0.0.1:{port}/hook"
    rec.plan("/hook", 500)  # the first attempt fails: a retry follows
    token = fake.fake.add_job("video", duration=0.2)
    body = {"token": token, "callback_url": hook, "metadata": {"order": "A-1"}}
    status, job = await api.call("POST", "/v1/jobs", s.alpha, json=body)
    assert status == 201, job
    assert job["callback_url"] == f"http://***@127.0.0.1:{port}/hook"
    assert (await api.call("POST", "/v1/jobs", s.alpha, json=body))[0] == 200

    # 409s: other metadata; another tenant's token.
    other = {**body, "metadata": {"order": "A-2", "note": s.cb_password}}
    assert (await api.call("POST", "/v1/jobs", s.alpha, json=other))[0] == 409
    assert (await api.call("POST", "/v1/jobs", s.beta, json=body))[0] == 409

    # 422s that carry secrets in what was refused, and the other refusals.
    refused = [
        {"token": "0042", "callback_url": hook},
        {"token": 5, "callback_url": f"http://{s.userinfo()}@10.0.0.1/hook"},
        {"token": 5, "callback_url": f"http://{s.userinfo()}@127.0.0.1:99999/hook"},
        {"token": 5, "callback_url": f"ftp://{s.userinfo()}@127.0.0.1/hook"},
        {"token": 5, "callback_url": hook + "/" + "x" * 2048},
        {"token": 5, "callback_url": hook, "password": s.cb_password, s.alpha: 1},
        {"token": 5, "callback_url": hook, "metadata": {"k": s.alpha * 200}},
    ]
    for bad in refused:
        status, problem = await api.call("POST", "/v1/jobs", s.alpha, json=bad)
        assert status == 422, (bad, problem)
    assert (await api.call("POST", "/v1/jobs", s.alpha, data=s.alpha))[0] == 415
    raw = {"Content-Type": "application/json"}
    assert (await api.call("POST", "/v1/jobs", s.alpha, data=s.alpha, headers=raw))[0] == 400
    assert (await api.call("POST", "/v1/jobs", s.alpha, data=b"x" * 70_000, headers=raw))[0] == 413

    # The upstream refuses the bridge's key: polling pauses and /readyz says why.
    for _ in range(300):
        _, ready = await api.call("GET", "/readyz", None)
        if ready["upstream"]["state"] == "paused":
            break
        await asyncio.sleep(0.05)
    assert ready["upstream"]["state"] == "paused", ready
    fake.fake.config.secret_key = s.uploadcare  # now the bridge's key is the right one

    beta_token = fake.fake.add_job("document", duration=0.2)
    beta_hook = f"http://{s.userinfo()}@127.0.0.1:{port}/beta"
    beta_body = {"token": beta_token, "kind": "document", "callback_url": beta_hook}
    status, beta_job = await api.call("POST", "/v1/jobs", s.beta, json=beta_body)
    assert status == 201, beta_job

    for tenant_key, job_id in ((s.alpha, job["id"]), (s.beta, beta_job["id"])):
        for _ in range(600):  # the first pause lasts 5 s
            _, current = await api.call("GET", f"/v1/jobs/{job_id}", tenant_key)
            if current["state"] in ("delivered", "undeliverable"):
                break
            await asyncio.sleep(0.05)
        assert current["state"] == "delivered", current

    # A redelivery, then every read there is.
    assert (await api.call("POST", f"/v1/jobs/{job['id']}/redeliver", s.alpha))[0] == 202
    for _ in range(600):
        _, current = await api.call("GET", f"/v1/jobs/{job['id']}", s.alpha)
        if current["state"] == "delivered":
            break
        await asyncio.sleep(0.05)
    assert (await api.call("DELETE", f"/v1/jobs/{job['id']}", s.alpha))[0] == 409
    assert (await api.call("GET", f"/v1/jobs/{job['id']}", s.beta))[0] == 404
    status, tries = await api.call("GET", f"/v1/jobs/{job['id']}/attempts", s.alpha)
    assert status == 200 and len(tries["items"]) >= 3
    assert (await api.call("GET", "/v1/jobs?limit=500", s.alpha))[0] == 200
    assert (await api.call("GET", f"/v1/jobs?token={token}", s.alpha))[0] == 200
    assert (await api.call("GET", "/v1/jobs?cursor=" + s.alpha, s.alpha))[0] == 422
    for path in ("/healthz", "/readyz", "/openapi.json", "/nope"):
        await api.call("GET", path, None)
    status, shown = await api.call("GET", "/v1/signing-secrets", s.alpha, by_design=True)
    assert status == 200 and shown["secrets"] == [s.wh_alpha]
    await _drive_v1a(api, s, fake, rec)


async def test_startup_errors_name_no_secret(tmp_path: Path) -> None:
    """A refused start says which variable is wrong, never its value."""
    marker = "leak-" + secrets.token_hex(8)
    whsec = "whsec_" + _b64(marker * 2)
    cases = [
        {"BRIDGE_API_KEYS": f"alpha:{marker},beta:{marker}"},  # one secret, two tenants
        {"BRIDGE_API_KEYS": f"{marker}"},  # not name:secret
        {"BRIDGE_WEBHOOK_SECRETS": f"whsec_{marker}!"},  # not base64
        {"BRIDGE_WEBHOOK_SECRETS": f"nobody:{whsec}"},  # a tenant without a key
        {"BRIDGE_DATABASE_URL": f"postgresql://u:{marker}@127.0.0.1:1/db"},  # unreachable
        {"BRIDGE_DATABASE_URL": f"mysql://u:{marker}@127.0.0.1/db"},  # unsupported
        {"BRIDGE_DATABASE_URL": f"postgresql://u:1/{marker}@127.0.0.1/db"},  # not encoded
        {"BRIDGE_DATABASE_URL": f"postgresql://u:{marker}#x@127.0.0.1/db"},
        {"BRIDGE_DATABASE_URL": f"postgresql://u:{marker}@127.0.0.1:x/db"},
    ]
    for extra in cases:
        env = base_env(tmp_path, BRIDGE_PORT="0", **extra)
        code, out, err = await run_bridge(["serve"], env)
        assert code != 0, extra
        for value in (marker, quote(marker, safe=""), whsec, whsec.removeprefix("whsec_")):
            assert value not in out + err, (extra, out, err)


def test_a_log_line_orjson_cannot_render_is_still_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Lines are rendered by orjson, which refuses integers past 64 bits: the fallback
    renders them, and the line is still redacted."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("json", "info", ["line-secret-value"])
        structlog.get_logger("test").info("big", n=2**70, note="has line-secret-value inside")
        line = capsys.readouterr().out.strip().splitlines()[-1]
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = handlers, level
    event = json.loads(line)
    assert event["n"] == 2**70 and event["event"] == "big"
    assert "line-secret-value" not in line and event["note"] == "has *** inside"
