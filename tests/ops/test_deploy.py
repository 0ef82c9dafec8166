"""deploy/: the Kubernetes manifests against the Kubernetes schemas, the compose file, the
Grafana dashboard's import fields, and the Dockerfile as far as it can be checked without
building it (no image registry here): its user, health check, copies and command, which is
started from the local virtual environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import dockerfile
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError, all_versions

from bridge import settings as settings_mod
from bridge.settings import SettingsError
from tests.conftest import ROOT, base_env

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
APP = {"app.kubernetes.io/name": "uploadcare-bridge"}
# Not in the Kubernetes schemas: checked by the assertions below instead.
CUSTOM_KINDS = {"ServiceMonitor", "Kustomization"}
# What an operator puts in the Secret (or the compose environment) instead of placeholders.
EXAMPLE_SECRETS = {
    "BRIDGE_API_KEYS": "me:a-long-random-secret-0123456789",
    "UPLOADCARE_PUBLIC_KEY": "public",
    "UPLOADCARE_SECRET_KEY": "secret",
    "BRIDGE_DATABASE_URL": "postgresql://bridge:pw@postgres:5432/bridge",
    "POSTGRES_PASSWORD": "pw",
    "GRAFANA_ADMIN_PASSWORD": "pw",
}


# -- Kubernetes --------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> the one object of that kind in deploy/k8s."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in found, f"two {doc['kind']} objects"
            found[doc["kind"]] = doc
    return found


def _kubernetes_versions() -> list[str]:
    # The oldest the package knows from 1.28 on, and the newest.
    versions = sorted(
        {v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 28)},
        key=lambda v: tuple(map(int, v.split("."))),
    )
    return sorted({versions[0], versions[-1]})


@pytest.mark.parametrize("version", _kubernetes_versions())
def test_kubernetes_manifests_validate_against_the_schemas(version: str) -> None:
    objects = manifests()
    assert {"Deployment", "Service", "Secret", "ConfigMap", "PodDisruptionBudget"} <= set(objects)
    for kind, obj in objects.items():
        if kind not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_validator_rejects_a_broken_deployment() -> None:
    # The control: a validator that accepted anything would make the test above pass.
    deployment = manifests()["Deployment"]
    version = _kubernetes_versions()[-1]
    misspelt = copy.deepcopy(deployment)
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(misspelt, version, strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(wrong_type, version, strict=True)


def _container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_probes_ports_and_user_fit_the_bridge_and_the_image() -> None:
    objects = manifests()
    deployment, config = objects["Deployment"], objects["ConfigMap"]["data"]
    spec = deployment["spec"]
    pod = spec["template"]
    container = _container(objects)
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (port,) = container["ports"]
    assert port["name"] == "http" and str(port["containerPort"]) == config["BRIDGE_PORT"]
    assert config["BRIDGE_HOST"] == "0.0.0.0"  # the pod IP, for probes and the Service
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["args"] == ["serve"]
    # Non-root, as the uid the image's USER names (numeric, so runAsNonRoot can check it).
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == image_user().split(":")[0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The pod gets its grace after SIGTERM, and the bridge's own grace fits inside it.
    grace = int(config["BRIDGE_SHUTDOWN_GRACE"].removesuffix("s"))
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace
    # Annotation-based discovery scrapes the same port and path.
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == config["BRIDGE_PORT"]
    assert notes["prometheus.io/path"] == "/metrics"


def test_secrets_come_from_the_secret_as_files_and_config_from_the_configmap() -> None:
    objects = manifests()
    deployment, secret = objects["Deployment"], objects["Secret"]
    container = _container(objects)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert container["envFrom"] == [
        {"configMapRef": {"name": objects["ConfigMap"]["metadata"]["name"]}}
    ]
    files = {e["name"]: e["value"] for e in container["env"] if e["name"].endswith("_FILE")}
    assert set(files) >= {
        "BRIDGE_API_KEYS_FILE",
        "UPLOADCARE_SECRET_KEY_FILE",
        "BRIDGE_DATABASE_URL_FILE",
    }
    for variable, path in files.items():
        directory, key = path.rsplit("/", 1)
        assert key == variable.removesuffix("_FILE"), variable
        volume = volumes[mounts[directory]]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert key in secret["stringData"], f"the Secret has no {key}"
    # No secret sits in plain env or in the ConfigMap.
    plain = {e["name"] for e in container["env"]} | set(objects["ConfigMap"]["data"])
    secret_names = {"BRIDGE_API_KEYS", "UPLOADCARE_SECRET_KEY", "BRIDGE_DATABASE_URL"}
    assert plain.isdisjoint(secret_names | {"BRIDGE_WEBHOOK_SECRETS"})


def _kubernetes_env(tmp_path: Path, secrets: dict[str, str]) -> dict[str, str]:
    """The environment the container sees: the image's, the ConfigMap's, its own, with the
    Secret's keys written where the *_FILE variables point."""
    objects = manifests()
    env = {k: v for k, v in image_env().items() if "$" not in v}
    env.update(objects["ConfigMap"]["data"])
    tmp_path.mkdir(exist_ok=True)
    for variable in _container(objects)["env"]:
        value = variable["value"]
        if variable["name"].endswith("_FILE"):
            key = value.rsplit("/", 1)[1]
            (tmp_path / key).write_text(secrets[key] + "\n")
            value = str(tmp_path / key)
        env[variable["name"]] = value
    return env


def test_the_bridge_accepts_the_kubernetes_configuration(tmp_path: Path) -> None:
    settings = settings_mod.load(_kubernetes_env(tmp_path / "filled", EXAMPLE_SECRETS))
    settings.check_serve()
    config = manifests()["ConfigMap"]["data"]
    assert (settings.host, str(settings.port)) == ("0.0.0.0", config["BRIDGE_PORT"])
    assert settings.database.scheme == "postgresql", "replicas need PostgreSQL"
    assert settings.upstream_rps == float(config["BRIDGE_UPSTREAM_RPS"])
    # The shipped placeholders are refused at start, so they cannot go live by mistake.
    shipped = manifests()["Secret"]["stringData"]
    with pytest.raises(SettingsError):
        settings_mod.load(_kubernetes_env(tmp_path / "shipped", shipped)).check_serve()


def test_service_servicemonitor_and_pdb_select_the_pods() -> None:
    objects = manifests()
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["minAvailable"] < objects["Deployment"]["spec"]["replicas"]
    # The ServiceMonitor (a Prometheus Operator resource, outside the schemas), by hand.
    monitor = objects["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])
    # The job label becomes the Service's name, which the alerts and dashboard expect.
    assert service["metadata"]["name"] == "uploadcare-bridge"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


# -- compose -----------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _bridges(services: dict[str, Any]) -> dict[str, Any]:
    return {
        name: s
        for name, s in services.items()
        if s.get("build", {}).get("dockerfile") == "deploy/Dockerfile" and "ports" in s
    }


def test_compose_services_images_ports_and_files_are_consistent() -> None:
    compose = _compose()
    services = compose["services"]
    bridges = _bridges(services)
    assert len(bridges) >= 2, "two replicas at least"
    assert {"postgres", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        assert service.get("image"), f"{name} has no image"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
    # Every replica: the same image built from this repository, its port the one it listens on.
    assert len({s["image"] for s in bridges.values()}) == 1
    host_ports = []
    for name, service in {**bridges, **{k: services[k] for k in ("prometheus", "grafana")}}.items():
        (mapping,) = service["ports"]
        host, host_port, container_port = mapping.split(":")
        assert host == "127.0.0.1", f"{name} publishes beyond the host's loopback"
        host_ports.append(host_port)
        if name in bridges:
            assert (
                container_port
                == service["environment"]["BRIDGE_PORT"]
                == image_env()["BRIDGE_PORT"]
            )
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert len(host_ports) == len(set(host_ports)), "two services publish one host port"
    # Replicas need PostgreSQL, the compose one.
    for service in bridges.values():
        url = service["environment"]["BRIDGE_DATABASE_URL"]
        m = re.fullmatch(r"postgresql://(\w+):\$\{POSTGRES_PASSWORD[^}]*\}@(\w+):5432/(\w+)", url)
        assert m, url
        postgres = services[m[2]]["environment"]
        assert (m[1], m[3]) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:?message} and ${NAME:-default}."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m[1], m[2], m[3]
        if name in variables:
            return variables[name]
        assert op == ":-", f"${{{name}}} is required and not set"
        return arg

    return re.sub(r"\$\{(\w+)(?:(:[?-])([^}]*))?\}", one, value)


def test_the_bridge_accepts_the_compose_configuration() -> None:
    services = _compose()["services"]
    for name, service in {**_bridges(services), "migrate": services["migrate"]}.items():
        env = {k: v for k, v in image_env().items() if "$" not in v}
        env.update(
            {k: _interpolate(str(v), EXAMPLE_SECRETS) for k, v in service["environment"].items()}
        )
        settings = settings_mod.load(env)
        settings.check_serve()
        assert settings.database.scheme == "postgresql", name
        assert settings.database.dsn == EXAMPLE_SECRETS["BRIDGE_DATABASE_URL"], name
        assert settings.host == "0.0.0.0", name
    # Replicas share the project's request budget (the default, 20/s, is for one process).
    rates = [float(s["environment"]["BRIDGE_UPSTREAM_RPS"]) for s in _bridges(services).values()]
    assert sum(rates) <= 20
    assert services["migrate"]["command"] == ["migrate"]


def test_compose_prometheus_scrapes_every_replica_and_grafana_reads_prometheus() -> None:
    services = _compose()["services"]
    bridges = _bridges(services)
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"{name}:{s['environment']['BRIDGE_PORT']}" for name, s in bridges.items()}
    assert job.get("metrics_path", "/metrics") == "/metrics"
    mounted = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert mounted["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    for rule_file in config["rule_files"]:  # relative to the config, in the container too
        assert mounted[f"./{rule_file}"] == f"/etc/prometheus/{rule_file}"
    datasources = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = datasources["datasources"]
    prometheus_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus"
    assert source["url"] == f"http://prometheus:{prometheus_port}"
    providers = yaml.safe_load(
        (GRAFANA_PROVISIONING / "dashboards" / "uploadcare-bridge.yml").read_text()
    )
    (provider,) = providers["providers"]
    grafana_mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert grafana_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert Path(grafana_mounts["./grafana/dashboard.json"]).parent == Path(
        provider["options"]["path"]
    )


def test_compose_file_passes_docker_compose_config(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    env = {
        **os.environ,
        "POSTGRES_PASSWORD": "pw",
        "GRAFANA_ADMIN_PASSWORD": "pw",
        "BRIDGE_API_KEYS": "me:secret",
        "UPLOADCARE_PUBLIC_KEY": "public",
        "UPLOADCARE_SECRET_KEY": "secret",
        "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock",  # config needs none
    }
    ok = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    # And it refuses to run without the secrets it needs.
    del env["POSTGRES_PASSWORD"]
    refused = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr


# -- Grafana -----------------------------------------------------------------------------------


def test_grafana_dashboard_has_what_import_needs() -> None:
    """Grafana's import takes a dashboard model with: ``title``; ``uid`` (at most 40 of
    ``[A-Za-z0-9_-]``, the stable address); no ``id`` (or null: a set id would overwrite
    another dashboard); an integer ``schemaVersion``; ``panels``, each with a unique
    integer ``id``, a ``type``, a ``title`` and a ``gridPos`` inside the 24-column grid;
    targets with a ``refId`` unique in their panel and an ``expr``, on a data source that
    the importer can choose (a ``datasource`` variable of type ``datasource``)."""
    board = json.loads(DASHBOARD.read_text())
    assert isinstance(board["title"], str) and board["title"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert board.get("id") is None
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["time"]["from"] and board["time"]["to"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["job"]["datasource"] == chosen

    def walk(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [q for p in panels for q in [p, *walk(p.get("panels", []))]]

    panels = walk(board["panels"])
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] and panel["title"], panel
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("x", "y", "w", "h")), panel["title"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == chosen, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == chosen, panel["title"]


# -- the Dockerfile ----------------------------------------------------------------------------


def _stages() -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def _final(cmd: str) -> list[dockerfile.Command]:
    return [c for c in _stages()[-1] if c.cmd == cmd]


def image_user() -> str:
    return str(_final("USER")[-1].value[0])


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in _final("ENV"):
        values = list(command.value)
        env.update(zip(values[::2], values[1::2], strict=True))
    return env


def image_command() -> list[str]:
    (entrypoint,) = _final("ENTRYPOINT")
    (cmd,) = _final("CMD")
    assert entrypoint.json and cmd.json, "exec form, so SIGTERM reaches the bridge"
    return [*entrypoint.value, *cmd.value]


def healthcheck() -> list[str]:
    (check,) = _final("HEALTHCHECK")
    assert check.json and check.value[0] == "CMD"
    return list(check.value[1:])


def test_dockerfile_runs_as_non_root_with_a_healthcheck_on_healthz() -> None:
    user = image_user()
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: a numeric uid, not root"
    # Nothing after the USER switches back.
    final = _stages()[-1]
    last_user = max(i for i, c in enumerate(final) if c.cmd == "USER")
    assert not [c for c in final[last_user:] if c.cmd == "RUN"], "RUN after USER"
    check = healthcheck()
    assert "/healthz" in " ".join(check)
    flags = dict(f.lstrip("-").split("=", 1) for f in _final("HEALTHCHECK")[0].flags)
    assert {"interval", "timeout"} <= set(flags)
    (workdir,) = _final("WORKDIR")
    assert [v for c in _final("VOLUME") for v in c.value] == [workdir.value[0]]
    assert "BRIDGE_DATABASE_URL" not in image_env(), "it would forbid BRIDGE_DATABASE_URL_FILE"
    exposed = [v for c in _final("EXPOSE") for v in c.value]
    assert exposed == [image_env()["BRIDGE_PORT"]]
    assert image_env()["BRIDGE_HOST"] == "0.0.0.0"


def _dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").strip("/")))
    return rules


def _ignored(relative: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule, closely enough: the last matching pattern wins, and a pattern that
    matches a folder excludes what is inside it (``fnmatch`` lets ``*`` cross ``/``, which
    only makes this stricter)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, pattern in rules:
        pattern = pattern.replace("**/", "*")
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            ignored = not negated
    return ignored


def test_every_copy_source_exists_and_is_not_dockerignored() -> None:
    rules = _dockerignore()
    stages = {
        c.value[2]
        for c in dockerfile.parse_file(str(DOCKERFILE))
        if c.cmd == "FROM" and len(c.value) == 3
    }
    copies = [c for c in dockerfile.parse_file(str(DOCKERFILE)) if c.cmd in {"COPY", "ADD"}]
    assert copies
    for command in copies:
        assert command.cmd == "COPY", "ADD fetches URLs and unpacks archives: use COPY"
        origin = [f.split("=", 1)[1] for f in command.flags if f.startswith("--from=")]
        if origin:
            assert origin[0] in stages, command.original
            continue
        for source in command.value[:-1]:
            path = ROOT / source
            assert path.exists(), f"{command.original}: {source} does not exist"
            files = (
                [path]
                if path.is_file()
                else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
            )
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                assert not _ignored(relative, rules), (
                    f"{relative} is copied but .dockerignore drops it"
                )
    # The build stage installs what it copied, into the venv the final stage copies and runs.
    build = _stages()[0]
    runs = " && ".join(c.value[0] for c in build if c.cmd == "RUN")
    venv = re.search(r"python -m venv (\S+)", runs)
    assert venv and f"{venv[1]}/bin/pip install ." in runs
    assert any(c.value == (venv[1], venv[1]) for c in _final("COPY"))
    assert image_env()["PATH"].split(":")[0] == f"{venv[1]}/bin"
    # What stays out of the image: the repository's history, environments, tests, databases.
    for kept_out in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "bridge.db"):
        assert _ignored(kept_out, rules), kept_out


def test_the_package_the_image_installs_carries_its_data_files() -> None:
    """``pip install .`` (not editable, as in the image) ships only the package data that
    pyproject.toml names: every non-Python file under bridge/ must match one pattern."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["bridge"]
    package = ROOT / "bridge"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    data = {
        p
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
    }
    assert data, "the SQL migrations at least"
    missing = sorted(str(p.relative_to(ROOT)) for p in data - shipped)
    assert missing == [], f"not in [tool.setuptools.package-data] of pyproject.toml: {missing}"


@contextlib.asynccontextmanager
async def _image_command(tmp_path: Path) -> AsyncIterator[tuple[int, dict[str, str]]]:
    """The image's command, run from this virtual environment as the image would run it."""
    argv = image_command()
    program = Path(sys.executable).parent / argv[0]  # the venv's console script
    assert program.is_file(), f"{argv[0]} is not installed in {program.parent}"
    env = {k: v for k, v in image_env().items() if "$" not in v}
    settings = base_env(tmp_path)
    del settings["BRIDGE_LOG_LEVEL"]  # the image's default, info, shows `serving`
    del settings["BRIDGE_DATABASE_URL"]  # the default: bridge.db in the working directory
    env.update(settings)
    env.update(BRIDGE_HOST="127.0.0.1", BRIDGE_PORT="0")  # loopback here, not 0.0.0.0
    env["PATH"] = f"{program.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    proc = await asyncio.create_subprocess_exec(
        str(program),
        *argv[1:],
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        port = None
        async with asyncio.timeout(30):
            async for line in proc.stdout:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == "serving":
                        port = int(event["port"])
                        break
        assert port, "the image's command did not log `serving`"
        yield port, env
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()


async def _run_healthcheck(env: dict[str, str], port: int) -> int:
    check = healthcheck()
    assert check[0] == "python"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *check[1:], env={**env, "BRIDGE_PORT": str(port)}
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def test_the_image_command_starts_the_bridge_and_its_healthcheck_sees_it(
    tmp_path: Path,
) -> None:
    assert image_command() == ["bridge", "serve"]
    async with _image_command(tmp_path) as (port, env):
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            assert resp.status == 200
        assert await _run_healthcheck(env, port) == 0
        # The image's default database sits in its working directory, the volume.
        assert (tmp_path / "bridge.db").is_file()
    # Stopped (SIGTERM, exit 0): the same health check now fails.
    assert await _run_healthcheck(env, port) != 0
