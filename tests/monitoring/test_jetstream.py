"""Repayment events from a real NATS JetStream stream into real monitoring servers, on SQLite and
PostgreSQL: applied once each in each account's order, on one subject per account or in
partitions, nothing lost or doubled by a SIGKILL, poison events dead-lettered while the rest
flow, and the consumer's lag as a metric.
"""

import signal
import threading
import urllib.request

import grpc
import pytest
import sqlalchemy
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from creditline.monitoring.v1 import monitoring_service_pb2_grpc
from services.monitoring.__main__ import JETSTREAM_HEALTH
from services.monitoring.jetstream import (
    REASON_HEADER,
    SOURCE_SEQUENCE_HEADER,
    SOURCE_SUBJECT_HEADER,
)
from services.monitoring.partitions import partition_of
from tests.jetstream import TestStream
from tests.monitoring.events import Customer, delinquent_lives, publish
from tests.servers import eventually, service_process


def _risk(stub, account_id: str) -> pb.AccountRisk | None:
    try:
        request = pb.GetAccountRiskRequest(account_id=account_id)
        return stub.GetAccountRisk(request, timeout=10).risk
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _at_sequence(stub, account_id: str, sequence: int) -> bool:
    risk = _risk(stub, account_id)
    return risk is not None and risk.last_sequence == sequence


def _consuming(monitoring) -> None:
    """Returns once the server's consumer is bound to its stream (created by then)."""
    health = health_pb2_grpc.HealthStub(monitoring.channel)
    request = health_pb2.HealthCheckRequest(service=JETSTREAM_HEALTH)
    eventually(
        lambda: health.Check(request, timeout=10).status == health_pb2.HealthCheckResponse.SERVING,
        "the JetStream consumer consuming",
    )


def _messages(result: str) -> float:
    value = REGISTRY.get_sample_value(
        "creditline_monitoring_jetstream_messages_total", {"result": result}
    )
    return value or 0.0


def _alert_types(stub, account_id: str) -> list[str]:
    request = pb.ListAlertsRequest(filter=pb.AlertFilter(account_id=account_id), page_size=500)
    alerts = stub.ListAlerts(request, timeout=10).alerts
    return [a.type for a in sorted(alerts, key=lambda a: int(a.cursor))]


def test_published_events_apply_once_each_in_each_accounts_order(
    start_monitoring, jetstream: TestStream
):
    monitoring = start_monitoring(**jetstream.settings(jetstream_batch_size=7))
    customers = [Customer(f"acct-js-{i}") for i in range(6)]
    events = delinquent_lives(customers)
    before = {r: _messages(r) for r in ("applied", "duplicate", "retried")}
    _consuming(monitoring)
    jetstream.publish(*events)
    # The same events again, as a producer retrying after the duplicate window would.
    jetstream.publish(*events, msg_ids=False)

    eventually(
        lambda: _messages("duplicate") - before["duplicate"] == len(events),
        "every event seen twice",
    )
    assert _messages("applied") - before["applied"] == len(events)
    assert _messages("retried") == before["retried"]  # none came ahead of its account
    for customer in customers:
        risk = _risk(monitoring, customer.account_id)
        assert risk is not None and risk.last_sequence == 5
        assert round(risk.profile["utilisation"] * 5_000) == 2_000  # drawn once, repaid once
        types = _alert_types(monitoring, customer.account_id)
        assert types.index("days_past_due_1") < types.index("days_past_due_30")
    assert jetstream.dead_letters() == []


def test_events_on_partitioned_subjects_apply_once_each_in_each_accounts_order(
    start_monitoring, jetstream: TestStream
):
    monitoring = start_monitoring(
        **jetstream.settings(jetstream_batch_size=7, jetstream_partitions=4), metrics_port=0
    )
    customers = [Customer(f"acct-js-part-{i}") for i in range(8)]
    events = delinquent_lives(customers)
    partitions = {partition_of(c.account_id, 4) for c in customers}
    assert len(partitions) > 1, "the accounts all fell in one partition"
    before = {r: _messages(r) for r in ("applied", "duplicate", "retried")}
    _consuming(monitoring)
    jetstream.publish(*events, partitions=4)
    jetstream.publish(*events, msg_ids=False, partitions=4)

    eventually(
        lambda: _messages("duplicate") - before["duplicate"] == len(events),
        "every event seen twice",
    )
    assert _messages("applied") - before["applied"] == len(events)
    assert _messages("retried") == before["retried"]
    for customer in customers:
        risk = _risk(monitoring, customer.account_id)
        assert risk is not None and risk.last_sequence == 5
        assert round(risk.profile["utilisation"] * 5_000) == 2_000
        types = _alert_types(monitoring, customer.account_id)
        assert types.index("days_past_due_1") < types.index("days_past_due_30")
    # One consumer per partition, each delivering its partition's events (twice).
    for p in range(4):
        info = eventually(
            lambda p=p: (i := jetstream.consumer_info(p)).num_ack_pending == 0 and i,
            f"partition {p} acknowledged",
        )
        assert info.config.filter_subject == f"{jetstream.subject}.{p}.*"
        mine = sum(1 for e in events if partition_of(e.account_id, 4) == p)
        # Each message once at least (again only where an acknowledgement wait ran out).
        assert info.delivered.consumer_seq >= 2 * mine and info.num_pending == 0
    port = monitoring.server.metrics_port
    lag = _metric_samples(port, "creditline_monitoring_jetstream_partition_pending_messages")
    assert {f'{{partition="{p}"}}' for p in range(4)} <= set(lag)
    assert _metric(port, "creditline_monitoring_jetstream_partitions") == 4.0
    assert jetstream.dead_letters() == []


def test_an_event_ahead_of_its_account_waits_for_the_one_before_it(
    start_monitoring, jetstream: TestStream
):
    monitoring = start_monitoring(**jetstream.settings())
    customer = Customer("acct-js-gap")
    opened, drawn, repaid = (
        customer.opened(),
        customer.advance(days=1).drawn(1_000),
        customer.advance(days=30).repaid(500),
    )
    before = _messages("retried")
    _consuming(monitoring)
    jetstream.publish(opened, repaid)
    eventually(lambda: _messages("retried") > before, "the early event put back")
    assert _at_sequence(monitoring, customer.account_id, 1)
    jetstream.publish(drawn)

    eventually(lambda: _at_sequence(monitoring, customer.account_id, 3), "the account caught up")
    risk = _risk(monitoring, customer.account_id)
    assert risk is not None and round(risk.profile["utilisation"] * 5_000) == 500
    assert jetstream.dead_letters() == []


def test_a_gap_that_never_closes_is_dead_lettered_and_the_account_goes_on(
    start_monitoring, jetstream: TestStream
):
    monitoring = start_monitoring(
        **jetstream.settings(
            jetstream_ack_wait_seconds=1.0,
            jetstream_retry_delay_seconds=0.3,
            jetstream_max_deliveries=8,
        )
    )
    customer = Customer("acct-js-lost")
    opened, lost, ahead = customer.opened(), customer.drawn(100), customer.drawn(200)
    _consuming(monitoring)
    jetstream.publish(opened, ahead)

    (dead,) = eventually(jetstream.dead_letters, "the event ahead dead-lettered")
    assert dead.headers[REASON_HEADER] == "sequence_gap"
    assert pb.RepaymentEvent.FromString(dead.data) == ahead
    # The account is not blocked: the missing event, when it comes, applies.
    jetstream.publish(lost)
    eventually(lambda: _at_sequence(monitoring, customer.account_id, 2), "the late event applied")


def test_poison_events_are_dead_lettered_with_the_reason_and_the_rest_flow(
    start_monitoring, jetstream: TestStream
):
    monitoring = start_monitoring(**jetstream.settings(jetstream_batch_size=50))
    customer = Customer("acct-js-poison")
    # An impostor of the same account: its events carry sequences the account has passed.
    impostor = Customer(customer.account_id)
    poison = {
        "malformed": b"\xff\xff\xff not a protobuf",
        "unknown_account": Customer("acct-js-never-opened").drawn(100),
        "invalid": Customer(customer.account_id).drawn(-5),  # a negative draw
        "stale_sequence": impostor.opened(),
    }
    flowing = [customer.opened(), customer.drawn(1_000)]
    _consuming(monitoring)
    jetstream.publish(*flowing)
    eventually(lambda: _at_sequence(monitoring, customer.account_id, 2), "the account opened")
    jetstream.publish(*poison.values(), customer.drawn(500), customer.repaid(200))

    eventually(lambda: _at_sequence(monitoring, customer.account_id, 4), "the rest applied")
    dead = eventually(lambda: (d := jetstream.dead_letters()) and len(d) == 4 and d)
    by_reason = {d.headers[REASON_HEADER]: d for d in dead}
    assert set(by_reason) == set(poison)
    for reason, sent in poison.items():
        letter = by_reason[reason]
        assert letter.data == (sent if isinstance(sent, bytes) else sent.SerializeToString())
        assert letter.headers[SOURCE_SUBJECT_HEADER].startswith(jetstream.subject + ".")
        assert int(letter.headers[SOURCE_SEQUENCE_HEADER]) > len(flowing)
    assert "amount.minor_units" in by_reason["invalid"].headers["Creditline-Dead-Letter-Detail"]
    risk = _risk(monitoring, customer.account_id)
    assert risk is not None and round(risk.profile["utilisation"] * 5_000) == 1_300
    # Nothing is left to deliver: the poison was terminated, not left to come again.
    info = eventually(
        lambda: (i := jetstream.consumer_info()).num_ack_pending == 0 and i.num_pending == 0 and i
    )
    assert info.num_pending == 0


def _metric_samples(port: int, name: str) -> dict[str, float]:
    """The samples of metric `name`, by their labels as written (`{partition="0"}`)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {
        line[len(name) :].split()[0]: float(line.split()[-1])
        for line in lines
        if line.startswith(name + "{")
    }


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def test_the_consumers_lag_is_a_metric(start_monitoring, jetstream: TestStream, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("the batch is held by a PostgreSQL row lock")
    customer = Customer("acct-js-lag")
    publish(start_monitoring(), customer.opened())  # over gRPC: the account's row exists
    jetstream.create_stream()
    held = sqlalchemy.create_engine(database_url)
    with held.connect() as connection:
        # The consumer's first batch waits for this lock, the rest of the stream behind it.
        connection.exec_driver_sql(
            "SELECT 1 FROM monitoring_accounts WHERE account_id = 'acct-js-lag' FOR UPDATE"
        )
        jetstream.publish(*(customer.advance(hours=1).drawn(10) for _ in range(30)))
        monitoring = start_monitoring(**jetstream.settings(jetstream_batch_size=10), metrics_port=0)
        port = monitoring.server.metrics_port
        eventually(
            lambda: _metric(port, "creditline_monitoring_jetstream_pending_messages") == 20.0,
            "the lag reported while the first batch of 10 is held",
        )
        assert _metric(port, "creditline_monitoring_jetstream_connected") == 1.0
        connection.rollback()
    held.dispose()
    eventually(lambda: _at_sequence(monitoring, customer.account_id, 31), "the stream drained")
    eventually(
        lambda: _metric(port, "creditline_monitoring_jetstream_pending_messages") == 0.0,
        "no lag once drained",
    )


def test_an_unreachable_nats_is_reported_and_grpc_ingestion_still_works(start_monitoring):
    monitoring = start_monitoring(jetstream_url="nats://127.0.0.1:1")
    health = health_pb2_grpc.HealthStub(monitoring.channel)

    def status(service: str):
        request = health_pb2.HealthCheckRequest(service=service)
        return health.Check(request, timeout=10).status

    assert status("") == health_pb2.HealthCheckResponse.SERVING
    assert status(JETSTREAM_HEALTH) == health_pb2.HealthCheckResponse.NOT_SERVING
    customer = Customer("acct-js-grpc")
    assert publish(monitoring, customer.opened(), customer.drawn(10)).applied == 2


def test_streams_managed_elsewhere_are_waited_for(start_monitoring, jetstream: TestStream):
    monitoring = start_monitoring(**jetstream.settings(jetstream_create=False))
    health = health_pb2_grpc.HealthStub(monitoring.channel)
    request = health_pb2.HealthCheckRequest(service=JETSTREAM_HEALTH)
    assert health.Check(request, timeout=10).status == health_pb2.HealthCheckResponse.NOT_SERVING
    jetstream.create_stream()
    jetstream.create_consumer()

    _consuming(monitoring)
    customer = Customer("acct-js-managed")
    jetstream.publish(customer.opened(), customer.drawn(10))
    eventually(lambda: _at_sequence(monitoring, customer.account_id, 2), "the events applied")


# -- a replica killed mid-stream ----------------------------------------------------------------

ACCOUNTS = 20
DRAWS = 60
DRAW_FEN = 100
LINE_YUAN = 1_000_000


def test_a_replica_killed_mid_stream_loses_and_doubles_nothing(
    database_url, jetstream: TestStream, tmp_path
):
    customers = [Customer(f"acct-js-crash-{i}") for i in range(ACCOUNTS)]
    jetstream.create_stream()  # as the producer's side would, before monitoring runs
    jetstream.publish(*(c.opened(line=LINE_YUAN) for c in customers))
    rounds = [[c.advance(hours=1).drawn(DRAW_FEN / 100) for c in customers] for _ in range(DRAWS)]
    settings = {
        "DATABASE_URL": database_url,
        "RULES_RELOAD_INTERVAL_SECONDS": "0",
        "LIMITS_TARGET": "127.0.0.1:1",
        "SCORING_TARGET": "127.0.0.1:1",
        **{
            key.upper(): str(value)
            for key, value in jetstream.settings(jetstream_batch_size=10).items()
        },
    }
    last = customers[-1].account_id
    # The producer publishes round after round while the first replica consumes and is killed.
    producer = threading.Thread(target=lambda: [jetstream.publish(*r) for r in rounds])

    with (
        service_process("monitoring", settings, tmp_path / "first.log") as (process, address),
        grpc.insecure_channel(address) as channel,
    ):
        stub = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)
        producer.start()
        eventually(lambda: (r := _risk(stub, last)) and r.last_sequence >= 5, "under way")
        process.send_signal(signal.SIGKILL)
        mid_stream = producer.is_alive()
        process.wait()
    producer.join()
    assert mid_stream, "the replica was killed after the producer had finished"

    with (
        service_process("monitoring", settings, tmp_path / "second.log") as (_, address),
        grpc.insecure_channel(address) as channel,
    ):
        stub = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)
        for customer in customers:
            eventually(
                lambda c=customer: _at_sequence(stub, c.account_id, 1 + DRAWS),
                f"{customer.account_id} complete",
                timeout=120,
            )
            risk = _risk(stub, customer.account_id)
            assert risk is not None
            balance = round(risk.profile["utilisation"] * LINE_YUAN * 100)
            assert balance == DRAWS * DRAW_FEN  # each draw counted once
        eventually(
            lambda: (i := jetstream.consumer_info()).num_pending == 0 and i.num_ack_pending == 0,
            "every message acknowledged",
        )
    assert jetstream.dead_letters() == []
