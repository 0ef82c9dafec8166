"""Every Prometheus collector, in one place, on a registry of the app's own."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest

from bridge import __version__
from bridge.model import KINDS, OUTCOMES, STATES
from bridge.polldecision import CLOCK_SKEW_REASON

DEFAULT_PROJECT = "default"

# Upstream answers in tens of milliseconds to seconds; callbacks up to the 15 s timeout.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)
# From an outcome to the receiver: sub-second when all is well, hours through retries.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CALLBACK_RESULTS = ("success", "http_error", "timeout", "connection_error", "blocked")


def paused_label(reason: str) -> str:
    """The ``reason`` label of ``bridge_upstream_paused`` for a pause's reason."""
    return CLOCK_SKEW_REASON if reason.startswith(CLOCK_SKEW_REASON) else reason


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.build_info = Gauge(
            "bridge_build_info", "The running version (always 1).", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        self.jobs_registered = Counter(
            "bridge_jobs_registered",
            "New jobs (an idempotent repeat is not one).",
            ["kind"],
            registry=r,
        )
        self.jobs = Gauge(
            "bridge_jobs",
            "Jobs in the database by state; every replica reports the whole database.",
            ["state"],
            registry=r,
        )
        self.outcomes = Counter(
            "bridge_outcomes", "Outcomes recorded, per job.", ["kind", "outcome"], registry=r
        )
        self.upstream_requests = Counter(
            "bridge_upstream_requests",
            "HTTP requests sent to Uploadcare, by status code, 'timeout' or 'error', and project.",
            ["code", "project"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "bridge_upstream_request_duration_seconds",
            "Duration of upstream requests.",
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.upstream_throttled = Counter(
            "bridge_upstream_throttled",
            "429 answers from Uploadcare, by project.",
            ["project"],
            registry=r,
        )
        self._paused_reasons: set[tuple[str, str]] = set()  # (label, project) ever set
        self.upstream_paused = Gauge(
            "bridge_upstream_paused",
            "1 while polling of the project is paused for that reason.",
            ["reason", "project"],
            registry=r,
        )
        self.upstream_clock_skew = Gauge(
            "bridge_upstream_clock_skew_seconds",
            "Uploadcare's clock minus this host's, from the last answer's Date.",
            ["project"],
            registry=r,
        )
        self.callback_attempts = Counter(
            "bridge_callback_attempts", "Callback attempts by result.", ["result"], registry=r
        )
        self.callback_duration = Histogram(
            "bridge_callback_duration_seconds",
            "Duration of callback attempts.",
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.callback_circuits_open = Gauge(
            "bridge_callback_circuits_open",
            "Callback hosts whose circuit is open (in this process).",
            registry=r,
        )
        self.deliveries = Counter(
            "bridge_deliveries", "Rounds of attempts by how they ended.", ["outcome"], registry=r
        )
        self.notification_latency = Histogram(
            "bridge_notification_latency_seconds",
            "From recording an outcome to the receiver's 2xx.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.scheduler_lag = Histogram(
            "bridge_scheduler_lag_seconds",
            "How late work starts after it is due.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.backlog = Gauge(
            "bridge_backlog",
            "Work due now and not yet started, in the whole database.",
            ["work"],
            registry=r,
        )
        self.backlog_oldest = Gauge(
            "bridge_backlog_oldest_seconds",
            "How long the oldest due, unstarted item has been due (0 when none).",
            ["work"],
            registry=r,
        )
        self.poll_plan_samples = Gauge(
            "bridge_poll_plan_samples",
            "Conversions of this kind the poll plan learned from (weighted; 0 while the "
            "growth rule holds for want of history).",
            ["kind"],
            registry=r,
        )
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # Known label values start at zero, so rates and absent() behave from the first scrape.
        for kind in KINDS:
            self.jobs_registered.labels(kind)
            for outcome in OUTCOMES:
                self.outcomes.labels(kind, outcome)
        for state in STATES:
            self.jobs.labels(state).set(0)
        for kind in KINDS:
            self.poll_plan_samples.labels(kind).set(0)
        for result in CALLBACK_RESULTS:
            self.callback_attempts.labels(result)
        for outcome in ("delivered", "undeliverable"):
            self.deliveries.labels(outcome)

    def set_job_counts(self, counts: dict[str, int]) -> None:
        for state in STATES:
            self.jobs.labels(state).set(counts.get(state, 0))

    def add_projects(self, projects: Iterable[str]) -> None:
        """The configured projects' series start at zero, so rates and absent() behave
        from the first scrape."""
        for project in projects:
            self.upstream_throttled.labels(project)

    def upstream_request(self, code: str, seconds: float, project: str) -> None:
        """``UpstreamClient``'s ``on_request`` hook: one HTTP request sent upstream."""
        self.upstream_requests.labels(code, project).inc()
        self.upstream_duration.observe(seconds)
        if code == "429":
            self.upstream_throttled.labels(project).inc()

    def clock_skew(self, project: str, seconds: float) -> None:
        """``UpstreamClient``'s ``on_clock_skew`` hook."""
        self.upstream_clock_skew.labels(project).set(seconds)

    def set_paused(self, reasons: set[tuple[str, str]]) -> None:
        """1 for each (reason, project) polling is paused for; one that ended stays, at 0.
        A clock-skew reason is labelled ``clock skew`` alone: its size would make a new
        label value at every change."""
        labels = {(paused_label(reason), project) for reason, project in reasons}
        for label, project in self._paused_reasons - labels:
            self.upstream_paused.labels(label, project).set(0)
        for label, project in labels:
            self.upstream_paused.labels(label, project).set(1)
        self._paused_reasons |= labels

    def set_backlog(self, backlog: dict[str, tuple[int, float | None]], now: float) -> None:
        for work in ("poll", "delivery"):
            count, oldest = backlog.get(work, (0, None))
            self.backlog.labels(work).set(count)
            self.backlog_oldest.labels(work).set(max(0.0, now - oldest) if oldest else 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
