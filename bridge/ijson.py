"""I-JSON (RFC 7493): the JSON the API accepts, and that the bridge stores and sends.

A text is I-JSON when it is UTF-8, names no member twice in one object, has no number
that is not finite once parsed (``1e999``; Python's ``NaN``/``Infinity`` literals are not
JSON at all), no string holding a lone surrogate (``"\\ud800"``, in a name or a value),
and, the bridge's own limit, nests no deeper than :data:`MAX_DEPTH` levels.

Depth is checked first, by a scan without recursion, so that no recursive parse ever
meets a deep text: any 64 KiB body costs a few milliseconds at most.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any, Final

MAX_DEPTH: Final = 32
# Python refuses to build ints of over 4300 digits; past this many a number is refused.
MAX_INT_DIGITS: Final = 4000

# Escapes first (a string's \" and \\), then whole strings, then all but brackets: what is left
# is the text's nesting as the parser will meet it. Each step is one linear pass in C.
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_OPENED = re.compile(r"[\[{]{" + str(MAX_DEPTH + 1) + "}")


class NotIJSON(ValueError):
    """The text is not I-JSON; ``str()`` is a fixed sentence that quotes nothing from it."""


class TooManyDigits(ValueError):
    """An integer with more than :data:`MAX_INT_DIGITS` digits (valid JSON, too big to use)."""


NOT_UTF8: Final = "the body is not UTF-8"
NOT_JSON: Final = "the body is not valid JSON"
TOO_DEEP: Final = f"the body nests deeper than {MAX_DEPTH} levels"
DUPLICATE: Final = "the body names a member twice in one object"
NOT_FINITE: Final = "the body has a number that is not finite"
SURROGATE: Final = "the body has a string holding a lone surrogate"


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether ``text`` opens more than ``limit`` arrays or objects inside each other.

    Brackets inside strings do not count. Over any prefix of ``text`` that a parser
    accepts, backslashes occur only in strings' escapes and quotes only around strings,
    so the nesting counted here is the nesting the parser would meet (malformed text may
    count deeper or shallower: the parser refuses it either way).
    """
    bare = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    if limit == MAX_DEPTH and _OPENED.search(bare):
        return True  # the usual attack, ``[[[[…``: no need to count
    return bool(bare) and max(accumulate(map(_STEP.__getitem__, bare))) > limit


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise NotIJSON(DUPLICATE)
    return out


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotIJSON(NOT_FINITE)
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise TooManyDigits
    return int(text)


def _constant(name: str) -> Any:
    raise NotIJSON(NOT_JSON)  # NaN, Infinity, -Infinity: Python's, not JSON's


def loads(body: bytes | str) -> Any:
    """The value of an I-JSON text; :class:`NotIJSON` (or :class:`TooManyDigits`) otherwise.

    Bytes must be UTF-8 (no other encoding is guessed; a byte order mark is refused, as
    RFC 8259 lets a parser do).
    """
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise NotIJSON(NOT_UTF8) from None
    else:
        text = body
    if too_deep(text):
        raise NotIJSON(TOO_DEEP)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_float=_float,
            parse_int=_int,
            parse_constant=_constant,
        )
    except (NotIJSON, TooManyDigits):
        raise
    except (ValueError, RecursionError):
        raise NotIJSON(NOT_JSON) from None
    if has_lone_surrogate(value):
        raise NotIJSON(SURROGATE)
    return value


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string in ``value`` (a name or a value, at any depth) holds a surrogate.

    Rendering the value as UTF-8 is the check: one pass in C, and it cannot recurse
    deeper than the value already does (:func:`loads` bounds that).
    """
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
