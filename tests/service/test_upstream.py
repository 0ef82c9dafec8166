"""The Uploadcare status client against small scripted servers on loopback."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import platform
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from bridge import __version__
from bridge.upstream import (
    ACCEPT,
    DEFAULT_RETRY_AFTER,
    MAX_BODY_BYTES,
    Garbage,
    NotFound,
    Observation,
    Rejected,
    Status,
    Throttled,
    Transient,
    UpstreamClient,
    parse_date,
    parse_retry_after,
    parse_status_body,
    request_id_of,
    sign,
    user_agent_for,
)
from tests.conftest import UPLOADCARE_FIXTURES as FIXTURES

VECTORS = json.loads((FIXTURES / "signature_vectors.json").read_text())["vectors"]
RECORDED = json.loads((FIXTURES / "status_responses.json").read_text())
STATUS_200 = [
    r for r in RECORDED["responses"] if r["request"].startswith("GET ") and r["status_code"] == 200
]
PUBLIC = "pub-key-123"
SECRET = "sec-key-SHOULD-NEVER-LEAK"
NOW = 1_800_000_000.0  # the client's wall clock in these tests


# --- A scripted upstream ------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    action: Literal["answer", "reset", "slow", "stall_body"] = "answer"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class Script:
    """Answers requests in order from a list; the last answer repeats."""

    def __init__(self, answers: tuple[Answer, ...]) -> None:
        self.answers = list(answers)
        self.seen: list[Seen] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path_qs, dict(request.headers)))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer.action == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=204)
        if answer.action == "slow":
            await asyncio.sleep(30)
        if answer.action == "stall_body":
            response = web.StreamResponse(status=200)
            response.content_length = 1000
            await response.prepare(request)
            await response.write(b'{"status": ')
            await asyncio.sleep(30)
        # Uploadcare's clock agrees with the client's (NOW) unless an answer says otherwise.
        headers = {"Date": formatdate(NOW, usegmt=True), **answer.headers}
        return web.Response(status=answer.status, body=answer.body, headers=headers)


def json_answer(status: int, payload: Any, **headers: str) -> Answer:
    return Answer(status, json.dumps(payload).encode(), {"Content-Type": ACCEPT, **headers})


StartScript = Callable[..., Awaitable[Script]]


@pytest.fixture
async def scripted() -> AsyncIterator[StartScript]:
    runners: list[web.AppRunner] = []

    async def start(*answers: Answer) -> Script:
        script = Script(answers)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", script.handle)
        # Cancel handlers of clients that left, and do not wait long for them at teardown.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        script.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return script

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class Harness:
    session: aiohttp.ClientSession
    reports: list[tuple[str, float]] = field(default_factory=list)
    projects: list[str] = field(default_factory=list)  # the project of each report

    def _report(self, code: str, seconds: float, project: str) -> None:
        self.reports.append((code, seconds))
        self.projects.append(project)

    def client(self, url: str, **overrides: Any) -> UpstreamClient:
        options: dict[str, Any] = {
            "base_url": url,
            "public_key": PUBLIC,
            "secret_key": SECRET,
            "auth": "signed",
            "timeout": 5.0,
            "on_request": self._report,
            "now": lambda: NOW,
        }
        options.update(overrides)
        return UpstreamClient(self.session, **options)

    @property
    def codes(self) -> list[str]:
        return [code for code, _ in self.reports]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with aiohttp.ClientSession() as session:
        yield Harness(session)


async def observe(
    harness: Harness, scripted: StartScript, *answers: Answer, **overrides: Any
) -> Observation:
    script = await scripted(*answers)
    return await harness.client(script.url, **overrides).status("video", 42)


# --- Signing -------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["uri"])
def test_signature_vectors(vector: dict[str, str]) -> None:
    got = sign(
        vector["secret_key"],
        vector["method"],
        vector["body"].encode(),
        vector["content_type"],
        vector["date"],
        vector["uri"],
    )
    assert got == vector["signature"]


def test_signature_covers_body_and_lowercase_method() -> None:
    args = ("k", "GET", b"", "application/json", "Mon, 05 Nov 2018 13:14:41 GMT", "/x/")
    assert sign(*args) == sign("k", "get", *args[2:])
    assert sign(*args) != sign("k", "GET", b"{}", *args[3:])


# --- 200 bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("recorded", STATUS_200, ids=lambda r: r["name"])
async def test_recorded_status_bodies(
    harness: Harness, scripted: StartScript, recorded: dict[str, Any]
) -> None:
    answer = Answer(200, recorded["body"].encode(), recorded["headers"])
    expected = json.loads(recorded["body"])
    got = await observe(harness, scripted, answer)
    assert got == Status(expected["status"], expected["error"], expected["result"])
    assert harness.codes == ["200"]


@pytest.mark.parametrize(
    ("wire", "read"),
    [
        ("cancelled", "canceled"),
        ("canceled", "canceled"),
        ("failed", "failed"),
        ("finished", "finished"),
    ],
)
async def test_status_values(harness: Harness, scripted: StartScript, wire: str, read: str) -> None:
    error = "boom" if wire == "failed" else None
    body = {"result": None, "extra": [1], "status": wire, "error": error}
    got = await observe(harness, scripted, json_answer(200, body))
    assert got == Status(read, error, None)  # type: ignore[arg-type]
    assert isinstance(got, Status) and got.is_terminal


@pytest.mark.parametrize("wire", ["queued", "done", "FINISHED", "pre-processing", "step_2"])
async def test_a_status_this_contract_does_not_know_is_kept_not_garbage(
    harness: Harness, scripted: StartScript, wire: str
) -> None:
    # Uploadcare may add statuses (a future "queued"): the watch keeps tracking and shows
    # it as given; only a terminal status this contract knows ends a job.
    body = {"status": wire, "error": None, "result": {"uuid": "u-1"}}
    got = await observe(harness, scripted, json_answer(200, body))
    assert got == Status(wire, None, {"uuid": "u-1"})
    assert isinstance(got, Status) and not got.is_terminal and not got.known


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"<html>502 Bad Gateway</html>",
        b"\xff\xfe\x00",
        b"[]",
        b"null",
        b'"finished"',
        b"{}",
        b'{"status": null}',
        b'{"status": ""}',
        b'{"status": "in progress"}',
        b'{"status": "queued\\n"}',
        b'{"status": "%s"}' % (b"q" * 33),
        b'{"status": 3}',
        b'{"status": "finished", "error": 5, "result": null}',
        b'{"status": "finished", "error": null, "result": "uuid"}',
        b"[" * 100_000,
    ],
    ids=repr,
)
async def test_garbage_bodies(harness: Harness, scripted: StartScript, body: bytes) -> None:
    got = await observe(harness, scripted, Answer(200, body, {"Content-Type": ACCEPT}))
    assert isinstance(got, Garbage)
    assert harness.codes == ["200"]


async def test_oversized_body_is_garbage(harness: Harness, scripted: StartScript) -> None:
    padding = "x" * MAX_BODY_BYTES
    body = json.dumps({"status": "finished", "error": None, "result": {"pad": padding}})
    got = await observe(harness, scripted, Answer(200, body.encode()))
    assert isinstance(got, Garbage) and "bytes" in got.reason


def test_parse_status_body_missing_error_and_result() -> None:
    assert parse_status_body(b'{"status": "pending"}') == Status("pending", None, None)


# --- Other statuses ------------------------------------------------------------------------


async def test_not_found(harness: Harness, scripted: StartScript) -> None:
    got = await observe(harness, scripted, json_answer(404, {"detail": "Not found."}))
    assert got == NotFound()


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("2.5", 2.5),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW - 30, usegmt=True), 0.0),
        (None, DEFAULT_RETRY_AFTER),
        ("soon", DEFAULT_RETRY_AFTER),
        ("-5", DEFAULT_RETRY_AFTER),
        ("inf", DEFAULT_RETRY_AFTER),
        ("", DEFAULT_RETRY_AFTER),
    ],
)
async def test_throttled(
    harness: Harness, scripted: StartScript, retry_after: str | None, expected: float
) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    body = {"detail": "Request was throttled. Expected available in 7 second."}
    script = await scripted(json_answer(429, body, **headers))
    got = await harness.client(script.url).status("document", 7)
    assert got == Throttled(expected)
    assert len(script.seen) == 1  # a 429 is never retried within the request


def test_retry_after_http_date_against_real_time() -> None:
    later = formatdate(time.time() + 60, usegmt=True)
    assert 50 < parse_retry_after(later, time.time()) <= 60


@pytest.mark.parametrize(
    ("code", "detail", "kind"),
    [
        (400, "Video conversion feature is not available for this project.", "video"),
        (400, "Document conversion feature is not available for this project.", "document"),
        (
            400,
            "Simple authentication over HTTP is forbidden. "
            "Please, use HTTPS or signed requests instead.",
            None,
        ),
        (401, "Incorrect authentication credentials.", None),
        (401, "Invalid signature. Please check your Secret key.", None),
        (401, "Public key pub-key-123 not found.", None),
        (403, "You do not have permission to perform this action.", None),
        (
            406,
            "Incorrect Accept header provided. Make sure to specify API version. "
            "Refer to REST API docs for details.",
            None,
        ),
    ],
)
async def test_rejected(
    harness: Harness, scripted: StartScript, code: int, detail: str, kind: str | None
) -> None:
    script = await scripted(json_answer(code, {"detail": detail}))
    got = await harness.client(script.url).status("video", 1)
    assert got == Rejected(code, detail, kind)  # type: ignore[arg-type]
    assert len(script.seen) == 1


async def test_rejected_detail_never_holds_the_secret(
    harness: Harness, scripted: StartScript
) -> None:
    # Simple auth with the keys swapped makes Uploadcare echo the secret as a public key.
    echo = json_answer(401, {"detail": f"Public key {SECRET} not found."})
    got = await observe(harness, scripted, echo, auth="simple")
    assert isinstance(got, Rejected)
    assert SECRET not in got.detail and SECRET not in repr(got)
    assert got.detail == "Public key *** not found."


async def test_rejected_detail_is_short_and_single_line(
    harness: Harness, scripted: StartScript
) -> None:
    text = "line one\nline two " + "y" * 1000 + SECRET
    got = await observe(harness, scripted, Answer(403, text.encode(), {"Content-Type": "text/x"}))
    assert isinstance(got, Rejected)
    assert len(got.detail) <= 200 and "\n" not in got.detail and got.detail.startswith("line one")


@pytest.mark.parametrize("code", [500, 502, 503, 504])
async def test_server_errors_are_transient_and_not_retried(
    harness: Harness, scripted: StartScript, code: int
) -> None:
    answer = Answer(code, b"Conversion service error.", {"Content-Type": "text/plain"})
    script = await scripted(answer)
    got = await harness.client(script.url).status("video", 1)
    assert got == Transient(f"http {code}")
    assert len(script.seen) == 1
    assert harness.codes == [str(code)]


@pytest.mark.parametrize("code", [201, 204, 302, 409, 418])
async def test_unexpected_statuses_are_transient(
    harness: Harness, scripted: StartScript, code: int
) -> None:
    headers = {"Location": "http://127.0.0.1:9/elsewhere"} if code == 302 else {}
    script = await scripted(Answer(code, b"", headers))
    got = await harness.client(script.url).status("video", 1)
    assert got == Transient(f"http {code}")
    assert len(script.seen) == 1  # redirects are not followed


# --- Connection trouble --------------------------------------------------------------------


async def test_reset_once_then_answer(harness: Harness, scripted: StartScript) -> None:
    ok = json_answer(200, {"status": "processing", "error": None, "result": None})
    script = await scripted(Answer(action="reset"), ok)
    got = await harness.client(script.url).status("video", 5)
    assert got == Status("processing", None, None)
    assert len(script.seen) == 2
    assert harness.codes == ["error", "200"]


async def test_reset_every_time_gives_up_after_two_retries(
    harness: Harness, scripted: StartScript
) -> None:
    script = await scripted(Answer(action="reset"))
    got = await harness.client(script.url).status("video", 5)
    assert got == Transient("connection error: ServerDisconnectedError")
    assert len(script.seen) == 3
    assert harness.codes == ["error", "error", "error"]


async def test_a_retry_the_gate_withholds_is_not_sent(
    harness: Harness, scripted: StartScript
) -> None:
    # A pause began while the first try was failing: the retry stays home, and the call
    # reports the failure that led to it (the scheduler tries again after the pause).
    asked: list[str] = []

    async def paused(kind: str) -> bool:
        asked.append(kind)
        return False

    script = await scripted(Answer(action="reset"))
    got = await harness.client(script.url, before_retry=paused).status("document", 5)
    assert got == Transient("connection error: ServerDisconnectedError")
    assert len(script.seen) == 1 and harness.codes == ["error"]
    assert asked == ["document"]


async def test_connection_refused(harness: Harness) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    got = await harness.client(f"http://127.0.0.1:{port}").status("video", 5)
    assert isinstance(got, Transient) and got.reason.startswith("connection error: ")
    assert harness.codes == ["error", "error", "error"]


async def test_slow_server_times_out(harness: Harness, scripted: StartScript) -> None:
    script = await scripted(Answer(action="slow"))
    started = time.monotonic()
    got = await harness.client(script.url, timeout=0.3).status("video", 5)
    assert got == Transient("timeout")
    assert harness.codes == ["timeout"]
    assert time.monotonic() - started < 5  # generous: bounded by the timeout, not the server


async def test_stalled_body_times_out(harness: Harness, scripted: StartScript) -> None:
    script = await scripted(Answer(action="stall_body"))
    got = await harness.client(script.url, timeout=0.3).status("video", 5)
    assert got == Transient("timeout")
    assert harness.codes == ["timeout"]


async def test_timeout_bounds_the_retries_too(harness: Harness, scripted: StartScript) -> None:
    script = await scripted(Answer(action="reset"), Answer(action="slow"))
    started = time.monotonic()
    got = await harness.client(script.url, timeout=0.5).status("video", 5)
    assert got == Transient("timeout")
    assert harness.codes == ["error", "timeout"]
    assert time.monotonic() - started < 5


async def test_failing_hook_does_not_break_polling(harness: Harness, scripted: StartScript) -> None:
    def hook(code: str, seconds: float, project: str) -> None:
        raise RuntimeError("metrics down")

    got = await observe(harness, scripted, json_answer(404, {}), on_request=hook)
    assert got == NotFound()


async def test_durations_are_reported(harness: Harness, scripted: StartScript) -> None:
    await observe(harness, scripted, json_answer(404, {}))
    [(code, seconds)] = harness.reports
    assert code == "404" and 0 <= seconds < 5


# --- What goes on the wire -----------------------------------------------------------------


async def test_signed_request_headers(harness: Harness, scripted: StartScript) -> None:
    script = await scripted(json_answer(404, {}))
    await harness.client(script.url + "/", user_agent="ua/1").status("document", 123)
    [seen] = script.seen
    assert seen.method == "GET" and seen.path == "/convert/document/status/123/"
    headers = seen.headers
    assert headers["Accept"] == ACCEPT
    assert headers["User-Agent"] == "ua/1"
    assert headers["Content-Type"] == "application/json"
    assert headers["Date"] == formatdate(NOW, usegmt=True)
    expected = sign(SECRET, "GET", b"", "application/json", headers["Date"], seen.path)
    assert headers["Authorization"] == f"Uploadcare {PUBLIC}:{expected}"


async def test_simple_request_headers(harness: Harness, scripted: StartScript) -> None:
    script = await scripted(json_answer(404, {}))
    await harness.client(script.url, auth="simple").status("video", 9)
    [seen] = script.seen
    assert seen.headers["Authorization"] == f"Uploadcare.Simple {PUBLIC}:{SECRET}"
    assert seen.headers["Accept"] == ACCEPT


async def test_base_url_with_a_path_prefix_is_signed_with_it(
    harness: Harness, scripted: StartScript
) -> None:
    script = await scripted(json_answer(404, {}))
    await harness.client(script.url + "/api").status("video", 9)
    [seen] = script.seen
    assert seen.path == "/api/convert/video/status/9/"
    signature = sign(SECRET, "GET", b"", "application/json", seen.headers["Date"], seen.path)
    assert seen.headers["Authorization"].endswith(f":{signature}")


async def test_repr_of_a_real_client_hides_the_secret(harness: Harness) -> None:
    client = harness.client("http://127.0.0.1:1", auth="simple")
    assert SECRET not in repr(client) and SECRET not in str(client)


@pytest.mark.parametrize(("kind", "token"), [("audio", 1), ("video", 0), ("video", True)])
async def test_bad_arguments(harness: Harness, kind: Any, token: Any) -> None:
    with pytest.raises(ValueError):
        await harness.client("http://127.0.0.1:1").status(kind, token)
    assert harness.reports == []


# --- User-Agent, project ----------------------------------------------------------------------


async def test_user_agent_is_the_uploadcare_clients_convention(
    harness: Harness, scripted: StartScript
) -> None:
    """uploadcare-bridge/<version>/<public key> (Python/<x.y.z>), on both auth schemes."""
    script = await scripted(json_answer(404, {}))
    await harness.client(script.url).status("video", 1)
    await harness.client(script.url, auth="simple").status("video", 1)
    expected = f"uploadcare-bridge/{__version__}/{PUBLIC} (Python/{platform.python_version()})"
    assert [seen.headers["User-Agent"] for seen in script.seen] == [expected, expected]
    assert user_agent_for(PUBLIC) == expected
    assert platform.python_version().count(".") == 2  # x.y.z


async def test_the_hook_is_told_the_project(harness: Harness, scripted: StartScript) -> None:
    script = await scripted(json_answer(404, {}))
    await harness.client(script.url).status("video", 1)
    await harness.client(script.url, project="staging").status("video", 1)
    assert harness.projects == ["default", "staging"]
    assert "staging" in repr(harness.client(script.url, project="staging"))


# --- Clock skew: Uploadcare's Date against this host's clock ---------------------------------


def dated(answer: Answer, offset: float) -> Answer:
    """``answer`` stamped by an Uploadcare whose clock is ``offset`` s ahead of NOW."""
    return Answer(
        answer.status,
        answer.body,
        {**answer.headers, "Date": formatdate(NOW + offset, usegmt=True)},
    )


async def test_clock_skew_is_read_from_every_answer(
    harness: Harness, scripted: StartScript
) -> None:
    seen: list[tuple[str, float]] = []
    script = await scripted(
        dated(json_answer(200, {"status": "pending", "error": None, "result": None}), 600),
        dated(json_answer(404, {}), -42),
        dated(json_answer(503, {}), 7),
    )
    client = harness.client(
        script.url, project="shop", on_clock_skew=lambda p, s: seen.append((p, s))
    )
    assert client.clock_skew is None
    await client.status("video", 1)
    assert client.clock_skew == 600.0
    await client.status("video", 1)
    await client.status("video", 1)
    assert seen == [("shop", 600.0), ("shop", -42.0), ("shop", 7.0)]
    assert client.clock_skew == 7.0


async def test_clock_skew_is_measured_from_the_middle_of_the_flight(
    harness: Harness, scripted: StartScript
) -> None:
    """The request left at NOW+10 and its answer was in at NOW+20: Uploadcare stamped it
    at about NOW+15 by this host's clock, so a Date of NOW+615 is 600 s of skew."""
    ticks = itertools.count(NOW, 10.0)  # the Date header's, then sent, then received
    script = await scripted(dated(json_answer(404, {}), 615))
    client = harness.client(script.url, now=lambda: next(ticks))
    await client.status("video", 1)
    assert script.seen[0].headers["Date"] == formatdate(NOW, usegmt=True)
    assert client.clock_skew == 600.0


async def test_an_answer_without_a_readable_date_leaves_the_skew_alone(
    harness: Harness, scripted: StartScript
) -> None:
    script = await scripted(
        dated(json_answer(404, {}), 120),
        json_answer(404, {}, Date="yesterday-ish"),
        json_answer(404, {}, Date="Mon, 05 Nov 2018 13:14:41"),  # no zone: not a Date
    )
    client = harness.client(script.url)
    for _ in range(3):
        await client.status("video", 1)
    assert client.clock_skew == 120.0


async def test_a_401_carries_the_skew_of_a_signed_request(
    harness: Harness, scripted: StartScript
) -> None:
    """Uploadcare refuses a signed request whose Date is far off its clock: the rejection
    says how far, for the decision to call it clock skew rather than bad keys."""
    refused = json_answer(401, {"detail": "Invalid signature. Please check your Secret key."})
    got = await observe(harness, scripted, dated(refused, 600))
    assert isinstance(got, Rejected) and got.code == 401
    assert got.skew == 600.0
    behind = await observe(harness, scripted, dated(refused, -900))
    assert isinstance(behind, Rejected) and behind.skew == -900.0


async def test_a_rejection_without_a_date_carries_the_last_skew(
    harness: Harness, scripted: StartScript
) -> None:
    refused = json_answer(401, {"detail": "Incorrect authentication credentials."})
    script = await scripted(dated(json_answer(404, {}), -700), refused)
    client = harness.client(script.url)
    await client.status("video", 1)
    # The scripted server stamps every answer; an Uploadcare that did not is this header
    # left unreadable.
    script.answers = [Answer(401, refused.body, {**refused.headers, "Date": "?"})]
    got = await client.status("video", 1)
    assert isinstance(got, Rejected) and got.skew == -700.0


async def test_simple_auth_rejections_carry_no_skew(
    harness: Harness, scripted: StartScript
) -> None:
    """No Date is signed with simple auth, so no skew can be why it was refused."""
    refused = json_answer(401, {"detail": "Incorrect authentication credentials."})
    script = await scripted(dated(refused, 600))
    client = harness.client(script.url, auth="simple")
    got = await client.status("video", 1)
    assert isinstance(got, Rejected) and got.skew is None
    assert client.clock_skew == 600.0  # still measured and reported


async def test_skew_past_a_minute_warns_once_per_crossing(
    harness: Harness, scripted: StartScript
) -> None:
    script = await scripted(
        dated(json_answer(404, {}), 30),
        dated(json_answer(404, {}), 61),
        dated(json_answer(404, {}), 75),
        dated(json_answer(404, {}), -90),  # still past a minute: the same episode
        dated(json_answer(404, {}), 55),  # within the hysteresis: not resolved yet
        dated(json_answer(404, {}), 2),
        dated(json_answer(404, {}), -61),
    )
    client = harness.client(script.url, project="shop")
    with capture_logs() as logs:
        for _ in range(7):
            await client.status("video", 1)
    events = [(e["event"], e.get("skew_s")) for e in logs if "clock_skew" in e["event"]]
    assert events == [
        ("upstream_clock_skew", 61.0),
        ("upstream_clock_skew_resolved", 2.0),
        ("upstream_clock_skew", -61.0),
    ]
    warning = next(e for e in logs if e["event"] == "upstream_clock_skew")
    assert warning["log_level"] == "warning" and warning["project"] == "shop"
    assert "NTP" in warning["message"] and "61 s behind Uploadcare" in warning["message"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Mon, 05 Nov 2018 13:14:41 GMT", 1541423681.0),
        ("Mon, 05 Nov 2018 13:14:41 +0000", 1541423681.0),
        ("Mon, 05 Nov 2018 13:14:41", None),
        ("", None),
        ("tomorrow", None),
        (None, None),
    ],
)
def test_parse_date(value: str | None, expected: float | None) -> None:
    assert parse_date(value) == expected


# --- Request ids: what Uploadcare support asks for -------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        json_answer(404, {"detail": "Not found."}),
        json_answer(429, {}, **{"Retry-After": "3"}),
        json_answer(401, {"detail": "Incorrect authentication credentials."}),
        json_answer(400, {"detail": "Video conversion feature is not available"}),
        json_answer(503, {}),
        json_answer(302, {}),
        Answer(200, b"not json", {}),
    ],
    ids=lambda a: str(a.status),
)
async def test_answers_carry_their_request_id(
    harness: Harness, scripted: StartScript, answer: Answer
) -> None:
    tagged = Answer(
        answer.status, answer.body, {**answer.headers, "X-Uploadcare-Request-Id": "r-1"}
    )
    got = await observe(harness, scripted, tagged)
    assert not isinstance(got, Status)
    assert got.request_id == "r-1"
    untagged = await observe(harness, scripted, answer)
    assert untagged.request_id is None  # type: ignore[union-attr]


async def test_a_request_id_is_cleaned_for_the_logs(harness: Harness) -> None:
    """Upstream-controlled text bound for log lines: a terminal escape, DEL and a very long
    value, written raw (aiohttp's server will not send them), arrive bounded and clean."""
    hostile = b"abc\x1b[31mdef\x7f" + b"x" * 500

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n"
            b"X-Uploadcare-Request-Id: " + hostile + b"\r\n\r\n{}"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        got = await harness.client(f"http://127.0.0.1:{port}").status("video", 1)
    assert isinstance(got, NotFound)
    assert got.request_id == ("abc[31mdef" + "x" * 500)[:128]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3f2a9c1e-77b0-4c55-9d1a-0b8e2f7c6d41", "3f2a9c1e-77b0-4c55-9d1a-0b8e2f7c6d41"),
        ("  padded  ", "padded"),
        ("line\nbreak\r\n", "linebreak"),
        ("bidi\u202eevil\u200b", "bidievil"),
        ("\x00\x01\x1f", None),
        ("", None),
        (None, None),
        ("é" * 300, "é" * 128),
    ],
)
def test_request_id_of(value: str | None, expected: str | None) -> None:
    assert request_id_of(value) == expected


# --- The egress proxy, for an https upstream ---------------------------------------------------


async def test_an_https_upstream_is_tunnelled_through_the_proxy_with_its_credentials(
    harness: Harness,
) -> None:
    """Uploadcare is https: the client asks the proxy to CONNECT, with Proxy-Authorization
    from the proxy URL's user-info. This proxy refuses, which is a transient failure (the
    tunnel's other end is never dialled: the name resolves nowhere)."""
    asked: list[bytes] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = harness.client(
            "https://uploadcare.invalid", proxy=f"http://egress:p%40ss@127.0.0.1:{port}"
        )
        got = await client.status("video", 1)
    assert isinstance(got, Transient) and got.reason.startswith("connection error")
    [request] = asked
    head, *lines = request.decode().split("\r\n")
    assert head == "CONNECT uploadcare.invalid:443 HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines if line)
    assert headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"egress:p@ss").decode()
    assert SECRET not in request.decode()  # the signed request never left the tunnel
