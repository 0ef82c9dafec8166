"""Run ``bridge`` as a real subprocess and read its JSON log lines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

# Enough for a cold interpreter on a busy 2-core machine.
START_TIMEOUT = 30.0


class BridgeProcess:
    def __init__(self, args: list[str], env: Mapping[str, str | None]) -> None:
        self.args = args
        self.env = environment(env)
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.port: int | None = None
        self._reader: asyncio.Task[None] | None = None
        self._serving = asyncio.Event()
        self.stderr = ""

    async def start(self, wait: bool = True) -> BridgeProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            *self.args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        if wait:
            waiter = asyncio.create_task(self._serving.wait())
            exited = asyncio.create_task(self.proc.wait())
            await asyncio.wait(
                {waiter, exited}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            exited.cancel()
            if not self._serving.is_set():
                await self.stop(signal.SIGKILL)
                raise RuntimeError(f"bridge did not start: {self.stderr or self.lines[-5:]}")
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode()
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "serving":
                self.port = int(event["port"])
                self._serving.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    async def wait(self, timeout: float = START_TIMEOUT) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        if self.proc.stderr is not None:
            self.stderr = (await self.proc.stderr.read()).decode()
        return code

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = START_TIMEOUT) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await self.wait(timeout)


def environment(env: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment with ``env`` laid over it; None unsets a variable."""
    merged = {**os.environ, **env}
    return {name: value for name, value in merged.items() if value is not None}


async def run_bridge(
    args: list[str], env: Mapping[str, str | None], timeout: float = 60
) -> tuple[int, str, str]:
    """Run a short command to completion: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        env=environment(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
