"""A resolver for tests: fixed answers per name, so policy tests never touch real DNS."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence

from aiohttp.abc import AbstractResolver, ResolveResult


class StaticResolver(AbstractResolver):
    """name -> addresses; a list of lists is answered in turn (the last one repeats)."""

    def __init__(self, table: Mapping[str, Sequence[str] | Sequence[Sequence[str]]]) -> None:
        self._table = {name: list(answers) for name, answers in table.items()}
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        name = host.rstrip(".").lower()
        self.calls.append(name)
        answers = self._table.get(name)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if isinstance(answers[0], str):
            addrs = [str(a) for a in answers]
        else:
            turn = sum(1 for call in self.calls if call == name) - 1
            addrs = list(answers[min(turn, len(answers) - 1)])
        return resolve_results(host, port, addrs)

    async def close(self) -> None:
        pass


def resolve_results(host: str, port: int, addrs: Sequence[str]) -> list[ResolveResult]:
    """What a resolver hands aiohttp for ``host``: one numeric result per address."""
    return [
        ResolveResult(
            hostname=host,
            host=addr,
            port=port,
            family=socket.AF_INET6 if ":" in addr else socket.AF_INET,
            proto=socket.IPPROTO_TCP,
            flags=socket.AI_NUMERICHOST,
        )
        for addr in addrs
    ]
