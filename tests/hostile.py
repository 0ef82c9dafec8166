"""A corpus of hostile requests, each named, with the status the API must answer.

Run against the in-process app by tests/service/test_hostile_input.py and against a
live server by tests/e2e/test_schemathesis.py. No case may answer 500, and no problem
detail may repeat :data:`CANARY` (every caller-made name or value that could be echoed
holds it). ``{callback}`` in a body is replaced by the test's callback URL (loopback in
the fast tier, a never-dialled public name in the schemathesis run): a case answering
201 registers that URL, never another, and every test app runs without a scheduler.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

from tests.conftest import ALPHA

CANARY = "CANARY7f3a"
CALLBACK = b"{callback}"
_tokens = itertools.count(880_000_001)


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    body: bytes = b""
    method: str = "POST"
    path: str = "/v1/jobs"
    headers: dict[str, str] = field(default_factory=dict)

    def body_for(self, callback: str) -> bytes:
        return self.body.replace(CALLBACK, json.dumps(callback)[1:-1].encode())


def _registration(**fields: str | bytes) -> bytes:
    """A registration's body, each field given as the JSON text of its value (in that
    order, after a fresh token and the callback URL unless they are given)."""
    parts: dict[str, str | bytes] = {"token": str(next(_tokens)), "callback_url": '"{callback}"'}
    parts.update(fields)
    return b"{" + b", ".join(_member(k, v) for k, v in parts.items()) + b"}"


def _member(name: str, value: str | bytes) -> bytes:
    text = value if isinstance(value, bytes) else value.encode()
    return b'"' + name.encode() + b'": ' + text


def _meta(text: str | bytes) -> bytes:
    return _registration(metadata=text)


def _url(text: str) -> bytes:
    return _registration(callback_url=json.dumps(text, ensure_ascii=False))


def _get(name: str, status: int, path: str, **headers: str) -> Case:
    return Case(name, status, method="GET", path=path, headers=headers)


def _bulk(body: str | bytes, status: int, name: str, **headers: str) -> Case:
    """A case of POST /v1/redeliveries (bulk redelivery); the test apps hold no ended jobs,
    so an accepted one answers 202 with a count of 0."""
    text = body if isinstance(body, bytes) else body.encode()
    return Case(name, status, text, path="/v1/redeliveries", headers=headers)


LATIN1 = {"Content-Type": "application/json; charset=latin-1"}
_GOOD = "http://127.0.0.1:9/hook"  # refused or not, never registered: every case here is 422

CASES: tuple[Case, ...] = (
    # -- nesting (I-JSON's depth: 32) --------------------------------------------------------
    Case("deep_arrays_1000", 400, _meta('{"x": ' + "[" * 1000 + "]" * 1000 + "}")),
    Case("deep_objects_1000", 400, _meta('{"a": ' * 1000 + "1" + "}" * 1000)),
    Case("deep_brackets_64k", 400, b"[" * 65536),
    Case("deep_mixed_64k", 400, b"[{" * 32768),
    Case("deep_33_levels", 400, _meta("[" * 32 + "]" * 32)),  # the body, then 32 arrays
    Case("deep_in_unknown_field", 400, _registration(x="[" * 40 + "]" * 40)),
    Case("deep_32_levels_in_metadata", 201, _meta('{"a": ' + "[" * 30 + "]" * 30 + "}")),
    Case("brackets_inside_strings", 201, _meta('{"s": "' + "[{" * 200 + '"}')),
    # -- lone surrogates ---------------------------------------------------------------------
    Case("lone_surrogate_in_metadata", 400, _meta('{"x": "\\ud800"}')),
    Case("lone_surrogate_metadata_key", 400, _meta('{"\\ud800": 1}')),
    Case("lone_surrogate_in_callback_url", 400, _registration(callback_url='"{callback}\\ud800"')),
    Case("lone_low_surrogate", 400, _meta('{"x": "a\\udfffb"}')),
    Case("surrogates_in_wrong_order", 400, _meta('{"x": "\\ude00\\ud83d"}')),
    Case("lone_surrogate_in_kind", 400, _registration(kind='"\\udbff"')),
    Case("lone_surrogate_unknown_key", 400, _registration(**{"\\ud800": "1"})),
    Case("surrogate_bytes_raw", 400, _meta(b'{"x": "\xed\xa0\x80"}')),
    Case("surrogate_pair_is_fine", 201, _meta('{"x": "\\ud83d\\ude00"}')),
    # -- numbers -----------------------------------------------------------------------------
    Case("number_1e999", 400, _meta('{"x": 1e999}')),
    Case("number_minus_1e999", 400, _meta('{"x": -1e999}')),
    Case("number_overflowing_fraction", 400, _meta('{"x": 17976931348623159' + "0" * 292 + ".0}")),
    Case("literal_nan", 400, _meta('{"x": NaN}')),
    Case("literal_infinity", 400, _meta('{"x": Infinity}')),
    Case("literal_minus_infinity", 400, _meta('{"x": -Infinity}')),
    Case("token_nan", 400, _registration(token="NaN")),
    Case("number_1e308_is_fine", 201, _meta('{"x": 1e308}')),
    Case("number_underflow_is_zero", 201, _meta('{"x": 1e-999}')),
    Case("integer_4000_digits_in_metadata", 201, _meta('{"x": ' + "9" * 4000 + "}")),
    Case(
        "integer_5000_digits_token",
        422,
        b'{"token": ' + b"9" * 5000 + b', "callback_url": "{callback}"}',
    ),
    Case("token_1e999", 400, _registration(token="1e999")),
    # -- duplicate names ---------------------------------------------------------------------
    Case("duplicate_token", 400, _registration(token="5").replace(b"{", b'{"token": 6, ', 1)),
    Case("duplicate_in_metadata", 400, _meta('{"k": 1, "k": 2}')),
    Case("duplicate_same_value", 400, _meta('{"k": 1, "k": 1}')),
    Case(
        "duplicate_callback_url",
        400,
        _registration(callback_url='"{callback}", "callback_url": "{callback}"'),
    ),
    Case("duplicate_deep_in_metadata", 400, _meta('{"a": [{"b": {"c": 1, "c": 2}}]}')),
    Case("names_differing_in_case", 201, _meta('{"k": 1, "K": 2}')),
    # -- encodings ---------------------------------------------------------------------------
    Case("invalid_utf8_byte", 400, _meta(b'{"x": "\xff"}')),
    Case("latin1_declared_charset", 400, _meta(b'{"x": "\xe9"}'), headers=LATIN1),
    Case("ascii_body_declared_latin1", 201, _registration(), headers=LATIN1),
    Case("utf16_body", 400, json.dumps({"token": 7, "callback_url": "x"}).encode("utf-16")),
    Case("byte_order_mark", 400, b"\xef\xbb\xbf" + _registration()),
    Case("overlong_utf8", 400, _meta(b'{"x": "\xc0\xaf"}')),
    Case(
        "unicode_keys_and_values",
        201,
        _meta(json.dumps({"ключ": "значение", "🔑": "é\u0000\u2028"}, ensure_ascii=False)),
    ),
    Case("escaped_nul_in_metadata", 201, _meta('{"x": "\\u0000"}')),
    # -- not JSON, not an object ---------------------------------------------------------------
    Case("empty_body", 400, b""),
    Case("whitespace_body", 400, b" \n\t "),
    Case("trailing_garbage", 400, _registration() + b"x"),
    Case("single_quotes", 400, b"{'token': 1}"),
    Case("array_body", 422, b"[1, 2]"),
    Case("string_body", 422, b'"{callback}"'),
    # -- echo and the redaction oracle -----------------------------------------------------------
    Case("unknown_field_named_like_the_api_key", 422, _registration(**{ALPHA: "1", CANARY: "1"})),
    Case("many_unknown_fields", 422, _registration(**{f"{CANARY}{n}": "1" for n in range(2000)})),
    Case("kind_echo", 422, _registration(kind=json.dumps(CANARY))),
    Case("token_echo", 422, _registration(token=json.dumps(CANARY))),
    Case("url_echo", 422, _url(f"ftp://{CANARY}.example/")),
    Case("metadata_not_object_echo", 422, _meta(json.dumps(CANARY))),
    # -- project: fixed sentences, never the value ------------------------------------------
    Case("project_echo", 422, _registration(project=json.dumps(CANARY))),
    Case("project_like_a_secret", 422, _registration(project=json.dumps(ALPHA))),
    Case("project_null", 422, _registration(project="null")),
    Case("project_number", 422, _registration(project="1")),
    Case("project_array", 422, _registration(project='["default"]')),
    Case("project_object", 422, _registration(project='{"default": 1}')),
    Case("project_upper_case", 422, _registration(project='"DEFAULT"')),
    Case("project_trailing_space", 422, _registration(project='"default "')),
    Case("project_nul", 422, _registration(project='"default\\u0000"')),
    Case("project_lone_surrogate", 400, _registration(project='"\\udbff"')),
    Case("project_huge", 422, _registration(project=json.dumps("p" * 60_000))),
    Case("project_default_is_fine", 201, _registration(project='"default"')),
    # -- callback_url characters -----------------------------------------------------------------
    Case("url_bidi_override", 422, _url(_GOOD + "\u202e")),
    Case("url_zero_width_space", 422, _url("http://127.0.0.1:9/a\u200bb")),
    Case("url_zero_width_in_host", 422, _url("http://exa\u200bmple.com/")),
    Case("url_byte_order_mark", 422, _url("\ufeff" + _GOOD)),
    Case("url_word_joiner", 422, _url(_GOOD + "?a=\u2060")),
    Case("url_del", 422, _url(_GOOD + "\u007f")),
    Case("url_c1_next_line", 422, _url(_GOOD + "\u0085")),
    Case("url_c1_csi", 422, _url(_GOOD + "#\u009b")),
    Case("url_no_break_space", 422, _url(_GOOD + "\u00a0")),
    Case("url_tab", 422, _url("http://127.0.0.1:9/\thook")),
    Case("url_escaped_nul", 422, _registration(callback_url='"http://127.0.0.1:9/\\u0000"')),
    Case("url_encoded_bidi_in_path", 422, _url(_GOOD + "%E2%80%AE")),
    Case("url_encoded_newline_in_user", 422, _url("http://u%0A:p@127.0.0.1:9/hook")),
    Case("url_encoded_zero_width_in_fragment", 422, _url(_GOOD + "#%E2%80%8B")),
    Case("url_port_0", 422, _url("http://127.0.0.1:0/hook")),
    Case("url_port_00", 422, _url("http://127.0.0.1:00/hook")),
    Case("url_port_too_big", 422, _url("http://127.0.0.1:99999/hook")),
    Case("url_too_long", 422, _url("http://127.0.0.1:9/" + "é" * 2100)),
    Case("url_private_address", 422, _url("http://10.0.0.1/hook")),
    Case(
        "url_encoded_space_in_query_is_fine",
        201,
        _registration(callback_url='"{callback}?q=a%20b"'),
    ),
    # -- sizes and types ---------------------------------------------------------------------------
    Case("metadata_over_4_kib", 422, _meta(json.dumps({"k": "x" * 4100}))),
    Case("body_over_64_kib", 413, _meta(json.dumps({"k": "x" * 70_000}))),
    Case("text_plain", 415, _registration(), headers={"Content-Type": "text/plain"}),
    Case(
        "content_type_unterminated_quote",
        201,
        _registration(),
        headers={"Content-Type": 'application/json; charset="'},
    ),
    Case(
        "content_type_json_suffix",
        415,
        _registration(),
        headers={"Content-Type": "application/jsonx"},
    ),
    # -- query strings, paths, headers -----------------------------------------------------
    _get("empty_state", 200, "/v1/jobs?state="),
    _get("every_filter_empty", 200, "/v1/jobs?state=&kind=&project=&token=&limit=&cursor="),
    _get("project_filter", 200, "/v1/jobs?project=default"),
    _get("project_filter_echo", 422, f"/v1/jobs?project={CANARY}"),
    _get("project_filter_too_long", 422, "/v1/jobs?project=" + "p" * 33),
    _get("project_filter_bad_byte", 422, "/v1/jobs?project=%ff"),
    _get("project_filter_twice", 422, "/v1/jobs?project=a&project=b"),
    _get("limit_1e309", 422, "/v1/jobs?limit=1e309"),
    _get("limit_fullwidth_digits", 422, "/v1/jobs?limit=%EF%BC%95"),
    _get("token_negative", 422, "/v1/jobs?token=-1"),
    _get("token_huge", 422, "/v1/jobs?token=" + "9" * 5000),
    _get("token_nul", 422, "/v1/jobs?token=%00"),
    _get("state_bad_byte", 422, "/v1/jobs?state=%ff"),
    _get("state_echo", 422, f"/v1/jobs?state={CANARY}"),
    _get("unknown_parameter_echo", 422, f"/v1/jobs?{CANARY}=1"),
    _get("unknown_parameter_empty", 422, f"/v1/jobs?state=&{CANARY}="),
    _get("nameless_parameter", 422, "/v1/jobs?state=&="),
    _get("unknown_parameter_bad_byte", 422, "/v1/jobs?%ff%fe=1"),
    _get("cursor_bad_bytes", 422, "/v1/jobs?cursor=%00%ff"),
    _get("cursor_echo", 422, f"/v1/jobs?cursor={CANARY}"),
    _get("repeated_filter", 422, "/v1/jobs?limit=5&limit=6"),
    _get("job_id_nul", 404, "/v1/jobs/%00"),
    _get("job_id_emoji", 404, "/v1/jobs/job_%F0%9F%98%80"),
    _get("job_id_traversal", 404, "/v1/jobs/..%2f..%2fetc%2fpasswd"),
    _get("attempts_of_bad_id", 404, "/v1/jobs/%ff%fe/attempts"),
    Case("redeliver_bad_id", 404, method="POST", path="/v1/jobs/%00/redeliver"),
    Case("cancel_bad_id", 404, method="DELETE", path=f"/v1/jobs/job_{CANARY}"),
    _get("bearer_not_utf8", 401, "/v1/jobs", Authorization="Bearer \xff\xfe"),
    _get("bearer_huge", 401, "/v1/jobs", Authorization="Bearer " + "x" * 6000),
    _get("request_id_odd", 200, "/healthz", **{"X-Request-Id": "\xff\xfe../x"}),
    # -- bulk redelivery ---------------------------------------------------------------------
    _bulk('{"state": "undeliverable"}', 202, "bulk_minimal"),
    _bulk(
        '{"state": "delivered", "kind": "document", "project": "default", "limit": 10000,'
        ' "since": "2026-11-29T04:30:00.123456789+02:00", "until": "2026-12-31T23:59:60Z"}',
        202,
        "bulk_every_filter",
    ),
    _bulk(
        '{"state": "undeliverable", "since": "2027-01-01T00:00:00Z",'
        ' "until": "2026-01-01T00:00:00Z"}',
        202,
        "bulk_empty_window",
    ),
    _bulk(b"", 400, "bulk_empty_body"),
    _bulk('{"state": "undeliverable", "state": "delivered"}', 400, "bulk_duplicate_state"),
    _bulk('{"state": "undeliverable", "limit": 1e999}', 400, "bulk_limit_1e999"),
    _bulk(r'{"state": "\ud800"}', 400, "bulk_lone_surrogate"),
    _bulk('{"state": ' + "[" * 40 + "]" * 40 + "}", 400, "bulk_deep"),
    _bulk('{"state": "undeliverable"}', 415, "bulk_text_plain", **{"Content-Type": "text/plain"}),
    _bulk(json.dumps({"state": "undeliverable", "x": "y" * 70_000}), 413, "bulk_over_64_kib"),
    _bulk("[]", 422, "bulk_array"),
    _bulk("{}", 422, "bulk_state_missing"),
    _bulk('{"state": "delivering"}', 422, "bulk_state_delivering"),
    _bulk(json.dumps({"state": CANARY}), 422, "bulk_state_echo"),
    _bulk(json.dumps({"state": "undeliverable", CANARY: 1}), 422, "bulk_unknown_field_echo"),
    _bulk(json.dumps({"state": "undeliverable", "project": CANARY}), 422, "bulk_project_echo"),
    _bulk(json.dumps({"state": "undeliverable", "project": None}), 422, "bulk_project_null"),
    _bulk(json.dumps({"state": "undeliverable", "project": ["default"]}), 422, "bulk_project_list"),
    _bulk(json.dumps({"state": "undeliverable", "kind": CANARY}), 422, "bulk_kind_echo"),
    _bulk(json.dumps({"state": "undeliverable", "since": CANARY}), 422, "bulk_since_echo"),
    _bulk('{"state": "undeliverable", "since": "2026-11-29"}', 422, "bulk_since_date_only"),
    _bulk(
        '{"state": "undeliverable", "since": "2026-11-29T04:30:00"}', 422, "bulk_since_no_offset"
    ),
    _bulk('{"state": "undeliverable", "until": "2026-02-30T00:00:00Z"}', 422, "bulk_until_feb_30"),
    _bulk('{"state": "undeliverable", "until": 1800000000}', 422, "bulk_until_number"),
    _bulk('{"state": "undeliverable", "until": "' + "9" * 5000 + '"}', 422, "bulk_until_huge"),
    _bulk('{"state": "undeliverable", "limit": 0}', 422, "bulk_limit_0"),
    _bulk('{"state": "undeliverable", "limit": 10001}', 422, "bulk_limit_10001"),
    _bulk('{"state": "undeliverable", "limit": 5.0}', 422, "bulk_limit_float"),
    _bulk('{"state": "undeliverable", "limit": true}', 422, "bulk_limit_true"),
    _bulk('{"state": "undeliverable", "limit": "5"}', 422, "bulk_limit_string"),
    _bulk('{"state": "undeliverable", "limit": ' + "9" * 5000 + "}", 422, "bulk_limit_digits"),
)
