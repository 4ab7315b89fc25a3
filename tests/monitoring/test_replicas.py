"""Two monitoring replicas on one database share the work: one JetStream durable consumer's
messages, each applied once, with alerts numbered for WatchAlerts with no gap and no repeat;
and the rescoring of one book, each account scored once per profile version."""

import pytest
from prometheus_client import REGISTRY

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from tests.jetstream import TestStream
from tests.monitoring.events import Customer, publish
from tests.monitoring.test_jetstream import _at_sequence, _consuming, _messages, _risk
from tests.servers import eventually

QUICK_HEARTBEATS = {"heartbeat_seconds": 0.5, "poll_seconds": 0.1}


def _rescored() -> float:
    return REGISTRY.get_sample_value("creditline_monitoring_accounts_rescored_total") or 0.0


def _all_alerts(stub) -> list[pb.Alert]:
    request = pb.ListAlertsRequest(page_size=500)
    return list(stub.ListAlerts(request, timeout=10).alerts)


def _watch_until_quiet(stub, after: str) -> list[pb.Alert]:
    """Every alert after `after`, until a heartbeat says none is left for now."""
    seen = []
    for response in stub.WatchAlerts(pb.WatchAlertsRequest(after_cursor=after), timeout=60):
        if response.HasField("alert"):
            seen.append(response.alert)
        else:
            return seen
    return seen


def test_two_replicas_share_one_stream_applying_each_event_once(
    start_monitoring, jetstream: TestStream, database_url
):
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas in separate processes share PostgreSQL, not a SQLite file")
    settings = jetstream.settings(jetstream_batch_size=5)
    replicas = [start_monitoring(QUICK_HEARTBEATS, **settings) for _ in range(2)]
    for replica in replicas:
        _consuming(replica)
    customers = [Customer(f"acct-two-{i}") for i in range(16)]
    lives = [
        [
            c.opened(line=5_000),
            c.advance(days=1).drawn(3_000),
            c.advance(days=30).missed(days=1),
            c.advance(days=29).past_due(30),
            c.advance(days=1).repaid(1_000, timing="LATE", dpd_after=0),
        ]
        for c in customers
    ]
    events = [event for step in zip(*lives, strict=True) for event in step]
    applied = _messages("applied")
    jetstream.publish(*events)

    for customer in customers:
        eventually(
            lambda c=customer: _at_sequence(replicas[0], c.account_id, 5),
            f"{customer.account_id} complete",
            timeout=120,
        )
        risk = _risk(replicas[1], customer.account_id)
        assert risk is not None and round(risk.profile["utilisation"] * 5_000) == 2_000
    assert _messages("applied") - applied == len(events)  # both replicas together
    eventually(
        lambda: (i := jetstream.consumer_info()).num_pending == 0 and i.num_ack_pending == 0,
        "every message acknowledged",
    )
    # Every alert, numbered 1..n with no gap and no repeat, and resumed on the other replica.
    watched = _watch_until_quiet(replicas[0], "0")
    numbers = [int(a.cursor) for a in watched]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 2 * len(customers)  # at least two delinquency alerts each
    middle = watched[len(watched) // 2].cursor
    rest = _watch_until_quiet(replicas[1], middle)
    assert [int(a.cursor) for a in rest][: len(numbers) - int(middle)] == numbers[int(middle) :]
    assert sorted(int(a.cursor) for a in _all_alerts(replicas[1]))[: len(numbers)] == numbers
    assert jetstream.dead_letters() == []


def test_two_replicas_rescoring_one_book_score_each_account_once(start_monitoring):
    replicas = [start_monitoring(QUICK_HEARTBEATS) for _ in range(2)]
    customers = [Customer(f"acct-rescore-{i}") for i in range(60)]
    before = _rescored()
    # Each replica flags half the book: both rescorers wake and reach for the same accounts.
    for i in range(0, len(customers), 10):
        replica = replicas[(i // 10) % 2]
        ack = publish(replica, *(c.opened() for c in customers[i : i + 10]))
        assert ack.applied == 10

    for customer in customers:
        eventually(
            lambda c=customer: (r := _risk(replicas[0], c.account_id)) and r.scored,
            f"{customer.account_id} scored",
            timeout=90,
        )
    rescored = [a for a in _all_alerts(replicas[0]) if a.type == "behaviour_rescored"]
    assert sorted(a.account_id for a in rescored) == sorted(c.account_id for c in customers)
    assert _rescored() - before == len(customers)  # sent to scoring once each
