"""The deployment files agree with the code: commands, flags, routes, settings, grace periods, Redis durability.

No Docker or Kubernetes here, so every file is parsed and checked against the project itself: the typer app for
commands and options, the FastAPI app for probe paths, the settings classes for environment variables, the
worker's drain constant for grace periods. A renamed flag, route or setting fails a test here instead of a rollout.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from rsa_service.api.app import create_app
from rsa_service.api.server_settings import ApiSettings
from rsa_service.cli import app as cli_app
from rsa_service.jobs.keys import Keys
from rsa_service.jobs.worker import DEFAULT_DRAIN_GRACE_S
from rsa_service.metrics import GENERATIONS_OUTSTANDING
from rsa_service.observability import ObservabilitySettings
from rsa_service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
IMAGE = "rsa-service"
APP_UID = 10001
# A drained worker still hands its leases back and closes Redis after the grace period: allow for that.
DRAIN_MARGIN_S = 10.0
# Names that are not rsa-service settings but are read by something else (Redis, vLLM, OpenTelemetry, the image).
OTHER_ENV = {
    "REDIS_PASSWORD",
    "REDISCLI_AUTH",
    "REDIS_MAXMEMORY",
    "HF_TOKEN",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "HEALTHCHECK_URL",
    "PATH",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PIP_DISABLE_PIP_VERSION_CHECK",
}
# Compose-only knobs (interpolated into the compose file, never seen by the service).
COMPOSE_ONLY_ENV = {
    "RSA_IMAGE",
    "RSA_API_BIND",
    "RSA_API_PORT",
    "INSTALL_ENGINE",
    "INSTALL_OTEL",
    "REDIS_IMAGE",
    "VLLM_IMAGE",
    "VLLM_MODEL",
    "VLLM_MAX_MODEL_LEN",
}


def setting_env_names() -> set[str]:
    fields = {**Settings.model_fields, **ApiSettings.model_fields, **ObservabilitySettings.model_fields}
    return {f"RSA_{name.upper()}" for name in fields}


SETTING_ENV = setting_env_names()


# ---- loading ------------------------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in k8s_files():
        if path.name == "kustomization.yaml":
            continue
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_docs() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads() -> list[dict[str, Any]]:
    return of_kind("Deployment") + of_kind("StatefulSet")


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def app_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in workloads():
        for container in containers(workload):
            if container["image"].split(":")[0] == IMAGE:
                yield workload, container


def interpolation_default(value: str) -> str:
    """`${VAR:-default}` → default (compose interpolation, defaults only); other text unchanged."""
    return re.sub(r"\$\{\w+(?::?[-?]([^}]*))?\}", lambda match: match.group(1) or "", value)


def duration_s(value: str) -> float:
    """A compose duration (`45s`, `1m30s`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# ---- the Dockerfile -----------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            stages.append((match.group(2), []))
        elif stages:
            stages[-1][1].append((keyword, rest))
    return stages


def exec_form(rest: str) -> list[str]:
    parsed = yaml.safe_load(rest)  # a JSON array is YAML too
    assert isinstance(parsed, list), f"use the exec (JSON) form: {rest}"
    return parsed


def test_dockerfile_stages_user_entrypoint_healthcheck() -> None:
    instructions = dockerfile_instructions()
    args = {rest.split("=")[0]: rest.split("=", 1)[1] for keyword, rest in instructions if keyword == "ARG"}
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert args["INSTALL_ENGINE"] == "0", "the engine extra is opt-in"
    assert "/whl/cpu" in args["TORCH_INDEX_URL"], "the engine extra gets a CPU torch unless told otherwise"

    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: compilers stay out of the runtime image"
    name, final = stages[-1]
    keywords = [keyword for keyword, _ in final]
    assert any(k == "COPY" and rest.startswith(f"--from={stages[0][0]}") for k, rest in final)
    user = [rest for keyword, rest in final if keyword == "USER"]
    assert user, f"stage {name} sets USER"
    uid = user[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == APP_UID, "a numeric non-root user, the one the manifests run as"
    assert keywords.count("HEALTHCHECK") == 1
    entrypoint = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoint and exec_form(entrypoint[-1]) == ["rsa"]


def test_dockerfile_copies_paths_that_exist_and_are_not_ignored() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for keyword, rest in dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _destination = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository (context is the repo root)"
            assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignore}, f"{source} is ignored"


def test_dockerfile_healthcheck_and_cmd_hit_real_routes_and_commands(routes: set[str]) -> None:
    final = dockerfile_stages()[-1][1]
    healthcheck = next(rest for keyword, rest in final if keyword == "HEALTHCHECK")
    assert re.findall(r"http://[^/'\"]+(/\w+)", healthcheck) == ["/healthz"]
    assert "/healthz" in routes
    cmd = next(rest for keyword, rest in reversed(final) if keyword == "CMD")
    check_rsa_argv(exec_form(cmd))


# ---- the CLI and the API, as the deployment files use them -------------------------------------------------


def route_paths(routes: list[Any]) -> set[str]:
    """Paths of routes, also inside included routers (newer FastAPI keeps those as lazy wrappers)."""
    paths: set[str] = set()
    for route in routes:
        if isinstance(getattr(route, "path", None), str):
            paths.add(route.path)
        included = getattr(route, "original_router", None)
        if included is not None:
            paths |= route_paths(included.routes)
    return paths


@pytest.fixture(scope="module")
def routes() -> set[str]:
    """Every path the API serves: the OpenAPI document's and the router's (which also has unlisted routes)."""
    app = create_app(ApiSettings(), Settings())
    paths = set(app.openapi()["paths"]) | route_paths(app.routes)
    assert {"/v1/jobs", "/healthz"} <= paths
    return paths


def check_rsa_argv(argv: list[str], group: Any = None) -> None:
    """`argv` (after the `rsa` entrypoint) names a real (sub)command and only options it has, with valid values.

    Typer vendors click, so commands are recognised by shape (`commands` on groups), not by click's classes.
    """
    group = group or typer.main.get_command(cli_app)
    commands = group.commands
    assert argv and argv[0] in commands, f"`{argv[0] if argv else ''}` is not a command of {sorted(commands)}"
    command = commands[argv[0]]
    if hasattr(command, "commands"):
        check_rsa_argv(argv[1:], command)
        return
    context = command.make_context(argv[0], list(argv[1:]), resilient_parsing=False)
    assert not context.args, f"unexpected arguments {context.args}"


@pytest.mark.parametrize(
    "argv", [["serve", "--hots", "0.0.0.0"], ["serve", "--workers", "-1"], ["wroker"], ["jobs", "lst"], ["worker", "x"]]
)
def test_argv_check_rejects_typos(argv: list[str]) -> None:
    with pytest.raises(Exception) as raised:
        check_rsa_argv(argv)
    kinds = {cls.__name__ for cls in type(raised.value).__mro__}
    assert kinds & {"AssertionError", "UsageError"}, raised.value


def test_app_containers_run_real_commands() -> None:
    seen = {}
    for workload, container in app_containers():
        assert "command" not in container, "keep the image's `rsa` entrypoint; put the subcommand in args"
        check_rsa_argv(container["args"])
        seen[workload["metadata"]["name"]] = container["args"]
    assert seen["rsa-api"][0] == "serve" and seen["rsa-worker"] == ["worker"]
    api_args = seen["rsa-api"]
    assert api_args[api_args.index("--workers") + 1] == "0", "jobs run on rsa-worker pods, not in the API"
    assert api_args[api_args.index("--host") + 1] == "0.0.0.0"


def test_compose_commands_are_real() -> None:
    services = load_compose()["services"]
    check_rsa_argv(services["api"]["command"])
    check_rsa_argv(services["worker"]["command"])
    api = services["api"]["command"]
    assert api[0] == "serve" and api[api.index("--workers") + 1] == "0" and api[api.index("--host") + 1] == "0.0.0.0"
    assert services["worker"]["command"] == ["worker"]


def test_probes_point_at_real_routes(routes: set[str]) -> None:
    api = named("Deployment", "rsa-api")
    (container,) = containers(api)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port_names = {port["name"] for port in container["ports"]}
    for _, app_container in app_containers():
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            http = app_container.get(probe, {}).get("httpGet")
            if http:
                assert http["path"] in routes, f"{probe} {http['path']} is not a route of the API"
                assert http["port"] in port_names | {port["containerPort"] for port in container["ports"]}
    compose_check = " ".join(load_compose()["services"]["api"]["healthcheck"]["test"])
    assert set(re.findall(r"http://[^/'\"]+(/\w+)", compose_check)) <= routes
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes


# ---- Kubernetes structure -----------------------------------------------------------------------------------


def test_every_manifest_has_the_basics() -> None:
    assert {path.name for path in k8s_files()} >= {"api.yaml", "worker.yaml", "redis.yaml", "kustomization.yaml"}
    for doc in k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        assert doc["metadata"].get("name"), doc
    for workload in workloads():
        spec = workload["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), workload["metadata"]["name"]
        for container in containers(workload):
            assert container["name"] and container["image"]
    for config in of_kind("ConfigMap"):
        assert all(isinstance(value, str) for value in config["data"].values()), "ConfigMap values must be strings"


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in k8s_files()} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk
    assert {image["name"] for image in kustomization["images"]} == {IMAGE}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed")
def test_kustomize_builds_into_one_namespace() -> None:
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    docs = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert len(docs) == len(k8s_docs()) - len([d for d in k8s_docs() if d["kind"] == "Secret"])
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "rsa-service", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "rsa-service"


def pod_labels() -> list[dict[str, str]]:
    return [workload["spec"]["template"]["metadata"]["labels"] for workload in workloads()]


def selects_one(selector: dict[str, str]) -> bool:
    return sum(selector.items() <= labels.items() for labels in pod_labels()) == 1


def test_services_and_budgets_select_one_workload() -> None:
    for service in of_kind("Service"):
        assert selects_one(service["spec"]["selector"]), service["metadata"]["name"]
        target = next(w for w in workloads() if service["spec"]["selector"].items() <= pod_labels_of(w).items())
        ports = {port.get("name") for c in containers(target) for port in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    for budget in of_kind("PodDisruptionBudget"):
        spec = budget["spec"]
        assert selects_one(spec["selector"]["matchLabels"]), budget["metadata"]["name"]
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec)
    worker_budget = named("PodDisruptionBudget", "rsa-worker")["spec"]["selector"]["matchLabels"]
    assert worker_budget.items() <= pod_labels_of(named("Deployment", "rsa-worker")).items()


def pod_labels_of(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def test_pods_run_non_root_with_limits() -> None:
    for workload in workloads():
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][kind].keys(), f"{name} {kind}"
            mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            if security.get("readOnlyRootFilesystem") and container["image"].startswith(IMAGE):
                assert {"/tmp", "/data"} <= mounts, f"{name}: writable /tmp and RSA_DATA_DIR"
    for workload, _ in app_containers():
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == APP_UID


# ---- grace periods ------------------------------------------------------------------------------------------


def configured_drain_s() -> float:
    data = named("ConfigMap", "rsa-config")["data"]
    return float(data.get("RSA_DRAIN_GRACE_S", DEFAULT_DRAIN_GRACE_S))


def test_settings_and_worker_agree_on_the_drain_default() -> None:
    assert Settings.model_fields["drain_grace_s"].default == DEFAULT_DRAIN_GRACE_S


def test_worker_termination_grace_covers_the_drain() -> None:
    pod = named("Deployment", "rsa-worker")["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= configured_drain_s() + DRAIN_MARGIN_S, "SIGKILL would cut the drain short"
    assert grace <= configured_drain_s() + 4 * DRAIN_MARGIN_S, "a stuck worker should not block a rollout for long"


def test_compose_worker_stop_grace_covers_the_drain() -> None:
    worker = load_compose()["services"]["worker"]
    drain = float(interpolation_default(str(worker["environment"]["RSA_DRAIN_GRACE_S"])))
    assert duration_s(worker["stop_grace_period"]) >= drain + DRAIN_MARGIN_S


def test_duration_parser() -> None:
    assert duration_s("45s") == 45 and duration_s("1m30s") == 90
    with pytest.raises(AssertionError):
        duration_s("45")


# ---- environment variables ---------------------------------------------------------------------------------


def k8s_env_names() -> set[str]:
    names: set[str] = set()
    configs = {config["metadata"]["name"]: config for config in of_kind("ConfigMap")}
    for workload in workloads():
        for container in containers(workload):
            names |= {entry["name"] for entry in container.get("env", [])}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    names |= set(configs[source["configMapRef"]["name"]]["data"])
    return names


def compose_env_names() -> set[str]:
    names: set[str] = set()
    for service in load_compose()["services"].values():
        names |= set(service.get("environment") or {})
    return names


def documented_env_names() -> set[str]:
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (DEPLOY / "env.example").read_text(), re.MULTILINE))
    names |= set(re.findall(r"\bRSA_[A-Z0-9_]+\b", (DEPLOY / "README.md").read_text()))
    return names


def test_env_check_catches_unknown_names() -> None:
    assert "RSA_DRAIN_GRACE_S" in SETTING_ENV and "RSA_LOG_FORMAT" in SETTING_ENV
    assert "RSA_DRAIN_GRACE" not in SETTING_ENV


@pytest.mark.parametrize("source", [k8s_env_names, compose_env_names, documented_env_names])
def test_env_vars_are_real_settings(source: Any) -> None:
    names = source()
    assert names
    unknown = {name for name in names if name not in SETTING_ENV | OTHER_ENV | COMPOSE_ONLY_ENV}
    assert not unknown, f"not a setting of rsa_service (Settings, ApiSettings, ObservabilitySettings): {unknown}"


def test_dockerfile_env_is_real_settings() -> None:
    env = " ".join(rest for keyword, rest in dockerfile_instructions() if keyword == "ENV")
    names = set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", env))
    assert names and names <= SETTING_ENV | OTHER_ENV, names - SETTING_ENV - OTHER_ENV


def test_configmap_values_parse_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    data = named("ConfigMap", "rsa-config")["data"]
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    shared = Settings()
    assert shared.backends, "RSA_BACKENDS must be a JSON object of name → spec"
    assert all(spec.split(":", 1)[0] in {"openai", "engine"} for spec in shared.backends.values())
    ApiSettings()
    assert ObservabilitySettings().log_format == "json"


def test_secret_references_resolve() -> None:
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    keys = set(secret["stringData"])
    configs = {config["metadata"]["name"] for config in of_kind("ConfigMap")}
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys, entry
            for source in container.get("envFrom", []):
                assert source.get("configMapRef", {}).get("name") in configs
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configs
    api_env = {entry["name"] for entry in containers(named("Deployment", "rsa-api"))[0]["env"]}
    assert {"RSA_API_KEYS", "RSA_REDIS_URL"} <= api_env


# ---- Redis ---------------------------------------------------------------------------------------------------


def redis_conf() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in (DEPLOY / "redis.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            settings[key.lower()] = value.strip()
    return settings


def test_redis_conf_is_durable() -> None:
    conf = redis_conf()
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] in {"always", "everysec"}
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["dir"] == "/data"


def requires_password(argv: list[str]) -> None:
    """protected-mode yes without a password refuses every client that is not on loopback (Redis 7)."""
    if redis_conf().get("protected-mode") == "yes":
        assert "--requirepass" in argv or "--protected-mode" in argv, argv


def test_k8s_redis_statefulset_keeps_its_data() -> None:
    redis = named("StatefulSet", "rsa-redis")
    (container,) = containers(redis)
    assert named("Service", redis["spec"]["serviceName"])
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    data_mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert data_mounts == [redis_conf()["dir"]], "the AOF must land on the persistent volume"
    assert named("ConfigMap", "rsa-redis-config")["data"]["redis.conf"] == (DEPLOY / "redis.conf").read_text(), (
        "k8s/redis.yaml embeds deploy/redis.conf verbatim: copy it again"
    )
    config_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config")
    assert container["args"][:2] == ["redis-server", f"{config_mount}/redis.conf"]
    requires_password(container["args"])


def test_compose_redis_uses_redis_conf_and_a_volume() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    mounts = dict(tuple(volume.split(":")[:2]) for volume in redis["volumes"])
    assert (DEPLOY / "redis.conf").samefile(DEPLOY / "./redis.conf") and "./redis.conf" in mounts
    assert redis["command"][:2] == ["redis-server", mounts["./redis.conf"]]
    data_volume = next(source for source, target in mounts.items() if target == redis_conf()["dir"])
    assert data_volume in compose["volumes"], "Redis data on a named volume"
    requires_password(redis["command"])
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_compose_wiring() -> None:
    compose = load_compose()
    services = compose["services"]
    assert {"redis", "api", "worker", "vllm"} <= services.keys()
    for name in ("api", "worker"):
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).exists()
        assert interpolation_default(service["image"]).split(":")[0] == IMAGE
        url = interpolation_default(service["environment"]["RSA_REDIS_URL"])
        assert re.fullmatch(r"redis://:?[^@]*@redis:6379/\d+", url), url
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    backend = interpolation_default(services["api"]["environment"]["RSA_BACKEND"])
    assert backend.startswith("openai:http://vllm:8000/"), "the default backend is the compose vLLM service"
    assert "ports" not in services["worker"], "workers serve nothing"


def test_compose_vllm_is_an_optional_gpu_service() -> None:
    vllm = load_compose()["services"]["vllm"]
    assert vllm["profiles"] == ["gpu"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    command = vllm["command"]
    assert interpolation_default(command[command.index("--model") + 1]) == "Zyphra/ZAYA1-8B"
    for other in ("api", "worker"):
        assert "vllm" not in (load_compose()["services"][other].get("depends_on") or {}), "vllm is optional"


def test_documented_commands_parse() -> None:
    """The `rsa ...` invocations in deploy/README.md code blocks are real commands with real options."""
    readme = (DEPLOY / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", readme, re.DOTALL)
    invocation = re.compile(r"^\s*(?:\$\s*)?(?:[A-Z_]+=\S+\s+)*(?:\.venv/bin/)?rsa\s+(.*)$")
    found = [invocation.match(line) for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    invocations = [shlex.split(match.group(1).split(" #")[0]) for match in found if match]
    assert len(invocations) >= 3, "the README shows the rsa commands an operator runs"
    for argv in invocations:
        check_rsa_argv(argv)


# ---- worker autoscaling (KEDA) ------------------------------------------------------------------------------


def test_keda_scales_the_worker_deployment_on_outstanding_generations() -> None:
    autoscaling = K8S / "autoscaling"
    assert yaml.safe_load((autoscaling / "kustomization.yaml").read_text())["resources"] == ["worker-scaledobject.yaml"]
    text = (autoscaling / "worker-scaledobject.yaml").read_text()
    scaled = yaml.safe_load(text)
    assert scaled["kind"] == "ScaledObject"
    target = scaled["spec"]["scaleTargetRef"]["name"]
    assert named("Deployment", target)["spec"]["template"]["spec"]["containers"][0]["args"] == ["worker"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["query"] == f"max({GENERATIONS_OUTSTANDING.describe()[0].name})"
    worker_concurrency = named("ConfigMap", "rsa-config")["data"]["RSA_WORKER_CONCURRENCY"]
    assert trigger["metadata"]["threshold"] == worker_concurrency  # one worker per concurrency's worth
    assert Keys().demand in text  # the Redis key its comment documents
