"""Prometheus, for real: promtool on the alert rules, their unit tests, the compose config
and a live /metrics, and a Prometheus server that scrapes running bridges on loopback,
evaluates deploy/alerts.yml and answers every query of the Grafana dashboard.

The tests that run ``promtool`` or ``prometheus`` (Debian's ``prometheus`` package) skip
without them locally and fail without them when CI=true. The checks of a live /metrics
against what the docs, the dashboard and the alerts expect need neither, and always run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bridge import __version__
from tests.conftest import ALPHA, ROOT, base_env
from tests.harness import FAST, fake_upstream, receiver
from tests.proc import BridgeProcess

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "alerts.yml"
ALERT_TESTS = DEPLOY / "alerts.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
MONITORING_DOC = ROOT / "docs" / "monitoring.md"
JOB = "uploadcare-bridge"
# Series Prometheus makes itself; the only non-bridge name an alert may use.
PROMETHEUS_SERIES = {"up"}
# What Grafana puts in for its variables when it runs a dashboard query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": JOB}

# Every family the bridge must export: the spec's, plus the operator's first questions.
# name -> (type, labels every sample carries, label values that must all be present)
FAMILIES: dict[str, tuple[str, set[str], dict[str, set[str]]]] = {
    "bridge_build_info": ("gauge", {"version"}, {"version": {__version__}}),
    "bridge_jobs_registered": ("counter", {"kind"}, {"kind": {"video", "document"}}),
    "bridge_jobs": (
        "gauge",
        {"state"},
        {"state": {"tracking", "delivering", "delivered", "undeliverable", "canceled"}},
    ),
    "bridge_outcomes": ("counter", {"kind", "outcome"}, {}),
    "bridge_upstream_requests": (
        "counter",
        {"code", "project"},
        {"code": {"200", "401"}, "project": {"default"}},
    ),
    "bridge_upstream_request_duration_seconds": ("histogram", set(), {}),
    "bridge_upstream_throttled": ("counter", {"project"}, {"project": {"default"}}),
    "bridge_upstream_paused": (
        "gauge",
        {"reason", "project"},
        {"reason": {"credentials rejected (401)"}, "project": {"default"}},
    ),
    # The fake stamps its answers with a Date, as Uploadcare does.
    "bridge_upstream_clock_skew_seconds": ("gauge", {"project"}, {"project": {"default"}}),
    "bridge_callback_attempts": (
        "counter",
        {"result"},
        {"result": {"success", "http_error", "timeout", "connection_error", "blocked"}},
    ),
    "bridge_callback_duration_seconds": ("histogram", set(), {}),
    "bridge_deliveries": ("counter", {"outcome"}, {"outcome": {"delivered", "undeliverable"}}),
    "bridge_notification_latency_seconds": ("histogram", set(), {}),
    "bridge_scheduler_lag_seconds": ("histogram", set(), {}),
    "bridge_backlog": ("gauge", {"work"}, {"work": {"poll", "delivery"}}),
    "bridge_backlog_oldest_seconds": ("gauge", {"work"}, {"work": {"poll", "delivery"}}),
    "process_cpu_seconds": ("counter", set(), {}),
    "process_resident_memory_bytes": ("gauge", set(), {}),
    "process_start_time_seconds": ("gauge", set(), {}),
    "process_open_fds": ("gauge", set(), {}),
    "process_max_fds": ("gauge", set(), {}),
    "python_info": ("gauge", {"version", "implementation"}, {}),
}


def tool(name: str) -> str:
    """The path of a Prometheus binary; skip without it locally, fail in CI."""
    path = shutil.which(name)
    if path:
        return path
    why = f"{name} is not installed (Debian: apt-get install prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI must run the Prometheus checks, .ci/run installs it")
    pytest.skip(why)


def run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, text=True, timeout=60
    )


# -- reading PromQL and the rule files ---------------------------------------------------------

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (a lexical reading, enough for our queries)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s, flags=re.I
    )
    s = re.sub(r"\boffset\s+\S+", " ", s)
    s = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", s)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group().lower() in _KEYWORDS:
            continue  # a function or an aggregation, or an operator
        names.add(m.group())
    return names


def alert_rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert all("alert" in r for r in rules), "alerts.yml holds alerting rules only"
    return {r["alert"]: r for r in rules}


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows' nested panels included."""
    board = json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    for panel in walk(board["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def grafana_expand(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def sample_names(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_metric_names_reads_our_kind_of_queries() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (namespace, job, le) (rate(x_bucket{job="$job",'
        ' le=~"1e3|+Inf"}[$__rate_interval]))) > 1e3 and on (job) max without (instance) '
        "(y_total offset 5m) unless delta(max by (job) (z)[15m:1m]) >= 0 or vector(0)"
    )
    assert metric_names(expr) == {"x_bucket", "y_total", "z"}
    assert metric_names('up{job="a"} == 0') == {"up"}


# -- promtool, without a server ----------------------------------------------------------------


def test_alert_rules_pass_promtool_check_rules() -> None:
    result = run(tool("promtool"), "check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", ALERT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_test_that_fires_it_and_one_that_stays_quiet() -> None:
    rules = alert_rules()
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    firing: dict[str, int] = dict.fromkeys(rules, 0)
    quiet: dict[str, int] = dict.fromkeys(rules, 0)
    for case in tests["tests"]:
        tested = {t["alertname"] for t in case["alert_rule_test"]}
        assert tested <= set(rules), f"{case['name']}: tests an alert alerts.yml lacks"
        # A quiet case that feeds series the rule never reads would prove nothing.
        read = set().union(*(metric_names(rules[a]["expr"]) for a in tested))
        for series in case["input_series"]:
            name = series["series"].split("{", 1)[0]
            assert name in read, f"{case['name']}: {name} is not read by {sorted(tested)}"
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet)[check["alertname"]] += 1
    assert [a for a, n in firing.items() if n == 0] == [], "alerts no test fires"
    assert [a for a, n in quiet.items() if n == 0] == [], "alerts no test shows quiet"


def _anchor(heading: str) -> str:
    # The anchor a Markdown renderer gives a heading (GitHub's rule).
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_has_severity_summary_and_a_runbook_section() -> None:
    doc = MONITORING_DOC.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.+)$", doc, flags=re.M)}
    for name, rule in alert_rules().items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        page, _, anchor = notes["runbook"].partition("#")
        assert page == "docs/monitoring.md" and anchor in anchors, (name, notes["runbook"])
        assert anchor == name.lower(), name


def test_compose_prometheus_config_passes_promtool_with_its_rules() -> None:
    result = run(tool("promtool"), "check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    assert [c["job_name"] for c in scrape] == [JOB]


# -- a live stack: bridges, a fake Uploadcare, a receiver and a Prometheus server ---------------


@dataclass
class Bridges:
    """Two running bridges: one delivering callbacks, one that Uploadcare refuses."""

    http: aiohttp.ClientSession
    targets: dict[str, str] = field(default_factory=dict)  # "127.0.0.1:port" -> role
    scrapes: dict[str, str] = field(default_factory=dict)  # role -> a /metrics body


@dataclass
class Stack:
    prometheus: str  # base URL of the server
    bridges: Bridges

    @property
    def scrapes(self) -> dict[str, str]:
        return self.bridges.scrapes

    @property
    def targets(self) -> dict[str, str]:
        return self.bridges.targets

    async def api(self, path: str, **params: str) -> Any:
        url = f"{self.prometheus}/api/v1/{path}"
        async with self.bridges.http.get(url, params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def wait_for(self, query: str, check: Any, timeout: float = 30.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            result: list[Any] = (await self.api("query", query=query))["result"]
            if check(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus never had {query!r}: {result}")
            await asyncio.sleep(0.25)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def prometheus_server(config: Path, data: Path) -> AsyncIterator[str]:
    """A Prometheus on a free loopback port, its data in ``data``, killed at the end."""
    binary = tool("prometheus")
    port = _free_port()
    log = (data.parent / "prometheus.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.returncode is not None:
                    said = (data.parent / "prometheus.log").read_text()[-2000:]
                    raise RuntimeError(f"prometheus exited {proc.returncode}: {said}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/-/ready") as resp:
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError("prometheus did not become ready in 30 s")
                await asyncio.sleep(0.2)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


def _prometheus_config(path: Path, targets: list[str]) -> None:
    """The compose stack's scrape job, pointed at loopback and made fast for a test."""
    shipped = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = shipped["scrape_configs"]
    job["static_configs"] = [{"targets": targets}]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [job],
    }
    path.write_text(yaml.safe_dump(config))


async def _register(http: aiohttp.ClientSession, bridge: str, token: int, url: str) -> None:
    async with http.post(
        f"{bridge}/v1/jobs",
        json={"token": token, "kind": "video", "callback_url": url},
        headers={"Authorization": f"Bearer {ALPHA}"},
    ) as resp:
        assert resp.status == 201, await resp.text()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bridges(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bridges]:
    tmp = tmp_path_factory.mktemp("bridges")
    async with contextlib.AsyncExitStack() as cleanup:
        rec = await cleanup.enter_async_context(receiver())
        up = await cleanup.enter_async_context(fake_upstream())
        env = {**FAST, "BRIDGE_PORT": "0", "BRIDGE_LOG_LEVEL": "info"}
        roles: dict[str, BridgeProcess] = {}
        for role, secret in (("working", None), ("rejected", "not-the-secret-key")):
            (tmp / role).mkdir()
            overrides = {**env, "BRIDGE_UPSTREAM_URL": up.url}
            if secret:
                overrides["UPLOADCARE_SECRET_KEY"] = secret  # Uploadcare answers 401
            roles[role] = BridgeProcess(["serve"], base_env(tmp / role, **overrides))
        for proc in roles.values():
            cleanup.push_async_callback(proc.stop)
        await asyncio.gather(*(p.start() for p in roles.values()))
        http = await cleanup.enter_async_context(aiohttp.ClientSession())
        live = Bridges(http=http, targets={f"127.0.0.1:{p.port}": r for r, p in roles.items()})

        # The working bridge delivers one outcome and keeps tracking a long conversion; the
        # other is refused by Uploadcare, so polling pauses for "credentials rejected (401)".
        done = up.fake.add_job("video", outcome="finished", duration=0.2)
        forever = up.fake.add_job("video", duration=math.inf)
        await _register(http, roles["working"].url, done, rec.url + "/hooks/done")
        await _register(http, roles["working"].url, forever, rec.url + "/hooks/forever")
        await _register(http, roles["rejected"].url, forever, rec.url + "/hooks/never")
        await rec.wait_for(lambda: bool(rec.at("/hooks/done")), timeout=30)
        deadline = time.monotonic() + 30
        while True:
            async with http.get(f"{roles['rejected'].url}/readyz") as resp:
                if (await resp.json())["upstream"]["state"] == "paused":
                    break
            assert time.monotonic() < deadline, "the rejected bridge never paused"
            await asyncio.sleep(0.1)
        for role, proc in roles.items():
            async with http.get(f"{proc.url}/metrics") as resp:
                live.scrapes[role] = await resp.text()
        yield live


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(bridges: Bridges, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = tmp / "prometheus.yml"
    _prometheus_config(config, sorted(bridges.targets))
    (tmp / "data").mkdir()
    async with prometheus_server(config, tmp / "data") as url:
        live = Stack(prometheus=url, bridges=bridges)
        # Some scrapes of both after the pause, so rates and the pause are in Prometheus.
        await live.wait_for(
            f'count_over_time(bridge_upstream_paused{{job="{JOB}"}}[1m]) >= 3',
            lambda r: len(r) == 1,
        )
        await live.wait_for(
            f'count_over_time(bridge_build_info{{job="{JOB}"}}[1m]) >= 3', lambda r: len(r) == 2
        )
        yield live


# The live tests share the module-scoped fixtures, so they share their event loop.
module_loop = pytest.mark.asyncio(loop_scope="module")


@module_loop
async def test_live_metrics_pass_promtool_check_metrics(bridges: Bridges) -> None:
    promtool = tool("promtool")
    for role, text in bridges.scrapes.items():
        result = run(promtool, "check", "metrics", stdin=text)
        assert result.returncode == 0, f"{role}: {result.stdout}{result.stderr}"
        assert result.stdout.strip() == "", f"{role}: {result.stdout}"


@module_loop
async def test_live_metrics_have_every_family_the_docs_promise(bridges: Bridges) -> None:
    # Needs no Prometheus: a family missing from /metrics fails here on any machine.
    families: dict[str, Any] = {}
    for text in bridges.scrapes.values():
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, []).append(family)
    missing = sorted(set(FAMILIES) - set(families))
    assert missing == [], f"families missing from /metrics: {missing}"
    for name, (kind, labels, values) in FAMILIES.items():
        samples = [s for f in families[name] for s in f.samples]
        assert {f.type for f in families[name]} == {kind}, name
        assert samples, f"{name} has no sample"
        for sample in samples:
            assert labels <= set(sample.labels), (name, sample)
        for label, wanted in values.items():
            seen = {s.labels[label] for s in samples}
            assert wanted <= seen, (name, label, wanted - seen)
    # The doc explains each of them.
    doc = MONITORING_DOC.read_text()
    undocumented = [n for n in FAMILIES if f"`{n}" not in doc]
    assert undocumented == [], f"docs/monitoring.md does not explain {undocumented}"


@module_loop
async def test_dashboard_and_alerts_read_only_series_the_bridge_exports(bridges: Bridges) -> None:
    # Checked against a live /metrics, so a family renamed or dropped fails here.
    live_names = set().union(*(sample_names(t) for t in bridges.scrapes.values()))
    queries = list(dashboard_queries())
    assert len(queries) >= 20
    for title, expr in queries:
        names = metric_names(expr)
        assert names, (title, expr)
        assert names <= live_names, f"dashboard {title!r}: {names - live_names} is not exported"
    for name, rule in alert_rules().items():
        names = metric_names(rule["expr"])
        assert names, name
        unknown = names - live_names - PROMETHEUS_SERIES
        assert unknown == set(), f"{name} reads series nothing exports: {unknown}"


@module_loop
async def test_prometheus_scrapes_the_bridges_and_answers_queries(stack: Stack) -> None:
    up = await stack.api("query", query=f'up{{job="{JOB}"}}')
    assert {r["metric"]["instance"]: r["value"][1] for r in up["result"]} == dict.fromkeys(
        stack.targets, "1"
    )
    info = await stack.api("query", query=f'bridge_build_info{{job="{JOB}"}}')
    assert {(r["metric"]["instance"], r["metric"]["version"]) for r in info["result"]} == {
        (target, __version__) for target in stack.targets
    }
    registered = await stack.api("query", query=f'sum(bridge_jobs_registered_total{{job="{JOB}"}})')
    assert registered["result"][0]["value"][1] == "3"
    paused = await stack.api(
        "query", query=f'max by (project, reason) (bridge_upstream_paused{{job="{JOB}"}})'
    )
    assert {
        (r["metric"]["project"], r["metric"]["reason"]): r["value"][1] for r in paused["result"]
    } == {("default", "credentials rejected (401)"): "1"}


@module_loop
async def test_alert_rules_evaluate_in_prometheus_and_only_the_right_one_is_active(
    stack: Stack,
) -> None:
    rules = alert_rules()
    deadline = time.monotonic() + 30
    while True:
        loaded = {
            r["name"]: r
            for g in (await stack.api("rules", type="alert"))["groups"]
            for r in g["rules"]
        }
        assert set(loaded) == set(rules)
        active = {n: r for n, r in loaded.items() if r["state"] != "inactive"}
        if "BridgeUpstreamCredentialsRejected" in active or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    # Uploadcare refuses one bridge's key: that alert is on its way (for: 1m), no other is.
    assert set(active) == {"BridgeUpstreamCredentialsRejected"}, active
    (alert,) = active["BridgeUpstreamCredentialsRejected"]["alerts"]
    assert alert["state"] in {"pending", "firing"}
    assert alert["labels"]["reason"] == "credentials rejected (401)"
    assert alert["labels"]["project"] == "default"
    assert alert["labels"]["severity"] == "critical"


@module_loop
async def test_every_dashboard_query_runs_in_prometheus(stack: Stack) -> None:
    queries = list(dashboard_queries())
    assert queries
    board = json.loads(DASHBOARD.read_text())
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        # label_values(metric, label) is Grafana's; Prometheus answers it as a label lookup.
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
        assert m, variable["definition"]
        values = await stack.api(f"label/{m[2]}/values", **{"match[]": m[1]})
        assert values == [JOB], variable["name"]
    now = time.time()
    empty = []
    for title, expr in queries:
        data = await stack.api(
            "query_range",
            query=grafana_expand(expr),
            start=str(now - 30),
            end=str(now),
            step="1",
        )
        assert data["resultType"] == "matrix", (title, expr)
        if not data["result"]:
            empty.append((title, expr))
    # On this live stack (a delivery, tracking, a pause) every panel has something to show.
    assert empty == [], empty
