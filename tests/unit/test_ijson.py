"""I-JSON (RFC 7493) as the bridge reads it, and JSON values as it compares and writes them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import ijson, model
from bridge.store import rules
from bridge.upstream import Garbage, Status, parse_status_body


def strict(text: str | bytes) -> Any:
    """What a strict receiver (JavaScript's JSON.parse, Go, serde) makes of a text."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b'{"a": 1, "a": 2}', ijson.DUPLICATE),
        (b'{"m": {"k": 1, "k": 1}}', ijson.DUPLICATE),
        (b'[{"a": 1}, {"b": 1, "b": 1}]', ijson.DUPLICATE),
        (b'{"x": 1e999}', ijson.NOT_FINITE),
        (b'{"x": -1e999}', ijson.NOT_FINITE),
        (b'{"x": 1.5E+400}', ijson.NOT_FINITE),
        (b'{"x": NaN}', ijson.NOT_JSON),
        (b'{"x": Infinity}', ijson.NOT_JSON),
        (b'{"x": -Infinity}', ijson.NOT_JSON),
        (b'"\\ud800"', ijson.SURROGATE),
        (b'{"k": "a\\udfffb"}', ijson.SURROGATE),
        (b'{"\\ud800": 1}', ijson.SURROGATE),
        (b'["\\ude00\\ud83d"]', ijson.SURROGATE),  # a pair in the wrong order is two lone ones
        (b'"\xed\xa0\x80"', ijson.NOT_UTF8),  # a surrogate written raw is not UTF-8
        (b'{"k": "\xe9"}', ijson.NOT_UTF8),  # Latin-1
        (b"\xff\xfe{\x00}\x00", ijson.NOT_UTF8),  # UTF-16 is not guessed
        (b'\xef\xbb\xbf{"a": 1}', ijson.NOT_JSON),  # a byte order mark
        (b"[" * 33 + b"]" * 33, ijson.TOO_DEEP),
        (b'{"a":' * 33 + b"1" + b"}" * 33, ijson.TOO_DEEP),
        (b"[" * 65536, ijson.TOO_DEEP),
        (b"{", ijson.NOT_JSON),
        (b"", ijson.NOT_JSON),
    ],
)
def test_refused(text: bytes, reason: str) -> None:
    with pytest.raises(ijson.NotIJSON) as caught:
        ijson.loads(text)
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"[" * 32 + b"]" * 32, json.loads("[" * 32 + "]" * 32)),
        (b'["\\ud83d\\ude00"]', ["\U0001f600"]),  # a proper pair
        (b'["[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]', ["[" * 40]),  # brackets in strings
        (b'["\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\\"]', ['"' + "[" * 40 + "\\"]),
        (b'{"a": 1, "A": 2}', {"a": 1, "A": 2}),  # names differ by case: not duplicates
        (b'{"x": 1e308, "y": 1e-999}', {"x": 1e308, "y": 0.0}),
        ('{"é": "ü"}'.encode(), {"é": "ü"}),
    ],
)
def test_accepted(text: bytes, value: Any) -> None:
    assert ijson.loads(text) == value


def test_too_many_digits_is_its_own_error() -> None:
    with pytest.raises(ijson.TooManyDigits):
        ijson.loads(b"[" + b"9" * 4001 + b"]")
    assert ijson.loads(b"[" + b"9" * 4000 + b"]") == [int("9" * 4000)]


def test_depth_is_checked_before_any_recursive_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deep body never reaches the parser (whose recursion is what failed before)."""

    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the parser was reached")

    monkeypatch.setattr(ijson.json, "loads", no_parse)
    for text in (b"[" * 65536, b'{"a":' * 13000, b"[{" * 32768, b'["x",' * 13000):
        with pytest.raises(ijson.NotIJSON, match="deeper than 32"):
            ijson.loads(text)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


# Strings full of what could fool a scanner: brackets, quotes, backslashes.
_TRICKY = st.text(alphabet='[]{}"\\ab\u00e9', max_size=8)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=60,
)


@given(value=_VALUES, limit=st.integers(0, 6))
@settings(max_examples=300, deadline=None)
def test_the_depth_scan_counts_as_a_parser_does(value: Any, limit: int) -> None:
    text = json.dumps(value, ensure_ascii=False)
    assert ijson.too_deep(text, limit) == (_depth(value) > limit)


# -- what the bridge writes -------------------------------------------------------------------


@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan")])
def test_compact_json_refuses_numbers_that_are_not_json(number: float) -> None:
    with pytest.raises(ValueError):
        model.compact_json({"x": number})


def test_a_legacy_row_with_infinity_reads_as_null_and_its_callback_is_strict_json() -> None:
    """Rows written before bodies were I-JSON may hold Infinity: the API showed null, and
    the callback now carries null too, where it carried Infinity (which no receiver reads)."""
    body = model.callback_body(
        job_id="job_01jdx2v9q4k8m3n6p7r5s2t0wa",
        project="default",
        kind="video",
        token=1,
        outcome="finished",
        error=None,
        result_json='{"uuid":"u","w":NaN}',
        metadata_json='{"x":Infinity,"y":-Infinity}',
        seen_at=1_800_000_000.0,
    )
    data = strict(body)["data"]
    assert data["metadata"] == {"x": None, "y": None}
    assert data["result"] == {"uuid": "u", "w": None}


@pytest.mark.parametrize(
    "body",
    [
        b'{"status": "finished", "error": null, "result": {"uuid": "u", "w": 1e999}}',
        b'{"status": "finished", "error": null, "result": {"uuid": "\\ud800"}}',
        b'{"status": "finished", "error": null, "result": {"uuid": NaN}}',
        b'{"status": "finished", "status": "failed", "error": null, "result": null}',
        b'{"status": "finished", "error": null, "result": {"a":' + b"[" * 40 + b"]" * 40 + b"}}",
    ],
)
def test_an_upstream_answer_that_is_not_i_json_is_garbage(body: bytes) -> None:
    """What the bridge would store and send on must be JSON, so it is never taken in."""
    assert isinstance(parse_status_body(body), Garbage)
    assert isinstance(parse_status_body(b'{"status": "finished", "result": {}}'), Status)


# -- metadata sameness ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ('{"n":1}', '{"n":1.0}'),
        ('{"n":100}', '{"n":1e2}'),
        ('{"n":-0.0}', '{"n":0}'),
        ('{"n":1.5}', '{"n":15e-1}'),
        ('{"a":1,"b":{"c":[1,2.0]}}', '{"b":{"c":[1.0,2]},"a":1.0}'),
        ('{"n":1e300}', '{"n":' + str(int(1e300)) + "}"),
    ],
)
def test_metadata_is_the_same_as_json_values(a: str, b: str) -> None:
    assert rules.same_metadata(a, b) and rules.same_metadata(b, a)
    assert model.canonical_json(json.loads(a)) == model.canonical_json(json.loads(b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ('{"n":1}', '{"n":true}'),
        ('{"n":0}', '{"n":false}'),
        ('{"n":1}', '{"n":"1"}'),
        ('{"n":null}', '{"n":0}'),
        ('{"n":[1,2]}', '{"n":[2,1]}'),
        ('{"n":1}', '{"n":1.0000001}'),
        # Numeric value exactly: 2^70+1 is not the float nearest to it.
        ('{"n":' + str(2**70 + 1) + "}", '{"n":' + repr(float(2**70 + 1)) + "}"),
        ('{"n":1}', '{"N":1}'),
    ],
)
def test_metadata_that_differs(a: str, b: str) -> None:
    assert not rules.same_metadata(a, b) and not rules.same_metadata(b, a)


def test_no_metadata_is_only_the_same_as_none() -> None:
    assert rules.same_metadata(None, None)
    assert not rules.same_metadata(None, "{}") and not rules.same_metadata("{}", None)
