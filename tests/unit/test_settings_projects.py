"""Several Uploadcare projects: BRIDGE_UPLOADCARE_PROJECTS, UPLOADCARE_SECRET_KEY_<NAME>,
BRIDGE_TENANT_PROJECTS, and what serve refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.settings import Project, SettingsError, load

TWO = {
    "UPLOADCARE_PUBLIC_KEY": "pub-default",
    "UPLOADCARE_SECRET_KEY": "sec-default",
    "BRIDGE_UPLOADCARE_PROJECTS": "shop:pub-shop, eu-staging:pub-staging",
    "UPLOADCARE_SECRET_KEY_SHOP": "sec-shop",
    "UPLOADCARE_SECRET_KEY_EU_STAGING": "sec-staging",
}


def test_todays_configuration_is_the_project_default() -> None:
    s = load({"UPLOADCARE_PUBLIC_KEY": "p", "UPLOADCARE_SECRET_KEY": "s"})
    assert s.projects == {"default": Project("default", "p", "s")}
    assert s.projects_for("anyone") == ("default",)


def test_further_projects_with_their_secret_keys() -> None:
    s = load(TWO)
    assert list(s.projects) == ["default", "shop", "eu-staging"]
    assert s.projects["shop"] == Project("shop", "pub-shop", "sec-shop")
    assert s.projects["eu-staging"].secret_key == "sec-staging"
    # The secret is out of every repr, and registered for redaction.
    assert "sec-" not in repr(s) and "sec-shop" not in repr(s.projects["shop"])
    assert {"sec-default", "sec-shop", "sec-staging"} <= set(s.secret_values())
    load(TWO, {"insecure_no_auth": True}).check_serve()


def test_without_default_a_tenant_not_named_may_use_no_project() -> None:
    env = {"BRIDGE_UPLOADCARE_PROJECTS": "shop:p", "UPLOADCARE_SECRET_KEY_SHOP": "s"}
    s = load({**env, "BRIDGE_API_KEYS": "a:1234567890,b:0987654321"})
    assert list(s.projects) == ["shop"]
    assert s.projects_for("a") == ()
    s = load({**env, "BRIDGE_API_KEYS": "a:1234567890", "BRIDGE_TENANT_PROJECTS": "a:shop"})
    assert s.projects_for("a") == ("shop",)
    s.check_serve()


def test_a_secret_key_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "shop"
    path.write_text("sec-from-file\n")
    s = load({"BRIDGE_UPLOADCARE_PROJECTS": "shop:p", "UPLOADCARE_SECRET_KEY_SHOP_FILE": str(path)})
    assert s.projects["shop"].secret_key == "sec-from-file"


def test_tenant_projects() -> None:
    s = load(
        {
            **TWO,
            "BRIDGE_API_KEYS": "web:1234567890,ops:0987654321,other:1111111111",
            "BRIDGE_TENANT_PROJECTS": "web:shop+eu-staging, ops:default+shop",
        }
    )
    assert s.projects_for("web") == ("shop", "eu-staging")
    assert s.projects_for("ops") == ("default", "shop")
    assert s.projects_for("other") == ("default",)  # not named: default, which exists


@pytest.mark.parametrize(
    ("env", "var", "fragment"),
    [
        ({"BRIDGE_UPLOADCARE_PROJECTS": "Shop:p"}, "BRIDGE_UPLOADCARE_PROJECTS", "lower-case"),
        ({"BRIDGE_UPLOADCARE_PROJECTS": "shop_1:p"}, "BRIDGE_UPLOADCARE_PROJECTS", "lower-case"),
        ({"BRIDGE_UPLOADCARE_PROJECTS": "a" * 33 + ":p"}, "BRIDGE_UPLOADCARE_PROJECTS", "32"),
        ({"BRIDGE_UPLOADCARE_PROJECTS": "shop"}, "BRIDGE_UPLOADCARE_PROJECTS", "name:public_key"),
        ({"BRIDGE_UPLOADCARE_PROJECTS": "shop:"}, "BRIDGE_UPLOADCARE_PROJECTS", "name:public_key"),
        ({"BRIDGE_UPLOADCARE_PROJECTS": "a:p,a:q"}, "BRIDGE_UPLOADCARE_PROJECTS", "twice"),
        ({"BRIDGE_UPLOADCARE_PROJECTS": "default:p"}, "BRIDGE_UPLOADCARE_PROJECTS", "default"),
        ({**TWO, "BRIDGE_TENANT_PROJECTS": "web"}, "BRIDGE_TENANT_PROJECTS", "tenant:project"),
        ({**TWO, "BRIDGE_TENANT_PROJECTS": "web:"}, "BRIDGE_TENANT_PROJECTS", "lower-case"),
        ({**TWO, "BRIDGE_TENANT_PROJECTS": "web:a,web:b"}, "BRIDGE_TENANT_PROJECTS", "twice"),
        # A project that does not exist, and a tenant that has no key: bad values.
        ({**TWO, "BRIDGE_TENANT_PROJECTS": "web:shopp"}, "BRIDGE_TENANT_PROJECTS", "'shopp'"),
        (
            {"BRIDGE_TENANT_PROJECTS": "web:default", "BRIDGE_UPLOADCARE_PROJECTS": "shop:p"},
            "BRIDGE_TENANT_PROJECTS",
            "not configured",
        ),
        (
            {**TWO, "BRIDGE_API_KEYS": "web:1234567890", "BRIDGE_TENANT_PROJECTS": "wbe:shop"},
            "BRIDGE_TENANT_PROJECTS",
            "'wbe', which has no key",
        ),
        ({**TWO, "UPLOADCARE_SECRET_KEY_SHOP": ""}, "UPLOADCARE_SECRET_KEY_SHOP", "empty"),
        (
            {"UPLOADCARE_SECRET_KEY": "s", "BRIDGE_UPLOADCARE_PROJECTS": "shop:p"},
            "UPLOADCARE_SECRET_KEY",
            "without UPLOADCARE_PUBLIC_KEY",
        ),
    ],
)
def test_a_bad_project_setting_names_its_variable(
    env: dict[str, str], var: str, fragment: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load(env)
    message = str(info.value)
    assert message.startswith(f"{var}: ") and "\n" not in message
    assert fragment in message
    assert "sec-" not in message


def test_serve_refuses_no_project_and_a_project_without_its_secret_key() -> None:
    auth = {"BRIDGE_API_KEYS": "a:1234567890"}
    with pytest.raises(SettingsError, match=r"^UPLOADCARE_PUBLIC_KEY: not set"):
        load(auth).check_serve()
    env = {**TWO, **auth}
    del env["UPLOADCARE_SECRET_KEY_EU_STAGING"]
    s = load(env)  # only serve needs every key
    with pytest.raises(SettingsError) as info:
        s.check_serve()
    message = str(info.value)
    assert message.startswith("UPLOADCARE_SECRET_KEY_EU_STAGING: not set") and "\n" not in message
    assert "sec-" not in message
    env = {**TWO, **auth}
    del env["UPLOADCARE_SECRET_KEY"]
    with pytest.raises(SettingsError, match=r"^UPLOADCARE_SECRET_KEY: not set"):
        load(env).check_serve()


# -- the README's worked example, loaded as written -----------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_HEADING = "### Several Uploadcare projects"


def readme_example() -> str:
    """The first ``sh`` block under the README's heading, exactly as written."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(EXAMPLE_HEADING) :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```", start)]


def test_the_readme_example_for_three_projects_and_two_tenants_loads(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    for line in readme_example().splitlines():
        name, sep, value = line.partition("=")
        assert sep and name.isupper(), line  # an environment file: NAME=value lines only
        env[name] = value
    # Its secret files, made where the example's paths point (under tmp_path here).
    secrets = {
        "bridge-api-keys": "web:web-secret-0123456789,ci:ci-secret-0123456789",
        "uploadcare-production": "sec-production",
        "uploadcare-shop": "sec-shop",
        "uploadcare-staging": "sec-staging",
    }
    for name, value in env.items():
        if name.endswith("_FILE"):
            path = tmp_path / Path(value).relative_to("/run/secrets")
            path.write_text(secrets[path.name] + "\n")
            env[name] = str(path)

    s = load(env)
    s.check_serve()  # serve would start with it
    assert s.tenants == ("web", "ci")
    assert {name: (p.public_key, p.secret_key) for name, p in s.projects.items()} == {
        "default": ("3e3bd6b2a1c04f5b8f2d", "sec-production"),
        "shop": ("8c41f0e9d27a4b6c9e13", "sec-shop"),
        "staging": ("b7d2e4a6c8f01357a9e2", "sec-staging"),
    }
    assert s.projects_for("web") == ("default", "shop")
    assert s.projects_for("ci") == ("staging",)
    assert {"sec-production", "sec-shop", "sec-staging"} <= set(s.secret_values())
