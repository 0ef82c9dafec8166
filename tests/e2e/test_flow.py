"""End to end on loopback: fake upstream -> bridge -> receiver, signatures verified."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge import pollplan
from bridge.store.sqlite_driver import SQLiteStore
from tests.conftest import ALPHA, BETA
from tests.harness import bridge, fake_upstream, job, receiver, register, wait_state

H_ALPHA = {"Authorization": f"Bearer {ALPHA}"}
H_BETA = {"Authorization": f"Bearer {BETA}"}


async def secrets_of(client: Any, headers: dict[str, str]) -> list[str]:
    resp = await client.get("/v1/signing-secrets", headers=headers)
    return (await resp.json())["secrets"]  # type: ignore[no-any-return]


def verify(secret: str, call: Any) -> Any:
    headers = {k.lower(): v for k, v in call.headers.items()}
    return Webhook(secret).verify(call.body, headers)


async def metric_values(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = await (await client.get("/metrics")).text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(values: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in values.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


async def test_200_jobs_each_get_one_verified_callback(tmp_path: Path) -> None:
    outcomes = ["finished", "failed", "canceled", "cancelled"]
    rng = random.Random(7)
    async with fake_upstream() as up, receiver() as rec, bridge(tmp_path, up.url) as client:
        secret = {
            "alpha": await secrets_of(client, H_ALPHA),
            "beta": await secrets_of(client, H_BETA),
        }
        assert secret["alpha"] != secret["beta"]
        expected: dict[str, dict[str, Any]] = {}
        for i in range(200):
            kind = "video" if i % 2 else "document"
            outcome = outcomes[i % 4]
            tenant = "alpha" if i % 3 else "beta"
            token = up.fake.add_job(kind, outcome=outcome, duration=rng.uniform(0.05, 0.6))
            j = await register(
                client,
                token,
                rec.url + f"/hooks/{tenant}",
                kind=kind,
                secret=ALPHA if tenant == "alpha" else BETA,
                metadata={"i": i, "tenant": tenant},
            )
            expected[j["id"]] = {"kind": kind, "token": token, "outcome": outcome, "tenant": tenant}
        await rec.wait_for(lambda: len(rec.calls) >= 200, timeout=60)
        await asyncio.sleep(0.3)  # nothing more may come
        assert len(rec.calls) == 200
        seen_ids = set()
        for call in rec.calls:
            tenant = call.path.rsplit("/", 1)[1]
            other = "beta" if tenant == "alpha" else "alpha"
            payload = verify(secret[tenant][0], call)
            with pytest.raises(WebhookVerificationError):
                verify(secret[other][0], call)
            data = payload["data"]
            want = expected[data["job_id"]]
            status = "canceled" if want["outcome"] == "cancelled" else want["outcome"]
            assert payload["type"] == f"{want['kind']}.conversion.{status}"
            assert data["status"] == status
            assert data["kind"] == want["kind"]
            assert data["token"] == want["token"] and isinstance(data["token"], int)
            assert data["metadata"]["tenant"] == tenant
            assert data["result"]["uuid"]
            if want["kind"] == "video":
                assert data["result"]["thumbnails_group_uuid"]
            assert (data["error"] is not None) == (status == "failed")
            assert call.headers["webhook-id"] == "msg_" + data["job_id"][4:]
            assert call.headers["User-Agent"].startswith("uploadcare-bridge/")
            assert call.headers["Content-Type"] == "application/json"
            seen_ids.add(data["job_id"])
        assert seen_ids == set(expected)

        # Counters agree with what the fake upstream and the receiver saw.
        for j_id in list(expected)[:5]:
            await wait_state(
                client,
                j_id,
                ("delivered",),
                secret=ALPHA if expected[j_id]["tenant"] == "alpha" else BETA,
            )
        m = await metric_values(client)
        assert total(m, "bridge_jobs_registered_total") == 200
        assert total(m, "bridge_upstream_requests_total") == len(up.fake.status_requests())
        assert total(m, "bridge_upstream_requests_total", code="200") == len(
            up.fake.status_requests()
        )
        assert total(m, "bridge_callback_attempts_total") == len(rec.calls)
        assert total(m, "bridge_callback_attempts_total", result="success") == 200
        assert total(m, "bridge_deliveries_total", outcome="delivered") == 200
        assert total(m, "bridge_outcomes_total") == 200
        assert total(m, "bridge_outcomes_total", outcome="canceled") == 100
        assert total(m, "bridge_notification_latency_seconds_count") == 200
        assert total(m, "bridge_jobs", state="delivered") == 200
        requests_per_job = len(up.fake.status_requests()) / 200
        print(
            f"\n200 jobs: {len(up.fake.status_requests())} upstream requests "
            f"({requests_per_job:.1f}/job)"
        )


async def test_one_watch_serves_many_jobs_and_late_joiners(tmp_path: Path) -> None:
    async with (
        fake_upstream() as up,
        receiver() as rec,
        bridge(tmp_path, up.url, BRIDGE_POLL_INITIAL_DELAY="300ms") as client,
    ):
        token = up.fake.add_job("video", outcome="finished", duration=1.0)
        ids = [
            (await register(client, token, rec.url + f"/h/{i}", metadata={"i": i}))["id"]
            for i in range(10)
        ]
        await rec.wait_for(lambda: len(rec.calls) >= 10)
        polls = len(up.fake.status_requests(token=token))
        for j_id in ids:
            j = await wait_state(client, j_id, ("delivered",))
            assert j["upstream"]["polls"] == polls  # every poll served all ten
            assert j["outcome"] == "finished"
        assert {c.path for c in rec.calls} == {f"/h/{i}" for i in range(10)}

        # Registered after the watch ended: polled again, and called back.
        late = await register(client, token, rec.url + "/late")
        await rec.wait_for(lambda: len(rec.at("/late")) == 1)
        assert len(up.fake.status_requests(token=token)) == polls + 1
        assert (await wait_state(client, late["id"], ("delivered",)))["upstream"]["polls"] == 1


async def test_a_job_registered_while_the_deciding_poll_is_in_flight(tmp_path: Path) -> None:
    async with fake_upstream() as up, receiver() as rec, bridge(tmp_path, up.url) as client:
        token = up.fake.add_job("document", outcome="finished", duration=0.0)
        # The first poll is slow; a job that registers meanwhile was not covered by it.
        up.fake.respond_next(
            200,
            body={"status": "finished", "error": None, "result": {"uuid": "u-1"}},
            delay=0.6,
        )
        first = await register(client, token, rec.url + "/first", kind="document")
        while not up.fake.status_requests(token=token):  # the slow poll is on the wire
            await asyncio.sleep(0.01)
        second = await register(client, token, rec.url + "/second", kind="document")
        await rec.wait_for(lambda: len(rec.calls) == 2)
        one = await wait_state(client, first["id"], ("delivered",))
        await wait_state(client, second["id"], ("delivered",))
        assert one["upstream"]["polls"] == 1
        # The second job's outcome came from a poll made after it registered.
        requests = up.fake.status_requests(token=token)
        assert len(requests) == 2
        assert rec.at("/second")[0].at > requests[1].monotonic


async def test_429_stops_every_request_until_retry_after(tmp_path: Path) -> None:
    concurrency = 4
    async with (
        fake_upstream() as up,
        receiver() as rec,
        bridge(tmp_path, up.url, BRIDGE_UPSTREAM_CONCURRENCY=str(concurrency)) as client,
    ):
        tokens = [up.fake.add_job("video", duration=1.5) for _ in range(12)]
        for t in tokens:
            await register(client, t, rec.url + "/h")
        await asyncio.sleep(0.4)
        up.fake.respond_next(429, retry_after=2)
        await rec.wait_for(lambda: len(rec.calls) == 12, timeout=30)
        log = up.fake.status_requests()
        throttled = next(r for r in log if r.status == 429)
        window = [r for r in log if throttled.monotonic < r.monotonic < throttled.monotonic + 2]
        # At most the requests already in flight when the 429 came back.
        assert len(window) <= concurrency - 1, window
        m = await metric_values(client)
        assert total(m, "bridge_upstream_throttled_total") == 1
        assert total(m, "bridge_upstream_requests_total", code="429") == 1


async def test_retries_keep_one_webhook_id_with_fresh_timestamps(tmp_path: Path) -> None:
    async with (
        fake_upstream() as up,
        receiver() as rec,
        bridge(tmp_path, up.url, BRIDGE_CALLBACK_RETRY_SCHEDULE="1300ms,1300ms,1300ms") as client,
    ):
        url = rec.plan("/flaky", 503, 503, 200)
        j = await register(client, up.fake.add_job("video", duration=0.1), url)
        await rec.wait_for(lambda: len(rec.at("/flaky")) == 3, timeout=30)
        calls = rec.at("/flaky")
        assert len({c.headers["webhook-id"] for c in calls}) == 1
        stamps = [int(c.headers["webhook-timestamp"]) for c in calls]
        assert stamps[0] < stamps[1] < stamps[2]
        assert len({c.body for c in calls}) == 1  # the same bytes every time
        secret = (await secrets_of(client, H_ALPHA))[0]
        for c in calls:
            verify(secret, c)
        done = await wait_state(client, j["id"], ("delivered",))
        assert done["delivery"]["attempts"] == 3
        assert done["delivery"]["last_response_status"] == 200
        attempts = await (await client.get(f"/v1/jobs/{j['id']}/attempts", headers=H_ALPHA)).json()
        assert [(a["n"], a["response_status"]) for a in attempts["items"]] == [
            (1, 503),
            (2, 503),
            (3, 200),
        ]


async def test_410_redirects_and_retry_after(tmp_path: Path) -> None:
    # Retry-After raises the wait, and the schedule's longest delay (3 s) caps it.
    async with (
        fake_upstream() as up,
        receiver() as rec,
        bridge(tmp_path, up.url, BRIDGE_CALLBACK_RETRY_SCHEDULE="100ms,100ms,3s") as client,
    ):
        gone = await register(client, up.fake.add_job(duration=0.1), rec.plan("/gone", 410))
        moved = await register(
            client,
            up.fake.add_job(duration=0.1),
            rec.plan("/moved", *[(302, {"Location": rec.url + "/elsewhere"})] * 4),
        )
        slow = await register(
            client,
            up.fake.add_job(duration=0.1),
            rec.plan("/busy", (429, {"Retry-After": "2"}), 200),
        )
        g = await wait_state(client, gone["id"], ("undeliverable",))
        assert g["delivery"]["attempts"] == 1 and g["delivery"]["last_response_status"] == 410
        m = await wait_state(client, moved["id"], ("undeliverable",))
        assert m["delivery"]["attempts"] == 4  # the first and the schedule's three
        assert rec.at("/elsewhere") == []
        await wait_state(client, slow["id"], ("delivered",))
        busy = rec.at("/busy")
        assert busy[1].at - busy[0].at >= 2.0
        values = await metric_values(client)
        assert total(values, "bridge_deliveries_total", outcome="undeliverable") == 2
        assert total(values, "bridge_callback_attempts_total", result="http_error") >= 6


async def test_basic_credentials_from_user_info(tmp_path: Path) -> None:
    async with fake_upstream() as up, receiver() as rec, bridge(tmp_path, up.url) as client:
        url = rec.url.replace("http://", "http://hook%20user:p%40ss@") + "/auth"
        j = await register(client, up.fake.add_job(duration=0.1), url)
        await rec.wait_for(lambda: len(rec.at("/auth")) == 1)
        import base64

        expected = base64.b64encode(b"hook user:p@ss").decode()
        assert rec.at("/auth")[0].headers["Authorization"] == f"Basic {expected}"
        shown = await wait_state(client, j["id"], ("delivered",))
        assert shown["callback_url"].startswith("http://***@127.0.0.1")


async def test_cancel_while_delivering_and_redeliver(tmp_path: Path) -> None:
    async with (
        fake_upstream() as up,
        receiver() as rec,
        bridge(tmp_path, up.url, BRIDGE_CALLBACK_RETRY_SCHEDULE="1s,1s") as client,
    ):
        j = await register(client, up.fake.add_job(duration=0.1), rec.plan("/c", 500, 500))
        await rec.wait_for(lambda: len(rec.at("/c")) == 1)
        resp = await client.delete(f"/v1/jobs/{j['id']}", headers=H_ALPHA)
        canceled = await resp.json()
        assert canceled["state"] == "canceled" and canceled["outcome"] == "finished"
        await asyncio.sleep(1.5)
        assert len(rec.at("/c")) == 1  # no attempt after the DELETE
        assert (await client.post(f"/v1/jobs/{j['id']}/redeliver", headers=H_ALPHA)).status == 409

        d = await register(client, up.fake.add_job(duration=0.1), rec.url + "/d")
        first = await wait_state(client, d["id"], ("delivered",))
        assert first["delivery"]["delivered_at"] is not None
        resp = await client.post(f"/v1/jobs/{d['id']}/redeliver", headers=H_ALPHA)
        assert resp.status == 202
        again = await resp.json()
        assert again["state"] == "delivering" and again["delivery"]["delivered_at"] is None
        resp = await client.post(f"/v1/jobs/{d['id']}/redeliver", headers=H_ALPHA)
        assert resp.status in (202, 409)
        await rec.wait_for(lambda: len(rec.at("/d")) >= 2)
        after = await wait_state(client, d["id"], ("delivered",))
        calls = rec.at("/d")
        assert calls[0].body == calls[1].body
        assert calls[0].headers["webhook-id"] == calls[1].headers["webhook-id"]
        assert after["delivery"]["attempts"] == len(calls)
        assert (await client.delete(f"/v1/jobs/{d['id']}", headers=H_ALPHA)).status == 409


async def test_not_found_expired_and_transient_errors(tmp_path: Path) -> None:
    async with (
        fake_upstream() as up,
        receiver() as rec,
        bridge(tmp_path, up.url, BRIDGE_JOB_DEADLINE="2s") as client,
    ):
        unknown = await register(client, 987654321, rec.url + "/nf")
        forever = await register(client, up.fake.add_job(duration=float("inf")), rec.url + "/exp")
        up.fake.respond_next(503, times=2, kind="document")
        flaky = await register(
            client, up.fake.add_job("document", duration=0.1), rec.url + "/flaky", kind="document"
        )
        await rec.wait_for(lambda: len(rec.calls) == 3, timeout=30)
        by_path = {c.path: c.json() for c in rec.calls}
        assert by_path["/nf"]["data"]["status"] == "not_found"
        assert by_path["/nf"]["type"] == "video.conversion.not_found"
        assert by_path["/nf"]["data"]["error"] == "token not known to Uploadcare project default"
        assert len(up.fake.status_requests(token=987654321)) == 3
        assert by_path["/exp"]["data"]["status"] == "expired"
        assert by_path["/exp"]["data"]["error"]
        assert by_path["/exp"]["data"]["result"]["uuid"]  # the last result seen
        assert by_path["/flaky"]["data"]["status"] == "finished"
        for j_id in (unknown["id"], forever["id"], flaky["id"]):
            await wait_state(client, j_id, ("delivered",))
        m = await metric_values(client)
        assert total(m, "bridge_outcomes_total", outcome="expired") == 1
        assert total(m, "bridge_outcomes_total", outcome="not_found") == 1
        assert total(m, "bridge_upstream_requests_total", code="503") == 2


async def test_wrong_credentials_pause_without_failing_jobs(tmp_path: Path) -> None:
    async with fake_upstream() as up, receiver() as rec:
        tokens = [up.fake.add_job(duration=0.1) for _ in range(5)]
        async with bridge(tmp_path, up.url, UPLOADCARE_SECRET_KEY="wrong-secret") as client:
            ids = [(await register(client, t, rec.url + "/h"))["id"] for t in tokens]
            started = time.monotonic()
            while not any(r.status == 401 for r in up.fake.status_requests()):
                assert time.monotonic() - started < 10
                await asyncio.sleep(0.05)
            ready = await client.get("/readyz")
            assert ready.status == 200
            body = await ready.json()
            assert body["upstream"]["state"] == "paused"
            assert body["upstream"]["reason"] == "credentials rejected (401)"
            first_401 = next(r for r in up.fake.status_requests() if r.status == 401)
            await asyncio.sleep(1.5)
            # Backing off: after the requests already in flight, nothing for the pause.
            later = [
                r for r in up.fake.status_requests() if r.monotonic > first_401.monotonic + 0.3
            ]
            assert later == []
            for j_id in ids:
                assert (await job(client, j_id))["state"] == "tracking"
            m = await metric_values(client)
            assert total(m, "bridge_upstream_paused", reason="credentials rejected (401)") == 1
            assert "wrong-secret" not in await (await client.get("/metrics")).text()
        # Restarted with good keys on the same file: every job delivers.
        async with bridge(tmp_path, up.url) as client:
            await rec.wait_for(lambda: len(rec.calls) == 5, timeout=30)
            for j_id in ids:
                await wait_state(client, j_id, ("delivered",))


async def test_a_kind_specific_400_pauses_that_kind_only(tmp_path: Path) -> None:
    async with (
        fake_upstream(disabled_kinds=frozenset({"video"})) as up,
        receiver() as rec,
        bridge(tmp_path, up.url) as client,
    ):
        video = await register(client, up.fake.add_job("video", duration=0.1), rec.url + "/v")
        doc = await register(
            client, up.fake.add_job("document", duration=0.1), rec.url + "/d", kind="document"
        )
        await wait_state(client, doc["id"], ("delivered",))
        body = await (await client.get("/readyz")).json()
        assert body["upstream"]["state"] == "paused"
        assert body["upstream"].get("kind") == "video"
        assert (await job(client, video["id"]))["state"] == "tracking"


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_a_learned_plan_spaces_polls_and_every_end_teaches_it(tmp_path: Path) -> None:
    # History: 200 video conversions that each took about 20 s.
    store = await SQLiteStore.open(str(tmp_path / "bridge.db"))
    await store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "bridge.db")) as db, db:
        db.execute("INSERT INTO durations VALUES ('video', ?, 200.0)", (pollplan.bucket_of(20.0),))
    dense_from = pollplan.EDGES[pollplan.bucket_of(20.0)]
    env = {"BRIDGE_POLL_MIN_INTERVAL": "50ms", "BRIDGE_POLL_MAX_INTERVAL": "60s"}
    async with fake_upstream() as up, receiver() as rec, bridge(tmp_path, up.url, **env) as client:
        slow = await register(client, up.fake.add_job("video", duration=3600), rec.url)
        quick = await register(
            client, up.fake.add_job("document", duration=0.2), rec.url, kind="document"
        )
        deadline = time.monotonic() + 10
        while (polled := await job(client, slow["id"]))["upstream"]["polls"] < 1:
            assert time.monotonic() < deadline, polled
            await asyncio.sleep(0.02)
        up_view = polled["upstream"]
        gap = _epoch(up_view["next_poll_at"]) - _epoch(up_view["last_polled_at"])
        # Not the 50 ms minimum: one jump to where conversions of this kind end, aimed so
        # that with its jitter it lands no later than a minimum interval past it.
        assert dense_from * 0.8 < gap <= dense_from + 0.05, gap
        await wait_state(client, quick["id"], ("delivered",))
        samples = total(await metric_values(client), "bridge_poll_plan_samples", kind="video")
        assert samples == 200.0
        no_plan = total(await metric_values(client), "bridge_poll_plan_samples", kind="document")
        assert no_plan == 0.0
    # The document's end was learned, in the same commit as the poll that saw it.
    store = await SQLiteStore.open(str(tmp_path / "bridge.db"))
    try:
        learned = await store.durations()
    finally:
        await store.close()
    assert math.isclose(sum(w for _, w in learned["document"]), 1.0)
    assert learned["video"] == [(pollplan.bucket_of(20.0), 200.0)]
