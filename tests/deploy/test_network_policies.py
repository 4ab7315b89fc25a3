"""What the rendered NetworkPolicies let through, computed from the policies themselves.

A small evaluator of networking.k8s.io/v1 semantics: a pod selected by no policy of a direction
is open in that direction; otherwise traffic needs a rule of a policy selecting it, on both
ends (the sender's egress and the receiver's ingress). Peers are pods (podSelector,
namespaceSelector) or addresses (ipBlock, or a rule with no peers at all); named ports resolve
against the receiving pod's container ports.
"""

from dataclasses import dataclass, field
from itertools import product

import pytest

from tests.deploy.conftest import GRPC_PORTS, SERVICES

EXPECTED_CALLS = {("monitoring", "limits"), ("limits", "scoring"), ("monitoring", "scoring")}
DATABASE_PORT = 5432


@dataclass(frozen=True)
class Pod:
    namespace: str
    namespace_labels: dict
    labels: dict
    ports: dict = field(default_factory=dict)  # name -> (port, protocol)


# Pods outside the suite that policies speak of, in namespaces as a cluster labels them.
def outsider(namespace: str, labels: dict, namespace_labels: dict | None = None) -> Pod:
    return Pod(
        namespace,
        {"kubernetes.io/metadata.name": namespace, **(namespace_labels or {})},
        labels,
        {"dns": (53, "UDP")},
    )


CLIENT = outsider("app-backend", {"app": "backend"}, {"creditline.io/client": "true"})
STRANGER = outsider("someone-else", {"app": "backend"})
PROMETHEUS = outsider("monitoring", {"app.kubernetes.io/name": "prometheus"})
KUBE_DNS = outsider("kube-system", {"k8s-app": "kube-dns"})
NATS = outsider("nats", {"app.kubernetes.io/name": "nats"})
NATS_PORT = 4222
# An address outside the cluster, such as a managed PostgreSQL.
EXTERNAL = None


def matches(selector: dict | None, labels: dict) -> bool:
    """Label selector semantics; an empty selector selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def peer_matches(peer: dict, policy_namespace: str, pod: Pod | None) -> bool:
    if pod is None:
        return "ipBlock" in peer
    if "ipBlock" in peer:
        return False  # pod addresses are the CNI's business; the policies here use none
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], pod.namespace_labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return matches(peer.get("podSelector"), pod.labels)


def port_matches(rule: dict, port: int, protocol: str, receiver: Pod | None) -> bool:
    if not rule.get("ports"):
        return True
    for allowed in rule["ports"]:
        if allowed.get("protocol", "TCP") != protocol:
            continue
        number = allowed.get("port")
        if number is None or number == port:
            return True
        if isinstance(number, str) and receiver and receiver.ports.get(number) == (port, protocol):
            return True
    return False


class Policies:
    def __init__(self, policies: list[dict]):
        self.policies = policies

    def _selecting(self, pod: Pod | None, direction: str) -> list[dict] | None:
        """The policies of `direction` that select `pod`; None when none do (open)."""
        if pod is None:
            return None  # an address outside the cluster has no policies
        selecting = [
            policy
            for policy in self.policies
            if policy["metadata"]["namespace"] == pod.namespace
            and matches(policy["spec"]["podSelector"], pod.labels)
            and direction in policy["spec"].get("policyTypes", ["Ingress"])
        ]
        return selecting or None

    def allows(self, sender: Pod, receiver: Pod | None, port: int, protocol: str = "TCP") -> bool:
        egress = self._selecting(sender, "Egress")
        if egress is not None and not any(
            port_matches(rule, port, protocol, receiver)
            and (
                not rule.get("to")
                or any(peer_matches(p, sender.namespace, receiver) for p in rule["to"])
            )
            for policy in egress
            for rule in policy["spec"].get("egress", [])
        ):
            return False
        ingress = self._selecting(receiver, "Ingress")
        return ingress is None or any(
            port_matches(rule, port, protocol, receiver)
            and (
                not rule.get("from")
                or any(peer_matches(p, receiver.namespace, sender) for p in rule["from"])
            )
            for policy in ingress
            for rule in policy["spec"].get("ingress", [])
        )


@pytest.fixture
def network(target):
    (namespace,) = target.of_kind("Namespace")
    namespace_labels = {
        "kubernetes.io/metadata.name": target.namespace,
        **namespace["metadata"].get("labels", {}),
    }
    pods = {}
    for service in SERVICES:
        template = target.deployment(service)["spec"]["template"]
        (container,) = template["spec"]["containers"]
        ports = {
            p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for p in container["ports"]
        }
        pods[service] = Pod(
            target.namespace, namespace_labels, template["metadata"]["labels"], ports
        )
    return Policies(target.of_kind("NetworkPolicy")), pods


def test_services_call_each_other_exactly_along_the_call_graph(network):
    policies, pods = network
    allowed = {
        (caller, callee)
        for caller, callee in product(SERVICES, SERVICES)
        if any(
            policies.allows(pods[caller], pods[callee], port, protocol)
            for port, protocol in pods[callee].ports.values()
        )
    }
    assert allowed == EXPECTED_CALLS


def test_clients_reach_every_grpc_port_only_from_namespaces_labelled_as_clients(network):
    policies, pods = network
    for service, pod in pods.items():
        port = GRPC_PORTS[service]
        assert policies.allows(CLIENT, pod, port), service
        assert not policies.allows(STRANGER, pod, port), service
        assert not policies.allows(CLIENT, pod, 8081), f"{service}: health is for the kubelet"
        assert not policies.allows(CLIENT, pod, 9090), f"{service}: metrics are for Prometheus"


def test_prometheus_scrapes_the_metrics_port_and_nothing_else(network):
    policies, pods = network
    for service, pod in pods.items():
        assert policies.allows(PROMETHEUS, pod, 9090), service
        assert not policies.allows(PROMETHEUS, pod, GRPC_PORTS[service]), service


def test_every_service_resolves_names_and_only_the_stateful_reach_postgresql(network):
    policies, pods = network
    for service, pod in pods.items():
        assert policies.allows(pod, KUBE_DNS, 53, "UDP"), service
        assert policies.allows(pod, KUBE_DNS, 53, "TCP"), service
        assert not policies.allows(pod, STRANGER, 53, "UDP"), service
        assert policies.allows(pod, EXTERNAL, DATABASE_PORT) is (service != "scoring"), service
        assert not policies.allows(pod, EXTERNAL, 443), f"{service} reaches the internet"


def test_only_monitoring_reaches_nats_and_only_with_the_jetstream_component(network, target):
    policies, pods = network
    opted_in = target.name == "with-components"
    for service, pod in pods.items():
        expected = opted_in and service == "monitoring"
        assert policies.allows(pod, NATS, NATS_PORT) is expected, service
        assert not policies.allows(pod, STRANGER, NATS_PORT), service
