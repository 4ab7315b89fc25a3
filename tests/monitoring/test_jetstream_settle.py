"""What the JetStream consumer does with each message of a batch (`settle`), with no NATS: the
same Ingestor and store as the server, on SQLite and PostgreSQL."""

from datetime import UTC, datetime

import pytest

from services.monitoring.ingestion import Ingestor
from services.monitoring.jetstream import DeadReason, Delivery, Verdict, settle
from services.monitoring.rules import RulesHolder
from services.monitoring.store import MonitoringStore
from tests.monitoring.events import Customer

MAX_DELIVERIES = 5


@pytest.fixture
def ingestor(database_url):
    store = MonitoringStore.open(database_url)
    yield Ingestor(lambda: store, RulesHolder(), lambda: datetime.now(UTC))
    store.close()


def delivered(*events, deliveries: int = 1) -> list[Delivery]:
    return [
        Delivery(e if isinstance(e, bytes) else e.SerializeToString(), deliveries) for e in events
    ]


def verdicts(ingestor, deliveries: list[Delivery]) -> list[tuple[Verdict, DeadReason | None]]:
    return [(s.verdict, s.reason) for s in settle(deliveries, ingestor, "CNY", MAX_DELIVERIES)]


def test_each_message_is_settled_alone_and_the_good_ones_apply(ingestor):
    customer, stranger = Customer("acct-settle"), Customer("acct-never-opened")
    opened, drawn = customer.opened(), customer.drawn(100)
    found = verdicts(
        ingestor,
        delivered(
            opened,
            b"\xff\xff\xff",
            stranger.drawn(5),
            Customer("acct-settle").drawn(-1),  # invalid: a negative draw
            drawn,
            Customer("acct-settle").opened(),  # a different first event: stale
        ),
    )
    assert found == [
        (Verdict.ack, None),
        (Verdict.dead, DeadReason.malformed),
        (Verdict.dead, DeadReason.unknown_account),
        (Verdict.dead, DeadReason.invalid),
        (Verdict.ack, None),
        (Verdict.dead, DeadReason.stale_sequence),
    ]
    # Delivered again (a crash before the acknowledgement): duplicates, acknowledged.
    settled = settle(delivered(opened, drawn, deliveries=2), ingestor, "CNY", MAX_DELIVERIES)
    assert [(s.verdict, s.result) for s in settled] == [(Verdict.ack, "duplicate")] * 2


def test_an_event_ahead_of_its_account_is_retried_until_its_last_delivery(ingestor):
    customer = Customer("acct-ahead")
    opened, _missing, ahead = customer.opened(), customer.drawn(1), customer.drawn(2)
    assert verdicts(ingestor, delivered(opened)) == [(Verdict.ack, None)]
    for deliveries in range(1, MAX_DELIVERIES):
        found = verdicts(ingestor, delivered(ahead, deliveries=deliveries))
        assert found == [(Verdict.retry, None)]
    found = verdicts(ingestor, delivered(ahead, deliveries=MAX_DELIVERIES))
    assert found == [(Verdict.dead, DeadReason.sequence_gap)]


def test_a_later_event_of_an_account_not_yet_opened_waits_for_its_opening(ingestor):
    """Replicas sharing a consumer: the account's second event can reach one replica before its
    account_opened commits on the other."""
    customer = Customer("acct-opening-in-flight")
    opened, drawn = customer.opened(), customer.drawn(1)
    for deliveries in range(1, MAX_DELIVERIES):
        assert verdicts(ingestor, delivered(drawn, deliveries=deliveries)) == [
            (Verdict.retry, None)
        ]
    assert verdicts(ingestor, delivered(opened, drawn, deliveries=2)) == [(Verdict.ack, None)] * 2
    never = Customer("acct-never-opened-either")
    never.opened()
    found = verdicts(ingestor, delivered(never.drawn(1), deliveries=MAX_DELIVERIES))
    assert found == [(Verdict.dead, DeadReason.unknown_account)]
