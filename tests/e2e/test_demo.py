"""``bridge demo``: end to end on loopback, as a newcomer runs it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bridge.demo import Options, percentile, run_demo
from tests import catalog
from tests.proc import run_bridge

CALLBACK_LINE = re.compile(
    r"^  \[\s*(\d+)/(\d+)\] (video|document)\.conversion\.(finished|failed|canceled)\s+"
    r"token (\d+)\s+(job_[0-9a-z]{26})  verified"
)


def row(out: str, label: str) -> str:
    """The value of one row of the summary table."""
    match = re.search(rf"^  {re.escape(label)}\s{{2,}}(.+)$", out, re.MULTILINE)
    assert match, f"no {label!r} row in:\n{out}"
    return match[1]


async def test_demo_of_20_jobs_ends_with_every_callback_verified() -> None:
    code, out, err = await run_bridge(["demo", "--jobs", "20"], {}, timeout=110)
    assert code == 0, out + err
    assert "Traceback" not in out + err
    # The bridge's JSON logs went to the file, not to the newcomer's terminal.
    assert not [line for line in out.splitlines() if line.startswith("{")]
    assert "bridge logs" in out

    callbacks = [m for line in out.splitlines() if (m := CALLBACK_LINE.match(line))]
    assert len(callbacks) == 20
    assert sorted(int(m[1]) for m in callbacks) == list(range(1, 21))
    assert len({m[6] for m in callbacks}) == 20  # one per job
    assert {m[3] for m in callbacks} == {"video", "document"}
    # A progress line, then the final one with everything delivered.
    assert re.search(r"registered 20/20  tracking 0  delivered 20/20", out)

    assert row(out, "jobs") == "20 registered, 20 delivered"
    outcomes = {name: int(n) for n, name in re.findall(r"(\d+) (\w+)", row(out, "outcomes"))}
    assert outcomes == Counter(m[4] for m in callbacks)
    per_job = re.match(
        r"min (\d+)  median (\d+)  max (\d+)  \((\d+) status requests in all; 200: (\d+)\)",
        row(out, "upstream requests per job"),
    )
    assert per_job, row(out, "upstream requests per job")
    low, _, high, total, ok = (int(x) for x in per_job.groups())
    assert 1 <= low <= high and 20 * low <= total <= 20 * high and ok == total
    attempts = row(out, "callback attempts")
    assert attempts.startswith("20 for 20 jobs (success: 20)")
    assert attempts.endswith("receiver got 20: 20 verified, 0 duplicates")
    assert re.match(r"p50 \S+  p95 \S+  max \S+", row(out, "notification latency"))
    assert re.search(r"\nOK: all 20 callbacks arrived, each verified, in [\d.]+s\.$", out.rstrip())
    # The temporary directory is gone after a successful run.
    workdir = re.search(r"bridge logs\s+(\S+)/bridge\.log", out)
    assert workdir and not Path(workdir[1]).exists()


async def test_failed_conversions_are_delivered_too(tmp_path: Path) -> None:
    out = io.StringIO()
    options = Options(jobs=4, failures=1.0, min_duration=0.2, max_duration=0.6, timeout=60)
    assert await run_demo(options, out, tmp_path, observe=catalog.check) == 0
    text = out.getvalue()
    assert row(text, "outcomes") == "4 failed"
    assert len(re.findall(r"\.conversion\.failed ", text)) == 4


async def test_two_projects_side_by_side_each_polled_with_its_own_keys(tmp_path: Path) -> None:
    bodies: list[dict[str, Any]] = []

    def observe(body: bytes) -> None:
        catalog.check(body)
        bodies.append(json.loads(body))

    out = io.StringIO()
    options = Options(
        jobs=6, failures=0.0, min_duration=0.2, max_duration=0.6, timeout=60, projects=2
    )
    assert await run_demo(options, out, tmp_path, observe=observe) == 0
    text = out.getvalue()
    assert "projects       default (demopublickey), p2 (demopublickey2)" in text
    # Round robin: three jobs each, every one delivered, its callback naming its project.
    by_job = {b["data"]["job_id"]: b["data"]["project"] for b in bodies}
    assert Counter(by_job.values()) == {"default": 3, "p2": 3}
    assert len(re.findall(r"verified, .* \(project default\)$", text, re.MULTILINE)) == 3
    assert len(re.findall(r"verified, .* \(project p2\)$", text, re.MULTILINE)) == 3
    # Each project's line: its jobs, and its upstream requests as the bridge counted them
    # (bridge_upstream_requests_total{project}) equal to those the fake got with its keys.
    for name, public in (("default", "demopublickey"), ("p2", "demopublickey2")):
        line = re.fullmatch(
            r"3 registered, 3 delivered; outcomes 3 finished; upstream requests (\d+) "
            rf"\(200: (\d+)\), the fake got (\d+) signed {public}",
            row(text, f"project {name}"),
        )
        assert line, row(text, f"project {name}")
        total, ok, seen = (int(x) for x in line.groups())
        assert 3 <= total == ok == seen
    assert row(text, "jobs") == "6 registered, 6 delivered"
    assert "OK: all 6 callbacks arrived, each verified" in text


async def test_a_callback_that_does_not_verify_fails_the_demo(tmp_path: Path) -> None:
    out = io.StringIO()
    options = Options(jobs=2, failures=0.0, min_duration=0.2, max_duration=0.4, timeout=4)
    wrong = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert await run_demo(options, out, tmp_path, verify_with=wrong, observe=catalog.check) == 1
    text = out.getvalue()
    assert "REFUSED" in text
    assert "FAILED: 2 of 2 callbacks did not arrive verified within 4s" in text
    assert "FAILED: the receiver refused" in text
    assert "OK:" not in text


async def test_ctrl_c_stops_everything_cleanly() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "demo",
        "--jobs",
        "200",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []

    async def until_progress() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            seen.append(raw.decode())
            if "registered" in seen[-1] and "tracking" in seen[-1]:
                return

    try:
        await asyncio.wait_for(until_progress(), 60)
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = "".join(seen) + rest.decode()
    assert proc.returncode == 130, out + err.decode()
    assert "Interrupted: stopped the bridge, the receiver and the fake upstream." in out
    assert "Traceback" not in out + err.decode()
    workdir = re.search(r"bridge logs\s+(\S+)/bridge\.log", out)
    assert workdir and not Path(workdir[1]).exists()


async def test_demo_is_listed_and_checks_its_flags() -> None:
    code, out, _ = await run_bridge(["--help"], {})
    assert code == 0 and "demo" in out
    code, out, _ = await run_bridge(["demo", "--help"], {})
    assert code == 0 and "--jobs" in out and "--failures" in out
    code, _, err = await run_bridge(["demo", "--jobs", "0"], {})
    assert code == 2 and "number of jobs" in err
    code, _, err = await run_bridge(["demo", "--failures", "2"], {})
    assert code == 2 and "odds must be between 0 and 1" in err
    code, _, err = await run_bridge(["demo", "--projects", "9"], {})
    assert code == 2 and "number of projects from 1 to 8" in err


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 0.5) == 10
    assert percentile(values, 0.95) == 19
    assert percentile([3.0], 0.95) == 3


async def test_a_failed_registration_stops_the_others_and_is_raised_as_itself() -> None:
    from bridge.demo import DemoError, _gather

    finished: list[int] = []

    async def one(n: int) -> None:
        if n == 2:
            raise DemoError("the bridge refused a registration: 422")
        await asyncio.sleep(5)
        finished.append(n)

    try:
        await _gather(one(n) for n in range(1, 5))
    except DemoError as exc:
        assert str(exc) == "the bridge refused a registration: 422"
    else:
        raise AssertionError("no error")
    assert finished == []
