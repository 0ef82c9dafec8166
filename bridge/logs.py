"""structlog setup: JSON lines on stdout, and no secret in any of them."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from bridge.model import fast_json

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SENSITIVE_KEYS = frozenset({"authorization", "password", "secret", "api_key", "dsn"})
REDACTED = "***"
# Values that hold no nested keys; strings are redacted on the rendered line.
_PLAIN = frozenset({str, int, float, bool, type(None)})


class Redactor:
    """Replaces every known secret, URL user-info and sensitive key in an event with ``***``.

    Secrets are registered as they become known (configuration at start, generated signing
    secrets when first made), so the set can only grow.
    """

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, secrets: Iterable[str]) -> None:
        # Each also as it would appear inside a URL (a DSN's password is percent-encoded)
        # and inside a JSON string (lines are redacted after rendering).
        forms = {
            form for s in secrets for form in (s, quote(s, safe=""), quote(s), json.dumps(s)[1:-1])
        }
        fresh = {s for s in forms if len(s) >= 4} - self._secrets
        if fresh:
            self._secrets |= fresh
            self._pattern = None  # compiled when next needed: adds often come in a row

    def forget(self) -> None:
        """Drop every registered secret (a test suite starting the next app in-process)."""
        self._secrets.clear()
        self._pattern = None

    def _compiled(self) -> re.Pattern[str] | None:
        if self._pattern is None and self._secrets:
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
        return self._pattern

    def text(self, value: str) -> str:
        if (pattern := self._compiled()) is not None:
            value = pattern.sub(REDACTED, value)
        if "://" in value:
            value = _USERINFO.sub(REDACTED + "@", value)
        return value

    def keys(self, value: Any) -> Any:
        """``value`` with every sensitive key's value, at any depth, replaced."""
        if isinstance(value, dict):
            return {
                k: REDACTED if str(k).lower() in _SENSITIVE_KEYS else self.keys(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.keys(v) for v in value]
        if isinstance(value, BaseException):
            return repr(value)
        return value

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        """Before rendering: sensitive keys. Strings are left to ``line``, after rendering."""
        for key, value in event.items():
            if type(value) in _PLAIN and key not in _SENSITIVE_KEYS and key.islower():
                continue  # the usual field: a lowercase name and a scalar
            if key.lower() in _SENSITIVE_KEYS:
                event[key] = REDACTED
            elif isinstance(value, dict | list | tuple | BaseException):
                event[key] = self.keys(value)
        return event

    def line(self, _: WrappedLogger, __: str, rendered: Any) -> Any:
        """After rendering: every secret and URL user-info in the whole line, in one pass.

        One pass over the rendered line costs a third of one per value (the bench's
        log-heavy path), and it also catches a secret in a spelling no value had.
        """
        return self.text(rendered) if isinstance(rendered, str) else rendered


redactor = Redactor()


def _render_json(event: Any, **_: Any) -> str:
    # orjson renders a line in a third of the json module's time (bridge.model.fast_json).
    return fast_json(event, default=repr).decode()


def _drop_color_message(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    event.pop("color_message", None)
    return event


def configure(fmt: str = "json", level: str = "info", secrets: Iterable[str] = ()) -> None:
    """Route structlog and the standard library's logging to stdout through one pipeline."""
    redactor.add(secrets)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_color_message,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_render_json)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    tail: list[Processor] = [
        structlog.processors.format_exc_info,
        redactor,
        renderer,
        redactor.line,
    ]
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    # aiohttp's access log is replaced by our own request event.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get(name: str = "bridge") -> Any:
    return structlog.get_logger(name)
