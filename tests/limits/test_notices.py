"""Notices through real servers on SQLite and PostgreSQL: one per customer-facing decision, in
both locales, written with the decision, streamed from a cursor and acknowledged; and the
customer's own view, which shows that customer's records and no one else's."""

from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import yaml

from creditline.limits.v1 import limits_service_pb2 as pb
from services.common.errors import violations_of
from services.limits.__main__ import build_server
from services.limits.notices import (
    DEFAULT_TEMPLATES,
    NOTICE_EVENTS,
    TemplatesError,
    TemplatesHolder,
    load_templates,
)
from services.limits.records import NoticeType
from services.limits.settings import LimitsSettings
from tests.limits.test_service import (
    GOOD_APPLICANT,
    POOR_APPLICANT,
    cny,
    failed,
    features,
    open_account,
    past_due,
    report,
    rid,
    risk,
    signal,
)

NOTICE_TYPE_OF_EVENT = {
    pb.LimitEventType.Value(f"LIMIT_EVENT_TYPE_{event.upper()}"): pb.NoticeType.Value(
        f"NOTICE_TYPE_{kind.upper()}"
    )
    for event, kind in NOTICE_EVENTS.items()
}


def watch(stub, after: str, count: int, timeout: float = 10) -> list[pb.Notice]:
    """The first `count` notices after `after`, from WatchNotices."""
    found: list[pb.Notice] = []
    if count == 0:
        return found
    stream = stub.WatchNotices(pb.WatchNoticesRequest(after_cursor=after), timeout=timeout)
    for item in stream:
        if item.HasField("notice"):
            found.append(item.notice)
            if len(found) == count:
                stream.cancel()
                break
    return found


def fields_of(error: grpc.RpcError) -> set[str]:
    return {v.field for v in violations_of(error)}


def history(stub, account_id: str) -> list[pb.LimitEvent]:
    request = pb.ListLimitEventsRequest(account_id=account_id, page_size=500)
    return list(stub.ListLimitEvents(request, timeout=5).events)


def view(stub, customer_id: str) -> pb.GetCustomerViewResponse:
    request = pb.GetCustomerViewRequest(customer_id=customer_id)
    return stub.GetCustomerView(request, timeout=5)


def acknowledge(stub, notice_id: str, **fields) -> pb.AcknowledgeNoticeResponse:
    request = pb.AcknowledgeNoticeRequest(
        request_id=fields.pop("request_id", rid()),
        notice_id=notice_id,
        channel=fields.pop("channel", pb.NOTICE_CHANNEL_SMS),
        **fields,
    )
    return stub.AcknowledgeNotice(request, timeout=5)


def appeal(stub, account_id: str, event_id: str) -> pb.Appeal:
    request = pb.FileAppealRequest(
        request_id=rid(), account_id=account_id, event_id=event_id, statement="I disagree"
    )
    return stub.FileAppeal(request, timeout=5).appeal


def resolve(stub, appeal_id: str, reverse: bool) -> pb.ResolveAppealResponse:
    request = pb.ResolveAppealRequest(
        request_id=rid(), appeal_id=appeal_id, reverse=reverse, resolution="reviewed"
    )
    return stub.ResolveAppeal(request, timeout=5)


def live_through_every_decision(limits, clock, customer_id: str) -> str:
    """A customer's line through every decision a customer is told of; its account id."""
    account_id = open_account(limits, customer_id=customer_id).account.account_id
    report(limits, signal(account_id, "behaviour_rescored", risk=risk(clock.now)))
    increase = pb.RequestIncreaseRequest(
        request_id=rid(), account_id=account_id, monthly_income=cny(20_000)
    )
    assert not limits.RequestIncrease(increase, timeout=10).approved  # too new
    clock.advance(days=120)
    report(limits, signal(account_id, "on_time_repayment", risk=risk(clock.now)))
    increase.request_id = rid()
    assert limits.RequestIncrease(increase, timeout=10).approved

    for days in (1, 30, 60):  # watchlisted, reduced, frozen
        clock.advance(days=1)
        report(limits, past_due(account_id, days, clock.now))
    limits.UnfreezeAccount(
        pb.UnfreezeAccountRequest(request_id=rid(), account_id=account_id, reason="agreed plan"),
        timeout=5,
    )
    report(limits, past_due(account_id, 90, clock.now))  # closed
    reopen = pb.RequestReopenRequest(request_id=rid(), account_id=account_id)
    assert not limits.RequestReopen(reopen, timeout=10).reopened  # too soon
    clock.advance(days=100)
    report(
        limits,
        signal(account_id, "delinquency_cured", risk=risk(clock.now)),
        signal(account_id, "on_time_repayment", loan_id="loan-1", risk=risk(clock.now)),
    )
    reopen.request_id = rid()
    assert limits.RequestReopen(reopen, timeout=10).reopened
    for _ in range(3):
        clock.advance(days=30)
        report(limits, signal(account_id, "on_time_repayment", risk=risk(clock.now)))
    limits.EnrollHardship(
        pb.EnrollHardshipRequest(request_id=rid(), account_id=account_id, term_months=6),
        timeout=5,
    )
    events = {e.type: e.event_id for e in history(limits, account_id)}
    reduced = appeal(limits, account_id, events[pb.LIMIT_EVENT_TYPE_REDUCED])
    resolve(limits, reduced.appeal_id, reverse=True)
    frozen = appeal(limits, account_id, events[pb.LIMIT_EVENT_TYPE_FROZEN])
    resolve(limits, frozen.appeal_id, reverse=False)
    return account_id


def test_every_decision_type_produces_exactly_one_notice_in_both_locales(limits, clock):
    customer_id = f"cust-{rid()}"
    account_id = live_through_every_decision(limits, clock, customer_id)
    declined_id = open_account(limits, POOR_APPLICANT).account.account_id
    events = history(limits, account_id) + history(limits, declined_id)
    told = [e for e in events if e.type in NOTICE_TYPE_OF_EVENT]

    # Every notice, from the first, on the stream: one per decision told, and one per upheld
    # appeal (which records no decision); then nothing more.
    notices = watch(limits, "0", len(told) + 1)
    assert [int(n.cursor) for n in notices] == list(range(1, len(told) + 2))
    by_event = {n.event_id: n for n in notices if n.event_id}
    assert len(by_event) == len(told)
    for event in told:
        notice = by_event[event.event_id]
        assert notice.type == NOTICE_TYPE_OF_EVENT[event.type]
        assert notice.account_id == event.account_id
        assert [r.code for r in notice.reasons] == [r.code for r in event.reasons]
    (upheld,) = [n for n in notices if not n.event_id]
    assert upheld.type == pb.NOTICE_TYPE_APPEAL_UPHELD and upheld.appeal_id
    assert {n.type for n in notices} == {
        pb.NoticeType.Value(f"NOTICE_TYPE_{kind.upper()}") for kind in NoticeType
    }
    with pytest.raises(grpc.RpcError) as nothing_more:
        watch(limits, notices[-1].cursor, 1, timeout=1.5)
    assert nothing_more.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    for notice in notices:
        assert set(notice.texts) == {"en", "zh-CN"} and all(notice.texts.values())
        due = notice.due_time.ToDatetime() - notice.create_time.ToDatetime()
        assert due == timedelta(days=30)  # the policy's notices.*_within_days
        if notice.adverse:
            assert set(notice.how_to_appeal) == {"en", "zh-CN"}
            assert notice.how_to_appeal["en"] in notice.texts["en"]
        else:
            assert not notice.how_to_appeal
    reduced = next(n for n in notices if n.type == pb.NOTICE_TYPE_REDUCED)
    assert "from 7,000.00 CNY to 3,500.00 CNY" in reduced.texts["en"]
    assert "由7,000.00元下调至3,500.00元" in reduced.texts["zh-CN"]
    declined = next(n for n in notices if n.type == pb.NOTICE_TYPE_INCREASE_DECLINED)
    assert declined.improvements and declined.improvements[0].texts["zh-CN"]
    assert declined.improvements[0].texts["en"] in declined.texts["en"]
    reopened = next(n for n in notices if n.type == pb.NOTICE_TYPE_REOPENED)
    assert "stage 1" in reopened.texts["en"]


def test_a_rejected_or_replayed_call_writes_no_notice(limits):
    opening = pb.OpenAccountRequest(
        request_id=rid(),
        customer_id=f"cust-{rid()}",
        features=features(GOOD_APPLICANT),
        monthly_income=cny(20_000),
    )
    opened = limits.OpenAccount(opening, timeout=10)
    assert limits.OpenAccount(opening, timeout=10) == opened  # a retry: no second notice
    account_id = opened.account.account_id
    unfreeze = pb.UnfreezeAccountRequest(request_id=rid(), account_id=account_id, reason="x")
    assert failed(limits.UnfreezeAccount, unfreeze).code() == grpc.StatusCode.FAILED_PRECONDITION
    (notice,) = watch(limits, "0", 1)
    assert notice.type == pb.NOTICE_TYPE_OPENED
    with pytest.raises(grpc.RpcError):
        watch(limits, notice.cursor, 1, timeout=1.5)


def test_a_watch_from_now_gets_only_new_notices(limits):
    open_account(limits)
    stream = limits.WatchNotices(pb.WatchNoticesRequest(), timeout=10)
    first = open_account(limits).account.account_id
    for item in stream:
        if item.HasField("notice"):
            assert item.notice.account_id == first
            stream.cancel()
            break


def test_acknowledgement_is_idempotent_and_checked(limits, clock):
    account_id = open_account(limits).account.account_id
    (notice,) = watch(limits, "0", 1)
    assert notice.account_id == account_id and not notice.HasField("delivery_time")
    clock.advance(minutes=3)
    first = acknowledge(limits, notice.notice_id, request_id="ack-1")
    assert first.notice.delivery_channel == pb.NOTICE_CHANNEL_SMS
    assert first.notice.delivery_time.ToDatetime() == clock.now.replace(tzinfo=None)
    # The same request again: the first answer. Another delivery later: the first stands.
    assert acknowledge(limits, notice.notice_id, request_id="ack-1") == first
    clock.advance(hours=1)
    later = acknowledge(limits, notice.notice_id, channel=pb.NOTICE_CHANNEL_EMAIL)
    assert later.notice.delivery_time == first.notice.delivery_time
    assert later.notice.delivery_channel == pb.NOTICE_CHANNEL_SMS
    # The same request id asking for something else is refused.
    reused = failed(
        limits.AcknowledgeNotice,
        pb.AcknowledgeNoticeRequest(
            request_id="ack-1", notice_id=notice.notice_id, channel=pb.NOTICE_CHANNEL_PUSH
        ),
    )
    assert reused.code() == grpc.StatusCode.ALREADY_EXISTS
    # Seen by the customer's view too.
    (line,) = view(limits, limits_customer(limits, account_id)).accounts
    assert line.notices[0].delivery_time == first.notice.delivery_time


def limits_customer(limits, account_id: str) -> str:
    account = limits.GetAccount(pb.GetAccountRequest(account_id=account_id), timeout=5).account
    return account.customer_id


def test_acknowledging_an_unknown_or_malformed_notice_is_refused(limits, clock):
    open_account(limits)
    unknown = failed(
        limits.AcknowledgeNotice,
        pb.AcknowledgeNoticeRequest(
            request_id=rid(), notice_id="no-such-notice", channel=pb.NOTICE_CHANNEL_SMS
        ),
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    malformed = failed(limits.AcknowledgeNotice, pb.AcknowledgeNoticeRequest())
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(malformed) == {"request_id", "notice_id", "channel"}

    (notice,) = watch(limits, "0", 1)
    future = pb.AcknowledgeNoticeRequest(
        request_id=rid(), notice_id=notice.notice_id, channel=pb.NOTICE_CHANNEL_IN_APP
    )
    future.delivery_time.FromDatetime(clock.now + timedelta(days=1))
    refused = failed(limits.AcknowledgeNotice, future)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(refused) == {"delivery_time"}
    future.request_id = rid()
    future.delivery_time.FromDatetime(clock.now - timedelta(days=1))  # before the notice
    assert fields_of(failed(limits.AcknowledgeNotice, future)) == {"delivery_time"}
    bad_cursor = failed(
        lambda r, timeout: list(limits.WatchNotices(r, timeout=timeout)),
        pb.WatchNoticesRequest(after_cursor="abc"),
    )
    assert bad_cursor.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields_of(bad_cursor) == {"after_cursor"}


# -- the customer's own view -----------------------------------------------------------------


def test_the_customer_view_shows_exactly_that_customers_records(limits, clock):
    me, other = f"cust-{rid()}", f"cust-{rid()}"
    mine = open_account(limits, customer_id=me).account.account_id
    theirs = open_account(limits, customer_id=other).account.account_id
    for account_id in (mine, theirs):
        report(limits, past_due(account_id, 30, clock.now))
    reduced = history(limits, mine)[0]
    open_appeal = appeal(limits, mine, reduced.event_id)
    appeal(limits, theirs, history(limits, theirs)[0].event_id)
    declined_elsewhere = open_account(limits, POOR_APPLICANT).account.account_id

    seen = view(limits, me)
    assert seen.customer_id == me
    (line,) = seen.accounts
    assert line.account.account_id == mine and line.account.customer_id == me
    assert line.account.credit_line.minor_units == 250_000
    assert line.account.available_credit.minor_units == 0  # 30 days past due: no draws
    assert [d.event_id for d in line.decisions] == [e.event_id for e in history(limits, mine)]
    cut = line.decisions[0]
    assert cut.type == pb.LIMIT_EVENT_TYPE_REDUCED and cut.adverse
    assert cut.reasons and cut.improvements
    assert {n.account_id for n in line.notices} == {mine}
    assert [n.type for n in line.notices] == [pb.NOTICE_TYPE_REDUCED, pb.NOTICE_TYPE_OPENED]
    assert [a.appeal_id for a in line.open_appeals] == [open_appeal.appeal_id]
    # Nothing of anyone else's anywhere in it.
    text = str(seen)
    for foreign in (theirs, other, declined_elsewhere):
        assert foreign not in text

    resolve(limits, open_appeal.appeal_id, reverse=False)
    assert not view(limits, me).accounts[0].open_appeals

    missing = failed(limits.GetCustomerView, pb.GetCustomerViewRequest(customer_id="nobody"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    empty = failed(limits.GetCustomerView, pb.GetCustomerViewRequest())
    assert fields_of(empty) == {"customer_id"}


def test_a_declined_applicant_sees_the_decline_and_the_line_granted_later(limits, clock):
    customer_id = f"cust-{rid()}"
    declined = open_account(limits, POOR_APPLICANT, customer_id=customer_id).account
    clock.advance(days=31)
    line = open_account(limits, customer_id=customer_id).account
    accounts = view(limits, customer_id).accounts
    assert [a.account.account_id for a in accounts] == [declined.account_id, line.account_id]
    assert accounts[0].notices[0].type == pb.NOTICE_TYPE_DECLINED
    assert accounts[0].notices[0].adverse and accounts[0].decisions[0].improvements
    assert accounts[1].notices[0].type == pb.NOTICE_TYPE_OPENED


# -- the templates file ------------------------------------------------------------------------


def templates_document() -> dict:
    return yaml.safe_load(DEFAULT_TEMPLATES.read_text(encoding="utf-8"))


def write(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


def test_the_shipped_templates_cover_every_notice_type_in_both_locales():
    templates = load_templates()
    assert set(templates.templates) == set(NoticeType)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["templates"].update(bonus={"en": "x", "zh-CN": "x"}), "templates.bonus"),
        (lambda d: d["templates"]["reduced"].pop("zh-CN"), "templates.reduced.zh-CN"),
        (lambda d: d["templates"]["reduced"].update(fr="x"), "templates.reduced.fr"),
        (lambda d: d["templates"].pop("frozen"), "no template for frozen"),
        (lambda d: d["templates"]["opened"].update(en="{limit}"), "unknown placeholder {limit}"),
        (lambda d: d["templates"]["opened"].update(en="{line"), "templates.opened.en"),
        (lambda d: d["how_to_appeal"].pop("en"), "how_to_appeal.en"),
        (lambda d: d.update(extra=1), "extra"),
    ],
)
def test_a_bad_templates_file_is_refused_with_its_path(tmp_path, change, problem):
    document = templates_document()
    change(document)
    path = write(tmp_path / "notice_templates.yaml", document)
    with pytest.raises(TemplatesError) as refused:
        load_templates(path)
    assert str(path) in str(refused.value) and problem in str(refused.value)


def test_a_bad_templates_file_stops_the_service_at_start(tmp_path, database_url):
    document = templates_document()
    document["templates"].pop("closed")
    path = write(tmp_path / "notice_templates.yaml", document)
    settings = LimitsSettings(port=0, database_url=database_url, notice_templates_file=path)
    with pytest.raises(SystemExit) as stopped:
        build_server(settings)
    assert str(path) in str(stopped.value)


def test_templates_are_hot_reloaded_only_when_valid(tmp_path):
    path = write(tmp_path / "notice_templates.yaml", templates_document())
    holder = TemplatesHolder(path)
    document = templates_document()
    document["templates"]["opened"].pop("en")
    write(path, document)
    assert not holder.reload_if_changed()
    assert holder.templates.templates[NoticeType.opened].en
    document = templates_document()
    document["version"] = "2027.1.1"
    document["templates"]["opened"]["en"] = "Welcome: {line}."
    write(path, document)
    assert holder.reload_if_changed()
    assert holder.templates.version == "2027.1.1"


def test_new_templates_reach_the_next_notice(start_limits, scoring, tmp_path):
    path = write(tmp_path / "notice_templates.yaml", templates_document())
    limits = start_limits(
        scoring.port, notice_templates_file=path, policy_reload_interval_seconds=0.05
    )
    document = templates_document()
    document["version"] = "2027.1.1"
    document["templates"]["opened"]["en"] = "Welcome: your line is {line}."
    write(path, document)
    for attempt in range(100):
        open_account(limits)
        notice = watch(limits, str(attempt), 1)[0]
        if notice.templates_version == "2027.1.1":
            break
    assert notice.texts["en"] == "Welcome: your line is 5,000.00 CNY."
