"""The Kubernetes manifests (k8s/) as `kubectl kustomize` renders them, checked against the code
they deploy: the schemas of a current Kubernetes, the health names and settings the services
really have, the shutdown bound the server really keeps, and a small NetworkPolicy evaluator for
who may reach whom.

Each target (base, each overlay, each overlay with the optional ServiceMonitor component) is
rendered once per session. kubectl is required: without it these tests fail, they do not skip.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from services.common import server
from services.common.config import ServiceSettings
from services.emotion import main as emotion_main
from services.emotion.config import EmotionSettings
from services.orchestrator import main as orchestrator_main
from services.orchestrator.config import OrchestratorSettings
from services.tools import main as tools_main
from services.tools.config import ToolSettings
from services.tts import main as tts_main
from services.tts.config import SpeechSettings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
# The oldest Kubernetes the manifests are written for (native gRPC probes, preStop sleep).
KUBERNETES_VERSION = "1.34.0"


@dataclass(frozen=True)
class App:
    settings: type[ServiceSettings]
    health_name: str


APPS = {
    "orchestrator": App(OrchestratorSettings, orchestrator_main.SERVICE_NAME),
    "tools": App(ToolSettings, tools_main.SERVICE_NAME),
    "tts": App(SpeechSettings, tts_main.SERVICE_NAME),
    "emotion": App(EmotionSettings, emotion_main.SERVICE_NAME),
}
# What the orchestrator dials, by setting: each must name a Service of the render.
DEPENDENCY_SETTINGS = {"TOOLS_ADDR": "tools", "SPEECH_ADDR": "tts", "EMOTION_ADDR": "emotion"}
# Read by the OpenTelemetry SDK itself, not by our settings classes.
OTEL_SDK_VARIABLES = frozenset(
    {
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_BSP_EXPORT_TIMEOUT",
    }
)
# Custom resources: kubernetes-validate has no schema for them; their structure is checked here.
CUSTOM_KINDS = frozenset({("monitoring.coreos.com/v1", "ServiceMonitor")})
# The slowest start to SERVING measured (k8s/README.md, k8s/measure.py): startup probes allow
# several times as much, for a throttled CPU or a cold node.
SLOWEST_START_SECONDS = 10.2
# Where Prometheus runs and the label that admits a caller's namespace (network-policies.yaml).
PROMETHEUS_NAMESPACE = "monitoring"
CALLER_LABEL = ("chatagent.io/caller", "true")

TARGETS = {
    "base": ("base", ()),
    "dev": ("overlays/dev", ()),
    "prod": ("overlays/prod", ()),
    "dev+servicemonitor": ("overlays/dev", ("components/servicemonitor",)),
    "prod+servicemonitor": ("overlays/prod", ("components/servicemonitor",)),
}
PROD_TARGETS = [t for t in TARGETS if t.startswith("prod")]
DEV_TARGETS = [t for t in TARGETS if t.startswith("dev")]
SERVICEMONITOR_TARGETS = [t for t in TARGETS if t.endswith("+servicemonitor")]

Obj = dict[str, Any]


# -- rendering ---------------------------------------------------------------------------------


def _kustomize(kubectl: str, target: str, scratch: Path) -> list[Obj]:
    directory, components = TARGETS[target]
    root = K8S / directory
    if components:
        # A kustomization of our own around the overlay, as a user adds a component to one.
        wrapper = scratch / target
        wrapper.mkdir()
        overlay = yaml.safe_load((root / "kustomization.yaml").read_text())
        spec: Obj = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(root, wrapper)],
            "components": [os.path.relpath(K8S / c, wrapper) for c in components],
        }
        if "namespace" in overlay:
            spec["namespace"] = overlay["namespace"]
        (wrapper / "kustomization.yaml").write_text(yaml.safe_dump(spec))
        root = wrapper
    result = subprocess.run(
        [kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {root} failed:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


@dataclass
class Manifests:
    target: str
    objects: list[Obj]

    def of_kind(self, *kinds: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] in kinds]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.target}: expected one {kind} {name!r}, found {len(found)}"
        return found[0]

    @property
    def workloads(self) -> list[Obj]:
        return self.of_kind("Deployment", "StatefulSet")

    def app(self, name: str) -> Obj:
        return self.get("Deployment", name)

    @property
    def namespace(self) -> str:
        spaces = {o["metadata"].get("namespace") for o in self.objects if o["kind"] != "Namespace"}
        assert len(spaces) == 1, f"{self.target}: objects in several namespaces: {spaces}"
        return spaces.pop() or "default"

    @property
    def namespace_labels(self) -> dict[str, str]:
        labels = {"kubernetes.io/metadata.name": self.namespace}
        for ns in self.of_kind("Namespace"):
            if ns["metadata"]["name"] == self.namespace:
                labels |= ns["metadata"].get("labels", {})
        return labels


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Manifests]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl (v1.27+, with its built-in kustomize) must be on PATH to render k8s/; "
            "these checks are the only test of the manifests and do not skip"
        )
    scratch = tmp_path_factory.mktemp("kustomize")
    cache: dict[str, Manifests] = {}

    def get(target: str) -> Manifests:
        if target not in cache:
            cache[target] = Manifests(target, _kustomize(kubectl, target, scratch))
        return cache[target]

    return get


@pytest.fixture(params=list(TARGETS))
def manifests(request: pytest.FixtureRequest, render: Callable[[str], Manifests]) -> Manifests:
    return render(request.param)


@pytest.fixture(params=PROD_TARGETS)
def prod(request: pytest.FixtureRequest, render: Callable[[str], Manifests]) -> Manifests:
    return render(request.param)


@pytest.fixture(params=DEV_TARGETS)
def dev(request: pytest.FixtureRequest, render: Callable[[str], Manifests]) -> Manifests:
    return render(request.param)


# -- what a container is given -------------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    source: str  # "value", "configmap", "secret", "field"
    value: str | None = None


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def containers(workload: Obj) -> list[Obj]:
    return pod_spec(workload)["containers"]  # type: ignore[no-any-return]


def app_container(deployment: Obj) -> Obj:
    (container,) = containers(deployment)
    return container


def environment(m: Manifests, container: Obj) -> dict[str, Var]:
    """The variables the container gets, in Kubernetes' order: envFrom, then env over it."""
    env: dict[str, Var] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, (
            f"{m.target}: {container['name']}: envFrom {source} hides which variables it sets; "
            "reference each secret with secretKeyRef"
        )
        ref = source["configMapRef"]
        assert not ref.get("optional"), f"{m.target}: ConfigMap {ref['name']} must exist"
        data = m.get("ConfigMap", ref["name"]).get("data", {})
        for key, value in data.items():
            env[source.get("prefix", "") + key] = Var("configmap", value)
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = Var("value", item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = Var("secret")
        else:
            env[item["name"]] = Var("field")
    return env


def isolated(settings_cls: type[ServiceSettings]) -> type[ServiceSettings]:
    """The settings class reading only what it is given, not this process's environment."""

    class Isolated(settings_cls):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            **sources: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    return Isolated


def settings(m: Manifests, name: str) -> ServiceSettings:
    """The service's settings as its Deployment configures them: the plain values parsed by the
    class itself (secrets left at their defaults, TLS files replaced by a readable file)."""
    env = environment(m, app_container(m.app(name)))
    values: dict[str, str] = {}
    for variable, var in env.items():
        if var.value is None or variable in OTEL_SDK_VARIABLES:
            continue
        values[variable.lower()] = var.value
    for tls in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        if values.get(tls):
            values[tls] = __file__  # where the file is mounted is checked on its own
    return isolated(APPS[name].settings)(**values)


def setting_names(settings_cls: type[ServiceSettings]) -> set[str]:
    return {name.upper() for name in settings_cls.model_fields}


def ports_of(container: Obj) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def prestop_seconds(container: Obj) -> int:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0
    assert "sleep" in pre_stop, f"{container['name']}: preStop must be the native sleep action"
    return int(pre_stop["sleep"]["seconds"])


def shutdown_seconds(m: Manifests, name: str) -> float:
    """preStop + SHUTDOWN_GRACE_SECONDS + the cleanup bound the server keeps after it."""
    grace = settings(m, name).shutdown_grace_seconds
    container = app_container(m.app(name))
    return prestop_seconds(container) + grace + server.SHUTDOWN_CLEANUP_SECONDS


# -- schemas -------------------------------------------------------------------------------------


# Objects already found valid, by content: the targets share most of theirs.
_VALID: set[str] = set()


def test_every_built_in_object_passes_the_strict_schema(manifests: Manifests) -> None:
    for obj in manifests.objects:
        what = f"{manifests.target}: {obj['kind']} {obj['metadata'].get('name')}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        key = json.dumps(obj, sort_keys=True)
        if key in _VALID:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{what}: no schema for {obj['apiVersion']}; a typo, or a new CRD")
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{what}: {exc}")
        _VALID.add(key)


def test_the_validator_refuses_an_unknown_field(render: Callable[[str], Manifests]) -> None:
    # Strict mode is what catches a misspelt field; make sure it still does.
    deployment = dict(render("base").app("tools"))
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_object_is_in_the_overlay_namespace(render: Callable[[str], Manifests]) -> None:
    for target in ("dev", "prod"):
        m = render(target)
        assert [ns["metadata"]["name"] for ns in m.of_kind("Namespace")] == [m.namespace]
        assert m.namespace_labels.get("pod-security.kubernetes.io/enforce") == "restricted"


# -- the four services ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """What the Dockerfile's final stage says about the container it makes."""

    entrypoint: list[str]
    uid: int
    env: dict[str, str]


@pytest.fixture(scope="session")
def image() -> Image:
    instructions = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    last_from = max(i for i, c in enumerate(instructions) if c.cmd == "FROM")
    final = instructions[last_from:]
    (entrypoint,) = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json, "ENTRYPOINT in exec form: arguments are appended to it"
    user = [c for c in final if c.cmd == "USER"][-1].value[0]
    env: dict[str, str] = {}
    for instruction in (c for c in final if c.cmd == "ENV"):
        pairs = instruction.value
        env |= dict(zip(pairs[::2], pairs[1::2], strict=True))
    return Image(list(entrypoint.value), int(user.partition(":")[0]), env)


def test_each_service_runs_its_module_from_the_one_image(
    manifests: Manifests, image: Image
) -> None:
    # The Dockerfile's ENTRYPOINT is `python -m`: the arguments name the module.
    assert image.entrypoint == ["python", "-m"]
    images = set()
    for name in APPS:
        container = app_container(manifests.app(name))
        assert container["name"] == name
        assert "command" not in container, f"{name}: leave the image's ENTRYPOINT alone"
        assert container["args"] == [f"services.{name}"]
        images.add(container["image"])
    assert len(images) == 1, f"{manifests.target}: one image for all four, not {images}"


def test_every_variable_is_a_setting_of_its_service(manifests: Manifests) -> None:
    for name, app in APPS.items():
        known = setting_names(app.settings) | OTEL_SDK_VARIABLES
        unknown = set(environment(manifests, app_container(manifests.app(name)))) - known
        assert not unknown, (
            f"{manifests.target}: {name} is given {sorted(unknown)}, which "
            f"{app.settings.__name__} does not read (a typo, or a setting of another service)"
        )


def test_the_settings_parse_as_configured(manifests: Manifests) -> None:
    # A bad value (LOG_LEVEL=VERBOSE, a zone that does not exist) would stop the process at
    # start; the settings class itself says so here.
    for name in APPS:
        settings(manifests, name)


def test_secrets_come_from_secrets_only(manifests: Manifests) -> None:
    assert not manifests.of_kind("Secret"), "no Secret (and so no secret value) is committed"
    for name, app in APPS.items():
        env = environment(manifests, app_container(manifests.app(name)))
        secret_fields = {
            field_name.upper()
            for field_name, info in app.settings.model_fields.items()
            if info.annotation is SecretStr
        }
        for variable, var in env.items():
            if variable in secret_fields:
                assert var.source == "secret", f"{manifests.target}: {name}: {variable} in clear"
        redis_url = env.get("REDIS_URL")
        if redis_url is not None and redis_url.value is not None:
            assert urlsplit(redis_url.value).password is None, (
                f"{manifests.target}: {name}: a REDIS_URL with a password must come from a Secret"
            )


def test_ports_are_the_ones_the_process_listens_on(manifests: Manifests) -> None:
    for name in APPS:
        deployment = manifests.app(name)
        config = settings(manifests, name)
        ports = ports_of(app_container(deployment))
        assert ports["grpc"] == config.port
        assert ports["metrics"] == config.metrics_port
        if config.health_port:
            assert ports["health"] == config.health_port
        else:
            assert "health" not in ports
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(config.metrics_port)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_probes_ask_the_health_service_where_it_is_served(manifests: Manifests) -> None:
    for name, app in APPS.items():
        container = app_container(manifests.app(name))
        config = settings(manifests, name)
        # With HEALTH_PORT the health service is (also) there, in plaintext.
        health_port = config.health_port or config.port
        declared = set(ports_of(container).values())
        for kind in PROBES:
            probe = container[kind]
            what = f"{manifests.target}: {name} {kind}"
            assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, what
            assert probe["grpc"]["port"] in declared, f"{what}: port not declared"
            assert probe["grpc"]["port"] == health_port, f"{what}: health is on {health_port}"
            service = probe["grpc"].get("service", "")
            assert service in {app.health_name, ""}, f"{what}: {service!r} is not registered"
            if kind != "livenessProbe":
                # Readiness and start follow the service's own status, not only the process.
                assert service == app.health_name, what


def test_probe_timing_fits_what_was_measured(manifests: Manifests) -> None:
    for name in APPS:
        container = app_container(manifests.app(name))
        startup = container["startupProbe"]
        startup_budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert startup_budget >= 3 * SLOWEST_START_SECONDS, f"{name}: startup probe too short"
        liveness = container["livenessProbe"]
        liveness_budget = liveness["periodSeconds"] * liveness["failureThreshold"]
        # A pod that is draining reports NOT_SERVING; its liveness probe must not kill it.
        assert liveness_budget > shutdown_seconds(manifests, name), name
        for kind in PROBES:
            assert container[kind].get("timeoutSeconds", 1) >= 2, f"{name} {kind}: a busy loop"


def test_tls_is_served_from_a_mounted_secret_and_probed_in_plaintext(manifests: Manifests) -> None:
    for name in APPS:
        deployment = manifests.app(name)
        container = app_container(deployment)
        env = environment(manifests, container)
        volumes = {v["name"]: v for v in pod_spec(deployment).get("volumes", [])}
        mounts = {
            m["mountPath"]: volumes[m["name"]]
            for m in container.get("volumeMounts", [])
            if m.get("readOnly")
        }
        for variable in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"):
            var = env.get(variable)
            if var is None or not var.value:
                continue
            holders = [
                volume
                for path, volume in mounts.items()
                if var.value.startswith(path.rstrip("/") + "/")
            ]
            assert holders, f"{manifests.target}: {name}: {variable} is on no read-only mount"
            assert {"secret", "projected", "csi"} & set(holders[0]), f"{name}: {variable}"
        if env.get("TLS_CERT_FILE") is not None:
            # The kubelet's gRPC probes cannot speak TLS.
            assert settings(manifests, name).health_port, f"{manifests.target}: {name}"


def test_prod_probes_use_the_plaintext_health_port_and_the_orchestrator_serves_tls(
    prod: Manifests,
) -> None:
    for name in APPS:
        container = app_container(prod.app(name))
        env = environment(prod, container)
        assert "HEALTH_PORT" in env, f"{name}: HEALTH_PORT is not set"
        health_port = settings(prod, name).health_port
        assert health_port, name
        assert ports_of(container)["health"] == health_port, name
        for kind in PROBES:
            assert container[kind]["grpc"]["port"] == health_port, f"{name} {kind}"
    orchestrator = environment(prod, app_container(prod.app("orchestrator")))
    assert orchestrator["TLS_CERT_FILE"].value
    assert orchestrator["TLS_KEY_FILE"].value
    assert orchestrator["REDIS_URL"].source == "secret"


def test_dev_is_plaintext_probed_on_port_with_one_replica(dev: Manifests) -> None:
    for name in APPS:
        config = settings(dev, name)
        assert not config.tls_cert_file, name
        assert not config.health_port, name
        hpa = dev.get("HorizontalPodAutoscaler", name)
        assert hpa["spec"]["minReplicas"] == 1, name
        assert hpa["spec"]["maxReplicas"] <= 2, name


def test_prod_runs_replicas_of_a_released_image(prod: Manifests) -> None:
    for name in APPS:
        assert prod.get("HorizontalPodAutoscaler", name)["spec"]["minReplicas"] >= 2, name
        image = app_container(prod.app(name))["image"]
        repository, _, tag = image.rpartition(":")
        pinned = "@sha256:" in image or (repository and "/" not in tag)
        assert pinned, f"{name}: {image} has no tag"
        assert tag not in {"latest", "dev"}, f"{name}: {image} is not a release"
        assert "/" in repository, f"{name}: {image} names no registry"
    assert prod.get("HorizontalPodAutoscaler", "orchestrator")["spec"]["minReplicas"] >= 3


def test_dialed_services_exist_and_speak_what_the_orchestrator_client_speaks(
    manifests: Manifests,
) -> None:
    env = environment(manifests, app_container(manifests.app("orchestrator")))
    config = settings(manifests, "orchestrator")
    # services/common/channels.py opens plaintext channels only: a backend that serves TLS
    # would refuse every call. Give the client TLS before turning it on for them.
    client_tls = "secure_channel" in (ROOT / "services/common/channels.py").read_text()
    for variable, name in DEPENDENCY_SETTINGS.items():
        host, _, port = str(getattr(config, variable.lower())).rpartition(":")
        assert env[variable].value is not None, f"{variable} must be set for Kubernetes"
        service = manifests.get("Service", host)
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}, variable
        assert (
            service["spec"]["selector"] == manifests.app(name)["spec"]["selector"]["matchLabels"]
        ), f"{variable} names {host}, which is not the {name} Deployment's Service"
        if not client_tls:
            assert not settings(manifests, name).tls_cert_file, (
                f"{manifests.target}: {name} serves TLS, the orchestrator dials it in plaintext"
            )


# -- pod security, lifecycle, resources ----------------------------------------------------------


def test_every_pod_runs_unprivileged_on_a_read_only_root(
    manifests: Manifests, image: Image
) -> None:
    for workload in manifests.workloads:
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert not spec.get("hostNetwork"), name
        assert not spec.get("hostPID"), name
        if name in APPS:
            # The image's user (Dockerfile USER): its files are readable by it.
            assert pod["runAsUser"] == image.uid == 10001, name
            assert pod["runAsGroup"] == 10001, name
        for container in spec["containers"] + spec.get("initContainers", []):
            security = container["securityContext"]
            what = f"{manifests.target}: {name}/{container['name']}"
            assert security["allowPrivilegeEscalation"] is False, what
            assert security["readOnlyRootFilesystem"] is True, what
            assert security["capabilities"] == {"drop": ["ALL"]}, what
            assert not security.get("privileged"), what
            if name in APPS:
                assert security.get("runAsUser", pod["runAsUser"]) == 10001, what


def test_writable_paths_are_bounded_empty_dirs(manifests: Manifests, image: Image) -> None:
    # Where the image sends what is written at run time (Dockerfile ENV).
    written = [image.env[v] for v in ("TMPDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")]
    for name in APPS:
        deployment = manifests.app(name)
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in app_container(deployment)["volumeMounts"]}
        for path in written:
            holders = [
                volumes[v]
                for mount, v in mounts.items()
                if (path + "/").startswith(mount.rstrip("/") + "/")
            ]
            assert holders, f"{manifests.target}: {name}: {path} is on the read-only root"
            assert "emptyDir" in holders[0], f"{name}: {path}"
        # py3langid unpacks its model (~70 MB) into the temp directory at start.
        tmp = volumes[mounts["/tmp"]]
        assert "sizeLimit" in tmp.get("emptyDir", {}), f"{name}: /tmp is no bounded emptyDir"
        for path, volume in mounts.items():
            if "emptyDir" in volumes[volume]:
                assert "sizeLimit" in volumes[volume]["emptyDir"], f"{name}: {path} unbounded"


def test_each_service_account_exists_without_a_token(manifests: Manifests) -> None:
    for workload in manifests.workloads:
        account = manifests.get("ServiceAccount", pod_spec(workload)["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False


def test_termination_grace_outlasts_the_graceful_stop(manifests: Manifests) -> None:
    for name in APPS:
        deployment = manifests.app(name)
        needed = shutdown_seconds(manifests, name)
        granted = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert granted > needed, (
            f"{manifests.target}: {name}: terminationGracePeriodSeconds {granted} must exceed "
            f"preStop + SHUTDOWN_GRACE_SECONDS + SHUTDOWN_CLEANUP_SECONDS = {needed}"
        )


def test_the_shutdown_sum_reads_the_deployed_grace(render: Callable[[str], Manifests]) -> None:
    # The orchestrator's grace comes from its own ConfigMap, over the class default (10 s).
    m = render("base")
    assert settings(m, "orchestrator").shutdown_grace_seconds == 30
    assert shutdown_seconds(m, "orchestrator") == 5 + 30 + server.SHUTDOWN_CLEANUP_SECONDS


def test_every_container_has_requests_and_limits(manifests: Manifests) -> None:
    quantity = {"m": 1e-3, "Mi": 2**20, "Gi": 2**30}

    def amount(text: str | int) -> float:
        text = str(text)
        for suffix, scale in quantity.items():
            if text.endswith(suffix):
                return float(text.removesuffix(suffix)) * scale
        return float(text)

    for workload in manifests.workloads:
        for container in containers(workload):
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = amount(resources["requests"][resource])
                limit = amount(resources["limits"][resource])
                assert 0 < request <= limit, f"{container['name']} {resource}"


# -- Services, autoscalers, disruption budgets ---------------------------------------------------


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against a set of labels."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        present = key in labels
        if operator == "In":
            matched = present and labels[key] in expression["values"]
        elif operator == "NotIn":
            matched = not present or labels[key] not in expression["values"]
        elif operator in {"Exists", "DoesNotExist"}:
            matched = present == (operator == "Exists")
        else:
            raise AssertionError(f"unknown selector operator {operator}")
        if not matched:
            return False
    return True


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def test_every_service_selects_one_workload_and_a_declared_port(manifests: Manifests) -> None:
    for service in manifests.of_kind("Service"):
        name = service["metadata"]["name"]
        chosen = [
            w
            for w in manifests.workloads
            if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(w))
        ]
        assert len(chosen) == 1, f"{manifests.target}: Service {name} selects {len(chosen)}"
        declared = {
            p.get("name"): p["containerPort"] for c in containers(chosen[0]) for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in declared or target in declared.values(), f"{name}: {target}"
        if name in APPS:
            assert {"grpc", "metrics"} <= {p["name"] for p in service["spec"]["ports"]}


def test_workload_selectors_match_their_own_pods(manifests: Manifests) -> None:
    for workload in manifests.workloads:
        assert selects(workload["spec"]["selector"], pod_labels(workload))


def test_autoscalers_and_disruption_budgets_cover_each_service(manifests: Manifests) -> None:
    deployments = {d["metadata"]["name"]: d for d in manifests.of_kind("Deployment")}
    scaled = set()
    for hpa in manifests.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment", target
        assert target["name"] in deployments, target
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        # Utilization is relative to the request: every container must have one.
        for container in containers(deployments[target["name"]]):
            assert container["resources"]["requests"]["cpu"]
        # The autoscaler owns the count; a replicas field would be reset by every apply.
        assert "replicas" not in deployments[target["name"]]["spec"], target["name"]
        scaled.add(target["name"])
    budgeted = set()
    for pdb in manifests.of_kind("PodDisruptionBudget"):
        chosen = [
            n for n, d in deployments.items() if selects(pdb["spec"]["selector"], pod_labels(d))
        ]
        assert len(chosen) == 1, f"PodDisruptionBudget {pdb['metadata']['name']}: {chosen}"
        # At one replica a minAvailable budget would block every node drain.
        assert pdb["spec"].get("maxUnavailable") == 1
        budgeted.add(chosen[0])
    assert scaled == budgeted == set(APPS)


# -- NetworkPolicy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    namespace: str
    namespace_labels: dict[str, str]
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)


Endpoint = Pod | str  # a pod, or an IP address outside the cluster


def pods(m: Manifests) -> dict[str, Pod]:
    return {
        w["metadata"]["name"]: Pod(
            m.namespace,
            m.namespace_labels,
            pod_labels(w),
            {n: p for c in containers(w) for n, p in ports_of(c).items()},
        )
        for w in m.workloads
    }


def outside_pod(namespace: str, labels: dict[str, str], **namespace_labels: str) -> Pod:
    return Pod(namespace, {"kubernetes.io/metadata.name": namespace, **namespace_labels}, labels)


def peer_matches(peer: Obj, endpoint: Endpoint, policy_namespace: str) -> bool:
    if isinstance(endpoint, str):
        block = peer.get("ipBlock")
        if block is None:
            return False
        address = ipaddress.ip_address(endpoint)
        network = ipaddress.ip_network(block["cidr"])
        if address.version != network.version or address not in network:
            return False
        return not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
    if "ipBlock" in peer:
        return False  # pod addresses are not ours to guess; no rule here relies on them
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], endpoint.namespace_labels):
            return False
    elif endpoint.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], endpoint.labels)


def port_matches(rule: Obj, port: int, protocol: str, destination: Endpoint) -> bool:
    if "ports" not in rule:
        return True
    for allowed in rule["ports"]:
        if allowed.get("protocol", "TCP") != protocol:
            continue
        value = allowed.get("port")
        if value is None:
            return True
        if isinstance(value, str):
            # A named port is the destination container's port of that name.
            value = destination.ports.get(value) if isinstance(destination, Pod) else None
            if value == port:
                return True
        elif value <= port <= allowed.get("endPort", value):
            return True
    return False


def policy_types(policy: Obj) -> list[str]:
    default = ["Ingress", "Egress"] if "egress" in policy["spec"] else ["Ingress"]
    return policy["spec"].get("policyTypes", default)  # type: ignore[no-any-return]


def allowed(
    m: Manifests, source: Pod, destination: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """Whether the render's NetworkPolicies let `source` open `port` on `destination`."""
    policies = m.of_kind("NetworkPolicy")

    def direction(kind: str, selected: Pod, peer: Endpoint, rules_key: str, peers_key: str) -> bool:
        applying = [
            p
            for p in policies
            if selected.namespace == m.namespace
            and kind in policy_types(p)
            and selects(p["spec"]["podSelector"], selected.labels)
        ]
        if not applying:
            return True  # nothing selects the pod in this direction: all is allowed
        return any(
            port_matches(rule, port, protocol, destination)
            and (
                peers_key not in rule
                or any(peer_matches(p, peer, m.namespace) for p in rule[peers_key])
            )
            for policy in applying
            for rule in policy["spec"].get(rules_key, [])
        )

    egress = direction("Egress", source, destination, "egress", "to")
    if isinstance(destination, str):
        return egress
    return egress and direction("Ingress", destination, source, "ingress", "from")


def service_endpoint(m: Manifests, address: str) -> tuple[str, int]:
    """The workload and container port behind a `host:port` that names a Service."""
    host, _, port = address.rpartition(":")
    service = m.get("Service", host)
    (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    (workload,) = [
        w
        for w in m.workloads
        if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(w))
    ]
    target = service_port.get("targetPort", service_port["port"])
    container_port = pods(m)[workload["metadata"]["name"]].ports.get(target, target)
    return workload["metadata"]["name"], int(container_port)


def wiring(m: Manifests) -> Iterator[tuple[str, str, int]]:
    """Every connection the configuration makes inside the namespace: (from, to, port)."""
    for name in APPS:
        config = settings(m, name)
        endpoint = urlsplit(config.otel_exporter_otlp_endpoint).netloc
        yield (name, *service_endpoint(m, endpoint))
        redis_url = config.redis_url or (
            # In prod the URL is a Secret's; it names the Service in the namespace.
            "redis://redis:6379"
            if environment(m, app_container(m.app(name))).get("REDIS_URL")
            else ""
        )
        if redis_url:
            url = urlsplit(redis_url)
            yield (name, *service_endpoint(m, f"{url.hostname}:{url.port or 6379}"))
    orchestrator = settings(m, "orchestrator")
    for variable in DEPENDENCY_SETTINGS:
        yield ("orchestrator", *service_endpoint(m, getattr(orchestrator, variable.lower())))


def test_everything_is_denied_unless_allowed(manifests: Manifests) -> None:
    deny = [
        p
        for p in manifests.of_kind("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(policy_types(p)) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, f"{manifests.target}: no default-deny NetworkPolicy for the namespace"


def test_the_suite_wiring_is_allowed(manifests: Manifests) -> None:
    everyone = pods(manifests)
    edges = list(wiring(manifests))
    assert ("orchestrator", "redis", 6379) in edges
    assert ("tools", "jaeger", 4317) in edges
    for source, destination, port in edges:
        assert allowed(manifests, everyone[source], everyone[destination], port), (
            f"{manifests.target}: {source} -> {destination}:{port} is configured but blocked"
        )
    dns = outside_pod("kube-system", {"k8s-app": "kube-dns"})
    for name in APPS:
        assert allowed(manifests, everyone[name], dns, 53, "UDP"), f"{name}: no DNS"
        assert allowed(manifests, everyone[name], dns, 53, "TCP"), f"{name}: no DNS over TCP"


def test_only_the_orchestrator_and_tools_reach_the_internet(manifests: Manifests) -> None:
    everyone = pods(manifests)
    public = "93.184.215.14"
    # The LLM endpoint and Open-Meteo, over HTTPS.
    assert allowed(manifests, everyone["orchestrator"], public, 443)
    assert allowed(manifests, everyone["tools"], public, 443)
    for name in ("tts", "emotion", "redis", "jaeger"):
        assert not allowed(manifests, everyone[name], public, 443), name
    for name in ("orchestrator", "tools"):
        assert not allowed(manifests, everyone[name], public, 80), name
        # Nothing private, and not the cloud's metadata service (an SSRF's first target).
        for private in ("10.0.0.1", "172.20.0.5", "192.168.1.1", "169.254.169.254"):
            assert not allowed(manifests, everyone[name], private, 443), (name, private)


def test_backends_and_redis_admit_only_the_orchestrator(manifests: Manifests) -> None:
    everyone = pods(manifests)
    prometheus = outside_pod(PROMETHEUS_NAMESPACE, {"app.kubernetes.io/name": "prometheus"})
    caller = outside_pod("shop", {"app": "shop"}, **dict([CALLER_LABEL]))
    for target, port_name in (
        ("tools", "grpc"),
        ("tts", "grpc"),
        ("emotion", "grpc"),
        ("redis", "redis"),
    ):
        port = everyone[target].ports[port_name]
        assert allowed(manifests, everyone["orchestrator"], everyone[target], port), target
        intruders = [caller, prometheus, *(p for n, p in everyone.items() if n != "orchestrator")]
        for intruder in intruders:
            assert not allowed(manifests, intruder, everyone[target], port), (target, intruder)
    # Structurally too: each ingress peer is the orchestrator's pods, or Prometheus on metrics.
    for policy in manifests.of_kind("NetworkPolicy"):
        for target in ("tools", "tts", "emotion", "redis"):
            if not selects(policy["spec"]["podSelector"], everyone[target].labels):
                continue
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), f"{policy['metadata']['name']}: from anywhere"
                for peer in rule["from"]:
                    if peer == {
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "orchestrator"}}
                    }:
                        continue
                    assert peer == {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": PROMETHEUS_NAMESPACE}
                        }
                    }, f"{policy['metadata']['name']}: {target} admits {peer}"
                    assert rule.get("ports") == [{"protocol": "TCP", "port": "metrics"}]


def test_callers_reach_only_the_orchestrator_grpc_port(manifests: Manifests) -> None:
    everyone = pods(manifests)
    orchestrator = everyone["orchestrator"]
    caller = outside_pod("shop", {"app": "shop"}, **dict([CALLER_LABEL]))
    stranger = outside_pod("elsewhere", {"app": "shop"})
    grpc_port, metrics_port = orchestrator.ports["grpc"], orchestrator.ports["metrics"]
    assert allowed(manifests, caller, orchestrator, grpc_port)
    assert not allowed(manifests, caller, orchestrator, metrics_port)
    assert not allowed(manifests, stranger, orchestrator, grpc_port)
    assert not allowed(manifests, everyone["tools"], orchestrator, grpc_port)
    if "health" in orchestrator.ports:
        # The plaintext health port is the kubelet's alone (which NetworkPolicy does not see).
        assert not allowed(manifests, caller, orchestrator, orchestrator.ports["health"])


def test_prometheus_reaches_the_metrics_ports_only(manifests: Manifests) -> None:
    everyone = pods(manifests)
    prometheus = outside_pod(PROMETHEUS_NAMESPACE, {"app.kubernetes.io/name": "prometheus"})
    elsewhere = outside_pod("default", {"app.kubernetes.io/name": "prometheus"})
    for name in APPS:
        pod = everyone[name]
        assert allowed(manifests, prometheus, pod, pod.ports["metrics"]), name
        assert not allowed(manifests, prometheus, pod, pod.ports["grpc"]), name
        assert not allowed(manifests, elsewhere, pod, pod.ports["metrics"]), name


def test_the_evaluator_sees_a_policy_that_opens_too_much(
    render: Callable[[str], Manifests],
) -> None:
    # The policy checks above fail when a policy admits too much: an ingress rule from anyone.
    m = render("base")
    everyone = pods(m)
    assert not allowed(m, everyone["emotion"], everyone["redis"], 6379)
    wide_open = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "oops"},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}},
            "ingress": [{}],
        },
    }
    loose = Manifests("base+oops", [*m.objects, wide_open])
    assert allowed(loose, everyone["emotion"], everyone["redis"], 6379) is False  # egress holds
    assert allowed(loose, outside_pod("elsewhere", {}), everyone["redis"], 6379), (
        "an ingress rule with no from admits every source"
    )


# -- optional components -------------------------------------------------------------------------


@pytest.mark.parametrize("target", SERVICEMONITOR_TARGETS)
def test_the_servicemonitor_scrapes_each_service_metrics_port(
    target: str, render: Callable[[str], Manifests]
) -> None:
    m = render(target)
    (monitor,) = m.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == m.namespace
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    # A ServiceMonitor selects Services by their own labels.
    chosen = [
        s
        for s in m.of_kind("Service")
        if selects(spec["selector"], s["metadata"].get("labels", {}))
    ]
    assert sorted(s["metadata"]["name"] for s in chosen) == sorted(APPS)
    for endpoint in spec["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert endpoint["interval"].endswith("s")
        for service in chosen:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_monitoring_component_is_in_prod_when_it_exists() -> None:
    component = K8S / "components" / "monitoring" / "kustomization.yaml"
    prod = yaml.safe_load((K8S / "overlays" / "prod" / "kustomization.yaml").read_text())
    included = "../../components/monitoring" in prod.get("components", [])
    assert included == component.exists(), (
        "k8s/components/monitoring is included in the prod overlay exactly when it exists"
    )
