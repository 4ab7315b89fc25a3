"""The limits store on SQLite and on PostgreSQL: round trips of every record, pagination,
compare-and-set, concurrent updates, migrations and durability settings."""

import importlib
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, make_url

from services.common.database import UtcDateTime, create_engine, migrate
from services.common.errors import Aborted, AlreadyExists, NotFound, Unavailable
from services.limits.ledger import AccountStatus, Line
from services.limits.records import (
    Account,
    ActorKind,
    Appeal,
    AppealStatus,
    EventType,
    Hardship,
    LimitEvent,
    Notice,
    Reason,
    ReasonSource,
    RiskState,
)
from services.limits.store import (
    MIGRATIONS,
    REVIEW_BUCKETS,
    LimitsStore,
    ReviewRun,
    ReviewShard,
    idempotency_records,
    metadata,
    review_bucket,
)

T0 = datetime(2026, 11, 1, 9, 30, 15, 123456, tzinfo=UTC)
BEIJING = timezone(timedelta(hours=8))
VERSION_TABLE = "limits_alembic_version"


@pytest.fixture
def store(database_url):
    store = LimitsStore.open(database_url)
    yield store
    store.close()


def make_account(account_id: str = "acct-1", **changes) -> Account:
    """An account of its own customer (`cust-<account_id>`), unless changed."""
    account = Account(
        account_id, f"cust-{account_id}", "CNY", line=Line(credit_line=500_000), opened_at=T0
    )
    return replace(account, **changes)


def make_event(event_id: str, account_id: str = "acct-1", created_at: datetime = T0) -> LimitEvent:
    return LimitEvent(
        event_id=event_id,
        account_id=account_id,
        type=EventType.reduced,
        line_before=500_000,
        line_after=300_000,
        status_before=AccountStatus.active,
        status_after=AccountStatus.watchlist,
        adverse=True,
        reasons=(
            Reason("DPD_30", {"en": "30 days past due", "zh-CN": "逾期30天"}, ReasonSource.policy),
            Reason("SCORE", {"en": "Score fell", "zh-CN": "评分下降"}, ReasonSource.model),
        ),
        policy_version="2026.11",
        actor_kind=ActorKind.monitoring,
        created_at=created_at,
        request_id=f"req-{event_id}",
        actor_id="monitoring-1",
        model_name="behaviour",
        model_version="3",
        notice=Notice({"en": "Your line was reduced", "zh-CN": "您的额度已调整"}, T0),
        details={"signal_id": "sig-9"},
    )


def make_appeal(appeal_id: str, account_id: str, event_id: str, created_at: datetime) -> Appeal:
    return Appeal(
        appeal_id=appeal_id,
        account_id=account_id,
        event_id=event_id,
        statement="I was paid late by my employer",
        status=AppealStatus.open,
        created_at=created_at,
    )


# -- accounts ------------------------------------------------------------------------------

printable = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
texts = st.text(printable, max_size=20)
ids = st.text(printable, min_size=1, max_size=20)
money = st.integers(-(2**63), 2**63 - 1)  # BIGINT
small_ints = st.integers(-(2**31), 2**31 - 1)  # INTEGER
times = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, BEIJING, timezone(timedelta(hours=-3, minutes=-30))]),
)
ACCOUNT_FIELDS = {
    "account_id": ids,
    "customer_id": ids,
    "currency_code": texts,
    "line": st.builds(
        Line,
        credit_line=money,
        drawn=money,
        status=st.sampled_from(AccountStatus),
        customer_cap=st.none() | money,
        in_hardship=st.booleans(),
    ),
    "opened_at": times,
    "tier": st.none() | texts,
    "risk_band": st.none() | texts,
    "reopening_stage": small_ints,
    "line_before_closure": st.none() | money,
    "suspended_at": st.none() | times,
    "next_review_at": st.none() | times,
    "automatic_increases": st.booleans(),
    "hardship": st.none()
    | st.builds(
        Hardship, started_at=times, ends_at=times, term_months=small_ints, monthly_instalment=money
    ),
    "on_time_streak": small_ints,
    "last_on_time_repayment_at": st.none() | times,
    "risk": st.builds(
        RiskState,
        profile=st.dictionaries(
            texts, st.floats(allow_nan=False, allow_infinity=False, width=64), max_size=5
        ),
        profile_at=st.none() | times,
        days_past_due=small_ints,
        loans_past_due=st.dictionaries(texts, small_ints, max_size=3),
        past_due_since=st.none() | times,
        behaviour_band=st.none() | texts,
        behaviour_scored_at=st.none() | times,
        last_warning_at=st.none() | times,
        anomaly_since=st.none() | times,
    ),
    "version": money,
    "annual_rate_bp": st.none() | small_ints,
    "declared_monthly_income": st.none() | money,
    "declared_monthly_debt_payments": money,
    "time_zone": st.none() | texts,
}


class Rollback(Exception):
    pass


def test_the_generated_accounts_set_every_field():
    assert set(ACCOUNT_FIELDS) == {f.name for f in fields(Account)}
    assert set(ACCOUNT_FIELDS["risk"].wrapped_strategy.kwargs) == {
        f.name for f in fields(RiskState)
    }


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(account=st.builds(Account, **ACCOUNT_FIELDS))
def test_every_account_field_round_trips(store, account):
    with pytest.raises(Rollback), store.unit_of_work() as uow:
        uow.insert_account(account)
        loaded = uow.get_account(account.account_id)
        assert loaded == account
        assert loaded.opened_at.tzinfo == UTC
        raise Rollback  # leaves the database empty for the next example


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.builds(Account, **ACCOUNT_FIELDS),
    new=st.builds(Account, **ACCOUNT_FIELDS),
    many=st.booleans(),
)
def test_a_save_over_any_stored_account_reads_back_as_saved(store, stored, new, many):
    """A save writes only the columns that changed since the read: whatever changed, the row
    reads back as the new state."""
    stored = replace(stored, version=stored.version % 2**40)  # room for the next version
    new = replace(
        new,
        account_id=stored.account_id,
        customer_id=stored.customer_id,
        currency_code=stored.currency_code,
        opened_at=stored.opened_at,
        version=stored.version,
    )
    with pytest.raises(Rollback), store.unit_of_work() as uow:
        uow.insert_account(stored)
        read = uow.get_account(stored.account_id, lock=True)
        if many:
            (saved,) = uow.save_accounts([(read, new)])
        else:
            saved = uow.save_account(new)
        assert saved == replace(new, version=stored.version + 1)
        assert uow.get_account(stored.account_id) == saved
        raise Rollback


def test_a_committed_account_reads_back_equal(store):
    account = make_account(
        tier="T2",
        risk_band="B",
        reopening_stage=2,
        line_before_closure=800_000,
        suspended_at=T0,
        next_review_at=T0 + timedelta(days=365),
        automatic_increases=False,
        hardship=Hardship(T0, T0 + timedelta(days=180), 6, 12_500),
        on_time_streak=7,
        last_on_time_repayment_at=T0,
        risk=RiskState(
            profile={"utilisation": 0.25, "on_time_streak": 7.0},
            profile_at=T0,
            days_past_due=3,
            loans_past_due={"loan-7": 3},
            past_due_since=T0,
            behaviour_band="C",
            behaviour_scored_at=T0,
            last_warning_at=T0,
            anomaly_since=T0,
        ),
        line=Line(500_000, drawn=120_000, status=AccountStatus.watchlist, customer_cap=400_000),
    )
    with store.unit_of_work() as uow:
        uow.insert_account(account)
    with store.read() as uow:
        assert uow.get_account("acct-1") == account
        assert uow.get_account("missing") is None


def test_inserting_an_account_twice_is_already_exists(store):
    with store.unit_of_work() as uow:
        uow.insert_account(make_account())
    with pytest.raises(AlreadyExists), store.unit_of_work() as uow:
        uow.insert_account(make_account())


def test_save_account_is_compare_and_set(store):
    with store.unit_of_work() as uow:
        uow.insert_account(make_account())
    with store.unit_of_work() as uow:
        first = uow.get_account("acct-1", lock=True)
        saved = uow.save_account(replace(first, tier="T3"))
    assert saved.version == first.version + 1
    with store.read() as uow:
        assert uow.get_account("acct-1") == saved

    with pytest.raises(Aborted) as aborted, store.unit_of_work() as uow:
        uow.save_account(replace(first, tier="T9"))  # still at the old version
    assert aborted.value.reason == "CONCURRENT_MODIFICATION"
    with pytest.raises(NotFound), store.unit_of_work() as uow:
        uow.save_account(make_account("missing"))
    with store.read() as uow:
        assert uow.get_account("acct-1") == saved


def test_a_unit_of_work_that_fails_changes_nothing(store):
    with pytest.raises(Rollback), store.unit_of_work() as uow:
        uow.insert_account(make_account())
        uow.save_idempotent("cust-1", "req-1", "OpenAccount", "fp", b"answer")
        raise Rollback
    with store.read() as uow:
        assert uow.get_account("acct-1") is None
        assert uow.find_idempotent("acct-1", "req-1") is None


def test_accounts_due_for_review_are_active_or_watchlisted_and_due(store):
    as_of = T0 + timedelta(days=365)
    due = {
        "a-active": make_account("a-active", next_review_at=as_of - timedelta(days=1)),
        "a-watchlist": make_account(
            "a-watchlist",
            next_review_at=as_of,
            line=Line(500_000, status=AccountStatus.watchlist),
        ),
        "b-active": make_account("b-active", next_review_at=T0),
    }
    not_due = [
        make_account("a-later", next_review_at=as_of + timedelta(microseconds=1)),
        make_account("a-never"),
        make_account(
            "a-frozen", next_review_at=T0, line=Line(500_000, status=AccountStatus.frozen)
        ),
        make_account(
            "a-closed", next_review_at=T0, line=Line(500_000, status=AccountStatus.closed)
        ),
    ]
    with store.unit_of_work() as uow:
        for account in [*due.values(), *not_due]:
            uow.insert_account(account)
    with store.read() as uow:
        assert uow.accounts_due_for_review(as_of, "", 10) == [
            due["a-active"],
            due["a-watchlist"],
            due["b-active"],
        ]
        first_page = uow.accounts_due_for_review(as_of, "", 2)
        second_page = uow.accounts_due_for_review(as_of, first_page[-1].account_id, 2)
    assert [a.account_id for a in first_page + second_page] == [
        "a-active",
        "a-watchlist",
        "b-active",
    ]


def test_without_a_time_every_open_account_is_listed_by_id(store):
    account_ids = [f"acct-{i:02}" for i in range(7)]
    with store.unit_of_work() as uow:
        for account_id in reversed(account_ids):
            uow.insert_account(make_account(account_id))
        uow.insert_account(make_account("acct-closed", line=Line(1, status=AccountStatus.closed)))
    seen, after = [], ""
    with store.read() as uow:
        while page := uow.accounts_due_for_review(None, after, 3):
            seen += [a.account_id for a in page]
            after = page[-1].account_id
        assert uow.count_accounts_due_for_review(None) == 7
    assert seen == account_ids


def test_a_customer_holds_one_line_in_any_state(store):
    declined = Line(0, status=AccountStatus.declined)
    with store.unit_of_work() as uow:
        uow.insert_account(make_account("d-1", customer_id="c", line=declined))
        uow.insert_account(
            make_account("d-2", customer_id="c", line=declined, opened_at=T0 + timedelta(days=40))
        )
        assert uow.line_of_customer("c") is None
        assert uow.last_decline_of_customer("c") == T0 + timedelta(days=40)
        uow.insert_account(
            make_account("line-1", customer_id="c", line=Line(1, status=AccountStatus.closed))
        )
    with pytest.raises(AlreadyExists) as raised, store.unit_of_work() as uow:
        uow.insert_account(make_account("line-2", customer_id="c"))
    assert raised.value.metadata == {"account_id": "line-1"}
    with store.read() as uow:
        assert uow.line_of_customer("c") == "line-1"
        assert uow.get_account("line-2") is None  # nothing half-applied
        assert uow.last_decline_of_customer("nobody") is None


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    applications=st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(list(AccountStatus))), max_size=10
    )
)
def test_no_sequence_of_applications_gives_a_customer_two_lines(store, applications):
    run = uuid.uuid4().hex  # the database outlives each example: customers of their own
    for number, (customer, status) in enumerate(applications):
        account = make_account(
            f"{run}-{number}", customer_id=f"{run}-{customer}", line=Line(1, status=status)
        )
        try:
            with store.unit_of_work() as uow:
                uow.insert_account(account)
        except AlreadyExists:
            pass  # the customer holds a line: nothing of this application was written
    with store.read() as uow:
        for customer in "abc":
            ids = [f"{run}-{n}" for n, (c, _) in enumerate(applications) if c == customer]
            lines = [
                a.account_id
                for a in uow.get_accounts(ids)
                if a.status is not AccountStatus.declined
            ]
            assert len(lines) <= 1
            assert uow.line_of_customer(f"{run}-{customer}") == (lines[0] if lines else None)


def test_history_queries_by_purpose_read_the_whole_history(store):
    """Eligibility counts are not capped at one page of the API."""
    with store.unit_of_work() as uow:
        uow.insert_account(make_account())
        for i in range(600):
            event = make_event(f"ev-{i:04}", created_at=T0 + timedelta(minutes=i))
            uow.append_event(
                replace(event, type=EventType.increase_declined if i == 7 else EventType.reduced)
            )
    with store.read() as uow:
        since = T0 + timedelta(minutes=100)
        assert len(uow.event_times_since("acct-1", (EventType.reduced,), since)) == 500
        assert uow.last_event_time("acct-1", (EventType.increase_declined,)) == T0 + timedelta(
            minutes=7
        )
        assert uow.last_event_time("acct-1", (EventType.opened,)) is None
        later = uow.events_after(uow.get_event("acct-1", "ev-0597"))
    assert [e.event_id for e in later] == ["ev-0598", "ev-0599"]


def test_concurrent_read_modify_writes_lose_no_update(store):
    with store.unit_of_work() as uow:
        uow.insert_account(make_account())

    def draw_one_fen_25_times():
        for _ in range(25):
            with store.unit_of_work() as uow:
                account = uow.get_account("acct-1", lock=True)
                line = replace(account.line, drawn=account.line.drawn + 1)
                uow.save_account(replace(account, line=line))

    with ThreadPoolExecutor(max_workers=8) as pool:
        for worker in [pool.submit(draw_one_fen_25_times) for _ in range(8)]:
            worker.result()
    with store.read() as uow:
        account = uow.get_account("acct-1")
    assert account.line.drawn == 200
    assert account.version == 201


# -- history -------------------------------------------------------------------------------


def test_events_round_trip(store):
    event = make_event("ev-1")
    with store.unit_of_work() as uow:
        uow.insert_account(make_account())
        uow.append_event(event)
        uow.append_event(replace(event, event_id="ev-2", notice=None, details={}, reasons=()))
    with store.read() as uow:
        assert uow.get_event("acct-1", "ev-1") == event
        assert uow.get_event("acct-1", "ev-2") == replace(
            event, event_id="ev-2", notice=None, details={}, reasons=()
        )
        assert uow.get_event("acct-1", "missing") is None
    with pytest.raises(AlreadyExists), store.unit_of_work() as uow:
        uow.append_event(event)


def test_events_page_newest_first_with_a_cursor(store):
    created = [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=1), T0 + timedelta(days=2)]
    events = [make_event(f"ev-{i}", created_at=at) for i, at in enumerate(created)]
    events += [make_event("ev-9", created_at=T0 + timedelta(hours=1))]  # ties ev-1 and ev-2
    with store.unit_of_work() as uow:
        uow.insert_account(make_account())
        uow.insert_account(make_account("acct-2"))
        for event in events:
            uow.append_event(event)
        uow.append_event(make_event("other", "acct-2", T0 + timedelta(hours=1)))

    pages, before = [], None
    with store.read() as uow:
        while page := uow.list_events("acct-1", 2, before):
            pages.append([e.event_id for e in page])
            before = (page[-1].created_at, page[-1].event_id)
    assert pages == [["ev-3", "ev-9"], ["ev-2", "ev-1"], ["ev-0"]]


# -- idempotency, signals, review runs -----------------------------------------------------


def test_idempotency_records_keep_the_first_answer(store):
    with store.unit_of_work() as uow:
        assert uow.find_idempotent("acct-1", "req-1") is None
        uow.save_idempotent("acct-1", "req-1", "Draw", "fp-1", b"\x00first answer\xff")
    with store.read() as uow:
        record = uow.find_idempotent("acct-1", "req-1")
    assert (record.method, record.fingerprint, record.response) == (
        "Draw",
        "fp-1",
        b"\x00first answer\xff",
    )
    assert record.created_at.tzinfo == UTC

    with pytest.raises(Aborted) as aborted, store.unit_of_work() as uow:
        uow.save_idempotent("acct-1", "req-1", "Draw", "fp-2", b"second answer")
    assert aborted.value.reason == "CONCURRENT_MODIFICATION"
    with store.read() as uow:
        assert uow.find_idempotent("acct-1", "req-1") == record


def test_answers_held_for_a_group_are_written_together_or_refused_together(store):
    keys = [("acct-1", f"req-{i}") for i in range(3)]
    with store.unit_of_work() as uow:
        uow.read_ahead(["acct-1"], keys)
        for scope, request_id in keys:
            uow.save_idempotent(scope, request_id, "Draw", "fp", request_id.encode())
        uow.write_held()
    with store.read() as uow:
        assert [uow.find_idempotent(*key).response for key in keys] == [
            b"req-0",
            b"req-1",
            b"req-2",
        ]

    # An answer stored after the group read ahead (by then only a concurrent call could):
    # the group's write is refused whole, not short by one.
    more = [("acct-1", f"req-{i}") for i in range(3, 6)]
    with pytest.raises(Aborted) as aborted, store.unit_of_work() as uow:
        uow.read_ahead(["acct-1"], more)
        for scope, request_id in more:
            uow.save_idempotent(scope, request_id, "Draw", "fp", b"group")
        stored_meanwhile = {"scope": "acct-1", "request_id": "req-4", "method": "Draw"}
        uow._connection.execute(  # what the concurrent call's own transaction would have done
            sa.insert(idempotency_records),
            {**stored_meanwhile, "fingerprint": "fp", "response": b"other", "created_at": T0},
        )
        uow.write_held()
    assert aborted.value.reason == "CONCURRENT_MODIFICATION"
    with store.read() as uow:
        assert [uow.find_idempotent(*key) for key in more] == [None, None, None]


def test_signals_are_recorded_once(store):
    with store.unit_of_work() as uow:
        uow.insert_account(make_account())
        uow.append_event(make_event("ev-1"))
        uow.save_signal("sig-1", "acct-1", "ev-1")
        uow.save_signal("sig-2", "acct-1", None)
    with store.read() as uow:
        first, second = uow.find_signal("acct-1", "sig-1"), uow.find_signal("acct-1", "sig-2")
        assert uow.find_signal("acct-1", "sig-3") is None
    assert (first.signal_id, first.account_id, first.event_id) == ("sig-1", "acct-1", "ev-1")
    assert (second.event_id, second.applied_at.tzinfo) == (None, UTC)
    with pytest.raises(Aborted), store.unit_of_work() as uow:
        uow.save_signal("sig-1", "acct-1", None)


def test_review_runs_are_stored_with_their_shards_and_leased_one_worker_at_a_time(store):
    run = ReviewRun("run-1", as_of=T0, dry_run=True, shards=2)
    shards = [ReviewShard("run-1", 0, 0, 512), ReviewShard("run-1", 1, 512, 1024)]
    with store.unit_of_work() as uow:
        assert uow.get_review_run("run-1") is None
        assert uow.insert_review_run(run, shards)
        assert not uow.insert_review_run(run, shards)  # once
    with store.read() as uow:
        assert uow.get_review_run("run-1") == run
        assert uow.review_shards("run-1") == shards

    lease = T0 + timedelta(seconds=60)
    with store.unit_of_work() as uow:
        first = uow.claim_review_shard("run-1", "worker-a", T0, lease)
        second = uow.claim_review_shard("run-1", "worker-b", T0, lease)
        assert uow.claim_review_shard("run-1", "worker-c", T0, lease) is None
    assert (first.shard, first.worker_id, second.shard) == (0, "worker-a", 1)
    # A lease that ran out is claimed by another worker.
    later = lease + timedelta(seconds=1)
    with store.unit_of_work() as uow:
        taken = uow.claim_review_shard("run-1", "worker-c", later, later + timedelta(seconds=60))
    assert (taken.shard, taken.worker_id) == (0, "worker-c")

    progressed = replace(taken, after=(300, "acct-42"), counts={"reviewed": 42}, done=True)
    with store.unit_of_work() as uow:
        uow.save_review_shard(progressed)
        uow.release_review_shards("run-1", "worker-b")
        uow.finish_review_run("run-1")
    with store.read() as uow:
        assert uow.review_shards("run-1") == [
            progressed,
            replace(second, worker_id=None, lease_until=None),
        ]
        assert uow.get_review_run("run-1").done


def test_a_shard_lists_its_own_due_accounts_after_its_cursor(store):
    due_at = T0 - timedelta(days=1)
    with store.unit_of_work() as uow:
        for i in range(40):
            uow.insert_account(make_account(f"acct-{i:02d}", next_review_at=due_at))
    halves = [ReviewShard("r", 0, 0, 512), ReviewShard("r", 1, 512, 1024)]
    seen = []
    with store.read() as uow:
        for shard in halves:
            page = uow.accounts_due_in_shard(T0, shard, 100)
            assert uow.count_accounts_due_in_shard(T0, shard) == len(page)
            assert all(
                shard.first_bucket <= review_bucket(a.account_id) < shard.end_bucket for a in page
            )
            assert page == uow.accounts_due_in_shard(T0, shard, 3) + uow.accounts_due_in_shard(
                T0, replace(shard, after=_position(page[2])), 100
            )
            seen += [a.account_id for a in page]
    assert sorted(seen) == [f"acct-{i:02d}" for i in range(40)]


def _position(account) -> tuple[int, str]:
    return review_bucket(account.account_id), account.account_id


# -- appeals -------------------------------------------------------------------------------


def test_appeals_round_trip_and_update(store):
    appeal = make_appeal("ap-1", "acct-1", "ev-1", T0)
    with store.unit_of_work() as uow:
        uow.insert_account(make_account())
        uow.append_event(make_event("ev-1"))
        uow.insert_appeal(appeal)
    with pytest.raises(AlreadyExists), store.unit_of_work() as uow:
        uow.insert_appeal(appeal)

    resolved = replace(
        appeal,
        status=AppealStatus.reversed,
        resolution="Employer confirmed the late salary",
        resolved_at=T0 + timedelta(days=3),
    )
    with store.unit_of_work() as uow:
        assert uow.get_appeal("ap-1", lock=True) == appeal
        uow.save_appeal(resolved)
    with store.read() as uow:
        assert uow.get_appeal("ap-1") == resolved
        assert uow.get_appeal("missing") is None
    with pytest.raises(NotFound), store.unit_of_work() as uow:
        uow.save_appeal(replace(appeal, appeal_id="missing"))


def test_appeals_filter_and_page_newest_first(store):
    appeals = [
        make_appeal("ap-0", "acct-1", "ev-1", T0),
        make_appeal("ap-1", "acct-2", "ev-2", T0 + timedelta(hours=1)),
        replace(
            make_appeal("ap-2", "acct-1", "ev-1", T0 + timedelta(hours=1)),
            status=AppealStatus.upheld,
        ),
        make_appeal("ap-3", "acct-1", "ev-1", T0 + timedelta(hours=2)),
    ]
    with store.unit_of_work() as uow:
        for account_id, event_id in [("acct-1", "ev-1"), ("acct-2", "ev-2")]:
            uow.insert_account(make_account(account_id))
            uow.append_event(make_event(event_id, account_id))
        for appeal in appeals:
            uow.insert_appeal(appeal)

    def listed(account_id, status, limit=10, before=None):
        return [a.appeal_id for a in uow.list_appeals(account_id, status, limit, before)]

    with store.read() as uow:
        assert listed(None, None) == ["ap-3", "ap-2", "ap-1", "ap-0"]
        assert listed("acct-1", None) == ["ap-3", "ap-2", "ap-0"]
        assert listed(None, AppealStatus.open) == ["ap-3", "ap-1", "ap-0"]
        assert listed("acct-1", AppealStatus.open) == ["ap-3", "ap-0"]
        assert listed(None, None, 2) == ["ap-3", "ap-2"]
        assert listed(None, None, 2, (T0 + timedelta(hours=1), "ap-2")) == ["ap-1", "ap-0"]


# -- time zones, migrations, durability ----------------------------------------------------


def test_times_read_back_in_utc_whatever_the_session_time_zone(database_url):
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        options = f"{url.query['options']} -cTimeZone=Asia/Shanghai"
        database_url = url.update_query_dict({"options": options}).render_as_string(False)
    local = T0.astimezone(BEIJING)
    store = LimitsStore.open(database_url)
    try:
        with store.unit_of_work() as uow:
            uow.insert_account(make_account(opened_at=local, next_review_at=local))
            uow.append_event(replace(make_event("ev-1"), created_at=local))
            uow.insert_appeal(make_appeal("ap-1", "acct-1", "ev-1", local))
            uow.insert_review_run(ReviewRun("run-1", as_of=local, dry_run=False), [])
        with store.read() as uow:
            loaded = [
                uow.get_account("acct-1").opened_at,
                uow.get_account("acct-1").next_review_at,
                uow.get_event("acct-1", "ev-1").created_at,
                uow.list_events("acct-1", 1, (local + timedelta(seconds=1), ""))[0].created_at,
                uow.get_appeal("ap-1").created_at,
                uow.get_review_run("run-1").as_of,
            ]
    finally:
        store.close()
    for value in loaded:
        assert (value, value.tzinfo) == (T0, UTC)


def test_naive_times_are_refused(store):
    with pytest.raises(Exception, match="naive datetime"), store.unit_of_work() as uow:
        uow.insert_account(make_account(opened_at=datetime(2026, 11, 1)))


HEAD_REVISION = ScriptDirectory(str(MIGRATIONS)).get_current_head()


def applied_revision(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalars()
        )


def schema_differences(engine: Engine) -> list:
    """What the migrated database lacks or has beyond the store's tables (empty when equal)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return compare_metadata(context, metadata)


def test_a_database_of_the_previous_schema_migrates_with_its_data(database_url):
    """A database written before the risk state (revision 0002) opens and carries its data:
    an open anomaly gets its date, a profile without a time is kept (not fresh), and each
    customer's line is their earliest one."""
    engine = create_engine(database_url)
    try:
        migrate(engine, MIGRATIONS, revision="0002")
        columns = (
            "account_id, customer_id, currency_code, credit_line, drawn, status, in_hardship, "
            "opened_at, reopening_stage, automatic_increases, on_time_streak, days_past_due, "
            "open_anomaly, version, suspended_at, behaviour_profile"
        )
        rows = [
            ("a-1", "c-1", "active", T0, True, None, '{"utilisation": 0.5}'),
            ("a-2", "c-1", "active", T0 + timedelta(days=1), False, None, None),
            ("a-3", "c-2", "declined", T0, False, None, None),
            ("a-4", "c-3", "frozen", T0, True, T0 + timedelta(days=5), None),
        ]
        with engine.begin() as connection:
            for account_id, customer, status, opened, anomaly, suspended, profile in rows:
                connection.exec_driver_sql(
                    f"INSERT INTO accounts ({columns}) VALUES "
                    "(%(a)s, %(c)s, 'CNY', 100, 0, %(s)s, %(f)s, %(o)s, 0, %(t)s, 0, 4, "
                    "%(n)s, 1, %(u)s, %(p)s)"
                    if connection.dialect.name == "postgresql"
                    else f"INSERT INTO accounts ({columns}) VALUES "
                    "(:a, :c, 'CNY', 100, 0, :s, :f, :o, 0, :t, 0, 4, :n, 1, :u, :p)",
                    {"a": account_id, "c": customer, "s": status, "f": False, "t": True,
                     "o": _stored_time(connection, opened), "n": anomaly,
                     "u": _stored_time(connection, suspended), "p": profile},
                )  # fmt: skip
    finally:
        engine.dispose()
    store = LimitsStore.open(database_url)
    try:
        with store.read() as uow:
            first, second, frozen = (uow.get_account(i) for i in ("a-1", "a-2", "a-4"))
            assert first.risk == RiskState(
                profile={"utilisation": 0.5}, days_past_due=4, anomaly_since=T0
            )
            assert second.risk.anomaly_since is None
            assert frozen.risk.anomaly_since == T0 + timedelta(days=5)
            assert uow.line_of_customer("c-1") == "a-1"
            assert uow.line_of_customer("c-2") is None
            assert uow.line_of_customer("c-3") == "a-4"
    finally:
        store.close()


def _stored_time(connection, moment):
    """A time as the UtcDateTime column stores it on this database."""
    if moment is None or connection.dialect.name == "postgresql":
        return moment
    return moment.replace(tzinfo=None).isoformat(sep=" ")


def test_migrating_twice_changes_nothing(database_url):
    engine = create_engine(database_url)
    try:
        migrate(engine, MIGRATIONS)
        migrate(engine, MIGRATIONS)
        assert applied_revision(engine) == [HEAD_REVISION]
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_replicas_migrating_a_fresh_database_at_once_both_succeed(database_url):
    start = threading.Barrier(2)

    def replica_start():
        engine = create_engine(database_url)
        try:
            start.wait()
            migrate(engine, MIGRATIONS)
        finally:
            engine.dispose()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for replica in [pool.submit(replica_start) for _ in range(2)]:
            replica.result()
    engine = create_engine(database_url)
    try:
        assert applied_revision(engine) == [HEAD_REVISION]
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_an_unreachable_database_is_unavailable():
    store = LimitsStore(create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none"))
    with pytest.raises(Unavailable), store.read() as uow:
        uow.get_account("acct-1")
    store.close()


def test_commits_are_durable(store):
    with store.engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        else:
            assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


def test_a_sqlite_database_gets_its_directory(tmp_path):
    store = LimitsStore.open(f"sqlite:///{tmp_path}/data/limits/limits.db")
    store.close()
    assert (tmp_path / "data" / "limits" / "limits.db").is_file()


def test_the_partition_key_migration_carries_the_rows_of_revision_0006(database_url):
    """Events, signals, appeals, notices, idempotency records and review runs written at
    revision 0006 read back after 0007 under their new keys: events and signals by account,
    idempotency records found by their request id in any scope, each account in its review
    bucket, each run as one shard."""
    engine = create_engine(database_url)
    try:
        migrate(engine, MIGRATIONS, revision="0006")
        with engine.begin() as connection:
            for account_id in ("acct-1", "acct-2"):
                connection.execute(sa.insert(_at_0006_accounts), _account_columns(account_id))
            for table, rows in _rows_at_0006().items():
                connection.execute(sa.insert(table), rows)
    finally:
        engine.dispose()

    store = LimitsStore.open(database_url)
    try:
        with store.read() as uow:
            assert uow.get_event("acct-1", "ev-1").request_id == "req-ev-1"
            assert uow.get_event("acct-2", "ev-1") is None
            assert uow.find_signal("acct-1", "sig-1").event_id == "ev-1"
            assert uow.get_appeal("ap-1").event_id == "ev-1"
            assert uow.notices_of_account("acct-1", 10)[0].event_id == "ev-1"
            assert uow.find_idempotent("acct-1", "req-old").response == b"first answer"
            finished, unfinished = uow.get_review_run("run-done"), uow.get_review_run("run-dry")
            assert (finished.shards, finished.done, unfinished.done) == (1, True, False)
            (done_shard,) = uow.review_shards("run-done")
            (dry_shard,) = uow.review_shards("run-dry")
            assert (done_shard.counts, done_shard.done) == ({"reviewed": 2}, True)
            # An unfinished dry run starts again from the first bucket, its counts afresh.
            assert (dry_shard.first_bucket, dry_shard.end_bucket) == (0, 1024)
            assert (dry_shard.after, dry_shard.counts, dry_shard.done) == ((-1, ""), {}, False)
            due = uow.accounts_due_in_shard(T0 + timedelta(days=1), dry_shard, 10)
            assert [a.account_id for a in due] == sorted(
                ["acct-1", "acct-2"], key=lambda i: (review_bucket(i), i)
            )
        # The new keys are in force: the same event id on another account is another event.
        with store.unit_of_work() as uow:
            uow.append_event(make_event("ev-1", account_id="acct-2"))
            uow.save_idempotent("acct-2", "req-new", "Draw", "fp", b"answer")
    finally:
        store.close()


def test_the_migration_buckets_accounts_as_the_store_does():
    bucketed = importlib.import_module(
        "services.limits.migrations.versions.0007_partition_keys_review_shards"
    )
    assert bucketed.REVIEW_BUCKETS == REVIEW_BUCKETS
    for account_id in ("acct-1", "学生-7", uuid.uuid4().hex):
        assert bucketed.review_bucket(account_id) == review_bucket(account_id)


_at_0006_accounts = sa.table(
    "accounts",
    *(
        sa.column(name, UtcDateTime if name in ("opened_at", "next_review_at") else None)
        for name in (
            "account_id", "customer_id", "currency_code", "credit_line", "drawn", "status",
            "in_hardship", "opened_at", "reopening_stage", "automatic_increases",
            "on_time_streak", "days_past_due", "version", "next_review_at",
            "declared_monthly_debt_payments",
        )
    ),
)  # fmt: skip


def _account_columns(account_id: str) -> dict:
    return {
        "account_id": account_id, "customer_id": f"cust-{account_id}", "currency_code": "CNY",
        "credit_line": 500_000, "drawn": 0, "status": "active", "in_hardship": False,
        "opened_at": T0, "reopening_stage": 0, "automatic_increases": True,
        "on_time_streak": 0, "days_past_due": 0, "version": 1, "next_review_at": T0,
        "declared_monthly_debt_payments": 0,
    }  # fmt: skip


def _table(name: str, *columns: str) -> sa.TableClause:
    times = {"created_at", "applied_at", "as_of", "due_at"}
    return sa.table(name, *(sa.column(c, UtcDateTime if c in times else None) for c in columns))


def _rows_at_0006() -> dict:
    event = {
        "event_id": "ev-1", "account_id": "acct-1", "type": "reduced", "line_before": 500_000,
        "line_after": 300_000, "status_before": "active", "status_after": "active",
        "adverse": True, "reasons": "[]", "policy_version": "p", "actor_kind": "monitoring",
        "actor_id": "", "created_at": T0, "request_id": "req-ev-1", "model_name": "",
        "model_version": "", "details": "{}",
    }  # fmt: skip
    notice = {
        "account_id": "acct-1", "notice_id": "n-1", "number": 1, "type": "reduced",
        "event_id": "ev-1", "adverse": True, "reasons": "[]", "improvements": "[]",
        "how_to_appeal": "{}", "texts": "{}", "templates_version": "t", "policy_version": "p",
        "created_at": T0, "due_at": T0, "delivery_channel": "",
    }  # fmt: skip
    return {
        _table("limit_events", *event): [event],
        _table("signals", "signal_id", "account_id", "event_id", "applied_at"): [
            {"signal_id": "sig-1", "account_id": "acct-1", "event_id": "ev-1", "applied_at": T0}
        ],
        _table("appeals", "appeal_id", "account_id", "event_id", "statement", "status",
               "created_at", "resolution"): [
            {"appeal_id": "ap-1", "account_id": "acct-1", "event_id": "ev-1", "statement": "s",
             "status": "open", "created_at": T0, "resolution": ""}
        ],
        _table("notices", *notice): [notice],
        _table("idempotency_records", "request_id", "method", "fingerprint", "response",
               "created_at"): [
            {"request_id": "req-old", "method": "Draw", "fingerprint": "fp",
             "response": b"first answer", "created_at": T0}
        ],
        _table("review_runs", "run_id", "as_of", "dry_run", "last_account_id", "counts",
               "done"): [
            {"run_id": "run-done", "as_of": T0, "dry_run": False, "last_account_id": "acct-2",
             "counts": '{"reviewed": 2}', "done": True},
            {"run_id": "run-dry", "as_of": T0, "dry_run": True, "last_account_id": "acct-1",
             "counts": '{"reviewed": 1}', "done": False},
        ],
    }  # fmt: skip
