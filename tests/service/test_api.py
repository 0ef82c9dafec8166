"""The /v1 API over real HTTP on loopback, on a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.app import create_app
from bridge.settings import Settings
from tests.conftest import ALPHA, BETA, LOOPBACK_HOSTS, FakeClock

Client = TestClient[Any, Any]
JSON = {"Content-Type": "application/json"}


def alpha(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ALPHA}", **JSON, **extra}


def beta(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {BETA}", **JSON, **extra}


async def register(client: Client, body: Any, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return await client.post("/v1/jobs", data=data, headers=headers or alpha())


async def assert_problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    problem = await resp.json(content_type=None)
    assert problem["status"] == status
    assert {"type", "title", "status", "detail"} <= set(problem)
    return problem  # type: ignore[no-any-return]


# -- registration rules ----------------------------------------------------------------------

URL = "http://127.0.0.1:9/hooks/uc"


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (True, "boolean"),
        (1.0, "float"),
        ("0042", "leading zeros"),
        (-5, "negative"),
        (0, "zero"),
        (2**53, "2^53"),
        ("9" * 21, "21 digits"),
        (10**21, "21-digit number"),
        ("+5", "signed string"),
        ("-5", "negative string"),
        (" 5", "space"),
        ("5.0", "decimal string"),
        ("", "empty string"),
        (None, "null"),
        ([5], "array"),
        ({"n": 5}, "object"),
        (1e3, "exponent"),
    ],
)
async def test_refused_token_forms(client: Client, token: Any, why: str) -> None:
    resp = await register(client, {"token": token, "callback_url": URL})
    problem = await assert_problem(resp, 422)
    assert [e["field"] for e in problem["errors"]] == ["token"], why


@pytest.mark.parametrize("token", [1, "1", 426339926, "426339926", 2**53 - 1, str(2**53 - 1)])
async def test_accepted_token_forms(client: Client, token: Any) -> None:
    resp = await register(client, {"token": token, "callback_url": URL})
    assert resp.status == 201, await resp.text()
    job = await resp.json()
    assert job["token"] == int(token)
    assert isinstance(job["token"], int)


async def test_registration_answer_has_the_spec_shape(client: Client, clock: FakeClock) -> None:
    resp = await register(
        client,
        {"token": 426339926, "kind": "document", "callback_url": URL, "metadata": {"o": "A-1"}},
    )
    assert resp.status == 201
    job = await resp.json()
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["id"].startswith("job_") and len(job["id"]) == 30
    assert job["kind"] == "document"
    assert job["state"] == "tracking"
    assert job["outcome"] is None
    assert job["metadata"] == {"o": "A-1"}
    assert job["upstream"] == {
        "status": None,
        "error": None,
        "result": None,
        "polls": 0,
        "last_polled_at": None,
        "next_poll_at": "2027-01-15T08:00:01Z",  # clock start + BRIDGE_POLL_INITIAL_DELAY (1s)
    }
    assert job["delivery"] == {
        "attempts": 0,
        "last_attempt_at": None,
        "last_response_status": None,
        "last_error": None,
        "next_attempt_at": None,
        "delivered_at": None,
    }
    assert job["created_at"] == "2027-01-15T08:00:00Z"
    assert job["deadline_at"] == "2027-01-16T08:00:00Z"


async def test_kind_defaults_to_video_and_metadata_to_null(client: Client) -> None:
    job = await (await register(client, {"token": 7, "callback_url": URL})).json()
    assert job["kind"] == "video"
    assert job["metadata"] is None


async def test_metadata_past_64_bit_integers_comes_back_exactly(client: Client) -> None:
    """Answers are rendered by orjson, which refuses such integers: the fallback keeps them."""
    big = 2**70 + 1
    body = '{"token": 8, "callback_url": "' + URL + '", "metadata": {"n": ' + str(big) + "}}"
    resp = await register(client, body)
    assert resp.status == 201, await resp.text()
    text = await resp.text()
    assert f'"metadata":{{"n":{big}}}' in text
    assert json.loads(text)["metadata"] == {"n": big}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"token": 1, "callback_url": URL, "kind": "audio"}, "kind"),
        ({"token": 1, "callback_url": URL, "kind": None}, "kind"),
        ({"token": 1, "callback_url": URL, "extra": 1}, "(unknown)"),
        ({"token": 1}, "callback_url"),
        ({"callback_url": URL}, "token"),
        ({"token": 1, "callback_url": "ftp://127.0.0.1/x"}, "callback_url"),
        ({"token": 1, "callback_url": "/relative/path"}, "callback_url"),
        ({"token": 1, "callback_url": 5}, "callback_url"),
        ({"token": 1, "callback_url": "http://127.0.0.1/" + "a" * 2040}, "callback_url"),
        ({"token": 1, "callback_url": "http://127.0.0.1:99999/"}, "callback_url"),
        ({"token": 1, "callback_url": "http://10.0.0.1/hook"}, "callback_url"),
        ({"token": 1, "callback_url": "http://169.254.169.254/latest"}, "callback_url"),
        ({"token": 1, "callback_url": URL, "metadata": [1, 2]}, "metadata"),
        ({"token": 1, "callback_url": URL, "metadata": "x"}, "metadata"),
        ({"token": 1, "callback_url": URL, "metadata": {"k": "x" * 4100}}, "metadata"),
    ],
)
async def test_validation_errors_name_the_field(client: Client, body: Any, field: str) -> None:
    problem = await assert_problem(await register(client, body), 422)
    assert field in [e["field"] for e in problem["errors"]]


async def test_network_policy_message_names_no_address(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    # The harness's BRIDGE_CALLBACK_HOSTS would refuse 10.1.2.3 first (with its own
    # message): widen it to that network, so that the network policy is what refuses.
    app = create_app(
        make_settings(BRIDGE_CALLBACK_HOSTS=f"{LOOPBACK_HOSTS},10.0.0.0/8"), clock=clock
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await register(client, {"token": 1, "callback_url": "http://10.1.2.3:8080/hook"})
        problem = await assert_problem(resp, 422)
    assert problem["errors"] == [
        {"field": "callback_url", "message": "callback_url is not allowed by the network policy"}
    ]
    assert "10.1.2.3" not in json.dumps(problem)


async def test_metadata_limit_is_4_kib_of_compact_json(client: Client) -> None:
    # {"k":"…"} is 8 bytes of punctuation and key around the value.
    fits = {"k": "x" * (4096 - 8)}
    resp = await register(client, {"token": 1, "callback_url": URL, "metadata": fits})
    assert resp.status == 201
    over = {"k": "x" * (4096 - 7)}
    resp = await register(client, {"token": 2, "callback_url": URL, "metadata": over})
    await assert_problem(resp, 422)
    # Multi-byte characters count as their UTF-8 bytes.
    wide = {"k": "é" * 2045}  # 4090 bytes + 8
    resp = await register(client, {"token": 3, "callback_url": URL, "metadata": wide})
    await assert_problem(resp, 422)


@pytest.mark.parametrize(
    "body",
    ['"just a string"', "[1, 2]", "5", "null", "true"],
)
async def test_json_that_is_not_an_object_is_422(client: Client, body: str) -> None:
    await assert_problem(await register(client, body), 422)


@pytest.mark.parametrize(
    "body", ["{", "{'token': 1}", "", "NaN", '{"token": NaN}', b"\xff\xfe", '{"a": 1}x']
)
async def test_malformed_json_is_400(client: Client, body: Any) -> None:
    await assert_problem(await register(client, body), 400)


async def test_huge_number_is_a_validation_error(client: Client) -> None:
    body = '{"token": ' + "9" * 5000 + ', "callback_url": "' + URL + '"}'
    await assert_problem(await register(client, body), 422)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"],
)
async def test_wrong_content_type_is_415(client: Client, content_type: str | None) -> None:
    headers = {"Authorization": f"Bearer {ALPHA}"}
    if content_type:
        headers["Content-Type"] = content_type
    body = json.dumps({"token": 1, "callback_url": URL}).encode()
    resp = await client.post(
        "/v1/jobs", data=body, headers=headers, skip_auto_headers=["Content-Type"]
    )
    await assert_problem(resp, 415)


async def test_json_with_parameters_is_accepted(client: Client) -> None:
    resp = await register(
        client,
        {"token": 1, "callback_url": URL},
        alpha(**{"Content-Type": "application/json; charset=utf-8"}),
    )
    assert resp.status == 201


async def test_body_over_64_kib_is_413(client: Client) -> None:
    body = json.dumps({"token": 1, "callback_url": URL, "metadata": {"k": "x" * 70_000}})
    await assert_problem(await register(client, body), 413)

    # Also when streamed without a Content-Length.
    async def chunks() -> Any:
        for _ in range(70):
            yield b" " * 1024

    resp = await client.post("/v1/jobs", data=chunks(), headers=alpha())
    await assert_problem(resp, 413)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", f"Basic {ALPHA}", f"Bearer {ALPHA}x", ALPHA],
)
async def test_missing_or_wrong_bearer_is_401(client: Client, authorization: str | None) -> None:
    headers = dict(JSON)
    if authorization is not None:
        headers["Authorization"] = authorization
    resp = await client.post("/v1/jobs", data="{}", headers=headers)
    await assert_problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/v1/jobs", "/v1/signing-secrets", "/v1/jobs/job_01jdx2v9q4k8m3n6p7r5s2t0wa"):
        await assert_problem(await client.get(path, headers=headers), 401)


async def test_checks_run_in_the_spec_order(client: Client) -> None:
    big = b"{" + b" " * 70_000  # over the limit, and not JSON either
    no_auth = {"Content-Type": "text/plain"}
    # 401 before 415 before 413 before 400 before 422.
    await assert_problem(await client.post("/v1/jobs", data=big, headers=no_auth), 401)
    text = {"Authorization": f"Bearer {ALPHA}", "Content-Type": "text/plain"}
    await assert_problem(await client.post("/v1/jobs", data=big, headers=text), 415)
    await assert_problem(await client.post("/v1/jobs", data=big, headers=alpha()), 413)
    await assert_problem(await client.post("/v1/jobs", data=b"{", headers=alpha()), 400)
    await assert_problem(await client.post("/v1/jobs", data=b"[]", headers=alpha()), 422)
    # And the server keeps serving.
    assert (await client.get("/healthz")).status == 200
    resp = await register(client, {"token": 99, "callback_url": URL})
    assert resp.status == 201


# -- idempotency -----------------------------------------------------------------------------


async def test_repeat_is_200_with_same_job_and_location(client: Client) -> None:
    body = {"token": 5, "callback_url": URL, "metadata": {"a": 1, "b": [1, 2]}}
    first = await register(client, body)
    assert first.status == 201
    again = await register(
        client, {"token": "5", "callback_url": URL, "metadata": {"b": [1, 2], "a": 1}}
    )
    assert again.status == 200
    assert (await again.json())["id"] == (await first.json())["id"]
    assert again.headers["Location"] == first.headers["Location"]


@pytest.mark.parametrize("other", [{"a": 2}, {"a": 1.5}, {"a": True}, {"a": "1"}, None, {}])
async def test_repeat_with_other_metadata_is_409(client: Client, other: Any) -> None:
    assert (
        await register(client, {"token": 5, "callback_url": URL, "metadata": {"a": 1}})
    ).status == 201
    body: dict[str, Any] = {"token": 5, "callback_url": URL}
    if other is not None:
        body["metadata"] = other
    await assert_problem(await register(client, body), 409)


async def test_callback_url_is_compared_byte_for_byte(client: Client) -> None:
    assert (await register(client, {"token": 5, "callback_url": URL})).status == 201
    resp = await register(client, {"token": 5, "callback_url": URL + "?"})
    assert resp.status == 201  # another callback for the same token is another job


async def test_twenty_concurrent_identical_posts_make_one_job(client: Client) -> None:
    body = {"token": 77, "kind": "document", "callback_url": URL, "metadata": {"x": 1}}
    answers = await asyncio.gather(*(register(client, body) for _ in range(20)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * 19 + [201]
    ids = {(await a.json())["id"] for a in answers}
    assert len(ids) == 1
    listing = await (await client.get("/v1/jobs?token=77", headers=alpha())).json()
    assert len(listing["items"]) == 1
    metrics = await (await client.get("/metrics")).text()
    assert 'bridge_jobs_registered_total{kind="document"} 1.0' in metrics


async def test_a_canceled_job_does_not_block_a_new_registration(client: Client) -> None:
    body = {"token": 8, "callback_url": URL}
    first = await (await register(client, body)).json()
    assert (await client.delete(f"/v1/jobs/{first['id']}", headers=alpha())).status == 200
    again = await register(client, body)
    assert again.status == 201
    assert (await again.json())["id"] != first["id"]


# -- tenants ---------------------------------------------------------------------------------


async def test_tenants_see_only_their_own_jobs(client: Client) -> None:
    job = await (await register(client, {"token": 11, "callback_url": URL})).json()
    path = f"/v1/jobs/{job['id']}"
    await assert_problem(await client.get(path, headers=beta()), 404)
    await assert_problem(await client.delete(path, headers=beta()), 404)
    await assert_problem(await client.post(path + "/redeliver", headers=beta()), 404)
    await assert_problem(await client.get(path + "/attempts", headers=beta()), 404)
    listing = await (await client.get("/v1/jobs", headers=beta())).json()
    assert listing["items"] == []
    listing = await (await client.get("/v1/jobs?token=11", headers=beta())).json()
    assert listing["items"] == []
    # The owner still has it, untouched.
    mine = await (await client.get(path, headers=alpha())).json()
    assert mine["state"] == "tracking"


async def test_another_tenants_token_is_409(client: Client) -> None:
    assert (await register(client, {"token": 12, "callback_url": URL})).status == 201
    problem = await assert_problem(
        await register(client, {"token": 12, "callback_url": URL}, beta()), 409
    )
    assert "another tenant" in problem["detail"]
    # The same token of the other kind is another watch, free to take.
    resp = await register(client, {"token": 12, "kind": "document", "callback_url": URL}, beta())
    assert resp.status == 201


async def test_unknown_and_malformed_ids_are_404(client: Client) -> None:
    for job_id in ("job_01jdx2v9q4k8m3n6p7r5s2t0wa", "nope", "job_" + "Z" * 26):
        await assert_problem(await client.get(f"/v1/jobs/{job_id}", headers=alpha()), 404)


# -- cancel and redeliver --------------------------------------------------------------------


async def test_delete_cancels_and_is_idempotent(client: Client) -> None:
    job = await (await register(client, {"token": 13, "callback_url": URL})).json()
    path = f"/v1/jobs/{job['id']}"
    first = await client.delete(path, headers=alpha())
    assert first.status == 200
    canceled = await first.json()
    assert canceled["state"] == "canceled"
    assert canceled["outcome"] is None
    assert canceled["upstream"]["next_poll_at"] is None
    again = await client.delete(path, headers=alpha())
    assert again.status == 200
    assert (await again.json())["state"] == "canceled"


async def test_redeliver_of_a_tracking_or_canceled_job_is_409(client: Client) -> None:
    job = await (await register(client, {"token": 14, "callback_url": URL})).json()
    path = f"/v1/jobs/{job['id']}/redeliver"
    await assert_problem(await client.post(path, headers=alpha()), 409)
    await client.delete(f"/v1/jobs/{job['id']}", headers=alpha())
    await assert_problem(await client.post(path, headers=alpha()), 409)


async def test_attempts_of_a_new_job_are_empty(client: Client) -> None:
    job = await (await register(client, {"token": 15, "callback_url": URL})).json()
    resp = await client.get(f"/v1/jobs/{job['id']}/attempts", headers=alpha())
    assert await resp.json() == {"items": []}


# -- listing ---------------------------------------------------------------------------------


async def test_list_filters(client: Client) -> None:
    for token, kind in ((21, "video"), (22, "document"), (23, "video")):
        await register(client, {"token": token, "kind": kind, "callback_url": URL})
    canceled = await (await register(client, {"token": 24, "callback_url": URL})).json()
    await client.delete(f"/v1/jobs/{canceled['id']}", headers=alpha())

    async def tokens(query: str) -> list[int]:
        resp = await client.get(f"/v1/jobs{query}", headers=alpha())
        assert resp.status == 200
        return [j["token"] for j in (await resp.json())["items"]]

    assert await tokens("") == [24, 23, 22, 21]  # newest first
    assert await tokens("?kind=video") == [24, 23, 21]
    assert await tokens("?kind=document") == [22]
    assert await tokens("?state=canceled") == [24]
    assert await tokens("?state=tracking&kind=video") == [23, 21]
    assert await tokens("?token=22") == [22]
    assert await tokens("?state=delivered") == []


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "state=done",
        "kind=audio",
        "token=0042",
        "token=abc",
        "cursor=garbage!",
        "cursor=djE6eA",  # "v1:x"
        "colour=red",
        "limit=5&limit=6",
    ],
)
async def test_bad_filters_are_422(client: Client, query: str) -> None:
    await assert_problem(await client.get(f"/v1/jobs?{query}", headers=alpha()), 422)


async def test_limit_bounds_are_accepted(client: Client) -> None:
    for limit in (1, 500):
        resp = await client.get(f"/v1/jobs?limit={limit}", headers=alpha())
        assert resp.status == 200


async def test_cursor_walks_every_job_once_while_jobs_are_added(client: Client) -> None:
    existing = set()
    for token in range(100, 157):
        job = await (await register(client, {"token": token, "callback_url": URL})).json()
        existing.add(job["id"])
    seen: list[str] = []
    cursor = None
    added = 0
    while True:
        query = "?limit=10" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(f"/v1/jobs{query}", headers=alpha())).json()
        seen += [j["id"] for j in page["items"]]
        # New registrations between pages must neither repeat nor hide older jobs.
        await register(client, {"token": 1000 + added, "callback_url": URL})
        added += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Exactly the jobs that existed when the walk began, each once; later ones sort before it.
    assert len(seen) == len(set(seen)) == len(existing)
    assert set(seen) == existing


async def test_a_cursor_is_opaque_and_bound_to_its_tenant(client: Client) -> None:
    for token in (300, 301, 302):
        await register(client, {"token": token, "callback_url": URL})
    for token in (400, 401, 402):
        await register(client, {"token": token, "callback_url": URL}, headers=beta())
    page = await (await client.get("/v1/jobs?limit=1", headers=alpha())).json()
    cursor = page["next_cursor"]
    again = await (await client.get("/v1/jobs?limit=1", headers=alpha())).json()
    # Sealed afresh each time: the same position never gives the same text.
    assert cursor != again["next_cursor"]
    ok = await client.get(f"/v1/jobs?limit=1&cursor={cursor}", headers=alpha())
    assert [j["token"] for j in (await ok.json())["items"]] == [301]
    # Another tenant's use of it, a tampered one, garbage: 422, echoing nothing.
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    for who, text in ((beta(), cursor), (alpha(), flipped), (alpha(), cursor[:-1])):
        problem = await assert_problem(
            await client.get(f"/v1/jobs?cursor={text}", headers=who), 422
        )
        assert problem["errors"] == [
            {"field": "cursor", "message": "cursor is not one this server gave out"}
        ]
        assert text not in json.dumps(problem)


# -- operational routes ----------------------------------------------------------------------


async def test_healthz_readyz_signing_secrets(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {
        "status": "ready",
        "upstream": {"state": "ok", "projects": {"default": {"state": "ok"}}},
    }
    secrets = await (await client.get("/v1/signing-secrets", headers=alpha())).json()
    assert len(secrets["secrets"]) == 1 and secrets["secrets"][0].startswith("whsec_")
    other = await (await client.get("/v1/signing-secrets", headers=beta())).json()
    assert other["secrets"] != secrets["secrets"]


async def test_unknown_route_and_method_are_problems(client: Client) -> None:
    await assert_problem(await client.get("/v1/nothing", headers=alpha()), 404)
    resp = await client.put("/v1/jobs", headers=alpha())
    await assert_problem(resp, 405)
    assert "POST" in resp.headers["Allow"]


async def test_request_id_is_echoed_or_made(client: Client) -> None:
    resp = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    resp = await client.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert resp.headers["X-Request-Id"] != "bad id\twith spaces"
    assert len(resp.headers["X-Request-Id"]) == 32


async def test_user_info_is_shown_as_stars(client: Client) -> None:
    url = "http://user:hunter2@127.0.0.1:9/hook"
    resp = await register(client, {"token": 31, "callback_url": url})
    assert resp.status == 201
    text = await resp.text()
    assert "hunter2" not in text and "user:" not in text
    assert (await resp.json())["callback_url"] == "http://***@127.0.0.1:9/hook"
    # Idempotency still compares the real URL.
    assert (await register(client, {"token": 31, "callback_url": url})).status == 200


async def test_metadata_sameness_compares_json_values(client: Client) -> None:
    first = await register(client, {"token": 41, "callback_url": URL, "metadata": {"n": 1}})
    assert first.status == 201
    again = await register(
        client, '{"token": 41, "callback_url": "' + URL + '", "metadata": {"n": 1.0}}'
    )
    assert again.status == 200, await again.text()
    assert (await again.json())["id"] == (await first.json())["id"]
    again = await register(
        client, '{"token": 41, "callback_url": "' + URL + '", "metadata": {"n": 1e0}}'
    )
    assert again.status == 200
    await assert_problem(
        await register(client, {"token": 41, "callback_url": URL, "metadata": {"n": True}}), 409
    )
