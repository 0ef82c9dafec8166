"""Tests in this folder open sockets, on loopback only: a guard fails any other dial."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import aiohappyeyeballs
import pytest


@pytest.fixture(autouse=True)
def dialled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Every (address, port) aiohttp starts a connection to; off loopback is refused."""
    seen: list[tuple[str, int]] = []
    real = aiohappyeyeballs.start_connection

    async def guarded(addr_infos: Sequence[Any], **kwargs: Any) -> socket.socket:
        for info in addr_infos:
            host, port = str(info[4][0]), int(info[4][1])
            seen.append((host, port))
            if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
                raise AssertionError(f"test tried to dial {host}")
        return await real(addr_infos, **kwargs)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", guarded)
    yield seen
