"""The opt-in components for operating the suite: the alerts (k8s/components/prometheus-rules)
and the Grafana dashboard (k8s/components/grafana-dashboard), as rendered with production.

The rules are checked by promtool where it is installed (Debian's `prometheus` package has it):
`promtool check rules`, and `promtool test rules` with tests/deploy/alert-tests.yaml, which shows
each alert firing on the series it is for, after its `for:`, and quiet on the others. Where it is
not installed, the test says so in a warning and only the structural checks run (every rule and
panel complete, every expression read by tests/deploy/promql.py). Either way, every metric the
rules and the dashboard read must be exported by a running service: the last test starts the
three services, calls them until the labelled series exist, and scrapes their /metrics.
"""

import json
import re
import shutil
import subprocess
import urllib.request
import warnings
from collections import defaultdict
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import free_port
from creditline.limits.v1 import limits_service_pb2 as lpb
from creditline.limits.v1 import limits_service_pb2_grpc
from creditline.monitoring.v1 import monitoring_service_pb2_grpc
from tests.deploy.promql import read
from tests.limits.test_service import POOR_APPLICANT, draw, open_account
from tests.monitoring.events import Customer, publish
from tests.servers import eventually, service_process

HERE = Path(__file__).resolve().parent
ALERTS = {
    "CreditlineRpcErrorRateHigh",
    "CreditlineScoreLatencyHigh",
    "CreditlineIngestionLagHigh",
    "CreditlineSignalOutboxBacklog",
    "CreditlineReviewStuck",
    "CreditlineModelDrift",
}
SEVERITIES = {"critical", "warning"}
DURATION = re.compile(r"(?:\d+[smhdwy])+")
# Labels Prometheus adds to every series it scrapes (the operator's ServiceMonitor and the usual
# annotation-based scrape configurations): no service exports them.
TARGET_LABELS = frozenset(
    {"namespace", "pod", "job", "instance", "service", "endpoint", "container"}
)
# Each service's own metrics, by prefix: the service that must export them.
OWNERS = {
    "creditline_model_": "scoring",
    "creditline_limits_": "limits",
    "creditline_monitoring_": "monitoring",
}
LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+),\s*(?P<label>\w+)\)")


@pytest.fixture(scope="module")
def rule(rendered) -> dict:
    return rendered["with-components"].get("PrometheusRule", "creditline")


@pytest.fixture(scope="module")
def dashboard_configmap(rendered) -> dict:
    return rendered["with-components"].get("ConfigMap", "creditline-dashboard")


@pytest.fixture(scope="module")
def dashboard(dashboard_configmap) -> dict:
    (text,) = dashboard_configmap["data"].values()
    return json.loads(text)


def alerting_rules(rule: dict) -> list[dict]:
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def panel_targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [
        (panel["title"], target)
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def variable_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(selector, label) of each query variable's label_values(...)."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.fullmatch(variable["query"]["query"])
            assert match, f"variable {variable['name']}: {variable['query']['query']}"
            found.append((match["selector"], match["label"]))
    return found


def expressions(rule: dict, dashboard: dict) -> dict[str, str]:
    """Every PromQL expression the two components hold, by where it is."""
    found = {f"alert {r['alert']}": r["expr"] for r in alerting_rules(rule)}
    for title, target in panel_targets(dashboard):
        found[f"panel {title!r} {target['refId']}"] = target["expr"]
    for selector, label in variable_queries(dashboard):
        found[f"variable {label}"] = selector
    return found


# ---- the rules ----------------------------------------------------------------------------------


def test_the_rule_holds_the_alerts_each_complete(rule):
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = alerting_rules(rule)
    assert [r.get("alert") for r in rules if "record" in r or "alert" not in r] == []
    assert {r["alert"] for r in rules} == ALERTS
    assert len(rules) == len(ALERTS)
    for r in rules:
        name = r["alert"]
        assert r["expr"].strip(), name
        assert DURATION.fullmatch(r["for"]) and not r["for"].startswith("0"), (name, r["for"])
        assert r["labels"]["severity"] in SEVERITIES, name
        annotations = r["annotations"]
        assert set(annotations) >= {"summary", "description", "runbook"}, name
        assert all(annotations[key].strip() for key in annotations), name
        assert annotations["runbook"].rstrip().endswith("."), f"{name}: the runbook is a sentence"


def test_every_alert_has_a_promtool_test_that_fires_it():
    tests = yaml.safe_load((HERE / "alert-tests.yaml").read_text())
    fired = {
        case["alertname"]
        for group in tests["tests"]
        for case in group["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == ALERTS


def test_every_expression_reads_well(rule, dashboard):
    """The structural check, which runs with or without promtool."""
    problems = {where: read(expr).problems for where, expr in expressions(rule, dashboard).items()}
    assert {where: found for where, found in problems.items() if found} == {}


def without_annotations(alert: dict) -> dict:
    return {key: value for key, value in alert.items() if key != "annotations"}


def test_the_rules_pass_promtool_where_it_is_installed(rule, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        warnings.warn(
            "promtool is not installed (Debian: apt-get install prometheus): the alerts were "
            "checked structurally only, not by promtool check rules and test rules",
            stacklevel=1,
        )
        return
    groups = rule["spec"]["groups"]
    (tmp_path / "check.yaml").write_text(yaml.safe_dump({"groups": groups}))
    checked = subprocess.run(
        [promtool, "check", "rules", "check.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout, checked.stdout
    # The unit tests compare annotations to the letter: they test what fires, the rules'
    # expressions, `for:` and labels, and the test above checks the annotations.
    bare = [
        {**group, "rules": [without_annotations(r) for r in group["rules"]]} for group in groups
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": bare}))
    shutil.copy(HERE / "alert-tests.yaml", tmp_path)
    tested = subprocess.run(
        [promtool, "test", "rules", "alert-tests.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout, tested.stdout


# ---- the dashboard ------------------------------------------------------------------------------


def test_the_dashboard_is_a_configmap_for_the_grafana_sidecar(dashboard_configmap, rendered):
    assert dashboard_configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = dashboard_configmap["data"]
    assert key.endswith(".json")
    source = (HERE.parents[1] / "k8s" / "components" / "grafana-dashboard" / key).read_text()
    assert dashboard_configmap["data"][key] == source
    for name in ("staging", "production"):  # opt-in: the overlays hold neither component
        kinds = {doc["kind"] for doc in rendered[name].docs}
        assert "PrometheusRule" not in kinds
        assert "creditline-dashboard" not in {
            c["metadata"]["name"] for c in rendered[name].of_kind("ConfigMap")
        }


def test_the_dashboard_asks_for_its_data_source_and_every_panel_uses_it(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["datasource"]["uid"] == "${datasource}"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert len({p["title"] for p in panels}) == len(panels)
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], f"{title}: no targets"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs), title
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"], title
            # Every query follows the namespace picked (All matches every namespace).
            for selector in read(target["expr"]).selectors:
                assert {"label": "namespace", "op": "=~", "value": "$namespace"} in [
                    vars(m) for m in selector.matchers
                ], f"{title}: {selector.metric} ignores $namespace"
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24 and position["h"] > 0, title


# ---- every metric used, exported by a running service -------------------------------------------


def scrape(port: int) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def samples_of(text: str) -> dict[str, list[dict[str, str]]]:
    """Each sample name in an exposition with the label sets it has."""
    found: dict[str, list[dict[str, str]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append(sample.labels)
    return found


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, dict[str, list[dict[str, str]]]]:
    """The three services' /metrics, scraped after calls that bring out their labelled series:
    service -> sample name -> label sets."""
    directory = tmp_path_factory.mktemp("scraped")
    metrics_ports = {service: free_port() for service in ("scoring", "limits", "monitoring")}
    with ExitStack() as stack:

        def start(service: str, settings: dict[str, str], port: int | None = None) -> str:
            settings = {"METRICS_PORT": str(metrics_ports[service]), **settings}
            log = directory / f"{service}.log"
            _, address = stack.enter_context(service_process(service, settings, log, port))
            return address

        scoring = start("scoring", {"RELOAD_INTERVAL_SECONDS": "0"})
        # Monitoring first, while nothing answers at limits' address: its first delivery fails.
        limits_port = free_port()
        monitoring = start(
            "monitoring",
            {
                "DATABASE_URL": f"sqlite:///{directory / 'monitoring.db'}",
                "LIMITS_TARGET": f"127.0.0.1:{limits_port}",
                "SCORING_TARGET": scoring,
                "CALL_TIMEOUT_SECONDS": "1",
                "RULES_RELOAD_INTERVAL_SECONDS": "0",
            },
        )
        with grpc.insecure_channel(monitoring) as channel:
            stub = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)
            customer = Customer("acct-unknown-to-limits", at=datetime.now(UTC) - timedelta(40))
            publish(stub, customer.opened(), customer.advance(days=1).drawn(1_000))
            publish(stub, customer.advance(days=31).missed(days=1))  # a signal for limits
        failure = "creditline_monitoring_delivery_failures_total"
        eventually(lambda: failure in samples_of(scrape(metrics_ports["monitoring"])), failure, 60)

        limits = start(
            "limits",
            {
                "DATABASE_URL": f"sqlite:///{directory / 'limits.db'}",
                "SCORING_TARGET": scoring,
                "POLICY_RELOAD_INTERVAL_SECONDS": "0",
                "BOOK_METRICS_INTERVAL_SECONDS": "0.2",
            },
            limits_port,
        )
        with grpc.insecure_channel(limits) as channel:
            stub = limits_service_pb2_grpc.LimitsServiceStub(channel)
            account_id = open_account(stub).account.account_id  # scoring's Score
            open_account(stub, POOR_APPLICANT)  # declined: an adverse decision
            draw(stub, account_id, 1_000)
            with pytest.raises(grpc.RpcError):
                draw(stub, account_id, 100_000)  # refused: INSUFFICIENT_CREDIT
            list(stub.RunReview(lpb.RunReviewRequest(request_id="metrics"), timeout=30))
        settled = "creditline_monitoring_signals_delivered_total"
        eventually(lambda: settled in samples_of(scrape(metrics_ports["monitoring"])), settled, 60)
        book = "creditline_limits_book_credit_line_minor_units"
        eventually(lambda: book in samples_of(scrape(metrics_ports["limits"])), book, 60)
        return {service: samples_of(scrape(port)) for service, port in metrics_ports.items()}


def test_every_metric_the_rules_and_the_dashboard_read_is_exported(rule, dashboard, exported):
    exporters: dict[str, list[str]] = defaultdict(list)
    for service, samples in exported.items():
        for name in samples:
            exporters[name].append(service)
    problems = []
    for where, expr in expressions(rule, dashboard).items():
        reading = read(expr)
        known_labels = set(TARGET_LABELS)
        for selector in reading.selectors:
            name = selector.metric
            if name not in exporters:
                problems.append(f"{where}: no service exports {name}")
                continue
            owner = next((s for prefix, s in OWNERS.items() if name.startswith(prefix)), None)
            if owner is not None and owner not in exporters[name]:
                problems.append(f"{where}: {name} comes from {exporters[name]}, not {owner}")
            label_sets = [
                labels for service in exporters[name] for labels in exported[service][name]
            ]
            labels = {label for labels in label_sets for label in labels}
            known_labels |= labels
            for matcher in selector.matchers:
                if matcher.label in TARGET_LABELS:
                    continue
                if matcher.label not in labels:
                    problems.append(f"{where}: {name} has no label {matcher.label}")
                elif (
                    matcher.op == "="
                    and "$" not in matcher.value
                    and matcher.value not in {s.get(matcher.label) for s in label_sets}
                ):
                    problems.append(f"{where}: no {name}{{{matcher.label}={matcher.value!r}}}")
        for label in reading.grouping_labels - known_labels:
            problems.append(f"{where}: groups by {label}, which none of its metrics has")
    assert problems == []
