"""One callback attempt: sign, send, classify. No retries here; the scheduler decides."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from yarl import URL

from bridge import __version__
from bridge.model import MAX_CONTENT_TYPE, MAX_EXCERPT
from bridge.netpolicy import BLOCKED_MESSAGE, NetworkPolicy, is_policy_block
from bridge.upstream import parse_retry_after
from bridge.webhooks import SigningKey, sign

USER_AGENT: Final = f"uploadcare-bridge/{__version__}"
# A receiver's answer is read (so the connection can be reused) but only this much of it;
# the attempt keeps its first MAX_EXCERPT bytes (GET /v1/jobs/{id}/attempts shows them).
MAX_RESPONSE_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class AttemptResult:
    result: str  # success, http_error, timeout, connection_error, blocked (the metric label)
    status: int | None
    error: str | None
    retry_after: float | None  # from a 429 or 503
    started_at: float
    duration: float
    excerpt: bytes | None = None  # the answer body's first MAX_EXCERPT bytes; None: empty
    content_type: str | None = None  # the answer's Content-Type, made safe to show

    @property
    def delivered(self) -> bool:
        return self.result == "success"

    @property
    def gone(self) -> bool:
        return self.status == 410


def callback_session(policy: NetworkPolicy, concurrency: int) -> aiohttp.ClientSession:
    """The session callbacks go out on: every request and connection vetted by ``policy``.

    The policy's middleware judges IP-literal hosts (and refuses proxies) before a request
    is made, its connector resolves and vets every name at every attempt and vets each
    socket address at connect. ``trust_env=False``: proxies from the environment are
    ignored, and no request passes ``proxy=``.
    """
    return aiohttp.ClientSession(
        connector=policy.connector(limit=concurrency),
        middlewares=(policy.middleware,),
        trust_env=False,
        auto_decompress=False,
    )


class Deliverer:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_s = timeout
        self._clock = clock

    async def attempt(
        self, url: str, body: bytes, msg_id: str, keys: Sequence[SigningKey | str]
    ) -> AttemptResult:
        """One signed POST: ``keys`` each add a signature (a bare string is a v1 secret)."""
        target = URL(url)
        basic = None
        if target.user is not None:
            # User-info travels as Basic credentials, never in the request line.
            pair = f"{target.user}:{target.password or ''}".encode()
            basic = "Basic " + base64.b64encode(pair).decode()
            target = target.with_user(None)
        started = self._clock()
        timestamp = int(started)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(keys, msg_id, timestamp, body),
        }
        if basic is not None:
            headers["Authorization"] = basic
        t0 = time.perf_counter()
        answer = _Answer()

        def done(
            result: str,
            status: int | None = None,
            error: str | None = None,
            retry_after: float | None = None,
        ) -> AttemptResult:
            return AttemptResult(
                result,
                status,
                error,
                retry_after,
                started,
                time.perf_counter() - t0,
                bytes(answer.head[:MAX_EXCERPT]) or None,
                answer.content_type,
            )

        try:
            # aiohttp's total timeout covers connect, answer and body; the outer one is a hard
            # bound on the whole attempt whatever the receiver (or a resolver) does.
            async with (
                asyncio.timeout(self._timeout_s),
                self._session.post(
                    target,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._timeout,
                ) as resp,
            ):
                answer.content_type = safe_content_type(resp.headers.get("Content-Type"))
                await _read_capped(resp.content, MAX_RESPONSE_BYTES, answer.head)
                if 200 <= resp.status < 300:
                    return done("success", resp.status)
                retry_after = None
                if resp.status in (429, 503) and "Retry-After" in resp.headers:
                    retry_after = parse_retry_after(resp.headers["Retry-After"], self._clock())
                return done("http_error", resp.status, f"HTTP {resp.status}", retry_after)
        except TimeoutError:
            return done("timeout", error=f"timed out after {self._timeout_s:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            if is_policy_block(exc):
                return done("blocked", error=BLOCKED_MESSAGE)
            return done("connection_error", error=_describe(exc))


@dataclass(slots=True)
class _Answer:
    """What an attempt has seen of the receiver's answer so far (kept across a timeout)."""

    head: bytearray = field(default_factory=bytearray)
    content_type: str | None = None


async def _read_capped(stream: aiohttp.StreamReader, limit: int, head: bytearray) -> None:
    """Read the answer's body until it ends or ``limit`` bytes came; the rest is never read.
    The first MAX_EXCERPT bytes go into ``head`` as they arrive.

    Within the attempt's timeout: a body that trickles without end is a timeout, not a
    delivery (its excerpt is what came before it). A body that streams without end stops
    being read at ``limit``: the attempt ends with its status at once. An unfinished body
    leaves the connection to be closed, not reused.
    """
    got = 0
    while got < limit:
        chunk = await stream.read(limit - got)
        if not chunk:
            return
        if len(head) < MAX_EXCERPT:
            head += chunk[: MAX_EXCERPT - len(head)]
        got += len(chunk)


# Control characters (C0, DEL, C1), surrogates and format characters (bidi controls,
# zero-width ones): removed from a Content-Type before it is kept and shown.
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]"
)


def safe_content_type(value: str | None) -> str | None:
    """A receiver's Content-Type as kept: at most MAX_CONTENT_TYPE characters, no control,
    format or surrogate characters, trimmed; None when none (or nothing is left)."""
    if value is None:
        return None
    cleaned = _UNSAFE.sub("", value).strip()[:MAX_CONTENT_TYPE].strip()
    return cleaned or None


def _describe(exc: BaseException) -> str:
    """A short reason that names no credentials (user-info never reaches the URL we send)."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return f"connection error: {os_error.strerror}"
    return f"connection error: {type(exc).__name__}"
