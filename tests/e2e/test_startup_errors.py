"""The start-up mistakes a newcomer makes: one clear line saying what to do, a non-zero exit.

``tests/e2e/test_cli.py`` covers a bad setting, a port in use and a second process on one
SQLite file; these are the rest, each asserting the message and the exit status.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bridge.settings import Database
from bridge.store import StoreError, open_store
from tests.conftest import base_env
from tests.proc import run_bridge


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


async def serve(env: dict[str, str]) -> tuple[int, str, str]:
    return await serve_like(["serve"], env)


async def serve_like(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    # Nothing set in the developer's shell leaks into the check.
    full: dict[str, str | None] = {var: None for var in os.environ if _is_setting(var)}
    full |= env
    return await run_bridge(args, full)


def _is_setting(var: str) -> bool:
    return var.startswith(("BRIDGE_", "UPLOADCARE_")) and not var.startswith("BRIDGE_TEST_")


async def test_nothing_set_names_the_first_key_to_set(tmp_path: Path) -> None:
    code, out, err = await serve({"BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert code == 2 and out == ""
    assert one_line(err) == (
        "bridge: UPLOADCARE_PUBLIC_KEY: not set; give your Uploadcare project's public key "
        "(or name projects in BRIDGE_UPLOADCARE_PROJECTS)"
    )


async def test_a_project_without_its_secret_key_names_the_variable(tmp_path: Path) -> None:
    env = base_env(
        tmp_path,
        BRIDGE_UPLOADCARE_PROJECTS="shop:pub-shop,eu-staging:pub-staging",
        UPLOADCARE_SECRET_KEY_SHOP="shop-secret-value",
    )
    code, out, err = await serve(env)
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("bridge: UPLOADCARE_SECRET_KEY_EU_STAGING: not set")
    assert "UPLOADCARE_SECRET_KEY_EU_STAGING_FILE" in line
    assert "shop-secret-value" not in err and env["UPLOADCARE_SECRET_KEY"] not in err


async def test_missing_public_key(tmp_path: Path) -> None:
    code, out, err = await serve(base_env(tmp_path, UPLOADCARE_PUBLIC_KEY=None))
    assert code == 2 and out == ""
    assert one_line(err).startswith("bridge: UPLOADCARE_PUBLIC_KEY: not set; give your")


async def test_missing_secret_key_mentions_the_file_variant(tmp_path: Path) -> None:
    code, _, err = await serve(base_env(tmp_path, UPLOADCARE_SECRET_KEY=None))
    assert code == 2
    line = one_line(err)
    assert line.startswith("bridge: UPLOADCARE_SECRET_KEY: not set")
    assert "UPLOADCARE_SECRET_KEY_FILE" in line


async def test_unreadable_secret_file(tmp_path: Path) -> None:
    env = base_env(tmp_path, UPLOADCARE_SECRET_KEY_FILE=str(tmp_path / "missing"))
    del env["UPLOADCARE_SECRET_KEY"]
    code, _, err = await serve(env)
    assert code == 2
    assert one_line(err).startswith("bridge: UPLOADCARE_SECRET_KEY_FILE: cannot read ")


async def test_no_api_keys_says_how_to_give_them_or_run_without(tmp_path: Path) -> None:
    code, out, err = await serve(base_env(tmp_path, BRIDGE_API_KEYS=None))
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("bridge: BRIDGE_API_KEYS: not set; give name:secret pairs")
    assert "--insecure-no-auth" in line


async def test_malformed_api_keys_echo_no_secret(tmp_path: Path) -> None:
    code, _, err = await serve(base_env(tmp_path, BRIDGE_API_KEYS="just-a-secret-value"))
    assert code == 2
    line = one_line(err)
    assert line == "bridge: BRIDGE_API_KEYS: expected comma-separated name:secret pairs"
    assert "just-a-secret-value" not in line


@pytest.mark.parametrize(
    "url", ["mysql://db/bridge", "bridge.db", "sqlite://bridge.db", "sqlite:///"]
)
async def test_bad_database_url_shows_the_accepted_forms(tmp_path: Path, url: str) -> None:
    code, out, err = await serve(base_env(tmp_path, BRIDGE_DATABASE_URL=url))
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("bridge: BRIDGE_DATABASE_URL: ")
    assert "sqlite:///" in line
    assert url not in line.removeprefix("bridge: BRIDGE_DATABASE_URL: ") or url == "sqlite:///"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://bridge:12345/PwX-secret@127.0.0.1/db",
        "postgresql://bridge:PwX#secret@127.0.0.1/db",
        "postgresql://bridge:PwX@secret@127.0.0.1:1/db",
    ],
)
async def test_a_database_url_that_does_not_parse_shows_no_part_of_the_password(
    tmp_path: Path, url: str
) -> None:
    code, out, err = await serve(base_env(tmp_path, BRIDGE_DATABASE_URL=url))
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("bridge: BRIDGE_DATABASE_URL: ")
    assert "a password must be percent-encoded" in line
    assert "PwX" not in err and "secret" not in err and "12345" not in err


@pytest.mark.parametrize(
    ("networks", "meant"), [("10.20.30.40/1", "0.0.0.0/1"), ("10.20.30.40/16", "10.20.0.0/16")]
)
async def test_allow_network_with_host_bits_suggests_the_network_meant(
    tmp_path: Path, networks: str, meant: str
) -> None:
    code, out, err = await serve(base_env(tmp_path, BRIDGE_CALLBACK_ALLOW_NETWORKS=networks))
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("bridge: BRIDGE_CALLBACK_ALLOW_NETWORKS: ")
    assert line.endswith(f": {networks} has host bits set; did you mean {meant}?")


@pytest.mark.parametrize("var", ["BRIDGE_PORT", "UPLOADCARE_PUBLIC_KEY", "BRIDGE_API_KEYS"])
async def test_an_empty_variable_stops_the_start_naming_it(tmp_path: Path, var: str) -> None:
    code, out, err = await serve(base_env(tmp_path, **{var: ""}))
    assert code == 2 and out == ""
    assert one_line(err).startswith(f"bridge: {var}: set but empty; give a value, or unset it")


async def test_an_empty_secret_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "api-keys"
    empty.write_text("\n")
    code, out, err = await serve(
        base_env(tmp_path, BRIDGE_API_KEYS=None, BRIDGE_API_KEYS_FILE=str(empty))
    )
    assert code == 2 and out == ""
    assert one_line(err) == f"bridge: BRIDGE_API_KEYS_FILE: {empty} is empty"


async def test_database_in_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    code, out, err = await serve(
        base_env(tmp_path, BRIDGE_DATABASE_URL=f"sqlite:///{missing}/b.db")
    )
    assert code == 1 and out == ""
    assert one_line(err) == (
        f"bridge: cannot open database {missing}/b.db: folder {missing} does not exist"
    )
    assert not missing.exists()  # nothing created behind the user's back


async def test_migrate_names_the_same_problem(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    code, _, err = await serve_like(
        ["migrate"], {"BRIDGE_DATABASE_URL": f"sqlite:///{missing}/b.db"}
    )
    assert code == 1
    assert f"folder {missing} does not exist" in one_line(err)


async def _postgres_supported() -> bool:
    try:
        store = await asyncio.wait_for(
            open_store(Database("postgresql", dsn="postgresql://u:p@127.0.0.1:1/db")), 30
        )
    except StoreError as exc:
        return "not supported" not in str(exc)
    except Exception:
        return True
    await store.close()  # something answers on port 1: not what this test is about
    return True


async def test_unreachable_postgresql_is_one_line_without_the_password(tmp_path: Path) -> None:
    if not await _postgres_supported():
        pytest.skip("this version does not support PostgreSQL yet")
    url = "postgresql://bridge:hunter2-password@127.0.0.1:1/bridge"
    code, out, err = await serve(base_env(tmp_path, BRIDGE_DATABASE_URL=url))
    assert code == 1, err
    line = one_line(err)
    assert line.startswith("bridge: ")
    assert "127.0.0.1:1" in line or "BRIDGE_DATABASE_URL" in line
    assert "hunter2-password" not in err + out
