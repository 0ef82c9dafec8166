"""Every callback body a test sees is held to its event type's schema in the event catalog.

The schemas come from the committed ``docs/openapi.json`` (its ``webhooks`` section), which
tests/service/test_catalog.py holds equal to what the server serves. Receivers in tests
call ``check(body)``; a body that does not validate is recorded in ``INVALID``, and the
autouse fixture in tests/conftest.py fails the test that saw it. Recording rather than
raising: the receiver is a server, and an exception there would become a 500 to the
bridge (a retry), not a failed test.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import ROOT

COMMITTED = ROOT / "docs" / "openapi.json"
_DOC_URI = "urn:uploadcare-bridge:openapi"

# (event type or "?", what is wrong): every callback body that did not validate, for the
# running test. Cleared before each test, checked after it.
INVALID: list[tuple[str, str]] = []


@cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(COMMITTED.read_text(encoding="utf-8"))
    return loaded


@cache
def validator(event: str) -> Draft202012Validator | None:
    """The validator of one event type's body; None for a type the catalog does not list."""
    doc = document()
    operation = doc.get("webhooks", {}).get(event)
    if operation is None:
        return None
    schema = operation["post"]["requestBody"]["content"]["application/json"]["schema"]
    registry: Registry[Any] = Registry().with_resource(
        _DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    ref = {"$ref": _DOC_URI + schema["$ref"]} if "$ref" in schema else schema
    return Draft202012Validator(
        ref, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def problems(body: bytes) -> list[str]:
    """What is wrong with a callback body against the catalog (empty: it validates)."""
    try:
        value = json.loads(body)
    except ValueError:
        return ["not JSON"]
    event = value.get("type") if isinstance(value, dict) else None
    found = validator(event) if isinstance(event, str) else None
    if found is None:
        return ["type is not an event type of the catalog"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found.iter_errors(value)]


def check(body: bytes) -> bool:
    """Validate a callback body; record it in INVALID when it does not validate."""
    wrong = problems(body)
    if wrong:
        try:
            event = str(json.loads(body).get("type", "?"))
        except (ValueError, AttributeError):
            event = "?"
        INVALID.append((event, "; ".join(wrong)))
    return not wrong
