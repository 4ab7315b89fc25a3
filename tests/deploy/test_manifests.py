"""The rendered manifests, object by object: hardening, probes, shutdown, configuration."""

import re
from pathlib import Path, PurePosixPath

import pytest

from services.common.settings import ServiceSettings
from services.limits.settings import LimitsSettings
from services.monitoring.settings import MonitoringSettings
from services.scoring.settings import ScoringSettings
from tests.deploy.conftest import GRPC_PORTS, ROOT, SERVICES

HEALTH_PORT = 8081
SETTINGS = {"scoring": ScoringSettings, "limits": LimitsSettings, "monitoring": MonitoringSettings}

# Each ConfigMap file's source in the repository, the copy kustomize reads, and the setting
# that points the service at the mounted file.
CONFIG_FILES = {
    "limits": (
        "services/limits/default_policy.yaml",
        "k8s/base/config/limits-policy.yaml",
        "CREDITLINE_LIMITS_POLICY_FILE",
    ),
    "limits-notice-templates": (
        "services/limits/notice_templates.yaml",
        "k8s/base/config/limits-notice-templates.yaml",
        "CREDITLINE_LIMITS_NOTICE_TEMPLATES_FILE",
    ),
    "monitoring": (
        "services/monitoring/default_rules.yaml",
        "k8s/base/config/monitoring-rules.yaml",
        "CREDITLINE_MONITORING_RULES_FILE",
    ),
}


def pod_spec(rendered, service: str) -> dict:
    return rendered.deployment(service)["spec"]["template"]["spec"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


# ---- hardening -------------------------------------------------------------------------------


def test_the_namespace_enforces_the_restricted_pod_security_standard(target):
    (namespace,) = target.of_kind("Namespace")
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"
    for doc in target.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == target.namespace, doc["metadata"]["name"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_container_meets_the_restricted_pod_security_standard(target, service):
    spec = pod_spec(target, service)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, container["name"]
        for key in ("runAsUser", "runAsGroup"):
            assert type(context[key]) is int and context[key] >= 10000, (container["name"], key)
            assert pod[key] == context[key]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context.get("privileged", False) is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        (tmp,) = [volume for volume in spec["volumes"] if volume["name"] == mounts["/tmp"]]
        assert "emptyDir" in tmp


def test_service_accounts_carry_no_api_token(target):
    accounts = {doc["metadata"]["name"]: doc for doc in target.of_kind("ServiceAccount")}
    for service in SERVICES:
        assert pod_spec(target, service)["serviceAccountName"] == service
        assert accounts[service]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("service", SERVICES)
def test_every_container_has_requests_and_limits(target, service):
    resources = target.container(service)["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}, kind


def test_overlays_pin_one_released_image(overlay):
    images = {
        container["image"]
        for deployment in overlay.of_kind("Deployment")
        for container in deployment["spec"]["template"]["spec"]["containers"]
    }
    (image,) = images
    repository, _, tag = image.rpartition(":")
    assert repository and "/" not in tag, image
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{image}: a released version, never latest"


# ---- probes and shutdown -----------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_probes_are_native_grpc_on_the_plaintext_health_port(target, service):
    container = target.container(service)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"grpc": GRPC_PORTS[service], "health": HEALTH_PORT, "metrics": 9090}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(container[probe]) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}
        assert container[probe]["grpc"]["port"] == ports["health"], probe
        assert container[probe]["grpc"].get("service", "") == "", probe
    env = target.env(service)
    assert env[f"CREDITLINE_{service.upper()}_HEALTH_PORT"]["value"] == str(HEALTH_PORT)
    assert env[f"CREDITLINE_{service.upper()}_PORT"]["value"] == str(GRPC_PORTS[service])
    assert env[f"CREDITLINE_{service.upper()}_HOST"]["value"] == "0.0.0.0"


def pre_stop_seconds(container: dict) -> float:
    handler = container["lifecycle"]["preStop"]
    if "sleep" in handler:
        return float(handler["sleep"]["seconds"])
    command = handler["exec"]["command"]
    assert PurePosixPath(command[0]).name == "sleep" and len(command) == 2, command
    return float(command[1])


@pytest.mark.parametrize("service", SERVICES)
def test_the_pod_outlives_the_pre_stop_sleep_plus_the_shutdown_grace(target, service):
    spec = pod_spec(target, service)
    container = target.container(service)
    grace = target.env(service).get(f"CREDITLINE_{service.upper()}_SHUTDOWN_GRACE_SECONDS")
    grace_seconds = float(grace["value"]) if grace else ServiceSettings().shutdown_grace_seconds
    # SIGTERM comes after the preStop hook; the kubelet's SIGKILL at the end of the whole period.
    assert pre_stop_seconds(container) >= 1
    assert spec["terminationGracePeriodSeconds"] > pre_stop_seconds(container) + grace_seconds


# ---- services, autoscaling, disruption budgets ---------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_services_are_headless_with_a_port_named_grpc(target, service):
    spec = target.get("Service", service)["spec"]
    assert spec["clusterIP"] == "None"
    pod_labels = target.deployment(service)["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in spec["selector"].items())
    (grpc_port,) = [port for port in spec["ports"] if port["name"] == "grpc"]
    assert grpc_port["port"] == GRPC_PORTS[service]
    assert grpc_port["targetPort"] == "grpc"


@pytest.mark.parametrize("service", SERVICES)
def test_every_deployment_has_a_disruption_budget(target, service):
    budget = target.get("PodDisruptionBudget", service)
    assert budget["apiVersion"] == "policy/v1"
    pod_labels = target.deployment(service)["spec"]["template"]["metadata"]["labels"]
    assert selects(budget["spec"]["selector"], pod_labels)
    assert budget["spec"]["maxUnavailable"] == 1


def test_scoring_and_monitoring_scale_with_an_autoscaler(target):
    scaled = {}
    for autoscaler in target.of_kind("HorizontalPodAutoscaler"):
        assert autoscaler["apiVersion"] == "autoscaling/v2"
        ref = autoscaler["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment"
        scaled[ref["name"]] = autoscaler["spec"]
    assert set(scaled) == {"scoring", "monitoring"}
    for name, spec in scaled.items():
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        # The autoscaler owns the count; a replicas field would reset it on every apply.
        assert "replicas" not in target.deployment(name)["spec"]
    assert target.deployment("limits")["spec"]["replicas"] >= 1


# ---- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_every_env_var_is_a_setting_of_its_service(target, service, monkeypatch):
    """The settings classes ignore unknown variables (extra="ignore"), so a misspelt name would
    silently keep a default: every name must be a field, and every value must parse."""
    cls = SETTINGS[service]
    prefix = cls.model_config["env_prefix"]
    assert prefix == f"CREDITLINE_{service.upper()}_"
    unknown = []
    for name, entry in target.env(service).items():
        assert name.startswith(prefix), f"{service} sets {name}"
        if name.removeprefix(prefix).lower() not in cls.model_fields:
            unknown.append(name)
        value = entry.get("value", "postgresql+psycopg://user:secret@db:5432/creditline")
        monkeypatch.setenv(name, value)
    assert not unknown, f"{service}: no such settings: {unknown}"
    cls()


def test_no_overlay_uses_sqlite(overlay):
    for doc in overlay.docs:
        if doc["kind"] != "ConfigMap":  # the policy and the rules are data, not configuration
            assert "sqlite" not in str(doc).lower(), doc["metadata"]["name"]
    for service in ("limits", "monitoring"):
        url = overlay.env(service)[f"CREDITLINE_{service.upper()}_DATABASE_URL"]
        assert "value" not in url, "the DSN holds a password: it comes from a Secret"
        assert url["valueFrom"]["secretKeyRef"] == {
            "name": f"creditline-{service}-db",
            "key": "url",
        }


@pytest.mark.parametrize("service", SERVICES)
def test_every_file_a_setting_names_is_mounted(target, service):
    """Each /etc/creditline path in the env is a file of a mounted Secret or ConfigMap."""
    spec = pod_spec(target, service)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in target.container(service)["volumeMounts"]}
    configmaps = {doc["metadata"]["name"]: doc for doc in target.of_kind("ConfigMap")}
    paths = [
        PurePosixPath(entry["value"])
        for entry in target.env(service).values()
        if entry.get("value", "").startswith("/etc/creditline/")
    ]
    assert paths
    for path in paths:
        mount = mounts[str(path.parent)]
        assert "subPath" not in mount and mount["readOnly"] is True
        volume = volumes[mount["name"]]
        if "secret" in volume:
            assert path.name in {item["path"] for item in volume["secret"]["items"]}, path
        else:
            assert path.name in configmaps[volume["configMap"]["name"]]["data"], path


@pytest.mark.parametrize("config", CONFIG_FILES)
def test_configmaps_carry_the_repository_files_byte_for_byte(target, config):
    service = config.split("-")[0]
    source, copy, setting = CONFIG_FILES[config]
    assert (ROOT / copy).read_bytes() == (ROOT / source).read_bytes(), (
        f"{copy} differs from {source}: run `make k8s-config`"
    )
    path = PurePosixPath(target.env(service)[setting]["value"])
    (mount,) = [
        m for m in target.container(service)["volumeMounts"] if m["mountPath"] == str(path.parent)
    ]
    (volume,) = [v for v in pod_spec(target, service)["volumes"] if v["name"] == mount["name"]]
    name = volume["configMap"]["name"]
    assert re.fullmatch(rf"{service}-\w+-[a-z0-9]{{10}}", name), f"{name}: no content hash"
    data = target.get("ConfigMap", name)["data"]
    assert data[path.name] == (ROOT / source).read_text()


@pytest.mark.parametrize("service", SERVICES)
def test_tls_and_tokens_come_from_the_shared_secrets(target, service):
    spec = pod_spec(target, service)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    tls = volumes["tls"]["secret"]
    assert tls["secretName"] == "creditline-tls"
    assert {item["key"]: item["path"] for item in tls["items"]} == {
        "ca.crt": "ca.crt",
        f"{service}.crt": "tls.crt",
        f"{service}.key": "tls.key",
    }
    tokens = volumes["tokens"]["secret"]
    assert tokens["secretName"] == "creditline-tokens"
    expected = {"tokens.yaml"} | ({f"{service}.token"} if service != "scoring" else set())
    assert {item["key"] for item in tokens["items"]} == expected
    env = target.env(service)
    prefix = f"CREDITLINE_{service.upper()}_"
    assert env[prefix + "TLS_CERT_FILE"]["value"] == "/etc/creditline/tls/tls.crt"
    assert env[prefix + "TLS_KEY_FILE"]["value"] == "/etc/creditline/tls/tls.key"
    assert env[prefix + "TLS_CA_FILE"]["value"] == "/etc/creditline/tls/ca.crt"
    assert env[prefix + "TOKENS_FILE"]["value"] == "/etc/creditline/tokens/tokens.yaml"
    if service != "scoring":
        token = env[prefix + "CLIENT_TOKEN_FILE"]["value"]
        assert token == f"/etc/creditline/tokens/{service}.token"


@pytest.mark.parametrize(
    ("service", "setting", "callee"),
    [
        ("limits", "SCORING_TARGET", "scoring"),
        ("monitoring", "LIMITS_TARGET", "limits"),
        ("monitoring", "SCORING_TARGET", "scoring"),
    ],
)
def test_callers_reach_the_headless_services_through_dns(target, service, setting, callee):
    value = target.env(service)[f"CREDITLINE_{service.upper()}_{setting}"]["value"]
    assert value == f"dns:///{callee}:{GRPC_PORTS[callee]}"
    target.get("Service", callee)


def test_the_scoring_models_are_the_ones_in_the_image(target):
    model_dir = target.env("scoring")["CREDITLINE_SCORING_MODEL_DIR"]["value"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"COPY --from=builder /app/models {model_dir}\n" in dockerfile
    assert f"CREDITLINE_SCORING_MODEL_DIR={model_dir}" in dockerfile
    assert (ROOT / "models" / "application").is_dir() and Path(model_dir).is_absolute()


def test_the_service_monitor_scrapes_the_metrics_port_of_every_service(rendered):
    target = rendered["with-components"]
    (monitor,) = target.of_kind("ServiceMonitor")
    selector = monitor["spec"]["selector"]
    (endpoint,) = monitor["spec"]["endpoints"]
    for service in SERVICES:
        service_object = target.get("Service", service)
        labels = service_object["metadata"]["labels"]
        assert all(labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"]), (
            service
        )
        ports = {port["name"]: port for port in service_object["spec"]["ports"]}
        assert ports[endpoint["port"]]["targetPort"] == "metrics"
        container_ports = {
            p["name"]: p["containerPort"] for p in target.container(service)["ports"]
        }
        metrics_port = target.env(service)[f"CREDITLINE_{service.upper()}_METRICS_PORT"]["value"]
        assert container_ports["metrics"] == int(metrics_port)


def test_the_tracing_component_points_every_service_at_the_collector(rendered):
    target = rendered["with-components"]
    for service in SERVICES:
        endpoint = target.env(service)[f"CREDITLINE_{service.upper()}_OTLP_ENDPOINT"]["value"]
        assert endpoint == "otel-collector.observability:4317"
    for name in ("staging", "production"):
        for service in SERVICES:
            assert f"CREDITLINE_{service.upper()}_OTLP_ENDPOINT" not in rendered[name].env(service)


def test_the_jetstream_component_turns_the_consumer_on_for_monitoring_alone(rendered):
    env = rendered["with-components"].env("monitoring")
    assert env["CREDITLINE_MONITORING_JETSTREAM_URL"]["value"] == "nats://nats.nats:4222"
    settings = MonitoringSettings(
        **{
            name.removeprefix("CREDITLINE_MONITORING_").lower(): entry["value"]
            for name, entry in env.items()
            if name.startswith("CREDITLINE_MONITORING_JETSTREAM_")
        }
    )
    assert settings.jetstream_subject == "creditline.repayments"
    for name in ("staging", "production"):
        assert not any("JETSTREAM" in variable for variable in rendered[name].env("monitoring"))
