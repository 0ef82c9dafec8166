"""The fake upstream, served on loopback and driven by the real status client."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import aiohttp
import pytest

from bridge.fake_upstream import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    FAKE,
    FakeConfig,
    RunningFake,
    add_arguments,
    config_from_args,
    create_app,
    parse_keys,
    project_keys,
    run_from_args,
    running,
    serve,
)
from bridge.upstream import (
    ACCEPT,
    NotFound,
    Rejected,
    Status,
    Throttled,
    Transient,
    UpstreamClient,
    sign,
)
from tests.conftest import UPLOADCARE_FIXTURES as FIXTURES

RECORDED = {
    r["name"]: r for r in json.loads((FIXTURES / "status_responses.json").read_text())["responses"]
}
PUBLIC = "demopublickey"
SECRET = "demosecretkey"
VIDEO_PATH = "740e1b8c-1ad8-4324-b7ec-112c79d8eac2/video/-/format/webm/-/thumbs~2/"
DOC_PATH = "740e1b8c-1ad8-4324-b7ec-112c79d8eac2/document/-/format/pdf/"


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


ServerFactory = Callable[..., Any]


@pytest.fixture
async def start_fake(manual_clock: ManualClock) -> AsyncIterator[ServerFactory]:
    stack: list[Any] = []

    async def start(**overrides: Any) -> RunningFake:
        options: dict[str, Any] = {
            "min_duration": 1.0,
            "max_duration": 2.0,
            "failed_rate": 0.0,
            "canceled_rate": 0.0,
            "seed": 7,
            "clock": manual_clock,
        }
        options.update(overrides)
        context = running(FakeConfig(**options))
        stack.append(context)
        return await context.__aenter__()

    yield start
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


@pytest.fixture
async def server(start_fake: ServerFactory) -> RunningFake:
    started: RunningFake = await start_fake()
    return started


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def client_for(
    session: aiohttp.ClientSession,
    server: RunningFake,
    *,
    auth: str = "signed",
    public_key: str = PUBLIC,
    secret_key: str = SECRET,
    reports: list[str] | None = None,
    timeout: float = 5.0,
    now: Callable[[], float] = time.time,
) -> UpstreamClient:
    def hook(code: str, _: float, __: str) -> None:
        if reports is not None:
            reports.append(code)

    return UpstreamClient(
        session,
        base_url=server.url,
        public_key=public_key,
        secret_key=secret_key,
        auth=auth,  # type: ignore[arg-type]
        timeout=timeout,
        user_agent="uploadcare-bridge/test",
        on_request=hook,
        now=now,
    )


def signed_headers(
    path: str,
    body: bytes = b"",
    method: str = "GET",
    *,
    public_key: str = PUBLIC,
    secret_key: str = SECRET,
    at: float | None = None,
) -> dict[str, str]:
    date = formatdate(at, usegmt=True)
    signature = sign(secret_key, method, body, "application/json", date, path)
    return {
        "Accept": ACCEPT,
        "Content-Type": "application/json",
        "Date": date,
        "Authorization": f"Uploadcare {public_key}:{signature}",
    }


async def convert(
    session: aiohttp.ClientSession,
    server: RunningFake,
    kind: str,
    paths: Any,
    *,
    public_key: str = PUBLIC,
    secret_key: str = SECRET,
) -> tuple[int, Any]:
    body = json.dumps({"paths": paths, "store": "1"}).encode()
    path = f"/convert/{kind}/"
    headers = signed_headers(path, body, "POST", public_key=public_key, secret_key=secret_key)
    async with session.post(server.url + path, data=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


# --- Authentication ------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["signed", "simple"])
async def test_both_auth_schemes(
    session: aiohttp.ClientSession, server: RunningFake, auth: str
) -> None:
    token = server.fake.add_job("video", duration=10)
    got = await client_for(session, server, auth=auth).status("video", token)
    assert isinstance(got, Status) and got.status == "pending"
    [record] = server.fake.requests
    assert record.auth == auth and record.status == 200


@pytest.mark.parametrize(
    ("auth", "public_key", "secret_key", "detail"),
    [
        ("signed", PUBLIC, "wrong", "Invalid signature. Please check your Secret key."),
        ("simple", PUBLIC, "wrong", "Secret key not found."),
        ("signed", "nobody", SECRET, "Public key nobody not found."),
        ("simple", "nobody", SECRET, "Public key nobody not found."),
    ],
)
async def test_wrong_keys_are_rejected(
    session: aiohttp.ClientSession,
    server: RunningFake,
    auth: str,
    public_key: str,
    secret_key: str,
    detail: str,
) -> None:
    token = server.fake.add_job("video")
    client = client_for(session, server, auth=auth, public_key=public_key, secret_key=secret_key)
    assert await client.status("video", token) == Rejected(401, detail)


async def test_echoed_secret_is_redacted(
    session: aiohttp.ClientSession, server: RunningFake
) -> None:
    # Keys swapped by mistake: the fake echoes the "public key", which is the secret.
    client = client_for(session, server, auth="simple", public_key=SECRET, secret_key=SECRET)
    got = await client.status("video", 1)
    assert got == Rejected(401, "Public key *** not found.")


@pytest.mark.parametrize(
    "headers",
    [
        {"Accept": ACCEPT},
        {"Accept": ACCEPT, "Authorization": "Bearer x"},
        {"Accept": ACCEPT, "Authorization": f"Uploadcare {PUBLIC}"},
        {"Accept": ACCEPT, "Authorization": f"Uploadcare {PUBLIC}:abc"},  # signed, no Date
    ],
)
async def test_missing_or_malformed_auth(
    session: aiohttp.ClientSession, server: RunningFake, headers: dict[str, str]
) -> None:
    token = server.fake.add_job("video")
    path = f"/convert/video/status/{token}/"
    async with session.get(server.url + path, headers=headers) as response:
        assert response.status == 401
        assert await response.json(content_type=None) == {
            "detail": "Incorrect authentication credentials."
        }


@pytest.mark.parametrize(
    "accept", [None, "application/json", "application/vnd.uploadcare-v0.6+json", "*/*"]
)
async def test_accept_header_is_checked(
    session: aiohttp.ClientSession, server: RunningFake, accept: str | None
) -> None:
    token = server.fake.add_job("video")
    path = f"/convert/video/status/{token}/"
    headers = signed_headers(path)
    if accept is None:
        del headers["Accept"]
    else:
        headers["Accept"] = accept
    async with session.get(server.url + path, headers=headers, skip_auto_headers={"Accept"}) as r:
        assert r.status == 406
        body = await r.json(content_type=None)
    assert body["detail"].startswith("Incorrect Accept header provided.")


async def test_accept_with_parameters_and_alternatives(
    session: aiohttp.ClientSession, server: RunningFake
) -> None:
    token = server.fake.add_job("document")
    path = f"/convert/document/status/{token}/"
    headers = signed_headers(path)
    headers["Accept"] = f"text/html, {ACCEPT}; q=0.9"
    async with session.get(server.url + path, headers=headers) as response:
        assert response.status == 200
        assert response.content_type == ACCEPT


# --- Jobs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "wire", "read"),
    [
        ("finished", "finished", "finished"),
        ("failed", "failed", "failed"),
        ("canceled", "canceled", "canceled"),
        ("cancelled", "cancelled", "canceled"),
    ],
)
async def test_job_progresses_to_forced_outcome(
    session: aiohttp.ClientSession,
    server: RunningFake,
    manual_clock: ManualClock,
    outcome: Any,
    wire: str,
    read: str,
) -> None:
    fake = server.fake
    token = fake.add_job("video", outcome=outcome, duration=10, pending_for=3)
    client = client_for(session, server)
    seen = []
    for step in (0, 2.9, 0.2, 6.8, 0.2, 100):
        manual_clock.advance(step)
        got = await client.status("video", token)
        assert isinstance(got, Status)
        seen.append(got.status)
    assert seen == ["pending", "pending", "processing", "processing", read, read]
    assert fake.status_of("video", token) == wire
    assert isinstance(got, Status)
    assert got.result is not None and set(got.result) == {"uuid", "thumbnails_group_uuid"}
    if outcome == "failed":
        assert got.error and got.error.endswith(".")
    else:
        assert got.error is None


async def test_status_body_shape_matches_recordings(
    session: aiohttp.ClientSession, server: RunningFake, manual_clock: ManualClock
) -> None:
    video = server.fake.add_job("video", duration=5)
    document = server.fake.add_job("document", duration=5)
    for kind, token, recorded in (
        ("video", video, "video_processing"),
        ("document", document, "document_pending"),
    ):
        path = f"/convert/{kind}/status/{token}/"
        async with session.get(server.url + path, headers=signed_headers(path)) as response:
            body = await response.json(content_type=None)
            assert response.headers["Content-Type"] == ACCEPT
        expected = json.loads(RECORDED[recorded]["body"])
        assert set(body) == set(expected)
        assert set(body["result"]) == set(expected["result"])


async def test_never_ending_job(
    session: aiohttp.ClientSession, server: RunningFake, manual_clock: ManualClock
) -> None:
    token = server.fake.add_job("document", duration=float("inf"), pending_for=0)
    manual_clock.advance(10**9)
    got = await client_for(session, server).status("document", token)
    assert isinstance(got, Status) and got.status == "processing"


async def test_unknown_token_and_wrong_kind(
    session: aiohttp.ClientSession, server: RunningFake
) -> None:
    token = server.fake.add_job("video")
    client = client_for(session, server)
    assert await client.status("video", token + 1) == NotFound()
    assert await client.status("document", token) == NotFound()
    path = "/convert/video/status/abc/"
    async with session.get(server.url + path, headers=signed_headers(path)) as response:
        assert response.status == 404
        assert await response.json(content_type=None) == {"detail": "Not found."}


async def test_converted_jobs_follow_the_odds(
    session: aiohttp.ClientSession, start_fake: ServerFactory, manual_clock: ManualClock
) -> None:
    failing = await start_fake(failed_rate=1.0)
    canceling = await start_fake(canceled_rate=1.0, cancelled_spelling=1.0)
    _, failed = await convert(session, failing, "video", [VIDEO_PATH] * 3)
    _, canceled = await convert(session, canceling, "document", [DOC_PATH] * 3)
    manual_clock.advance(2.0)  # max_duration
    for server, kind, body, wire, read in (
        (failing, "video", failed, "failed", "failed"),
        (canceling, "document", canceled, "cancelled", "canceled"),
    ):
        client = client_for(session, server)
        for entry in body["result"]:
            assert server.fake.status_of(kind, entry["token"]) == wire
            got = await client.status(kind, entry["token"])  # type: ignore[arg-type]
            assert isinstance(got, Status) and got.status == read


async def test_seed_makes_runs_reproducible(
    session: aiohttp.ClientSession, start_fake: ServerFactory
) -> None:
    answers = []
    for _ in range(2):
        server = await start_fake(seed=123, failed_rate=0.3, canceled_rate=0.3)
        status, body = await convert(session, server, "video", [VIDEO_PATH] * 5)
        assert status == 200
        jobs = [server.fake.job("video", r["token"]) for r in body["result"]]
        answers.append((body, [(j.duration, j.outcome) for j in jobs]))
    assert answers[0] == answers[1]


def test_config_is_validated() -> None:
    for bad in (
        {"min_duration": 5, "max_duration": 1},
        {"failed_rate": 1.5},
        {"failed_rate": 0.6, "canceled_rate": 0.6},
        {"throttle_rps": 0},
        {"disabled_kinds": frozenset({"audio"})},
    ):
        with pytest.raises(ValueError):
            FakeConfig(**bad)


def test_add_job_is_validated() -> None:
    fake = create_app(FakeConfig(seed=1))[FAKE]
    token = fake.add_job("video")
    for kwargs in (
        {"kind": "audio"},
        {"outcome": "exploded"},
        {"token": token},
        {"duration": 1, "pending_for": 2},
    ):
        with pytest.raises(ValueError):
            fake.add_job(**kwargs)


# --- POST /convert -------------------------------------------------------------------------


async def test_convert_video_answers_like_uploadcare(
    session: aiohttp.ClientSession, server: RunningFake
) -> None:
    status, body = await convert(session, server, "video", [VIDEO_PATH])
    assert status == 200
    recorded = json.loads(RECORDED["video_convert_created"]["body"])
    assert set(body) == set(recorded) and body["problems"] == {}
    [entry] = body["result"]
    assert set(entry) == set(recorded["result"][0])
    assert entry["original_source"] == VIDEO_PATH
    assert entry["thumbnails_group_uuid"].endswith("~2")
    got = await client_for(session, server).status("video", entry["token"])
    assert isinstance(got, Status) and got.result is not None
    assert got.result["uuid"] == entry["uuid"]
    [record] = server.fake.requests[:1]
    assert (record.method, record.path, record.kind, record.token) == (
        "POST",
        "/convert/video/",
        "video",
        None,
    )


async def test_convert_document_and_problems(
    session: aiohttp.ClientSession, server: RunningFake
) -> None:
    status, body = await convert(session, server, "document", [DOC_PATH, "not-a-uuid/x/"])
    assert status == 200
    [entry] = body["result"]
    assert set(entry) == {"original_source", "token", "uuid"}
    assert list(body["problems"]) == ["not-a-uuid/x/"]


@pytest.mark.parametrize("paths", [None, [], "x"])
async def test_convert_needs_paths(
    session: aiohttp.ClientSession, server: RunningFake, paths: Any
) -> None:
    status, body = await convert(session, server, "video", paths)
    assert status == 400 and "paths" in body["detail"]


async def test_convert_checks_auth(session: aiohttp.ClientSession, server: RunningFake) -> None:
    body = json.dumps({"paths": [VIDEO_PATH]}).encode()
    headers = signed_headers("/convert/video/", b"tampered", "POST")
    async with session.post(server.url + "/convert/video/", data=body, headers=headers) as r:
        assert r.status == 401
    assert server.fake.jobs == {}


# --- Throttling and canned answers ---------------------------------------------------------


async def test_throttling(
    session: aiohttp.ClientSession, start_fake: ServerFactory, manual_clock: ManualClock
) -> None:
    server = await start_fake(throttle_rps=0.5, throttle_burst=2)
    token = server.fake.add_job("video")
    client = client_for(session, server)
    assert isinstance(await client.status("video", token), Status)
    assert isinstance(await client.status("video", token), Status)
    assert await client.status("video", token) == Throttled(2.0)
    path = f"/convert/video/status/{token}/"
    async with session.get(server.url + path, headers=signed_headers(path)) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "2"
        assert await response.json(content_type=None) == {
            "detail": "Request was throttled. Expected available in 2 second."
        }
    manual_clock.advance(2)
    assert isinstance(await client.status("video", token), Status)
    assert [r.status for r in server.fake.requests] == [200, 200, 429, 429, 200]


async def test_throttling_can_change_live(
    session: aiohttp.ClientSession, server: RunningFake
) -> None:
    token = server.fake.add_job("video")
    client = client_for(session, server)
    server.fake.set_throttle(1.0, burst=1)
    assert isinstance(await client.status("video", token), Status)
    assert isinstance(await client.status("video", token), Throttled)
    server.fake.set_throttle(None)
    assert isinstance(await client.status("video", token), Status)


async def test_canned_answers_come_first_in_order(
    session: aiohttp.ClientSession, server: RunningFake
) -> None:
    fake = server.fake
    token = fake.add_job("video")
    fake.respond_next(429, retry_after=2)
    fake.respond_next(503, times=2)
    fake.respond_next(401)
    fake.respond_next(429)
    assert fake.queued_responses == 5
    client = client_for(session, server)
    got = [await client.status("video", token) for _ in range(6)]
    assert got[:5] == [
        Throttled(2.0),
        Transient("http 503"),
        Transient("http 503"),
        Rejected(401, "Incorrect authentication credentials."),
        Throttled(15.0),  # no Retry-After: the client's default
    ]
    assert isinstance(got[5], Status)
    assert [r.canned for r in fake.requests] == [True] * 5 + [False]
    assert fake.queued_responses == 0


async def test_canned_answers_can_target_a_kind_or_token(
    session: aiohttp.ClientSession, server: RunningFake
) -> None:
    fake = server.fake
    video, other = fake.add_job("video"), fake.add_job("video")
    document = fake.add_job("document")
    fake.respond_next(400, kind="document")
    fake.respond_next(404, token=other)
    client = client_for(session, server)
    assert isinstance(await client.status("video", video), Status)
    assert await client.status("document", document) == Rejected(
        400, "Document conversion feature is not available for this project.", "document"
    )
    assert await client.status("video", other) == NotFound()
    fake.respond_next(503)
    fake.clear_responses()
    assert isinstance(await client.status("video", other), Status)


async def test_canned_body_and_headers(session: aiohttp.ClientSession, server: RunningFake) -> None:
    server.fake.respond_next(200, body={"status": "finished", "error": None, "result": None})
    server.fake.respond_next(200, body="{broken", headers={"X-Test": "1"})
    client = client_for(session, server)
    assert await client.status("video", 1) == Status("finished", None, None)
    got = await client.status("video", 1)
    assert type(got).__name__ == "Garbage"
    with pytest.raises(ValueError):
        server.fake.respond_next(200)


async def test_reset_is_retried_by_the_client(
    session: aiohttp.ClientSession, server: RunningFake
) -> None:
    token = server.fake.add_job("video")
    server.fake.reset_next()
    reports: list[str] = []
    got = await client_for(session, server, reports=reports).status("video", token)
    assert isinstance(got, Status)
    assert reports == ["error", "200"]
    assert [r.status for r in server.fake.requests] == [None, 200]


async def test_slow_canned_answer_times_the_client_out(
    session: aiohttp.ClientSession, server: RunningFake
) -> None:
    token = server.fake.add_job("video")
    server.fake.respond_next(200, body="{}", delay=10)
    reports: list[str] = []
    client = client_for(session, server, reports=reports, timeout=0.3)
    assert await client.status("video", token) == Transient("timeout")
    assert reports == ["timeout"]
    assert isinstance(await client.status("video", token), Status)


async def test_disabled_kind(session: aiohttp.ClientSession, start_fake: ServerFactory) -> None:
    server = await start_fake(disabled_kinds=frozenset({"video"}))
    video, document = server.fake.add_job("video"), server.fake.add_job("document")
    client = client_for(session, server)
    assert await client.status("video", video) == Rejected(
        400, "Video conversion feature is not available for this project.", "video"
    )
    assert isinstance(await client.status("document", document), Status)
    server.fake.set_disabled_kinds(frozenset())
    assert isinstance(await client.status("video", video), Status)


# --- The request log -----------------------------------------------------------------------


async def test_request_log(
    session: aiohttp.ClientSession, server: RunningFake, manual_clock: ManualClock
) -> None:
    fake = server.fake
    video = fake.add_job("video")
    document = fake.add_job("document")
    client = client_for(session, server)
    await client.status("video", video)
    manual_clock.advance(5)
    fake.respond_next(429, retry_after=3)
    await client.status("document", document)
    await client_for(session, server, auth="simple").status("video", 999)
    log = fake.requests
    assert [(r.method, r.kind, r.token, r.status, r.auth, r.canned) for r in log] == [
        ("GET", "video", video, 200, "signed", False),
        ("GET", "document", document, 429, "signed", True),
        ("GET", "video", 999, 404, "simple", False),
    ]
    assert log[0].path == f"/convert/video/status/{video}/"
    assert [r.at for r in log] == [1000.0, 1005.0, 1005.0]
    assert log[0].monotonic <= log[1].monotonic <= log[2].monotonic
    assert fake.status_requests(kind="video") == [log[0], log[2]]
    assert fake.status_requests(token=document) == [log[1]]
    fake.clear_log()
    assert fake.requests == []


async def test_request_log_is_bounded(
    session: aiohttp.ClientSession, start_fake: ServerFactory
) -> None:
    server = await start_fake(request_log_limit=10)
    client = client_for(session, server)
    for token in range(1, 31):
        await client.status("video", token)
    log = server.fake.requests
    assert 10 <= len(log) <= 11
    assert log[-1].token == 30 and [r.token for r in log] == sorted(r.token or 0 for r in log)


# --- Several projects ----------------------------------------------------------------------

STAGING = "stagingpublickey"
STAGING_SECRET = "stagingsecretkey"


@pytest.fixture
async def two_projects(start_fake: ServerFactory) -> RunningFake:
    started: RunningFake = await start_fake(extra_keys={STAGING: STAGING_SECRET})
    return started


def staging_client(
    session: aiohttp.ClientSession, server: RunningFake, **options: Any
) -> UpstreamClient:
    return client_for(session, server, public_key=STAGING, secret_key=STAGING_SECRET, **options)


async def test_each_project_has_its_own_token_space(
    session: aiohttp.ClientSession, two_projects: RunningFake
) -> None:
    fake = two_projects.fake
    assert list(fake.projects) == [PUBLIC, STAGING]
    token = fake.add_job("video", outcome="finished", duration=0)
    # The same number in the other project is another conversion, with another outcome.
    assert fake.add_job("video", outcome="failed", duration=0, token=token, project=STAGING)
    only_first = fake.add_job("document", duration=0)
    only_staging = fake.add_job("document", duration=0, project=STAGING)
    production, staging = client_for(session, two_projects), staging_client(session, two_projects)

    got = await production.status("video", token)
    assert isinstance(got, Status) and got.status == "finished"
    got = await staging.status("video", token)
    assert isinstance(got, Status) and got.status == "failed" and got.error
    assert await staging.status("document", only_first) == NotFound()
    assert await production.status("document", only_staging) == NotFound()

    assert fake.jobs is fake.project().jobs is fake.projects[PUBLIC].jobs
    assert fake.job("video", token).outcome == "finished"
    assert fake.job("video", token, project=STAGING).outcome == "failed"
    assert fake.status_of("document", only_staging, project=STAGING) == "finished"
    with pytest.raises(KeyError):
        fake.status_of("document", only_staging)
    assert [(r.project, r.status) for r in fake.status_requests(token=token)] == [
        (PUBLIC, 200),
        (STAGING, 200),
    ]
    assert [r.token for r in fake.status_requests(project=STAGING)] == [token, only_first]


async def test_a_conversion_lands_in_the_project_whose_keys_asked(
    session: aiohttp.ClientSession, two_projects: RunningFake
) -> None:
    status, body = await convert(
        session, two_projects, "video", [VIDEO_PATH], public_key=STAGING, secret_key=STAGING_SECRET
    )
    assert status == 200
    token = body["result"][0]["token"]
    fake = two_projects.fake
    assert fake.jobs == {} and list(fake.project(STAGING).jobs) == [("video", token)]
    assert isinstance(await staging_client(session, two_projects).status("video", token), Status)
    assert await client_for(session, two_projects).status("video", token) == NotFound()


@pytest.mark.parametrize(
    ("auth", "public_key", "secret_key", "detail"),
    [
        ("signed", STAGING, SECRET, "Invalid signature. Please check your Secret key."),
        ("signed", PUBLIC, STAGING_SECRET, "Invalid signature. Please check your Secret key."),
        ("simple", STAGING, SECRET, "Secret key not found."),
        ("simple", PUBLIC, STAGING_SECRET, "Secret key not found."),
        ("signed", STAGING, STAGING_SECRET, None),
        ("simple", STAGING, STAGING_SECRET, None),
    ],
)
async def test_auth_is_checked_per_key_pair(
    session: aiohttp.ClientSession,
    two_projects: RunningFake,
    auth: str,
    public_key: str,
    secret_key: str,
    detail: str | None,
) -> None:
    token = two_projects.fake.add_job("video", project=public_key)
    client = client_for(
        session, two_projects, auth=auth, public_key=public_key, secret_key=secret_key
    )
    got = await client.status("video", token)
    if detail is None:
        assert isinstance(got, Status)
    else:
        assert got == Rejected(401, detail)
    [record] = two_projects.fake.requests
    assert record.project == public_key  # the project it named, checked or not


async def test_each_project_has_its_own_throttle(
    session: aiohttp.ClientSession, start_fake: ServerFactory, manual_clock: ManualClock
) -> None:
    server = await start_fake(
        extra_keys={STAGING: STAGING_SECRET}, throttle_rps=0.5, throttle_burst=1
    )
    fake = server.fake
    token = fake.add_job("video")
    staged = fake.add_job("video", project=STAGING)
    production, staging = client_for(session, server), staging_client(session, server)
    assert isinstance(await production.status("video", token), Status)
    assert await production.status("video", token) == Throttled(2.0)
    # The other project's bucket is untouched by the first one's traffic.
    assert isinstance(await staging.status("video", staged), Status)
    assert await staging.status("video", staged) == Throttled(2.0)
    # Live changes can address one project.
    fake.set_throttle(None, project=STAGING)
    assert isinstance(await staging.status("video", staged), Status)
    assert await production.status("video", token) == Throttled(2.0)
    manual_clock.advance(2)
    assert isinstance(await production.status("video", token), Status)
    assert [(r.project, r.status) for r in fake.requests] == [
        (PUBLIC, 200),
        (PUBLIC, 429),
        (STAGING, 200),
        (STAGING, 429),
        (STAGING, 200),
        (PUBLIC, 429),
        (PUBLIC, 200),
    ]


async def test_disabled_kinds_and_canned_answers_can_target_a_project(
    session: aiohttp.ClientSession, two_projects: RunningFake
) -> None:
    fake = two_projects.fake
    video = fake.add_job("video")
    staged = fake.add_job("video", project=STAGING)
    production, staging = client_for(session, two_projects), staging_client(session, two_projects)
    fake.set_disabled_kinds({"video"}, project=STAGING)
    assert isinstance(await production.status("video", video), Status)
    assert await staging.status("video", staged) == Rejected(
        400, "Video conversion feature is not available for this project.", "video"
    )
    fake.set_disabled_kinds(set())  # every project
    fake.respond_next(503, project=STAGING)
    assert isinstance(await production.status("video", video), Status)
    assert await staging.status("video", staged) == Transient("http 503")
    assert fake.queued_responses == 0
    with pytest.raises(KeyError):
        fake.respond_next(503, project="nobody")
    with pytest.raises(KeyError):
        fake.add_job("video", project="nobody")


async def test_a_public_key_of_no_project_is_refused(
    session: aiohttp.ClientSession, two_projects: RunningFake
) -> None:
    client = client_for(session, two_projects, public_key="prodpublickey2")
    assert await client.status("video", 1) == Rejected(401, "Public key prodpublickey2 not found.")
    [record] = two_projects.fake.requests
    assert record.project is None


# --- Date, request ids and the clock -------------------------------------------------------


class WallClock(ManualClock):
    def __init__(self) -> None:
        self.now = float(int(time.time()))


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


def answer_date(response: aiohttp.ClientResponse) -> float:
    return parsedate_to_datetime(response.headers["Date"]).timestamp()


async def test_every_answer_carries_date_and_a_fresh_request_id(
    session: aiohttp.ClientSession, start_fake: ServerFactory, wall: WallClock
) -> None:
    server = await start_fake(wall_clock=wall, throttle_rps=0.5, throttle_burst=2)
    fake = server.fake
    token = fake.add_job("video")
    status = f"/convert/video/status/{token}/"
    fake.respond_next(503, token=token + 1)
    requests: list[tuple[str, str, dict[str, str]]] = [
        ("GET", status, signed_headers(status, at=wall.now)),  # 200
        ("GET", "/convert/video/status/1/", signed_headers("/convert/video/status/1/")),  # 404
        ("GET", status, {"Accept": ACCEPT}),  # 401
        ("GET", status, {"Accept": "application/json"}),  # 406
        ("GET", status, signed_headers(status)),  # 429
        ("GET", f"/convert/video/status/{token + 1}/", {}),  # canned 503
        ("POST", "/convert/video/", {"Accept": ACCEPT}),  # 401
        ("GET", "/files/", {}),  # a route the fake does not serve: aiohttp's 404
    ]
    seen: list[tuple[int, str]] = []
    for method, path, headers in requests:
        wall.advance(7)
        async with session.request(method, server.url + path, headers=headers) as response:
            assert answer_date(response) == wall.now, response.headers["Date"]
            assert response.headers["Date"].endswith(" GMT")
            request_id = response.headers["X-Uploadcare-Request-Id"]
            assert uuid.UUID(request_id).version == 4
            seen.append((response.status, request_id))
    assert [code for code, _ in seen] == [200, 404, 401, 406, 429, 503, 401, 404]
    assert len({rid for _, rid in seen}) == len(seen)
    # The log carries the id of each answer (the unserved route is not logged).
    assert [(r.status, r.request_id) for r in fake.requests] == seen[:-1]


async def test_a_canned_answer_may_set_its_own_date_and_request_id(
    session: aiohttp.ClientSession, server: RunningFake
) -> None:
    headers = {"Date": "Mon, 05 Nov 2018 13:14:41 GMT", "X-Uploadcare-Request-Id": "req-1"}
    server.fake.respond_next(401, headers=headers)
    path = "/convert/video/status/1/"
    async with session.get(server.url + path, headers=signed_headers(path)) as response:
        assert {k: response.headers[k] for k in headers} == headers
    [record] = server.fake.requests
    assert record.request_id == "req-1"


@pytest.mark.parametrize(
    ("off_by", "accepted"),
    [(0, True), (899, True), (-899, True), (900, True), (-900, True), (901, False), (-901, False)],
)
async def test_a_signed_date_must_be_within_15_minutes(
    session: aiohttp.ClientSession,
    start_fake: ServerFactory,
    wall: WallClock,
    off_by: int,
    accepted: bool,
) -> None:
    server = await start_fake(wall_clock=wall)
    token = server.fake.add_job("video")
    client = client_for(session, server, now=lambda: wall.now + off_by)
    got = await client.status("video", token)
    if accepted:
        assert isinstance(got, Status)
    else:
        assert got == Rejected(401, "Date should be within 0:15:00 of our server time")
    # Simple auth carries no date to check.
    assert isinstance(
        await client_for(session, server, auth="simple").status("video", token), Status
    )


@pytest.mark.parametrize(
    "date", ["yesterday", "Mon, 99 Nov 2018 13:14:41 GMT", "Tue, 30 Apr 2024 12:30:58 GMT"]
)
async def test_a_signed_date_that_is_no_date_or_long_past_is_refused(
    session: aiohttp.ClientSession, server: RunningFake, date: str
) -> None:
    token = server.fake.add_job("video")
    path = f"/convert/video/status/{token}/"
    headers = signed_headers(path)
    headers["Date"] = date
    headers["Authorization"] = (
        f"Uploadcare {PUBLIC}:{sign(SECRET, 'GET', b'', 'application/json', date, path)}"
    )
    async with session.get(server.url + path, headers=headers) as response:
        assert response.status == 401
        detail = (await response.json(content_type=None))["detail"]
    past = date.endswith("2024 12:30:58 GMT")
    assert detail == (
        "Date should be within 0:15:00 of our server time"
        if past
        else "Incorrect authentication credentials."
    )


@pytest.mark.parametrize("offset", [1200.0, -1200.0])
async def test_the_clock_offset_makes_the_callers_clock_look_skewed(
    session: aiohttp.ClientSession, start_fake: ServerFactory, wall: WallClock, offset: float
) -> None:
    server = await start_fake(wall_clock=wall, clock_offset=offset)
    fake = server.fake
    assert fake.now() == wall.now + offset
    token = fake.add_job("video")
    client = client_for(session, server, now=wall)  # the caller's clock is the true one
    assert await client.status("video", token) == Rejected(
        401, "Date should be within 0:15:00 of our server time"
    )
    path = f"/convert/video/status/{token}/"
    async with session.get(server.url + path, headers=signed_headers(path, at=wall.now)) as r:
        assert r.status == 401
        assert answer_date(r) == wall.now + offset  # what the caller can measure skew from
    # A caller whose clock agrees with the fake's is served.
    assert isinstance(
        await client_for(session, server, now=fake.now).status("video", token), Status
    )
    fake.set_clock_offset(offset / 2)  # 10 minutes: within the rule
    assert isinstance(await client.status("video", token), Status)
    with pytest.raises(ValueError):
        fake.set_clock_offset(float("inf"))


def test_projects_and_clock_are_validated() -> None:
    for bad in (
        {"extra_keys": {PUBLIC: "other"}},
        {"extra_keys": {"": "x"}},
        {"extra_keys": {"a:b": "x"}},
        {"extra_keys": {"ok": ""}},
        {"extra_keys": {"ok": "has space"}},
        {"public_key": ""},
        {"clock_offset": float("nan")},
    ):
        with pytest.raises(ValueError) as caught:
            FakeConfig(**bad)
        assert "has space" not in str(caught.value)
    config = FakeConfig(extra_keys={"b": "sb", "a": "sa"}, clock_offset=-30)
    assert config.keys == {PUBLIC: SECRET, "b": "sb", "a": "sa"}


# --- Running it ----------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bridge fake-upstream")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_help_says_it_is_a_development_tool() -> None:
    parser = argparse.ArgumentParser(prog="bridge fake-upstream")
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "Development tool" in text and "not Uploadcare" in text
    assert "8081" in text and "127.0.0.1" in text


def test_arguments_and_defaults() -> None:
    args = parse()
    assert (args.host, args.port) == (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 8081)
    config = config_from_args(args)
    assert (config.public_key, config.secret_key) == (PUBLIC, SECRET)
    args = parse(
        "--min-duration=500ms",
        "--max-duration=2m",
        "--failed-rate=0.2",
        "--canceled-rate=0.1",
        "--cancelled-spelling=1",
        "--throttle-rps=5",
        "--disable-kind=video",
        "--seed=9",
        "--public-key=p",
        "--secret-key=s",
    )
    config = config_from_args(args)
    assert (config.min_duration, config.max_duration) == (0.5, 120.0)
    assert (config.failed_rate, config.canceled_rate, config.cancelled_spelling) == (0.2, 0.1, 1)
    assert (config.throttle_rps, config.seed) == (5.0, 9)
    assert config.disabled_kinds == frozenset({"video"})
    for bad in ("--failed-rate=2", "--min-duration=soon", "--throttle-rps=0"):
        with pytest.raises(SystemExit):
            parse(bad)


def test_run_from_args_refuses_inconsistent_bounds() -> None:
    assert run_from_args(parse("--min-duration=9", "--max-duration=1")) == 2


def test_run_from_args_reports_a_taken_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert run_from_args(parse("--host=127.0.0.1", f"--port={port}")) == 1


async def test_serve_listens_until_cancelled(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # find a free loopback port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    task = asyncio.create_task(serve("127.0.0.1", port, FakeConfig(seed=1)))
    url = f"http://127.0.0.1:{port}/convert/video/status/1/"
    status = None
    for _ in range(100):  # up to ~5 s for the listener to come up
        try:
            async with session.get(url, headers={"Accept": ACCEPT}) as response:
                status = response.status
                break
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert status == 401


def test_keys_serve_several_projects() -> None:
    config = config_from_args(parse("--keys", "pa:sa, pb:sb,pc:s:c", "--clock-offset=-20m"))
    assert (config.public_key, config.secret_key) == ("pa", "sa")
    assert config.extra_keys == {"pb": "sb", "pc": "s:c"}
    assert config.keys == {"pa": "sa", "pb": "sb", "pc": "s:c"}
    assert config.clock_offset == -1200.0
    assert config_from_args(parse("--keys=only:one")).keys == {"only": "one"}
    for given, seconds in (("1200", 1200.0), ("+90", 90.0), ("2.5", 2.5), ("-1h", -3600.0)):
        assert config_from_args(parse(f"--clock-offset={given}")).clock_offset == seconds
    assert config_from_args(parse("--clock-offset", "-90")).clock_offset == -90.0


@pytest.mark.parametrize(
    "argv",
    [
        ["--keys=pa"],
        ["--keys=pa:sa,pa:sb"],
        ["--keys=pa:sa,"],
        ["--keys=pa:topsecret value"],
        ["--clock-offset=soon"],
        ["--clock-offset=inf"],
    ],
)
def test_bad_keys_and_offsets_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)
    assert "topsecret" not in capsys.readouterr().err


def test_keys_and_a_single_key_pair_do_not_mix() -> None:
    assert run_from_args(parse("--keys=pa:sa", "--public-key=p")) == 2
    assert run_from_args(parse("--keys=pa:sa", "--secret-key=s")) == 2


def test_project_keys_for_demos() -> None:
    assert project_keys(1) == {PUBLIC: SECRET}
    assert project_keys(3) == {
        PUBLIC: SECRET,
        PUBLIC + "2": SECRET + "2",
        PUBLIC + "3": SECRET + "3",
    }
    with pytest.raises(ValueError):
        project_keys(0)
    assert parse_keys(",".join(f"{p}:{s}" for p, s in project_keys(2).items())) == project_keys(2)
