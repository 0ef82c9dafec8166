"""The processes a run starts, how they start and stop, and what /proc says about them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import aiohttp

from bench.serving import CONFIG_VAR, HOST

# The tree that holds ``bench`` and, unless --bridge-src says otherwise, the bridge measured.
ROOT: Final = Path(__file__).resolve().parent.parent
# Enough for a cold interpreter on a busy 2-core machine, migrations included.
START_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 10.0
LOG_TAIL_BYTES: Final = 4000

# How the bridge is started: this sets the parent-death signal (Linux prctl
# PR_SET_PDEATHSIG, kept across exec) and then becomes ``python -m bridge serve`` in the
# same process, so that a driver killed with SIGKILL, which can clean nothing up, still
# takes the bridge with it. Our own servers watch their stdin instead (bench.serving).
_DIE_WITH_PARENT: Final = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("the bench driver is gone")
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""

# Every child started and not yet reaped, for a last SIGKILL should the driver's own
# clean-up be cut short (a second Ctrl-C).
_live: set[int] = set()


class BenchError(Exception):
    """The bench cannot go on; ``str()`` starts with one line for the user."""


def kill_leftovers() -> None:
    for pid in list(_live):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        _live.discard(pid)


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def python_path(first: Path) -> str:
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (str(first), rest) if p)


def tail(path: Path) -> str:
    """The last lines of a log, indented, for an error message."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return "  (no log)"
    lines = text.splitlines()[-15:]
    return "\n".join("  " + line for line in lines) or "  (empty log)"


# --- /proc ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """CPU time so far, and resident memory now and at its peak (MB), of one process."""

    cpu_seconds: float
    rss_mb: float | None
    peak_rss_mb: float | None


def usage(pid: int) -> Usage:
    try:
        return _usage(pid)
    except (OSError, IndexError, ValueError) as exc:
        raise BenchError(f"cannot read /proc/{pid}: {exc}") from None


def _usage(pid: int) -> Usage:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces:
    # state is field 3, utime and stime fields 14 and 15.
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    status: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        status[name] = value.strip()
    return Usage(
        cpu_seconds=ticks / os.sysconf("SC_CLK_TCK"),
        rss_mb=_megabytes(status.get("VmRSS")),
        peak_rss_mb=_megabytes(status.get("VmHWM")),
    )


def _megabytes(value: str | None) -> float | None:
    if not value or not value.endswith("kB"):
        return None
    return int(value.removesuffix("kB")) / 1024


# --- Children --------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    port: int
    log: IO[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        """Raises BenchError, with the tail of its log, when the process has exited."""
        if self.proc.returncode is not None:
            raise BenchError(
                f"the {self.name} exited with status {self.proc.returncode}; "
                f"{self.log_path.name} ends:\n{tail(self.log_path)}"
            )

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        _live.discard(self.proc.pid)
        self.log.close()


class Fleet:
    """The children of one run: all stopped when the ``async with`` ends, however it ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        workdir.mkdir(parents=True, exist_ok=True)

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Concurrently: the bridge's graceful stop must not wait for the others' in turn.
        stops = (child.stop() for child in reversed(self.children))
        await asyncio.gather(*stops, return_exceptions=True)

    def check(self) -> None:
        for child in self.children:
            child.check()

    async def _spawn(
        self, name: str, args: list[str], env: Mapping[str, str], *, ready_line: bool
    ) -> Child:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                cwd=self.workdir,  # not the source tree: cwd comes first on sys.path
                env=dict(env),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE if ready_line else log,
                stderr=log if ready_line else asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            log.close()
            raise BenchError(f"cannot start the {name}: {exc}") from None
        _live.add(proc.pid)
        child = Child(name, proc, log_path, 0, log)
        self.children.append(child)
        return child

    async def server(self, name: str, module: str, config: Mapping[str, Any]) -> Child:
        """One of the bench's own servers (``bench.serving``), listening when this returns."""
        env = {
            **os.environ,
            "PYTHONPATH": python_path(ROOT),
            CONFIG_VAR: json.dumps(dict(config)),
        }
        child = await self._spawn(name, ["-m", module], env, ready_line=True)
        assert child.proc.stdout is not None
        try:
            line = await asyncio.wait_for(child.proc.stdout.readline(), START_TIMEOUT)
            child.port = int(json.loads(line)["port"])
        except (TimeoutError, ValueError, KeyError, TypeError):
            await child.stop()
            raise BenchError(
                f"the {name} did not start; {child.log_path.name} ends:\n{tail(child.log_path)}"
            ) from None
        return child

    async def bridge(self, env: Mapping[str, str], port: int) -> Child:
        """``python -m bridge serve`` with ``env``, answering /readyz when this returns."""
        args = ["-c", _DIE_WITH_PARENT, str(os.getpid()), "-m", "bridge", "serve"]
        child = await self._spawn("bridge", args, env, ready_line=False)
        child.port = port
        await _wait_ready(child)
        return child


async def _wait_ready(child: Child) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            child.check()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{child.url}/readyz") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the bridge did not become ready within {START_TIMEOUT:g}s; "
                    f"bridge.log ends:\n{tail(child.log_path)}"
                )
            await asyncio.sleep(0.1)


async def module_path(env: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """Where ``import bridge`` leads with this environment and working directory, and its
    version: the same lookup ``python -m bridge`` makes, so the figures name the tree
    that was measured."""
    probe = "import json, bridge; print(json.dumps([bridge.__file__, bridge.__version__]))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        probe,
        cwd=cwd,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    if proc.returncode != 0:
        raise BenchError(f"cannot import bridge for the bridge process: {err.decode().strip()}")
    path, version = json.loads(out)
    return {"path": str(Path(path).parent), "version": str(version)}
