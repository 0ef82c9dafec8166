"""Signing keys: rotation, v1a (Ed25519) and how replicas learn of a rotation.

Callbacks are made by the scheduler rig (a virtual clock, real loopback HTTP, a real
SQLite file) and checked by implementations nobody here wrote: the ``standardwebhooks``
package for ``v1`` and PyNaCl for ``v1a`` (the bridge signs with ``cryptography``).
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge import keys
from bridge.app import create_app
from bridge.settings import Settings
from bridge.store import Store
from bridge.store.postgres_driver import PostgresStore
from bridge.store.sqlite_driver import SQLiteStore
from bridge.webhooks import REFRESH, SecretBook, SigningKey, sign
from tests import pg
from tests.conftest import ALPHA, BETA, FakeClock, base_env
from tests.harness import Call
from tests.service.test_scheduler_steps import STUCK, Rig, rig

OVERLAP = 60.0  # short: a receiver refuses a timestamp five minutes off its clock
SHARED = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OWN = "whsec_c2hvcC1zZWNyZXQtb2YtYWxwaGEtMDEyMzQ1Ng=="


def headers_of(call: Call) -> dict[str, str]:
    return {k.lower(): v for k, v in call.headers.items()}


def signatures(call: Call) -> list[str]:
    return headers_of(call)["webhook-signature"].split(" ")


def v1_verifies(secret: str, call: Call) -> bool:
    try:
        Webhook(secret).verify(call.body, headers_of(call))
    except WebhookVerificationError:
        return False
    return True


def v1a_verifies(public_key: str, call: Call) -> bool:
    """Standard Webhooks v1a, verified with PyNaCl: any ``v1a,`` signature by this key."""
    h = headers_of(call)
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + call.body
    verifier = VerifyKey(base64.b64decode(public_key.removeprefix("whpk_"), validate=True))
    for part in h["webhook-signature"].split(" "):
        scheme, _, sig = part.partition(",")
        if scheme != "v1a":
            continue
        try:
            verifier.verify(signed, base64.b64decode(sig, validate=True))
        except BadSignatureError:
            continue
        return True
    return False


async def deliver_one(r: Rig, path: str) -> Call:
    """A finished conversion's callback, delivered at the next steps."""
    token = r.fake.add_job("video", outcome="finished", duration=0.5)
    await r.register(token, path)
    r.clock.advance(1.0)
    report = await r.step()
    assert report.delivered == 1, report
    (call,) = [c for c in r.rec.calls if c.path == path]
    return call


async def redeliver(r: Rig, call: Call) -> Call:
    job_id = call.json()["data"]["job_id"]
    before = len(r.rec.calls)
    assert await r.store.redeliver("alpha", job_id, now=r.clock()) is not None
    assert (await r.step()).delivered == 1
    return r.rec.calls[before]


# -- v1: rotation --------------------------------------------------------------------------


async def test_a_rotated_secret_signs_beside_the_new_one_until_the_overlap_ends(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, BRIDGE_SECRET_ROTATION_OVERLAP=f"{OVERLAP:g}s") as r:
        (old,) = await r.secrets.for_tenant("alpha")
        before = await deliver_one(r, "/before")
        assert [s.split(",")[0] for s in signatures(before)] == ["v1"]
        assert v1_verifies(old.secret, before)

        new = await r.secrets.rotate("alpha")
        assert new.scheme == "v1" and new.secret != old.secret and new.expires_at is None
        during = await deliver_one(r, "/during")
        assert len(signatures(during)) == 2
        # Each verifier, holding one of the two secrets, accepts the callback.
        assert v1_verifies(old.secret, during) and v1_verifies(new.secret, during)

        r.clock.advance(OVERLAP - 1.5)  # a redelivery just before the overlap ends: both
        assert len(signatures(await redeliver(r, during))) == 2

        r.clock.advance(1.0)  # past it: the new secret alone
        after = await redeliver(r, during)
        assert len(signatures(after)) == 1
        assert v1_verifies(new.secret, after) and not v1_verifies(old.secret, after)
        assert [k.secret for k in await r.secrets.for_tenant("alpha")] == [new.secret]


# -- v1a: Ed25519 --------------------------------------------------------------------------


async def test_v1a_callbacks_verify_with_the_public_key_and_rotate_too(tmp_path: Path) -> None:
    env = {
        "BRIDGE_SIGNATURE_SCHEMES": "alpha:v1a",
        "BRIDGE_SECRET_ROTATION_OVERLAP": f"{OVERLAP:g}s",
        # Entries without a tenant do not apply to a v1a tenant.
        "BRIDGE_WEBHOOK_SECRETS": SHARED,
    }
    async with rig(tmp_path, **env) as r:
        (old,) = await r.secrets.for_tenant("alpha")
        assert old.scheme == "v1a" and old.secret.startswith("whsk_")
        assert old.public_key is not None and old.public_key.startswith("whpk_")
        assert len(base64.b64decode(old.secret.removeprefix("whsk_"))) == 32
        assert len(base64.b64decode(old.public_key.removeprefix("whpk_"))) == 32
        first = await deliver_one(r, "/v1a")
        (sig,) = signatures(first)
        assert sig.startswith("v1a,") and len(base64.b64decode(sig[4:])) == 64
        assert v1a_verifies(old.public_key, first)
        assert not v1_verifies(SHARED, first)  # no v1 signature at all

        new = await r.secrets.rotate("alpha")
        assert new.public_key is not None and new.public_key != old.public_key
        during = await redeliver(r, first)
        assert [s[:4] for s in signatures(during)] == ["v1a,", "v1a,"]
        assert v1a_verifies(old.public_key, during) and v1a_verifies(new.public_key, during)

        r.clock.advance(OVERLAP + 0.5)
        after = await redeliver(r, first)
        assert len(signatures(after)) == 1
        assert v1a_verifies(new.public_key, after) and not v1a_verifies(old.public_key, after)


def test_a_tampered_body_fails_v1a() -> None:
    from bridge.webhooks import generate_keypair

    private, public = generate_keypair()
    body = b'{"type":"video.conversion.finished"}'
    header = sign([SigningKey("v1a", private, public)], "msg_1", 1_800_000_000, body)
    sent = {"webhook-id": "msg_1", "webhook-timestamp": "1800000000", "webhook-signature": header}
    call = Call("/", sent, body, 0.0)
    assert v1a_verifies(public, call)
    assert not v1a_verifies(public, Call("/", call.headers, body + b" ", 0.0))
    assert not v1a_verifies(generate_keypair()[1], call)


# -- the API ---------------------------------------------------------------------------------


def auth(key: str = ALPHA) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def api(tmp_path: Path, clock: FakeClock, **env: str) -> TestClient[Any, Any]:
    from bridge import settings as settings_mod

    settings: Settings = settings_mod.load(base_env(tmp_path, **env))
    app = create_app(settings, clock=clock, with_scheduler=False)
    return TestClient(TestServer(app, host="127.0.0.1"))


async def stored_private_keys(client: TestClient[Any, Any]) -> list[str]:
    store: Store = client.app[keys.STORE]
    found = await store.signing_keys("alpha", "v1a", generate=lambda: ("", None), now=0.0)
    return [k.secret for k in found]


async def test_rotate_answers_201_with_the_new_key_and_lists_both(tmp_path: Path) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    async with await api(tmp_path, clock, BRIDGE_SECRET_ROTATION_OVERLAP="24h") as c:
        first = await (await c.get("/v1/signing-secrets", headers=auth())).json()
        (old,) = first["secrets"]
        assert first["keys"] == [{"scheme": "v1", "secret": old, "expires_at": None}]

        resp = await c.post("/v1/signing-secrets/rotate", headers=auth())
        assert resp.status == 201, await resp.text()
        made = await resp.json()
        assert made["scheme"] == "v1" and made["expires_at"] is None
        assert made["secret"].startswith("whsec_") and made["secret"] != old

        listed = await (await c.get("/v1/signing-secrets", headers=auth())).json()
        assert listed["secrets"] == [made["secret"], old]
        assert listed["keys"] == [
            made,
            {"scheme": "v1", "secret": old, "expires_at": "2027-01-16T08:00:00Z"},
        ]
        # Another tenant's secret is untouched.
        beta = await (await c.get("/v1/signing-secrets", headers=auth(BETA))).json()
        assert len(beta["keys"]) == 1 and beta["secrets"][0] not in (old, made["secret"])

        # {} is no body too; after 24 h only the newest two are in force.
        clock.advance(86400.0 + 1)
        again = await c.post("/v1/signing-secrets/rotate", json={}, headers=auth())
        assert again.status == 201
        listed = await (await c.get("/v1/signing-secrets", headers=auth())).json()
        assert listed["secrets"] == [(await again.json())["secret"], made["secret"]]


async def test_rotate_is_409_where_configured_secrets_apply(tmp_path: Path) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    for secrets in (SHARED, f"alpha:{OWN}"):
        async with await api(tmp_path, clock, BRIDGE_WEBHOOK_SECRETS=secrets) as c:
            resp = await c.post("/v1/signing-secrets/rotate", headers=auth())
            assert resp.status == 409
            assert resp.headers["Content-Type"].startswith("application/problem+json")
            problem = await resp.json()
            assert "BRIDGE_WEBHOOK_SECRETS" in problem["detail"]
            assert SHARED not in await resp.text() and OWN not in await resp.text()
            listed = await (await c.get("/v1/signing-secrets", headers=auth())).json()
            assert listed["keys"] == [{"scheme": "v1", "secret": s, "expires_at": None}
                                      for s in listed["secrets"]]  # fmt: skip


async def test_a_v1a_tenant_is_shown_public_keys_only(tmp_path: Path) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    env = {"BRIDGE_SIGNATURE_SCHEMES": "alpha:v1a", "BRIDGE_WEBHOOK_SECRETS": SHARED}
    async with await api(tmp_path, clock, **env) as c:
        answers = [await c.get("/v1/signing-secrets", headers=auth())]
        answers.append(await c.post("/v1/signing-secrets/rotate", headers=auth()))
        answers.append(await c.get("/v1/signing-secrets", headers=auth()))
        assert [a.status for a in answers] == [200, 201, 200]
        first, made, listed = [await a.json() for a in answers]
        assert first["secrets"] == [] and listed["secrets"] == []
        assert made["scheme"] == "v1a" and made["public_key"].startswith("whpk_")
        assert set(made) == {"scheme", "public_key", "expires_at"}
        assert [k["public_key"] for k in listed["keys"]] == [
            made["public_key"],
            first["keys"][0]["public_key"],
        ]
        # beta is still v1, signed with the shared secret: rotated by configuration.
        assert (await c.post("/v1/signing-secrets/rotate", headers=auth(BETA))).status == 409
        private = await stored_private_keys(c)
        assert len(private) == 2
        texts = [await a.text() for a in answers]
        for key in private:
            for text in texts:
                assert key not in text and key.removeprefix("whsk_") not in text


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{}", "application/json", 201),
        (b"", "application/json", 201),
        (b"", "text/plain", 201),
        (b'{"secret": "whsec_x"}', "application/json", 422),
        (b"[]", "application/json", 422),
        (b"null", "application/json", 422),
        (b'{"a": 1, "a": 2}', "application/json", 400),
        (b"{", "application/json", 400),
        (b"{}", "text/plain", 415),
        (b"x" * 70_000, "application/json", 413),
    ],
)
async def test_rotate_takes_no_body_or_an_empty_object(
    tmp_path: Path, body: bytes, content_type: str, status: int
) -> None:
    async with await api(tmp_path, FakeClock()) as c:
        headers = {**auth(), "Content-Type": content_type}
        resp = await c.post("/v1/signing-secrets/rotate", data=body, headers=headers)
        assert resp.status == status, await resp.text()
        if status != 201:
            problem = await resp.json()
            assert "whsec_x" not in await resp.text() and problem["status"] == status
            if status == 422:
                assert problem["errors"][0]["field"] in ("(unknown)", "")
        listed = await (await c.get("/v1/signing-secrets", headers=auth())).json()
        assert len(listed["keys"]) == (2 if status == 201 else 1)


# -- replicas ------------------------------------------------------------------------------


async def test_another_book_on_one_sqlite_file_signs_with_the_new_key_within_refresh(
    tmp_path: Path,
) -> None:
    """One process may hold two books (``bridge secret`` beside ``serve`` reads the file
    too): with no notices in SQLite, the re-read every REFRESH seconds is what tells it."""
    clock = FakeClock(start=1_800_000_000.0)
    store = await SQLiteStore.open(str(tmp_path / "b.db"))
    try:
        a = SecretBook((), store, clock, overlap=OVERLAP)
        b = SecretBook((), store, clock, overlap=OVERLAP)
        (old,) = await b.for_tenant("alpha")
        assert await a.for_tenant("alpha") == [old]
        new = await a.rotate("alpha")
        assert await a.for_tenant("alpha") == [new, await_old(old, clock())]
        assert await b.for_tenant("alpha") == [old]  # cached
        clock.advance(REFRESH)
        assert REFRESH <= 5.0  # the contract's bound on every replica switching
        assert [k.secret for k in await b.for_tenant("alpha")] == [new.secret, old.secret]
    finally:
        await store.close()


def await_old(old: SigningKey, now: float) -> SigningKey:
    return SigningKey(old.scheme, old.secret, old.public_key, now + OVERLAP)


@pg.needs_postgres
async def test_a_replica_hears_a_rotation_at_once_and_rereads_without_the_notice() -> None:
    clock = FakeClock(start=1_800_000_000.0)
    async with pg.fresh_schema() as schema:
        one = await PostgresStore.open(pg.POSTGRES_URL, schema=schema)
        two = await PostgresStore.open(pg.POSTGRES_URL, schema=schema)
        try:
            a = SecretBook((), one, clock, overlap=OVERLAP)
            b = SecretBook((), two, clock, overlap=OVERLAP)  # hears notices
            deaf = SecretBook((), two, clock, overlap=OVERLAP)  # its notice was lost
            heard = asyncio.Event()

            def notice(tenant: str) -> None:
                b.forget(tenant)
                heard.set()

            await two.listen_signing(notice)
            (old,) = await b.for_tenant("alpha")
            assert await deaf.for_tenant("alpha") == [old] == await a.for_tenant("alpha")

            started = time.perf_counter()
            new = await a.rotate("alpha")
            await asyncio.wait_for(heard.wait(), STUCK)
            took = time.perf_counter() - started
            # Measured, not asserted (no wall-clock assertions here): printed with -s.
            print(f"\nreplica heard the rotation {took * 1000:.1f} ms after it began")
            # No time passed on the clock: the notice alone made b read again.
            assert [k.secret for k in await b.for_tenant("alpha")] == [new.secret, old.secret]
            assert await deaf.for_tenant("alpha") == [old]
            clock.advance(REFRESH)
            assert [k.secret for k in await deaf.for_tenant("alpha")] == [new.secret, old.secret]
        finally:
            await one.close()
            await two.close()


async def test_generated_secrets_and_private_keys_are_redacted_from_logs_as_made(
    tmp_path: Path,
) -> None:
    from bridge.logs import redactor

    clock = FakeClock(start=1_800_000_000.0)
    async with await api(tmp_path, clock, BRIDGE_SIGNATURE_SCHEMES="alpha:v1a") as c:
        resp = await c.post("/v1/signing-secrets/rotate", headers=auth())
        assert resp.status == 201
        book: SecretBook = c.app[keys.SECRETS]
        made = [k.secret for t in ("alpha", "beta") for k in await book.for_tenant(t)]
        assert len(made) == 3 and sum(m.startswith("whsk_") for m in made) == 2
        for secret in made:
            line = redactor.text(f"a line with {secret} and {secret.partition('_')[2]} in it")
            assert secret.partition("_")[2] not in line and "***" in line
