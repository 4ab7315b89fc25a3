"""The suite as the production overlay runs it: each service started from its Deployment's own
command, environment and mounted files, with TLS and tokens on, and a customer's life run across
the three processes end to end, so that the manifests and the code cannot drift apart.

What the cluster would provide is made locally: the Secrets from the project's development
tooling (what `creditline dev certs` and `creditline dev tokens` write) and fresh PostgreSQL
schemas, the ConfigMaps from the rendered ones, a directory for each volume mount. `localise`
rewrites only what cannot work outside a cluster, one commented rule at a time, and fails on
anything in the manifests it does not understand; every other name, value and argument is used
as rendered.
"""

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditline.limits.v1 import limits_service_pb2 as lpb
from creditline.limits.v1 import limits_service_pb2_grpc
from creditline.monitoring.v1 import monitoring_service_pb2 as mpb
from creditline.monitoring.v1 import monitoring_service_pb2_grpc
from services.common.channels import ClientSecurity, create_channel
from services.devtools import (
    CertificateAuthority,
    certificate_pem,
    key_pem,
    write_dev_certs,
    write_dev_tokens,
)
from tests.databases import postgres_schema
from tests.deploy.conftest import ROOT, SERVICES, Rendered
from tests.deploy.test_dockerfile import parse_dockerfile
from tests.limits.test_service import cny, draw, open_account, rid
from tests.monitoring.events import Customer, publish
from tests.servers import eventually, wait_serving

# Every local stand-in listens on loopback and is dialled there. The development certificates
# name 127.0.0.1 (services/devtools.py), so TLS verifies servers with no name override.
LOOPBACK = "127.0.0.1"
# The image's program, `creditline` on its PATH: this checkout's console script.
CONSOLE_SCRIPT = ROOT / ".venv" / "bin" / "creditline"
# The database Secrets the README has an operator create, and the service each one is for.
DATABASE_SECRETS = {"creditline-limits-db": "limits", "creditline-monitoring-db": "monitoring"}
GRPC_SERVICES = {
    "limits": "creditline.limits.v1.LimitsService",
    "monitoring": "creditline.monitoring.v1.MonitoringService",
}


class NotUnderstood(AssertionError):
    """The manifests hold something the local stand-in does not know how to reproduce: teach it
    the new case, with its reason, rather than let it pass unexamined."""


# ---- the cluster's part, made locally ----------------------------------------------------------


@dataclass
class Pod:
    """One Deployment's pod: its container as rendered, and the local stand-ins of its parts."""

    service: str
    container: dict
    spec: dict
    metadata: dict
    # The pod's filesystem: each mount path is the same path below this directory.
    root: Path
    # mount path -> the local directory holding the volume's files
    mounts: dict[str, Path] = field(default_factory=dict)
    # port name -> containerPort, and port name -> the free local port standing in for it
    container_ports: dict[str, int] = field(default_factory=dict)
    local_ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log: Path | None = None

    def address(self, port_name: str = "grpc") -> str:
        return f"{LOOPBACK}:{self.local_ports[port_name]}"

    def port_named(self, number: int | str) -> str:
        """The name of the container port `number` (or the name itself, if given one)."""
        named = [n for n, p in self.container_ports.items() if str(number) in (n, str(p))]
        if len(named) != 1:
            raise NotUnderstood(f"{self.service}: port {number} is not a declared container port")
        return named[0]

    def log_tail(self, lines: int = 40) -> str:
        if self.log is None or not self.log.exists():
            return "(no output)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Cluster:
    """What the namespace holds for the pods: Secrets, ConfigMaps, Services, and the pods."""

    rendered: Rendered
    secrets: dict[str, dict[str, bytes]]
    configmaps: dict[str, dict[str, str]]
    pods: dict[str, Pod] = field(default_factory=dict)

    def has_service(self, name: str) -> bool:
        return any(s["metadata"]["name"] == name for s in self.rendered.of_kind("Service"))

    def reach(self, name: str, port: int) -> str:
        """The local address of what `name:port` reaches in the cluster: the Service's port
        `port`, the one pod its selector picks, the container port its targetPort names."""
        spec = self.rendered.get("Service", name)["spec"]
        entries = [entry for entry in spec["ports"] if entry["port"] == port]
        if len(entries) != 1:
            raise NotUnderstood(f"Service {name} exposes no port {port}")
        selector = spec["selector"]
        picked = [
            pod
            for pod in self.pods.values()
            if all(pod.metadata["labels"].get(k) == v for k, v in selector.items())
        ]
        if len(picked) != 1:
            raise NotUnderstood(f"Service {name} selects {len(picked)} of the pods")
        return picked[0].address(picked[0].port_named(entries[0].get("targetPort", port)))


def development_secrets(directory: Path, namespace: str, database_urls: dict[str, str]):
    """The Secrets as the README's steps create them for a development cluster (ca.key stays
    out), and the CA and every role's token for the test's own clients."""
    written = write_dev_certs(directory / "certs", namespace=namespace)
    tls = {path.name: path.read_bytes() for path in written if path.name != "ca.key"}
    dev_tokens = write_dev_tokens(directory / "tokens")
    tokens = {dev_tokens.tokens_file.name: dev_tokens.tokens_file.read_bytes()}
    tokens |= {path.name: path.read_bytes() for path in dev_tokens.client_token_files.values()}
    secrets = {"creditline-tls": tls, "creditline-tokens": tokens}
    for secret, service in DATABASE_SECRETS.items():
        secrets[secret] = {"url": database_urls[service].encode()}
    ca = CertificateAuthority(
        serialization.load_pem_private_key((directory / "certs" / "ca.key").read_bytes(), None),
        x509.load_pem_x509_certificate(tls["ca.crt"]),
    )
    by_role = {role: token for role, token in dev_tokens.tokens.values()}
    return secrets, ca, by_role


def policy_for_the_test(text: str) -> str:
    """The rendered policy with one change. Policy is data, and limits decides on the wall
    clock: production makes a frozen line wait 90 days before it may reopen, which a test of
    seconds cannot. Every other rule is the rendered ConfigMap's."""
    policy = yaml.safe_load(text)
    eligibility = policy["reopening"]["eligibility"]
    assert eligibility["min_days_since_closure"] > 0, "the test's copy no longer needs a change"
    eligibility["min_days_since_closure"] = 0
    return yaml.safe_dump(policy, sort_keys=False, allow_unicode=True)


def local_configmaps(rendered: Rendered) -> dict[str, dict[str, str]]:
    configmaps = {cm["metadata"]["name"]: dict(cm["data"]) for cm in rendered.of_kind("ConfigMap")}
    (policy,) = [name for name in configmaps if name.startswith("limits-policy-")]
    configmaps[policy]["policy.yaml"] = policy_for_the_test(configmaps[policy]["policy.yaml"])
    return configmaps


# ---- env, volumes and command, as the kubelet hands them over --------------------------------

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in env values, command and args: a variable defined
    before is replaced, `$$` escapes, any other reference stays as written."""
    return _REFERENCE.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def field_value(pod: Pod, cluster: Cluster, path: str) -> str:
    """A downward API fieldRef, answered for the one local pod."""
    if labelled := re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path):
        return pod.metadata.get(labelled[1], {})[labelled[2]]
    values = {
        "metadata.name": f"{pod.service}-local",
        "metadata.namespace": cluster.rendered.namespace,
        "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
        "spec.nodeName": socket.gethostname(),
        "status.podIP": LOOPBACK,
        "status.hostIP": LOOPBACK,
    }
    if path not in values:
        raise NotUnderstood(f"{pod.service}: fieldRef {path}")
    return values[path]


def resolve_env(pod: Pod, cluster: Cluster) -> list[tuple[str, str, str]]:
    """The container's env with every valueFrom looked up: (name, value, where it came from)."""
    if pod.container.get("envFrom"):
        raise NotUnderstood(f"{pod.service}: envFrom")
    resolved: list[tuple[str, str, str]] = []
    seen: dict[str, str] = {}
    for entry in pod.container.get("env", []):
        name, value_from = entry["name"], entry.get("valueFrom")
        if value_from is None:
            value, source = expand(str(entry.get("value", "")), seen), "value"
        else:
            (source, ref), *others = value_from.items()
            if others:
                raise NotUnderstood(f"{pod.service}: {name} has several valueFrom sources")
            if source == "secretKeyRef":
                data = cluster.secrets.get(ref["name"], {}).get(ref["key"])
                value = None if data is None else data.decode()
            elif source == "configMapKeyRef":
                value = cluster.configmaps.get(ref["name"], {}).get(ref["key"])
            elif source == "fieldRef":
                value = field_value(pod, cluster, ref["fieldPath"])
            else:
                raise NotUnderstood(f"{pod.service}: {name} from {source}")
            if value is None:
                if ref.get("optional"):
                    continue
                raise NotUnderstood(f"{pod.service}: {name}: the cluster holds no {ref}")
        resolved.append((name, value, source))
        seen[name] = value
    return resolved


def materialise_volumes(pod: Pod, cluster: Cluster) -> None:
    """Writes each mounted volume into its directory below the pod's root: an emptyDir empty,
    a Secret or ConfigMap with its keys as files (only the `items` listed, named as they say),
    in its defaultMode, and read-only where the mount is."""
    volumes = {volume["name"]: volume for volume in pod.spec.get("volumes", [])}
    for mount in pod.container.get("volumeMounts", []):
        path = mount["mountPath"]
        if "subPath" in mount or "subPathExpr" in mount:
            raise NotUnderstood(f"{pod.service}: a subPath mount at {path}")
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            source, files = {}, {}
        elif "secret" in volume:
            source = volume["secret"]
            if source["secretName"] not in cluster.secrets:
                raise NotUnderstood(f"{pod.service}: no stand-in for Secret {source['secretName']}")
            files = cluster.secrets[source["secretName"]]
        elif "configMap" in volume:
            source = volume["configMap"]
            data = cluster.configmaps[source["name"]]
            files = {key: text.encode() for key, text in data.items()}
        else:
            raise NotUnderstood(f"{pod.service}: volume {volume['name']} of {sorted(volume)}")
        if "items" in source:
            files = {item["path"]: files[item["key"]] for item in source["items"]}
        directory = pod.root / PurePosixPath(path).relative_to("/")
        directory.mkdir(parents=True)
        for name, data in files.items():
            (directory / name).write_bytes(data)
            (directory / name).chmod(source.get("defaultMode", 0o644))
        if mount.get("readOnly"):
            directory.chmod(0o555)
        pod.mounts[path] = directory


def container_argv(pod: Pod, env: dict[str, str]) -> list[str]:
    """What Kubernetes runs: `command` replaces the image's ENTRYPOINT and `args` its CMD (a
    command given alone drops CMD too), each with `$(VAR)` expanded."""
    _, stages = parse_dockerfile()
    (entrypoint,) = [json.loads(e) for e in stages[-1].all("ENTRYPOINT")]
    cmd = [json.loads(c) for c in stages[-1].all("CMD")][-1:] or [[]]
    container = pod.container
    if "command" in container:
        argv = container["command"] + container.get("args", [])
    else:
        argv = entrypoint + container.get("args", cmd[0])
    return [expand(part, env) for part in argv]


def program(argv: list[str]) -> list[str]:
    """The image's `creditline` is this checkout's console script; the arguments follow as
    rendered. They must be command words: a value in them (a port, a path) would escape
    `localise`."""
    name, *arguments = argv
    if name != "creditline":
        raise NotUnderstood(f"the container runs {name!r}, not the image's creditline")
    for argument in arguments:
        if not re.fullmatch(r"[a-z][a-z-]*", argument):
            raise NotUnderstood(f"argument {argument!r}: settings belong in the env")
    if CONSOLE_SCRIPT.exists():
        return [str(CONSOLE_SCRIPT), *arguments]
    run_cli = "import sys; from services.cli import app; sys.exit(app())"
    return [sys.executable, "-c", run_cli, *arguments]


# ---- the rewriting ------------------------------------------------------------------------------

_SERVICE_TARGET = re.compile(
    r"(?:dns:///)?([a-z0-9-]+)(?:\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?)?:(\d+)"
)
_ADDRESS = re.compile(r"[\w.-]+:\d+|\w[\w+.-]*://.*")


def localise(pod: Pod, cluster: Cluster, env: list[tuple[str, str, str]]) -> dict[str, str]:
    """The env that makes a process on this machine do what the container would, changed only
    where a cluster cannot be reproduced; raises NotUnderstood for anything it cannot place."""
    image_dirs = image_directories()
    local: dict[str, str] = {}
    ports_taken: dict[str, str] = {}
    for name, value, source in env:
        target = _SERVICE_TARGET.fullmatch(value)
        if source == "secretKeyRef":
            # Rule 1: values from Secrets are the test's own stand-ins (the database URLs are
            # fresh PostgreSQL schemas on this machine): already local, used as they are.
            local[name] = value
        elif name.endswith("_HOST"):
            # Rule 2: listen addresses. 0.0.0.0, every interface of the pod's own network
            # namespace, becomes loopback: here the pods share the host's.
            if value != "0.0.0.0":
                raise NotUnderstood(f"{pod.service}: {name}={value}")
            local[name] = LOOPBACK
        elif name.endswith("_PORT"):
            # Rule 3: ports. Every pod has the same health and metrics ports, and here they
            # share one host: each declared container port becomes a free local port. A port
            # the container does not declare (no probe or Service could reach it) is drift.
            port_name = pod.port_named(value)
            if port_name in ports_taken:
                raise NotUnderstood(f"{pod.service}: {name} and {ports_taken[port_name]}: one port")
            ports_taken[port_name] = name
            local[name] = str(pod.local_ports[port_name])
        elif target and cluster.has_service(target[1]):
            # Rule 4: calls to another service. `dns:///<svc>:<port>` names a headless Service;
            # here its one pod listens on loopback, so the target is 127.0.0.1:<local port>.
            # The certificates name 127.0.0.1 (build_cluster checks), so the caller verifies
            # the server against the address it dials: TLS stays as strict as in the cluster.
            if target[2] not in (None, cluster.rendered.namespace):
                raise NotUnderstood(f"{pod.service}: {name}={value} is in another namespace")
            local[name] = cluster.reach(target[1], int(target[3]))
        elif mount := _below(value, pod.mounts):
            # Rule 5: files in mounted volumes. The mount path becomes the local directory that
            # holds the same files (materialise_volumes).
            local[name] = str(pod.mounts[mount[0]] / mount[1])
        elif in_image := _below(value, image_dirs):
            # Rule 6: files baked into the image below its WORKDIR (the final stage's COPY, as
            # /app/models): the same files in this checkout.
            local[name] = str(image_dirs[in_image[0]] / in_image[1])
        elif value.startswith("/") or _ADDRESS.fullmatch(value):
            raise NotUnderstood(f"{pod.service}: {name}={value}: no rule for this path or address")
        else:
            # Everything else (numbers, levels, intervals, names) exactly as rendered.
            local[name] = value
    if "/tmp" in pod.mounts:
        # Rule 7: the emptyDir on /tmp is the process's scratch space (its root filesystem is
        # read-only); Python's tempfile, and what uses it, follow TMPDIR to the stand-in.
        local["TMPDIR"] = str(pod.mounts["/tmp"])
    return local


def _below(value: str, directories: dict) -> tuple[str, str] | None:
    """(the deepest of `directories` that the path `value` is or lies below, the rest)."""
    if not value.startswith("/"):
        return None
    path = PurePosixPath(value)
    found = [d for d in directories if path == PurePosixPath(d) or PurePosixPath(d) in path.parents]
    if not found:
        return None
    deepest = max(found, key=lambda d: len(PurePosixPath(d).parts))
    rest = path.relative_to(deepest)
    return deepest, "" if rest == PurePosixPath(".") else str(rest)


def image_directories() -> dict[str, Path]:
    """The final stage's COPY destinations below its WORKDIR, and the same in this checkout."""
    _, stages = parse_dockerfile()
    (workdir,) = stages[-1].all("WORKDIR")
    found = {}
    for copy in stages[-1].all("COPY"):
        destination = PurePosixPath(copy.split()[-1])
        if PurePosixPath(workdir) in destination.parents:
            local = ROOT / destination.relative_to(workdir)
            assert local.exists(), f"the image's {destination} would be {local}, which is missing"
            found[str(destination)] = local
    return found


# ---- the pods ----------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def build_cluster(rendered: Rendered, directory: Path, database_urls: dict[str, str]):
    secrets, ca, tokens = development_secrets(
        directory / "secrets", rendered.namespace, database_urls
    )
    cluster = Cluster(rendered, secrets, local_configmaps(rendered))
    for service in SERVICES:  # rule 4 dials 127.0.0.1: the certificates must name it
        certificate = x509.load_pem_x509_certificate(secrets["creditline-tls"][f"{service}.crt"])
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert LOOPBACK in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}, service
    ports = iter(free_ports(3 * len(SERVICES)))
    for service in SERVICES:
        template = rendered.deployment(service)["spec"]["template"]
        container = rendered.container(service)
        pod = Pod(service, container, template["spec"], template["metadata"], directory / service)
        pod.container_ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        pod.local_ports = {name: next(ports) for name in pod.container_ports}
        cluster.pods[service] = pod
    return cluster, ca, tokens


def start(pod: Pod, cluster: Cluster) -> None:
    """Starts the pod's process: nothing of this machine's environment is inherited, only the
    localised env and OMP_NUM_THREADS=1 (as the image sets it); the working directory is the
    checkout, which the image's WORKDIR holds."""
    materialise_volumes(pod, cluster)
    env = localise(pod, cluster, resolve_env(pod, cluster)) | {"OMP_NUM_THREADS": "1"}
    argv = program(container_argv(pod, env))
    pod.log = pod.root / "output.log"
    with pod.log.open("wb") as output:
        pod.process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
        )


def probe_port(pod: Pod) -> str:
    """The container port the readiness probe asks (native gRPC health, plaintext)."""
    return pod.port_named(pod.container["readinessProbe"]["grpc"]["port"])


def stop_budget(pod: Pod) -> float:
    """The kubelet's time between SIGTERM and SIGKILL: the termination grace period less the
    preStop sleep that runs before SIGTERM."""
    sleep = pod.container["lifecycle"]["preStop"]["exec"]["command"]
    assert PurePosixPath(sleep[0]).name == "sleep", sleep
    return pod.spec["terminationGracePeriodSeconds"] - float(sleep[1])


@pytest.fixture
def suite(rendered, tmp_path) -> Iterator[tuple[Cluster, CertificateAuthority, dict[str, str]]]:
    """The production overlay's three pods, running locally and SERVING."""
    with ExitStack() as stack:
        # limits and monitoring each on a schema of their own, as production's two Secrets say.
        urls = {
            service: stack.enter_context(postgres_schema()) for service in DATABASE_SECRETS.values()
        }
        cluster, ca, tokens = build_cluster(rendered["production"], tmp_path, urls)
        try:
            for pod in cluster.pods.values():
                start(pod, cluster)
            for pod in cluster.pods.values():
                try:
                    wait_serving(pod.local_ports[probe_port(pod)], process=pod.process)
                except AssertionError as error:
                    raise AssertionError(f"{pod.service}: {error}\n{pod.log_tail()}") from None
            yield cluster, ca, tokens
        finally:
            for pod in cluster.pods.values():  # only what a failed test left running
                if pod.process is not None and pod.process.poll() is None:
                    pod.process.kill()
                    pod.process.wait(10)


# ---- clients ------------------------------------------------------------------------------------


class Clients:
    """Stubs over mTLS, with a client certificate of the same CA and each role's own token."""

    def __init__(self, cluster: Cluster, ca: CertificateAuthority, tokens: dict[str, str]):
        key, certificate = ca.issue("deploy-test-client", ["localhost"])
        self.credentials = grpc.ssl_channel_credentials(
            root_certificates=certificate_pem(ca.certificate),
            private_key=key_pem(key),
            certificate_chain=certificate_pem(certificate),
        )
        self.cluster, self.tokens, self.channels = cluster, tokens, []

    def _channel(self, service: str, role: str | None) -> grpc.Channel:
        security = ClientSecurity(self.credentials, self.tokens[role] if role else None)
        address = self.cluster.pods[service].address()
        channel = create_channel(address, service=GRPC_SERVICES[service], security=security)
        self.channels.append(channel)
        return channel

    def limits(self, role: str | None) -> limits_service_pb2_grpc.LimitsServiceStub:
        return limits_service_pb2_grpc.LimitsServiceStub(self._channel("limits", role))

    def monitoring(self, role: str | None) -> monitoring_service_pb2_grpc.MonitoringServiceStub:
        return monitoring_service_pb2_grpc.MonitoringServiceStub(self._channel("monitoring", role))

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


def refused(call, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=10)
    return raised.value.code()


# ---- the test -----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_the_rendered_suite_serves_a_customer_lifecycle_over_mtls_with_tokens(suite):
    cluster, ca, tokens = suite
    clients = Clients(cluster, ca, tokens)
    try:
        check_the_doors(clients, cluster.pods)
        run_the_lifecycle(clients)
    finally:
        clients.close()
    stop_the_pods(cluster.pods)


def check_the_doors(clients: Clients, pods: dict[str, Pod]) -> None:
    """Health answers on the plaintext port without a token; the gRPC port speaks only TLS and
    wants a token whose role may call the method; metrics answer on their own port."""
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for pod in pods.values():
        with grpc.insecure_channel(pod.address(probe_port(pod))) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, pod.service
        with grpc.insecure_channel(pod.address("grpc")) as channel:
            code = refused(
                health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest()
            )
            assert code == grpc.StatusCode.UNAVAILABLE, f"{pod.service}: plaintext got {code}"
        with no_proxy.open(f"http://{pod.address('metrics')}/metrics", timeout=10) as response:
            assert b"grpc_server_handling_seconds" in response.read(), pod.service
    unknown = lpb.GetAccountRequest(account_id="no-such-account")
    assert refused(clients.limits(None).GetAccount, unknown) == grpc.StatusCode.UNAUTHENTICATED
    listing = mpb.ListAlertsRequest()
    assert refused(clients.monitoring(None).ListAlerts, listing) == grpc.StatusCode.UNAUTHENTICATED
    denied = refused(clients.monitoring("loan_servicing").ListAlerts, listing)
    assert denied == grpc.StatusCode.PERMISSION_DENIED


def run_the_lifecycle(clients: Clients) -> None:
    """Misses payments, is cut at 30 days past due and frozen at 60 (monitoring's outbox tells
    limits by itself), is cured and repays on time, reopens at stage 1 and advances."""
    app = clients.limits("app_backend")
    servicing_limits = clients.limits("loan_servicing")
    servicing = clients.monitoring("loan_servicing")
    operator_limits = clients.limits("operator")
    operator = clients.monitoring("operator")

    account = open_account(app).account
    account_id, line = account.account_id, account.credit_line.minor_units
    assert draw(servicing_limits, account_id, 1_000).account.drawn.minor_units == 100_000

    def current() -> lpb.Account:
        return app.GetAccount(lpb.GetAccountRequest(account_id=account_id), timeout=10).account

    def alerts() -> list[mpb.Alert]:
        request = mpb.ListAlertsRequest(filter=mpb.AlertFilter(account_id=account_id))
        request.page_size = 500
        return list(operator.ListAlerts(request, timeout=10).alerts)

    def settled() -> bool:
        """Every signal monitoring raised for the account has left its outbox for limits."""
        return all(a.delivery_state != mpb.DELIVERY_STATE_PENDING for a in alerts())

    def publish_and_settle(*events) -> None:
        publish(servicing, *events)
        eventually(settled, "monitoring delivers its signals to limits")

    # Monitoring's rules take days past due, windows and streaks from the events' own times;
    # limits decides on the wall clock, and reopens only after an on-time repayment in the last
    # 60 days. So the customer's first 455 days end now, and the three repayments after the
    # reopening are dated in the months to come.
    customer = Customer(account_id, at=datetime.now(UTC) - timedelta(days=455))
    publish_and_settle(customer.opened(line / 100), customer.advance(days=1).drawn(1_000))
    publish(servicing, customer.advance(days=30).missed(days=1))
    eventually(lambda: current().status == lpb.ACCOUNT_STATUS_WATCHLIST, "watchlisted at 1 day")
    publish(servicing, customer.advance(days=29).past_due(30))
    # Cut by half at 30 days past due (and further if rescoring found a worse band).
    eventually(lambda: current().credit_line.minor_units <= line // 2, "cut at 30 days")
    publish(servicing, customer.advance(days=30).past_due(60))
    eventually(lambda: current().status == lpb.ACCOUNT_STATUS_FROZEN, "frozen at 60 days")

    # Cured (loan servicing books the repayment in limits too), then a year paid on time.
    repay = lpb.RepayRequest(request_id=rid(), account_id=account_id, amount=cny(1_000))
    assert servicing_limits.Repay(repay, timeout=10).account.drawn.minor_units == 0
    cured = customer.advance(days=5).repaid(1_000, "LATE", dpd_after=0)
    publish_and_settle(cured, *(customer.advance(days=30).repaid(100) for _ in range(12)))

    # Limits scores the behaviour monitoring reported to it; the request carries none.
    assert current().risk.fresh
    reopen = app.RequestReopen(
        lpb.RequestReopenRequest(request_id=rid(), account_id=account_id), timeout=10
    )
    assert reopen.reopened, [r.code for r in reopen.event.reasons]
    assert reopen.account.reopening_stage == 1
    stage_one = reopen.account.credit_line.minor_units
    publish(servicing, *(customer.advance(days=30).repaid(100) for _ in range(3)))
    advanced = eventually(
        lambda: (now := current()).reopening_stage == 2 and now, "stage 2 after three"
    )
    assert advanced.credit_line.minor_units > stage_one
    assert advanced.status == lpb.ACCOUNT_STATUS_ACTIVE

    # Every step in limits' history, in order (a cut for a worse band may come between), each
    # with its reasons in both languages, the automatic ones by monitoring.
    history = operator_limits.ListLimitEvents(
        lpb.ListLimitEventsRequest(account_id=account_id, page_size=50), timeout=10
    ).events
    steps = [lpb.LimitEventType.Name(e.type).removeprefix("LIMIT_EVENT_TYPE_") for e in history]
    steps.reverse()
    expected = ["OPENED", "WATCHLISTED", "REDUCED", "FROZEN", "REOPENED"]
    remaining = iter(steps)
    assert all(step in remaining for step in [*expected, "REOPENING_STAGE_ADVANCED"]), steps
    for event in history:
        assert event.reasons, f"{lpb.LimitEventType.Name(event.type)} carries no reasons"
        for reason in event.reasons:
            assert reason.texts["en"] and reason.texts["zh-CN"], reason.code

    def the(kind: int, first_reason: str | None = None) -> list[lpb.LimitEvent]:
        found = [e for e in history if e.type == kind]
        if first_reason is not None:
            found = [e for e in found if e.reasons[0].code == first_reason]
        return found

    for kind in (lpb.LIMIT_EVENT_TYPE_WATCHLISTED, lpb.LIMIT_EVENT_TYPE_FROZEN):
        (event,) = the(kind, "POLICY_DAYS_PAST_DUE")
        assert event.actor.kind == lpb.ACTOR_KIND_MONITORING
    (overdue_cut,) = the(lpb.LIMIT_EVENT_TYPE_REDUCED, "POLICY_DAYS_PAST_DUE")
    assert overdue_cut.line_after.minor_units <= line // 2
    assert {e.actor.kind for e in the(lpb.LIMIT_EVENT_TYPE_REDUCED)} == {lpb.ACTOR_KIND_MONITORING}
    assert len(the(lpb.LIMIT_EVENT_TYPE_REOPENED)) == 1
    (stage,) = the(lpb.LIMIT_EVENT_TYPE_REOPENING_STAGE_ADVANCED, "POLICY_GOOD_REPAYMENT")
    assert stage.line_after.minor_units == advanced.credit_line.minor_units

    # Monitoring's outbox reached limits over mTLS with its own token: nothing was refused.
    raised = eventually(lambda: settled() and alerts(), "monitoring delivers its last signals")
    kinds = {alert.type for alert in raised}
    assert {"days_past_due_1", "days_past_due_30", "days_past_due_60"} <= kinds, kinds
    assert "on_time_repayment" in kinds, kinds
    states = {alert.delivery_state for alert in raised} - {mpb.DELIVERY_STATE_NOT_REPORTED}
    assert states == {mpb.DELIVERY_STATE_DELIVERED}


def stop_the_pods(pods: dict[str, Pod]) -> None:
    """SIGTERM to every pod at once, as a rollout or a drained node does; each must exit 0
    before the kubelet's SIGKILL would come."""
    for pod in pods.values():
        pod.process.send_signal(signal.SIGTERM)
    for pod in pods.values():
        budget = stop_budget(pod)
        try:
            code = pod.process.wait(budget)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{pod.service} still runs {budget} s after SIGTERM\n{pod.log_tail()}"
            ) from None
        assert code == 0, f"{pod.service} exited with {code}\n{pod.log_tail()}"
