"""infra/docker: the Dockerfile's rules, the build context, compose.yaml and its secrets.

Docker cannot run here, so each file is checked with the tool that knows its format:
``dockerfile-parse`` for the Dockerfile, docker-py's own ``.dockerignore`` matcher for the build
context, and the Compose specification's JSON schema (the copy vendored in ``check-jsonschema``, read
offline) for compose.yaml. What the files say about callrec is checked against callrec itself: the
commands against its CLI parser, the environment against its config loader, the health check against a
live HTTP endpoint.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

from callrec.cli import build_parser
from callrec.config import IngestConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "infra" / "docker"
UID = 10001
# Paths inside the container, not temporary files of this process.
CONTAINER_TMP = "/tmp"  # noqa: S108
# Packages that compile things; none may reach the final image.
BUILD_TOOLS = re.compile(r"^(build-essential|gcc|g\+\+|cpp|make|clang|cmake|.*-dev|git|curl|wget)(=.*)?$")


# --- the Dockerfile -----------------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


def stages() -> list[Stage]:
    parser = DockerfileParser(path=str(DOCKER / "Dockerfile"))
    out: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            out.append(Stage(image=words[0], name=name))
        elif instruction != "COMMENT":
            assert out, f"{instruction} before the first FROM"
            out[-1].instructions.append((instruction, value))
    return out


def shell_commands(run: str) -> list[list[str]]:
    """A RUN line's commands, split at && and ; (enough for the plain RUN lines we write)."""
    return [shlex.split(part) for part in re.split(r"&&|;", run) if part.strip()]


def apt_installs(run: str) -> list[list[str]]:
    return [c for c in shell_commands(run) if c[:2] == ["apt-get", "install"]]


def test_the_image_is_built_in_stages_from_pinned_bases() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "a builder stage and a runtime stage"
    for stage in all_stages:
        if "@sha256:" in stage.image:
            continue
        repo, _, tag = stage.image.rpartition(":")
        assert repo and "/" not in tag, f"{stage.image}: pin a tag (or a digest)"
        assert tag != "latest"
        assert re.match(r"^3\.(1[1-9])\b", tag), f"{stage.image}: Python 3.11 or newer"
        assert "slim" in tag and ("bookworm" in tag or "trixie" in tag), f"{stage.image}: slim Debian"
    # The venv copied from the builder links to the builder's interpreter: same base image.
    assert len({s.image for s in all_stages}) == 1
    final = all_stages[-1]
    copies = [v for v in final.values("COPY") if v.startswith("--from=")]
    assert copies == [f"--from={all_stages[0].name} /opt/callrec /opt/callrec"]


def test_the_builder_makes_a_wheel_of_callrec() -> None:
    builder = stages()[0]
    runs = " ".join(builder.values("RUN"))
    assert "pip wheel" in runs and "/opt/callrec/bin/pip install /wheels/callrec-" in runs
    assert "PIP_NO_CACHE_DIR=1" in " ".join(builder.values("ENV"))


def test_the_final_stage_runs_as_a_fixed_non_root_uid() -> None:
    final = stages()[-1]
    users = final.values("USER")
    assert users, "the final stage sets USER"
    assert users[-1] == f"{UID}:{UID}", "numeric, so that runAsNonRoot can check it"
    run = " ".join(final.values("RUN"))
    assert f"useradd --system --uid {UID} --gid {UID}" in run
    assert f"groupadd --system --gid {UID} callrec" in run


def test_nothing_is_added_from_a_url() -> None:
    for stage in stages():
        for value in stage.values("ADD"):
            assert not re.search(r"(^|\s)(https?|git|ftp)://|\S+\.git(\s|$)", value), value


def test_the_final_stage_has_ffmpeg_and_no_build_tools_or_caches() -> None:
    final = stages()[-1]
    runs = final.values("RUN")
    installs = [cmd for run in runs for cmd in apt_installs(run)]
    assert installs, "the final stage installs Debian's ffmpeg"
    packages = [w for cmd in installs for w in cmd[2:] if not w.startswith("-")]
    assert "ffmpeg" in packages
    assert not [p for p in packages if BUILD_TOOLS.match(p)], packages
    for stage in stages():
        for run in stage.values("RUN"):
            for cmd in apt_installs(run):
                assert "--no-install-recommends" in cmd, cmd
            if "apt-get update" in run:
                # The lists go in the same layer as the update, or they stay in the image.
                assert "rm -rf /var/lib/apt/lists/*" in run, run
            for cmd in shell_commands(run):
                if "pip" in cmd and "install" in cmd:
                    assert stage is not final, "nothing is pip-installed in the final stage"
    # pip, setuptools and wheel leave the final image: nothing installs at run time.
    assert any("pip uninstall --yes --no-cache-dir pip setuptools wheel" in run for run in runs)


def test_the_image_works_with_a_read_only_root() -> None:
    final = stages()[-1]
    env = " ".join(final.values("ENV"))
    volumes = [v for value in final.values("VOLUME") for v in json.loads(value)]
    assert set(volumes) == {"/var/lib/callrec", CONTAINER_TMP}
    assert "CALLREC_DATA_DIR=/var/lib/callrec" in env
    assert "TMPDIR=/tmp" in env and "HOME=/var/lib/callrec" in env
    # No bytecode written at run time: it was compiled in the builder.
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "compileall" in " ".join(stages()[0].values("RUN"))
    # The data and keyring dirs exist, owned by the user, for fresh volumes to copy.
    assert (
        f"install --directory --owner={UID} --group={UID} --mode=0700 /var/lib/callrec /var/lib/callrec-keys"
        in " ".join(final.values("RUN"))
    )


def healthcheck_command() -> list[str]:
    final = stages()[-1]
    (value,) = final.values("HEALTHCHECK")
    options, _, command = value.partition("CMD")
    assert "--timeout=" in options and "--interval=" in options
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def test_the_healthcheck_uses_the_standard_library() -> None:
    argv = healthcheck_command()
    assert argv[:2] == ["python", "-c"]
    assert not {"curl", "wget"} & set(" ".join(argv).split())
    assert "/healthz" in argv[2]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(port: int) -> int:
    argv = healthcheck_command()
    env = {"PATH": os.environ.get("PATH", ""), "CALLREC_SERVER__PORT": str(port)}
    done = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30)
    return done.returncode


def test_the_healthcheck_passes_on_200_and_fails_otherwise(health_server: http.server.HTTPServer) -> None:
    port = health_server.server_address[1]
    _Health.status = 200
    assert run_healthcheck(port) == 0
    _Health.status = 503
    try:
        assert run_healthcheck(port) != 0
    finally:
        _Health.status = 200
    health_server.shutdown()
    health_server.server_close()
    assert run_healthcheck(port) != 0, "nothing listening"


def test_entrypoint_and_default_command_are_callrec_commands() -> None:
    final = stages()[-1]
    (entrypoint,) = final.values("ENTRYPOINT")
    (cmd,) = final.values("CMD")
    assert json.loads(entrypoint) == ["/usr/bin/tini", "--", "callrec"]
    args = build_parser().parse_args(json.loads(cmd))
    assert args.command == "serve"
    assert "tini" in " ".join(final.values("RUN"))


def context_files() -> set[str]:
    ignore = DOCKER / "Dockerfile.dockerignore"
    patterns = [
        line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    return set(exclude_paths(str(ROOT), patterns, dockerfile="infra/docker/Dockerfile"))


def test_the_build_context_holds_only_what_the_build_copies() -> None:
    files = context_files()
    package = {
        str(p.relative_to(ROOT)) for p in (ROOT / "callrec").rglob("*") if "__pycache__" not in p.parts
    }
    assert package <= files, "callrec/ with its SQL migrations, templates and data"
    assert {"pyproject.toml", "README.md"} <= files
    leaked = {f for f in files if f not in package and f not in {"pyproject.toml", "README.md", "callrec"}}
    assert leaked == {"infra/docker/Dockerfile"}, leaked  # docker always sends the Dockerfile
    for stage in stages():
        for value in stage.values("COPY"):
            if value.startswith("--from="):
                continue
            *sources, _ = value.split()
            for source in sources:
                assert source.rstrip("/") in files, f"COPY {source}: not in the build context"


# --- compose.yaml -------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_follows_the_compose_specification() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_check_catches_mistakes() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["web"]["restart_policy"] = "always"  # not a service key
    broken["services"]["worker"]["depends_on"]["migrate"]["condition"] = "service_finished"
    errors = schema_errors(broken)
    assert any("restart_policy" in e for e in errors)
    assert any(e.startswith("services/worker/depends_on:") for e in errors)


CALLREC_SERVICES = ("migrate", "web", "worker")


def test_two_web_processes_and_two_workers_run_callrec_commands() -> None:
    services = compose()["services"]
    web, worker, migrate = services["web"], services["worker"], services["migrate"]
    assert web["command"] == ["serve", "--no-workers"] and web["deploy"]["replicas"] == 2
    assert worker["command"] == ["worker"] and worker["deploy"]["replicas"] == 2
    assert migrate["command"] == ["migrate"]
    parser = build_parser()
    assert parser.parse_args(web["command"]).no_workers is True
    assert parser.parse_args(worker["command"]).command == "worker"
    assert parser.parse_args(migrate["command"]).command == "migrate"
    # Workers serve no HTTP, so the image's /healthz check is off for them.
    assert worker["healthcheck"] == {"disable": True}
    assert "healthcheck" not in web
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["bucket"]["condition"] == "service_completed_successfully"


def test_callrec_containers_are_locked_down() -> None:
    services = compose()["services"]
    grace = IngestConfig().shutdown_grace.total_seconds()
    for name in CALLREC_SERVICES:
        service = services[name]
        assert service["read_only"] is True, name
        assert service["user"] == f"{UID}:{UID}"
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert any(t.startswith(f"{CONTAINER_TMP}:") for t in service["tmpfs"])
        assert "/var/lib/callrec" in service["volumes"], "the data dir is a volume"
        stop = int(service["stop_grace_period"].removesuffix("s"))
        assert stop >= grace + 5, f"{name}: stop_grace_period must exceed [ingest] shutdown_grace"


def test_every_image_is_pinned() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        _, _, tag = image.rpartition(":")
        assert tag and tag != "latest" and "/" not in tag, f"{name}: {image}"


def test_the_bucket_has_object_lock_and_callrec_gets_only_its_objects() -> None:
    doc = compose()
    script = doc["services"]["bucket"]["command"][0]
    bucket = doc["x-callrec"]["environment"]["CALLREC_STORAGE__BUCKET"]
    assert f"mc mb --ignore-existing --with-lock local/{bucket}" in script
    policy = json.loads((DOCKER / doc["configs"]["callrec-s3-policy"]["file"]).read_text())
    resources_named = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources_named == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    # What the store calls at run time (callrec/storage/s3.py), and nothing that changes the
    # bucket's own settings or lifts a legal hold's protection.
    assert {
        "s3:PutObject",
        "s3:GetObjectVersion",
        "s3:DeleteObjectVersion",
        "s3:PutObjectLegalHold",
    } <= actions
    assert not [a for a in actions if "*" in a or a.startswith("s3:PutBucket") or "Bypass" in a]


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default}, with no VAR set."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for value in stages()[-1].values("ENV"):
        for word in shlex.split(value):
            key, _, val = word.partition("=")
            env[key] = val
    return env


def make_secrets(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(DOCKER / "make-secrets"), str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def test_make_secrets_writes_private_random_files_once(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    make_secrets(secrets)
    written = {p.name: p for p in secrets.iterdir()}
    named = {
        Path(entry["path"]).name
        for service in compose()["services"].values()
        for entry in service.get("env_file", [])
    }
    assert set(written) == named, "make-secrets writes exactly the env files compose.yaml reads"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    values: list[str] = []
    for path in written.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
        for key, value in env_file(path).items():
            assert len(value) >= 12, key
            if "PASSWORD" in key or "SECRET" in key:
                values.append(value)
    pg = env_file(written["postgres.env"])
    assert pg["POSTGRES_PASSWORD"] == pg["PGPASSWORD"]
    assert len(set(values)) == len(values) - 1, "fresh values, PostgreSQL's password twice"
    before = {name: path.read_text() for name, path in written.items()}
    second = make_secrets(secrets)
    assert "wrote" not in second.stdout
    assert {name: path.read_text() for name, path in written.items()} == before


def test_callrec_accepts_the_stack_configuration(tmp_path: Path) -> None:
    doc = compose()
    make_secrets(tmp_path)
    environ = image_env()
    environ.update({k: interpolate(str(v)) for k, v in doc["x-callrec"]["environment"].items()})
    for entry in doc["x-callrec"]["env_file"]:
        environ.update(env_file(tmp_path / Path(entry["path"]).name))
    config = load_config(environ={k: v for k, v in environ.items() if k.startswith("CALLREC_")})
    assert config.storage.backend == "s3" and config.storage.endpoint_url == "http://minio:9000"
    assert config.database.url.startswith("postgresql://callrec@postgres:")
    assert str(config.keyring_path) == "/var/lib/callrec-keys/keyring.json"
    assert str(config.data_dir) == "/var/lib/callrec"
    # Inside its own network namespace the container listens on every interface.
    assert config.server.host == "0.0.0.0"  # noqa: S104
    assert config.server.port == 8080
    assert config.tenants["default"].webhook_secret
    assert "PGPASSWORD" in environ and "AWS_SECRET_ACCESS_KEY" in environ


def test_no_secret_is_written_in_compose_yaml() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    for service in compose()["services"].values():
        for key in service.get("environment", {}):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", key), key
    assert "PGPASSWORD=" not in text and "://callrec:" not in text
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--quiet", "infra/docker/secrets/postgres.env"], timeout=30
    )
    assert ignored.returncode == 0, "infra/docker/secrets/ is kept out of git"


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Host path to container path, for the short-syntax bind mounts of a service."""
    out = {}
    for volume in service["volumes"]:
        source, _, rest = volume.partition(":")
        if source.startswith("."):
            out[source] = rest.split(":")[0]
    return out


def test_prometheus_and_grafana_are_wired_to_the_drop_in_folders() -> None:
    services = compose()["services"]
    prometheus_config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    rules_dir = bind_mounts(services["prometheus"])["../prometheus"]
    assert prometheus_config["rule_files"] == [f"{rules_dir}/*.rules.yml"]
    (web_job,) = [j for j in prometheus_config["scrape_configs"] if j["job_name"] == "callrec-web"]
    assert web_job["dns_sd_configs"][0]["names"] == ["web"]
    assert web_job["dns_sd_configs"][0]["port"] == int(image_env()["CALLREC_SERVER__PORT"])

    provisioning = DOCKER / "grafana" / "provisioning"
    grafana_mounts = bind_mounts(services["grafana"])
    assert grafana_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "callrec.yaml").read_text())["providers"]
    assert provider["options"]["path"] == grafana_mounts["../grafana"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["uid"] == "prometheus"
