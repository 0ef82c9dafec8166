"""SQLite's one-process lock is the kernel's: it dies with the process that held it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.store import StoreError
from bridge.store.sqlite_driver import SQLiteStore


async def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys, time\n"
            "from bridge.store.sqlite_driver import SQLiteStore\n"
            f"asyncio.run(SQLiteStore.open({str(path)!r}))\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            with pytest.raises(StoreError):
                await SQLiteStore.open(str(path))
            holder.kill()
            holder.wait()
            reopened = await SQLiteStore.open(str(path))
            await reopened.close()
        finally:
            holder.kill()
