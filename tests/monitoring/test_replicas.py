"""Two monitoring replicas on one database share the work: one JetStream durable consumer's
messages, or each its own partitions' consumers, each message applied once, with alerts
numbered for WatchAlerts with no gap and no repeat;
and the rescoring of one book, each account scored once per profile version."""

from collections import Counter

import pytest
from prometheus_client import REGISTRY

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from services.monitoring.partitions import partition_of
from tests.jetstream import TestStream
from tests.monitoring.events import Customer, delinquent_lives, publish
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
    events = delinquent_lives(customers)
    applied = _messages("applied")
    jetstream.publish(*events)

    _applied_once_each(replicas[0], replicas[1], customers, applied, len(events))
    eventually(
        lambda: (i := jetstream.consumer_info()).num_pending == 0 and i.num_ack_pending == 0,
        "every message acknowledged",
    )
    _alerts_numbered_with_no_gap(replicas, customers)
    assert jetstream.dead_letters() == []


def test_two_replicas_each_on_their_own_partitions_apply_each_event_once(
    start_monitoring, jetstream: TestStream, database_url
):
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas in separate processes share PostgreSQL, not a SQLite file")
    # Replica 0 consumes partitions 0 and 2, replica 1 partitions 1 and 3.
    replicas = _partitioned_replicas(start_monitoring, jetstream, "0/2", "1/2")
    customers = [Customer(f"acct-part-{i}") for i in range(16)]
    events = delinquent_lives(customers)
    by_partition = Counter(partition_of(e.account_id, 4) for e in events)
    assert {p % 2 for p in by_partition} == {0, 1}, "one replica would have no account"
    applied, retried = _messages("applied"), _messages("retried")
    jetstream.publish(*events, partitions=4)

    _applied_once_each(replicas[0], replicas[1], customers, applied, len(events))
    # An account's events all go to one replica, so none ever waits for another's commit.
    assert _messages("retried") == retried
    for p in range(4):
        # Each partition's consumer is pulled by one replica only: both received messages.
        info = eventually(
            lambda p=p: (i := jetstream.consumer_info(p)).num_ack_pending == 0 and i,
            f"partition {p} acknowledged",
        )
        # Delivered at least once each (again only where an acknowledgement wait ran out).
        assert info.delivered.consumer_seq >= by_partition[p] > 0 and info.num_pending == 0
    _alerts_numbered_with_no_gap(replicas, customers)
    assert jetstream.dead_letters() == []


def test_two_replicas_with_overlapping_partitions_still_apply_each_event_once(
    start_monitoring, jetstream: TestStream, database_url
):
    """A configuration mistake, or replicas rolling over to a new assignment: partitions 1 and
    2 are pulled by both replicas. Their accounts' events may reach either replica, ahead of
    one uncommitted on the other; the database decides, as with one shared consumer."""
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas in separate processes share PostgreSQL, not a SQLite file")
    replicas = _partitioned_replicas(start_monitoring, jetstream, "0-2", "1-3")
    customers = [Customer(f"acct-overlap-{i}") for i in range(16)]
    events = delinquent_lives(customers)
    applied = _messages("applied")
    jetstream.publish(*events, partitions=4)

    _applied_once_each(replicas[1], replicas[0], customers, applied, len(events))
    for p in range(4):
        eventually(
            lambda p=p: (
                (i := jetstream.consumer_info(p)).num_ack_pending == 0 and i.num_pending == 0
            ),
            f"partition {p} acknowledged",
        )
    _alerts_numbered_with_no_gap(replicas, customers)
    assert jetstream.dead_letters() == []


def _partitioned_replicas(start_monitoring, jetstream: TestStream, *consumed: str) -> list:
    """A replica for each of `consumed` (its JETSTREAM_CONSUME_PARTITIONS) of a stream of four
    partitions, each consuming."""
    replicas = [
        start_monitoring(
            QUICK_HEARTBEATS,
            **jetstream.settings(
                jetstream_batch_size=5, jetstream_partitions=4, jetstream_consume_partitions=spec
            ),
        )
        for spec in consumed
    ]
    for replica in replicas:
        _consuming(replica)
    return replicas


def _applied_once_each(reader, other, customers: list[Customer], applied: float, events: int):
    """Waits until `reader` has every account's five events (`delinquent_lives`), which `other`
    then reads the same (drawn once, repaid once), and until the replicas together counted each
    event applied once (counted after the acknowledgement, so after the commit seen)."""
    for customer in customers:
        eventually(
            lambda c=customer: _at_sequence(reader, c.account_id, 5),
            f"{customer.account_id} complete",
            timeout=120,
        )
        risk = _risk(other, customer.account_id)
        assert risk is not None and round(risk.profile["utilisation"] * 5_000) == 2_000
    eventually(lambda: _messages("applied") - applied >= events, "every event counted")
    assert _messages("applied") - applied == events


def _alerts_numbered_with_no_gap(replicas, customers: list[Customer]) -> None:
    """Every alert, numbered 1..n with no gap and no repeat, and resumed on the other replica;
    each account's delinquency alerts once each, in order, as one replica raises them."""
    watched = _watch_until_quiet(replicas[0], "0")
    numbers = [int(a.cursor) for a in watched]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 2 * len(customers)  # at least two delinquency alerts each
    middle = watched[len(watched) // 2].cursor
    rest = _watch_until_quiet(replicas[1], middle)
    assert [int(a.cursor) for a in rest][: len(numbers) - int(middle)] == numbers[int(middle) :]
    assert sorted(int(a.cursor) for a in _all_alerts(replicas[1]))[: len(numbers)] == numbers
    # The events' own alerts, in each account's order (rescoring's come when its rounds do).
    by_account: dict[str, list[str]] = {c.account_id: [] for c in customers}
    for alert in watched:
        if alert.type.startswith(("days_past_due", "delinquency")):
            by_account[alert.account_id].append(alert.type)
    expected = ["days_past_due_1", "days_past_due_30", "delinquency_cured"]
    assert by_account == {c.account_id: expected for c in customers}


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
