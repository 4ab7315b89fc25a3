"""Limits' own metrics over a real server: every decision stored is counted once, refused draws
by reason, the book by tier, and the progress of review runs.

The servers of these tests run in this process, so the metrics are read from prometheus_client's
registry; counters are compared before and after, since earlier tests count too.
"""

import time
from collections import Counter

import grpc
import pytest
from prometheus_client import REGISTRY

from creditline.limits.v1 import limits_service_pb2 as pb
from services.limits import application, metrics
from tests.limits.test_book import book
from tests.limits.test_service import (
    POOR_APPLICANT,
    cny,
    draw,
    open_account,
    past_due,
    report,
    rid,
    risk,
    signal,
)
from tests.servers import eventually


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def decisions() -> Counter:
    """creditline_limits_decisions_total now, by (type, adverse)."""
    counted: Counter = Counter()
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == "creditline_limits_decisions_total":
                counted[s.labels["type"], s.labels["adverse"]] = s.value
    return counted


def stored_events(limits, account_ids) -> Counter:
    """Every event stored for these accounts, by (type, adverse), read through the API."""
    stored: Counter = Counter()
    for account_id in account_ids:
        request = pb.ListLimitEventsRequest(account_id=account_id, page_size=100)
        for event in limits.ListLimitEvents(request, timeout=5).events:
            kind = pb.LimitEventType.Name(event.type).removeprefix("LIMIT_EVENT_TYPE_").lower()
            stored[kind, "true" if event.adverse else "false"] += 1
    return stored


def test_every_stored_decision_is_counted_once_by_type_and_adverse_flag(limits, clock):
    before = decisions()
    ids = book(limits, clock)  # five lines opened, behaviour reported by signals
    ids.append(open_account(limits, POOR_APPLICANT).account.account_id)  # declined
    frozen = ids[0]
    freeze = pb.FreezeAccountRequest(request_id=rid(), account_id=frozen, reason="fraud check")
    limits.FreezeAccount(freeze, timeout=5)
    limits.FreezeAccount(freeze, timeout=5)  # a replay: the first answer, nothing stored
    freeze.request_id = rid()
    with pytest.raises(grpc.RpcError):  # refused: nothing stored
        limits.FreezeAccount(freeze, timeout=5)
    # A signal's decision, and the exits `_open` records before a later call's own decision.
    report(limits, past_due(ids[1], 1, clock.now))
    report(limits, signal(ids[1], "delinquency_cured", risk=risk(clock.now)))
    clock.advance(days=200)
    draw(limits, ids[1], 100)
    # A dry run stores nothing; the real run stores a review (and any exit) per account due.
    after_setup = decisions()
    list(limits.RunReview(pb.RunReviewRequest(request_id="dry", dry_run=True), timeout=30))
    assert decisions() == after_setup, "a dry run stores nothing, so counts nothing"
    list(limits.RunReview(pb.RunReviewRequest(request_id="run"), timeout=30))

    counted = decisions()
    counted.subtract(before)
    stored = stored_events(limits, ids)
    assert +counted == stored
    assert stored["opened", "false"] == 5 and stored["declined", "true"] == 1
    assert stored["frozen", "true"] == 1 and stored["watchlisted", "true"] == 1
    # The exit the draw's `_open` recorded, and a review of each account due but the frozen one.
    assert stored["watchlist_lifted", "false"] == 1
    assert stored["reviewed_unchanged", "false"] == 4


def test_refused_draws_are_counted_by_reason_and_still_refused(limits):
    reasons = ("INSUFFICIENT_CREDIT", "PROHIBITED_PURPOSE", "LINE_FROZEN")

    def refused() -> dict[str, float]:
        return {r: sample("creditline_limits_draws_refused_total", reason=r) for r in reasons}

    before = refused()
    repayments_refused = sample(
        "creditline_limits_draws_refused_total", reason="REPAYMENT_EXCEEDS_OUTSTANDING"
    )
    account_id = open_account(limits).account.account_id  # 5,000 yuan
    draw(limits, account_id, 1_000)
    refusals = [
        lambda: draw(limits, account_id, 4_001),
        lambda: draw(limits, account_id, 100, purpose="securities"),
    ]
    for refuse in refusals:
        with pytest.raises(grpc.RpcError) as raised:
            refuse()
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A repayment refused is no refused draw.
    repay = pb.RepayRequest(request_id=rid(), account_id=account_id, amount=cny(2_000))
    with pytest.raises(grpc.RpcError) as raised:
        limits.Repay(repay, timeout=5)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    limits.FreezeAccount(
        pb.FreezeAccountRequest(request_id=rid(), account_id=account_id, reason="check"),
        timeout=5,
    )
    with pytest.raises(grpc.RpcError) as raised:
        draw(limits, account_id, 100)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    after = refused()
    assert {r: after[r] - before[r] for r in reasons} == dict.fromkeys(reasons, 1)
    assert repayments_refused == sample(
        "creditline_limits_draws_refused_total", reason="REPAYMENT_EXCEEDS_OUTSTANDING"
    )


def test_the_book_by_tier_is_refreshed_in_the_background(start_limits, scoring):
    limits = start_limits(scoring.port, book_metrics_interval_seconds=0.05)

    def prime() -> tuple[float, float, float]:
        return tuple(
            sample(f"creditline_limits_book_{name}", tier="prime")
            for name in ("accounts", "credit_line_minor_units", "drawn_minor_units")
        )

    first, second = (open_account(limits).account.account_id for _ in range(2))  # prime lines
    open_account(limits, POOR_APPLICANT)  # declined: no line
    draw(limits, first, 1_200)
    eventually(lambda: prime() == (2, 1_000_000, 120_000), f"two prime lines, got {prime()}")
    limits.FreezeAccount(  # a frozen line is still open
        pb.FreezeAccountRequest(request_id=rid(), account_id=first, reason="check"), timeout=5
    )
    limits.CloseAccount(  # a closed one is not
        pb.CloseAccountRequest(request_id=rid(), account_id=second, reason="asked"), timeout=5
    )
    eventually(lambda: prime() == (1, 500_000, 120_000), f"one open prime line, got {prime()}")
    refreshed = sample("creditline_limits_book_refreshed_timestamp_seconds")
    assert time.time() - 5 < refreshed <= time.time()


def test_a_review_run_is_active_while_it_runs_and_reports_its_progress(limits, clock, monkeypatch):
    monkeypatch.setattr(application, "REVIEW_PAGE", 2)
    book(limits, clock)
    started = time.time()
    answers = list(limits.RunReview(pb.RunReviewRequest(request_id="run"), timeout=30))
    assert answers[-1].done
    assert sample("creditline_limits_review_runs_active") == 0
    assert started <= sample("creditline_limits_review_last_progress_timestamp_seconds")

    # A caller that goes away mid-run ends the run's activity too.
    clock.advance(days=400)
    stream = limits.RunReview(pb.RunReviewRequest(request_id="cancelled"), timeout=30)
    next(stream)
    next(stream)
    stream.cancel()
    eventually(
        lambda: sample("creditline_limits_review_runs_active") == 0, "the cancelled run ended"
    )


def test_review_progress_is_that_of_the_run_longest_without_progress(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(metrics.time, "time", lambda: now[0])
    progress = metrics._ReviewProgress()

    def gauges() -> tuple[float, float]:
        return (
            sample("creditline_limits_review_runs_active"),
            sample("creditline_limits_review_last_progress_timestamp_seconds"),
        )

    with progress.tracking() as first:
        assert gauges() == (1, 1000)
        now[0] = 1010
        with progress.tracking() as second:
            assert gauges() == (2, 1000)  # the first run has not moved since 1000
            now[0] = 1020
            first()
            assert gauges() == (2, 1010)  # now the second is the one behind
            now[0] = 1030
            second()
            assert gauges() == (2, 1020)
        assert gauges() == (1, 1020)
    assert gauges() == (0, 1020)
