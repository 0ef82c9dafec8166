"""docs/logging.md lists exactly the log events the source emits, with their level and fields.

The source is read, not run: every ``log.<level>("event", ...)`` call in ``bridge/`` is
found with the ``ast`` module, so an event added, renamed or given other fields without the
table following fails here.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

import pytest

from tests.conftest import ROOT

SOURCE = ROOT / "bridge"
DOC = ROOT / "docs" / "logging.md"
# log.exception is an error with the traceback in `exception`.
LEVELS = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
    "exception": "error",
    "critical": "critical",
}
# Fields every line carries, or that structlog's context adds: documented apart.
COMMON = {"event", "level", "timestamp", "request_id", "tenant", "exception"}
# Events that are about one job carry all three; a watch is (kind, token) without a job.
JOB_FIELDS = {"job_id", "kind", "token"}


@dataclass
class Emitted:
    levels: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    where: set[str] = field(default_factory=set)


def _is_logger(node: ast.expr) -> bool:
    # Module loggers are named log or _log (structlog.get_logger(...)).
    return isinstance(node, ast.Name) and node.id in {"log", "_log", "logger"}


def _dict_keys(function: ast.AST, name: str) -> set[str] | None:
    """The keys of ``name = {...}`` or ``name = dict(...)`` inside ``function``."""
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            value = node.value
            if isinstance(value, ast.Dict):
                keys = {k.value for k in value.keys if isinstance(k, ast.Constant)}
                if len(keys) == len(value.keys):
                    return {str(k) for k in keys}
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "dict":
                return {k.arg for k in value.keywords if k.arg}
    return None


def emitted_events() -> dict[str, Emitted]:
    events: dict[str, Emitted] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        functions = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        for function in [tree, *functions]:
            for node in ast.walk(function):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LEVELS
                    and _is_logger(node.func.value)
                ):
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                first = node.args[0] if node.args else None
                assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                    f"{where}: the event name must be a string literal"
                )
                fields: set[str] = set()
                for keyword in node.keywords:
                    if keyword.arg is not None:
                        fields.add(keyword.arg)
                        continue
                    assert isinstance(keyword.value, ast.Name), f"{where}: **{keyword.value}"
                    keys = _dict_keys(function, keyword.value.id)
                    assert keys is not None, f"{where}: cannot read **{keyword.value.id}"
                    fields |= keys
                found = events.setdefault(first.value, Emitted())
                found.levels.add(LEVELS[node.func.attr])
                found.fields |= fields
                found.where.add(where)
    return events


@dataclass
class Documented:
    level: str
    when: str
    fields: set[str]


def documented_events() -> dict[str, Documented]:
    """Rows of the tables whose header is ``| event | level | when | fields |``."""
    rows: dict[str, Documented] = {}
    in_table = False
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|"):
            in_table = False
            continue
        if [c.lower() for c in cells] == ["event", "level", "when", "fields"]:
            in_table = True
            continue
        if not in_table or set(line.replace("|", "").strip()) <= {"-", ":", " "}:
            continue
        name = re.fullmatch(r"`([a-z_]+)`", cells[0])
        assert name, f"docs/logging.md: the event cell must be `name`: {line}"
        assert name[1] not in rows, f"docs/logging.md lists {name[1]} twice"
        # Field names are in backticks; notes about their values go in parentheses.
        fields = set(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", cells[3])))
        rows[name[1]] = Documented(level=cells[1], when=cells[2], fields=fields)
    return rows


EMITTED = emitted_events()


def test_the_source_reader_finds_the_events_it_should() -> None:
    # A reader that found nothing would make every other test here pass.
    assert len(EMITTED) >= 20
    registered = EMITTED["job_registered"]
    assert registered.levels == {"info"}
    assert JOB_FIELDS | {"callback_url"} <= registered.fields
    # Fields passed through **kw are read from the dict the call site builds.
    assert EMITTED["job_delivered"].fields >= JOB_FIELDS
    assert {"kind", "token"} <= EMITTED["upstream_status_changed"].fields


def test_every_emitted_event_is_documented() -> None:
    documented = documented_events()
    missing = {name: sorted(e.where) for name, e in EMITTED.items() if name not in documented}
    assert missing == {}, f"events missing from docs/logging.md: {missing}"


def test_every_documented_event_is_emitted() -> None:
    stale = sorted(set(documented_events()) - set(EMITTED))
    assert stale == [], f"docs/logging.md lists events nothing emits: {stale}"


@pytest.mark.parametrize("name", sorted(EMITTED))
def test_documented_level_and_fields_match_the_source(name: str) -> None:
    doc = documented_events().get(name)
    if doc is None:
        pytest.fail(f"{name} is not in docs/logging.md")
    emitted = EMITTED[name]
    assert doc.level == "/".join(sorted(emitted.levels)), f"{name}: level"
    assert doc.when, f"{name}: say when it is logged"
    assert doc.fields - COMMON == emitted.fields, (
        f"{name}: docs say {sorted(doc.fields - COMMON)}, "
        f"source passes {sorted(emitted.fields)} ({', '.join(sorted(emitted.where))})"
    )


def test_job_events_carry_job_id_kind_and_token() -> None:
    # An event naming a job carries all three, so one filter finds a job's whole story.
    partial = {
        name: sorted(JOB_FIELDS - e.fields)
        for name, e in EMITTED.items()
        if "job_id" in e.fields and not e.fields >= JOB_FIELDS
    }
    assert partial == {}
