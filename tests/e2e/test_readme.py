"""The README's commands, run as written, so that it cannot drift from what the bridge does.

The fenced ``sh`` blocks of "Run it locally against the fake upstream" run for real, each
in a fresh ``bash`` like a fresh terminal: blocks whose first line says "(keeps running)"
in the background (killed at the end), the others in order in one shell, once every
loopback port the section mentions answers. The only liberties taken: the section's ports
(8080, 8081, 9000) become free ones, the working directory is a temporary one holding a
link to this ``.venv``, and no BRIDGE_*, UPLOADCARE_* or proxy variable is inherited.
``make demo`` and ``make test`` are not re-run here (too slow, and recursive); their test
is that they come first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
QUICK_START = "## Quick start"
LOCAL_RUN = "### Run it locally against the fake upstream"
PORTS = (8080, 8081, 9000)
BACKGROUND = "(keeps running)"
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def section(text: str, heading: str) -> str:
    """From ``heading`` to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    lines = text.splitlines()
    start = lines.index(heading)
    for i in range(start + 1, len(lines)):
        hashes = lines[i].split(" ", 1)[0]
        if set(hashes) == {"#"} and len(hashes) <= len(level) and not _in_fence(lines, i):
            return "\n".join(lines[start:i])
    return "\n".join(lines[start:])


def _in_fence(lines: list[str], index: int) -> bool:
    return sum(1 for line in lines[:index] if line.startswith("```")) % 2 == 1


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    """The commands of a block, comments stripped."""
    out = []
    for line in block.splitlines():
        command = line.split("#", 1)[0].strip()
        if command:
            out.append(command)
    return out


def test_make_demo_and_make_test_are_the_first_commands() -> None:
    text = README.read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0] == QUICK_START
    first_block = shell_blocks(text)[0]
    assert first_block in section(text, QUICK_START)
    assert commands(first_block) == ["make demo", "make test"]
    # Both targets install first, so they work on a fresh clone.
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo: install\n\t\$\(BIN\)/bridge demo", makefile, re.MULTILINE)
    assert re.search(r"^test: install\n", makefile, re.MULTILINE)


def test_the_local_run_uses_the_fake_and_loopback_only() -> None:
    local = section(README.read_text(encoding="utf-8"), LOCAL_RUN)
    blocks = shell_blocks(local)
    assert [b for b in blocks if BACKGROUND in b.splitlines()[0]] == blocks[:3]
    hosts = set(re.findall(r"https?://([^/:\s\"']+)", "\n".join(blocks)))
    assert hosts == {"127.0.0.1"}
    for port in PORTS:
        assert str(port) in local


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _environment() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIDGE_", "UPLOADCARE_")) and k.lower() not in PROXY_VARS
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


class Terminal:
    """One block running in the background, in its own process group."""

    def __init__(self, block: str, proc: asyncio.subprocess.Process) -> None:
        self.block = block
        self.proc = proc
        self.output = b""

    async def stop(self) -> str:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        assert self.proc.stdout is not None
        self.output += await self.proc.stdout.read()
        return self.output.decode(errors="replace")


async def _start(block: str, cwd: Path, env: dict[str, str]) -> Terminal:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        block,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    return Terminal(block, proc)


async def test_the_local_run_works_as_written(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("the README's local run uses curl, which this machine lacks")
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "bridge").exists():
        pytest.skip("the tests do not run from a virtualenv holding the bridge command")
    (tmp_path / ".venv").symlink_to(venv)

    ports = {port: _free_port() for port in PORTS}
    local = section(README.read_text(encoding="utf-8"), LOCAL_RUN)
    local = re.sub(r"\b(8080|8081|9000)\b", lambda m: str(ports[int(m[1])]), local)
    blocks = shell_blocks(local)
    background = [b for b in blocks if BACKGROUND in b.splitlines()[0]]
    foreground = [b for b in blocks if b not in background]
    assert len(background) == 3 and len(foreground) == 2
    env = _environment()

    terminals = [await _start(block, tmp_path, env) for block in background]
    outputs: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not all(_answers(p) for p in ports.values()):
            exited = [t for t in terminals if t.proc.returncode is not None]
            if exited or time.monotonic() > deadline:
                outputs = [await t.stop() for t in terminals]
                raise AssertionError("a terminal did not come up:\n" + "\n---\n".join(outputs))
            await asyncio.sleep(0.1)

        # Terminal 4 in one shell; "a few seconds later" is the last block, repeated until
        # the job reads delivered.
        register, later = foreground
        script = (
            "set -euo pipefail\n"
            f"{register}\n"
            "echo\n"
            "for attempt in $(seq 1 120); do\n"
            f"  answer=$({later})\n"
            '  case "$answer" in *\'"state":"delivered"\'*) break ;; esac\n'
            "  sleep 0.25\n"
            "done\n"
            'printf "%s\\n" "$answer"\n'
        )
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        raw, _ = await asyncio.wait_for(shell.communicate(), 90)
        answers = raw.decode()
        assert shell.returncode == 0, answers
    finally:
        outputs = [await t.stop() for t in terminals]

    fake_out, serve_out, receiver_out = outputs
    registered, _, final = answers.strip().partition("\n")
    assert '"state":"tracking"' in registered, answers
    token = re.search(r'"token":(\d+)', registered)
    assert token, registered
    assert '"state":"delivered"' in final, answers
    assert f'"token":{token[1]}' in final
    # The receiver verified the callback and printed it: id, type, data.
    assert re.search(
        rf"^msg_\S+ video\.conversion\.(finished|failed|canceled) .*'token': {token[1]}",
        receiver_out,
        re.MULTILINE,
    ), receiver_out
    assert "'order': 'A-1001'" in receiver_out
    assert "fake_upstream_listening" in fake_out
    assert "serving" in serve_out and "Traceback" not in serve_out


# -- the receiver's snippets, run against callbacks the bridge signed ------------------------

VERIFYING = "## Verifying a callback"
V1A = "### Ed25519 signatures (`v1a`)"
ROTATING = "### Rotating the signing secret"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def _snippet(heading: str, placeholder: str, value: str) -> str:
    (block, *_) = python_blocks(section(README.read_text(encoding="utf-8"), heading))
    assert block.count(placeholder) == 1, block
    return block.replace(placeholder, value)


async def bridge_callback(keys: list[Any]) -> tuple[bytes, dict[str, str]]:
    """A callback as the bridge sends it: a real body, POSTed and signed by the Deliverer to
    a receiver on loopback; the body and headers that receiver got."""
    from bridge.delivery import Deliverer, callback_session
    from bridge.model import callback_body, webhook_id
    from bridge.netpolicy import NetworkPolicy, parse_networks
    from tests.harness import receiver

    body = callback_body(
        job_id="job_01jdx2v9q4k8m3n6p7r5s2t0wa",
        project="default",
        kind="video",
        token=426339926,
        outcome="finished",
        error=None,
        result_json='{"uuid": "a5b1c7e2-0000-4000-8000-000000000001"}',
        metadata_json='{"order": "A-1001"}',
        seen_at=time.time(),
    )
    async with receiver() as rec:
        policy = NetworkPolicy(allow=parse_networks("127.0.0.0/8"))
        async with callback_session(policy, concurrency=1) as session:
            msg_id = webhook_id("job_01jdx2v9q4k8m3n6p7r5s2t0wa")
            result = await Deliverer(session, timeout=5).attempt(
                rec.url + "/hook", body, msg_id, keys
            )
        assert result.delivered, result
    (call,) = rec.calls
    return call.body, {k.lower(): v for k, v in call.headers.items()}


async def test_the_v1_snippet_verifies_callbacks_during_a_rotation() -> None:
    from standardwebhooks.webhooks import WebhookVerificationError

    from bridge.webhooks import SigningKey, generate_secret

    new, old = generate_secret(), generate_secret()
    body, headers = await bridge_callback([SigningKey("v1", new), SigningKey("v1", old, None, 1)])
    handled: list[Any] = []
    for secret in (new, old):  # a receiver holding either one accepts it
        scope: dict[str, Any] = {
            "already_processed": lambda msg_id: False,
            "process": handled.append,
            "remember": lambda msg_id: None,
        }
        exec(_snippet(VERIFYING, '"whsec_..."', repr(secret)), scope)
        assert scope["handle"](body, headers) == 204
    assert [d["token"] for d in handled] == [426339926, 426339926]
    with pytest.raises(WebhookVerificationError):
        scope["handle"](body.replace(b"A-1001", b"A-1002"), headers)
    exec(_snippet(VERIFYING, '"whsec_..."', repr(generate_secret())), scope)
    with pytest.raises(WebhookVerificationError):
        scope["handle"](body, headers)


async def test_the_v1a_snippet_verifies_callbacks_during_a_rotation() -> None:
    from bridge.webhooks import SigningKey, generate_keypair

    (new, new_public), (old, old_public) = generate_keypair(), generate_keypair()
    keys = [SigningKey("v1a", new, new_public), SigningKey("v1a", old, old_public, 1)]
    body, headers = await bridge_callback(keys)
    assert headers["webhook-signature"].count("v1a,") == 2
    for public in (new_public, old_public):
        scope: dict[str, Any] = {}
        exec(_snippet(V1A, '"whpk_..."', repr(public)), scope)
        event = scope["verify_v1a"](body, headers)
        assert event["data"]["metadata"] == {"order": "A-1001"}
        with pytest.raises(ValueError, match="no valid v1a signature"):
            scope["verify_v1a"](body + b" ", headers)
    exec(_snippet(V1A, '"whpk_..."', repr(generate_keypair()[1])), scope)
    with pytest.raises(ValueError, match="no valid v1a signature"):
        scope["verify_v1a"](body, headers)


def test_the_rotation_call_is_the_apis() -> None:
    from bridge.openapi import document

    block = shell_blocks(section(README.read_text(encoding="utf-8"), ROTATING))[0]
    assert "-X POST http://127.0.0.1:8080/v1/signing-secrets/rotate" in block
    assert "201" in document()["paths"]["/v1/signing-secrets/rotate"]["post"]["responses"]
