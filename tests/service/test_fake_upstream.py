"""The fake upstream, served on loopback and driven by the real status client."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
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
    )


def signed_headers(path: str, body: bytes = b"", method: str = "GET") -> dict[str, str]:
    date = formatdate(usegmt=True)
    signature = sign(SECRET, method, body, "application/json", date, path)
    return {
        "Accept": ACCEPT,
        "Content-Type": "application/json",
        "Date": date,
        "Authorization": f"Uploadcare {PUBLIC}:{signature}",
    }


async def convert(
    session: aiohttp.ClientSession, server: RunningFake, kind: str, paths: Any
) -> tuple[int, Any]:
    body = json.dumps({"paths": paths, "store": "1"}).encode()
    path = f"/convert/{kind}/"
    async with session.post(
        server.url + path, data=body, headers=signed_headers(path, body, "POST")
    ) as response:
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
