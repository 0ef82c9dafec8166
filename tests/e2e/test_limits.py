"""Limits: what a client can make the API server hold, and what a receiver can make a
delivery hold.

The API side runs a real ``bridge serve`` and talks to it with raw sockets on 127.0.0.1;
the delivery side runs the bridge in-process against receivers on 127.0.0.1 that answer
slowly, endlessly or hugely. Every time asserted is an upper bound with a wide margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.api import BODY_TIMEOUT
from bridge.cli import SERVER_LIMITS
from bridge.delivery import MAX_RESPONSE_BYTES
from tests.conftest import ALPHA, base_env
from tests.harness import bridge, fake_upstream, register, wait_state
from tests.proc import BridgeProcess

# Room for a loaded 2-core machine on top of each configured timeout.
MARGIN = 30.0
KEEPALIVE = float(SERVER_LIMITS["keepalive_timeout"])
H = {"Authorization": f"Bearer {ALPHA}"}


# -- the API server ----------------------------------------------------------------------------


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[BridgeProcess]:
    proc = await BridgeProcess(
        ["serve"], base_env(tmp_path, BRIDGE_PORT="0", BRIDGE_LOG_LEVEL="info")
    ).start()
    try:
        yield proc
    finally:
        assert await proc.stop() == 0, proc.stderr


async def _open(proc: BridgeProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert proc.port is not None
    return await asyncio.open_connection("127.0.0.1", proc.port)


async def _until_closed(reader: asyncio.StreamReader, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    data = b""
    async with asyncio.timeout(within):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data, time.monotonic() - started


async def _exchange(proc: BridgeProcess, request: bytes) -> bytes:
    """Send ``request`` whole; what came back before the server closed (it must close)."""
    reader, writer = await _open(proc)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        data, _ = await _until_closed(reader, KEEPALIVE + MARGIN)
        return data
    finally:
        writer.close()


def _refused(answer: bytes) -> bool:
    """A 4xx status line, or the connection closed without an answer."""
    return answer == b"" or re.match(rb"HTTP/1\.[01] 4\d\d ", answer) is not None


def _request(headers: list[tuple[str, str]], target: str = "/healthz") -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_header_limits(served: BridgeProcess) -> None:
    max_headers = int(SERVER_LIMITS["max_headers"])
    field = int(SERVER_LIMITS["max_field_size"])
    line = int(SERVER_LIMITS["max_line_size"])

    # An ordinary request with a fair number of headers is served.
    fair = [(f"X-Fair-{i}", "v") for i in range(max_headers // 2)]
    assert (await _exchange(served, _request(fair))).startswith(b"HTTP/1.1 200")

    too_many = [(f"X-Many-{i}", "v") for i in range(max_headers * 2)]
    too_big = [("X-Big", "b" * (field * 2))]
    huge_auth = [("Authorization", "Bearer " + "k" * (field * 4))]
    answers = await asyncio.gather(
        _exchange(served, _request(too_many)),
        _exchange(served, _request(too_big)),
        _exchange(served, _request(huge_auth, "/v1/jobs")),
        _exchange(served, _request([], "/healthz?" + "q" * (line * 2))),
        _exchange(served, _request([("X-Huge", "h" * 1_000_000)])),
    )
    for answer in answers:
        assert _refused(answer), answer[:200]

    # Still serving.
    assert (await _exchange(served, _request([]))).startswith(b"HTTP/1.1 200")


async def test_slow_clients_are_let_go(served: BridgeProcess) -> None:
    """Idle, half-sent and slow-body connections are closed within the configured bounds."""

    async def idle() -> float:
        reader, writer = await _open(served)
        try:
            data, took = await _until_closed(reader, KEEPALIVE + MARGIN)
            assert data == b""
            return took
        finally:
            writer.close()

    async def half_sent_headers() -> float:
        reader, writer = await _open(served)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            await writer.drain()
            data, took = await _until_closed(reader, KEEPALIVE + MARGIN)
            assert _refused(data), data[:200]
            return took
        finally:
            writer.close()

    async def trickled_headers() -> float:
        # One byte of a never-ending header every half second: not a way to stay forever.
        reader, writer = await _open(served)
        closed = asyncio.create_task(_until_closed(reader, KEEPALIVE + MARGIN))
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            while not closed.done():
                with contextlib.suppress(ConnectionError):
                    writer.write(b"a")
                    await writer.drain()
                await asyncio.wait({closed}, timeout=0.5)
            data, took = await closed
            assert _refused(data), data[:200]
            return took
        finally:
            closed.cancel()
            writer.close()

    async def idle_after_a_request() -> float:
        reader, writer = await _open(served)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # keep-alive
            await writer.drain()
            data, took = await _until_closed(reader, KEEPALIVE + MARGIN)
            assert data.startswith(b"HTTP/1.1 200")
            return took
        finally:
            writer.close()

    async def slow_body() -> tuple[bytes, float]:
        reader, writer = await _open(served)
        try:
            writer.write(
                b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + f"Authorization: Bearer {ALPHA}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                + b'{"token": '
            )
            await writer.drain()
            started = time.monotonic()
            status_line = await asyncio.wait_for(reader.readline(), BODY_TIMEOUT + MARGIN)
            took = time.monotonic() - started
            rest, _ = await _until_closed(reader, KEEPALIVE + MARGIN)
            return status_line + rest, took
        finally:
            writer.close()

    results = await asyncio.gather(
        idle(), half_sent_headers(), trickled_headers(), idle_after_a_request(), slow_body()
    )
    *closed_after, (answer, answered_after) = results
    for took in closed_after:
        assert isinstance(took, float)
        assert took < KEEPALIVE + MARGIN
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"application/problem+json" in answer
    assert answered_after < BODY_TIMEOUT + MARGIN

    # None of it wedged the server.
    assert (await _exchange(served, _request([]))).startswith(b"HTTP/1.1 200")


# -- deliveries ------------------------------------------------------------------------------

Behaviour = Callable[[asyncio.StreamWriter], Awaitable[None]]


class RawReceiver:
    """A receiver on 127.0.0.1 speaking raw HTTP/1.1, one planned behaviour per request."""

    def __init__(self) -> None:
        self.plan: list[Behaviour] = []
        self.requests = 0
        self.sent: list[int] = []  # body bytes written per answer before it ended
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            self.requests += 1
            behaviour = self.plan.pop(0) if self.plan else ok
            await behaviour(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


async def ok(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()


async def never_answer(writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


async def stall_after_headers(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(3600)


async def trickle_forever(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    while True:  # a chunk of one byte every tenth of a second, never the last chunk
        writer.write(b"1\r\nx\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)


def flood(status: int, receiver: RawReceiver, total: int = 256 * 1024 * 1024) -> Behaviour:
    """An answer with a 256 MiB chunked body, written as fast as the bridge takes it."""

    async def behaviour(writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"z" * 65536
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        sent = 0
        try:
            while sent < total:
                writer.write(frame)
                await writer.drain()
                sent += len(chunk)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            receiver.sent.append(sent)

    return behaviour


async def huge_headers(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * 200_000 + b"\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


async def _attempts(client: Any, job_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/jobs/{job_id}/attempts", headers=H)
    return (await resp.json())["items"]  # type: ignore[no-any-return]


async def _metric(client: Any, result: str) -> float:
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "bridge_callback_attempts_total" and s.labels.get("result") == result:
                return float(s.value)
    return 0.0


CALLBACK_TIMEOUT = 1.0


@pytest.mark.parametrize(
    "slow", [never_answer, stall_after_headers, trickle_forever], ids=lambda f: f.__name__
)
async def test_a_slow_receiver_is_a_timeout_and_the_job_is_retried(
    tmp_path: Path, slow: Behaviour
) -> None:
    async with (
        fake_upstream() as fake,
        RawReceiver() as rec,
        bridge(tmp_path, fake.url, BRIDGE_CALLBACK_TIMEOUT=f"{CALLBACK_TIMEOUT:g}s") as client,
    ):
        rec.plan = [slow, ok]
        job = await register(client, fake.fake.add_job("video", duration=0.2), rec.url + "/h")
        done = await wait_state(client, job["id"], ("delivered", "undeliverable"))
        assert done["state"] == "delivered"
        first, second = await _attempts(client, job["id"])
        assert first["error"] == f"timed out after {CALLBACK_TIMEOUT:g}s"
        assert first["response_status"] is None
        # The worker was let go at the timeout (an upper bound, with room for a busy machine).
        assert first["duration_ms"] < (CALLBACK_TIMEOUT + MARGIN) * 1000
        assert second["response_status"] == 200 and second["error"] is None
        assert await _metric(client, "timeout") == 1
        assert rec.requests == 2


async def test_a_huge_answer_is_read_only_up_to_4_kib(tmp_path: Path) -> None:
    total = 256 * 1024 * 1024
    async with (
        fake_upstream() as fake,
        RawReceiver() as rec,
        bridge(tmp_path, fake.url, BRIDGE_CALLBACK_TIMEOUT="4s") as client,
    ):
        rec.plan = [flood(500, rec, total), flood(200, rec, total)]
        job = await register(client, fake.fake.add_job("video", duration=0.2), rec.url + "/h")
        done = await wait_state(client, job["id"], ("delivered", "undeliverable"))
        assert done["state"] == "delivered"
        first, second = await _attempts(client, job["id"])
        assert (first["response_status"], first["error"]) == (500, "HTTP 500")
        assert (second["response_status"], second["error"]) == (200, None)
        # The bridge read its 4 KiB and hung up: the receiver could not push the rest, only
        # what socket buffers and aiohttp's read-ahead hold (a few MiB at most).
        for _ in range(200):
            if len(rec.sent) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(rec.sent) == 2
        assert MAX_RESPONSE_BYTES == 4096
        assert all(sent < total // 4 for sent in rec.sent), rec.sent


async def test_huge_answer_headers_are_a_failed_attempt(tmp_path: Path) -> None:
    async with (
        fake_upstream() as fake,
        RawReceiver() as rec,
        bridge(tmp_path, fake.url) as client,
    ):
        rec.plan = [huge_headers, ok]
        job = await register(client, fake.fake.add_job("video", duration=0.2), rec.url + "/h")
        done = await wait_state(client, job["id"], ("delivered", "undeliverable"))
        assert done["state"] == "delivered"
        first, second = await _attempts(client, job["id"])
        assert first["response_status"] is None
        assert first["error"].startswith("connection error")
        assert second["response_status"] == 200
        assert await _metric(client, "connection_error") == 1
