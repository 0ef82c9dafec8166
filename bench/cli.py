"""``python -m bench``: options, the run, and one JSON object of figures on stdout.

Progress goes to stderr. Exit status 0 when the run went through; 1 with one ``bench:
error:`` line (and the tail of a log when a server is to blame) when it did not, or when
the figures show something wrong (a bad signature, the rate limit exceeded), which is
said after the JSON; 2 for bad options; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from bench import compare, frontier, scale
from bench.children import BenchError, kill_leftovers
from bench.machine import machine
from bench.workload import parse_durations
from bridge.settings import parse_duration

MODES: Final = ("compare", "scale", "frontier")
# Per mode, what --jobs means when not given.
DEFAULT_JOBS: Final = {"compare": 20_000, "scale": 100_000}
INTERRUPTED: Final = 130


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from a parser that raises ValueError with a good message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.strip("_")
    return convert


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} is not a positive whole number")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{text!r} is not a positive number")
    return value


def _delay(text: str) -> float:
    return parse_duration(text, allow_zero=True)


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"{text!r} is not NAME=VALUE")
    return name.strip(), value


def _source_tree(text: str) -> Path:
    path = Path(text).resolve()
    if not (path / "bridge" / "__init__.py").is_file():
        raise ValueError(f"{text!r} holds no bridge package (no bridge/__init__.py)")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measures the bridge against a minimal reference poller on this machine "
        "and prints the figures as one JSON object (progress on stderr).",
    )
    parser.add_argument("--mode", choices=MODES, default="compare", help="(default: compare)")
    work = parser.add_argument_group("workload")
    work.add_argument(
        "--jobs", type=_typed(_positive_int), help="jobs to run (compare: 20000, scale: 100000)"
    )
    work.add_argument(
        "--durations",
        type=_typed(parse_durations),
        default=parse_durations("uniform:1s:4s"),
        metavar="SPEC",
        help="conversion lengths: lognormal:MEDIAN:SIGMA, uniform:LO:HI or "
        "mix:P:FAST_HI:SLOW_LO:SLOW_HI (default uniform:1s:4s)",
    )
    work.add_argument(
        "--rate", type=_typed(_positive), help="offered jobs per second (default: all it takes)"
    )
    work.add_argument(
        "--clients", type=_typed(_positive_int), default=32, help="concurrent clients (32)"
    )
    work.add_argument("--seed", type=int, default=1, help="workload seed (1)")
    pacing = parser.add_argument_group("poll pacing (both systems)")
    pacing.add_argument(
        "--initial-delay",
        type=_typed(_delay),
        default=1.0,
        metavar="DURATION",
        help="first poll after a registration (1s)",
    )
    pacing.add_argument(
        "--min-interval",
        type=_typed(parse_duration),
        default=2.0,
        metavar="DURATION",
        help="shortest poll interval (2s)",
    )
    pacing.add_argument(
        "--max-interval",
        type=_typed(parse_duration),
        default=60.0,
        metavar="DURATION",
        help="longest poll interval (60s)",
    )
    _add_run_options(parser)
    frontier.add_arguments(parser)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("the run")
    run.add_argument("--skip-reference", action="store_true", help="compare: bridge only")
    run.add_argument("--skip-bridge", action="store_true", help="compare: reference only")
    run.add_argument(
        "--timeout",
        type=_typed(parse_duration),
        default=300.0,
        metavar="DURATION",
        help="compare: how long callbacks may take after the last registration (300s)",
    )
    run.add_argument(
        "--rps", type=_typed(_positive), default=200.0, help="scale: BRIDGE_UPSTREAM_RPS (200)"
    )
    run.add_argument(
        "--observe",
        type=_typed(parse_duration),
        default=30.0,
        metavar="DURATION",
        help="scale: seconds to watch after registering (30s)",
    )
    run.add_argument(
        "--bridge-src",
        type=_typed(_source_tree),
        metavar="DIR",
        help="measure the bridge of this source tree (e.g. a git worktree of an older commit)",
    )
    run.add_argument(
        "--bridge-env",
        type=_typed(_env_pair),
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the bridge (repeatable; wins over the bench's own)",
    )
    run.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, database)"
    )


async def _run(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    # SIGTERM ends the run like Ctrl-C does: the children are stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    runner = scale.run if args.mode == "scale" else compare.run
    figures, problems = await runner(args, workdir)
    return {"mode": args.mode, "machine": machine(args, workdir), **figures}, problems


def _frontier(args: argparse.Namespace) -> dict[str, Any]:
    return frontier.run(args)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.min_interval > args.max_interval:
        parser.error("--min-interval must not be above --max-interval")
    if args.skip_reference and args.skip_bridge:
        parser.error("--skip-reference and --skip-bridge leave nothing to measure")
    if args.jobs is None:
        args.jobs = DEFAULT_JOBS.get(args.mode, 0)
    args.bridge_env = dict(args.bridge_env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    try:
        if args.mode == "frontier":
            result, problems = _frontier(args), list[str]()
        else:
            result, problems = asyncio.run(_run(args, workdir))
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; every process it started is stopped", file=sys.stderr)
        return INTERRUPTED
    finally:
        kill_leftovers()
        if args.keep:
            print(f"bench: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2, allow_nan=False))
    for problem in problems:
        print(f"bench: error: {problem}", file=sys.stderr)
    return 1 if problems else 0
