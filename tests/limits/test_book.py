"""The whole book: portfolio reviews (streamed, resumable, dry run) and policy simulation."""

import time
from datetime import UTC

import grpc
import pytest
import yaml

from creditline.limits.v1 import limits_service_pb2 as pb
from services.common.errors import violations_of
from services.limits import application
from services.limits.policy import DEFAULT_POLICY
from tests.limits.test_service import (
    CLEAN_BEHAVIOUR,
    failed,
    open_account,
    past_due,
    report,
    rid,
    risk,
    signal,
)


def book(limits, clock, fresh: int = 3, stale: int = 1, plain: int = 1) -> list[str]:
    """Accounts opened a year ago: the first `fresh` with a behaviour profile monitoring
    reported now, then `stale` whose last report is a year old, then `plain` never reported."""
    ids = [open_account(limits).account.account_id for _ in range(fresh + stale + plain)]
    for account_id in ids[fresh : fresh + stale]:
        report(limits, signal(account_id, "behaviour_rescored", risk=risk(clock.now)))
    clock.advance(days=366)
    for account_id in ids[:fresh]:
        report(limits, signal(account_id, "behaviour_rescored", risk=risk(clock.now)))
    return ids


def lines(limits, ids) -> list[int]:
    return [
        limits.GetAccount(
            pb.GetAccountRequest(account_id=i), timeout=5
        ).account.credit_line.minor_units
        for i in ids
    ]


def test_a_dry_run_counts_and_a_real_run_applies_once(limits, clock):
    ids = book(limits, clock)
    dry = list(limits.RunReview(pb.RunReviewRequest(request_id="dry", dry_run=True), timeout=30))
    assert dry[-1].done and dry[-1].accounts_due == 5 and dry[-1].accounts_reviewed == 5
    # A fresh score can raise a line; without one (a year-old profile, or none) a review only
    # keeps or lowers it.
    assert (dry[-1].increased, dry[-1].unchanged) == (3, 2)
    assert lines(limits, ids) == [500_000] * 5

    real = list(limits.RunReview(pb.RunReviewRequest(request_id="run-1"), timeout=30))
    assert (real[-1].increased, real[-1].unchanged, real[-1].done) == (3, 2, True)
    assert lines(limits, ids) == [700_000] * 3 + [500_000] * 2

    again = list(limits.RunReview(pb.RunReviewRequest(request_id="run-1"), timeout=30))
    assert again[-1].done and again[-1].accounts_reviewed == 5
    assert lines(limits, ids) == [700_000] * 3 + [500_000] * 2  # nothing applied twice
    with pytest.raises(grpc.RpcError) as raised:
        list(limits.RunReview(pb.RunReviewRequest(request_id="run-1", dry_run=True), timeout=30))
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_an_interrupted_run_resumes_where_it_stopped(limits, clock, monkeypatch):
    monkeypatch.setattr(application, "REVIEW_PAGE", 2)
    ids = book(limits, clock)
    stream = limits.RunReview(pb.RunReviewRequest(request_id="run-2", shards=1), timeout=30)
    next(stream)  # the plan
    first_page = next(stream)
    stream.cancel()  # the caller goes away mid-run
    assert first_page.accounts_reviewed == 2

    resumed = list(limits.RunReview(pb.RunReviewRequest(request_id="run-2"), timeout=30))
    assert resumed[-1].done and resumed[-1].accounts_reviewed == 5
    for account_id in ids:
        events = limits.ListLimitEvents(
            pb.ListLimitEventsRequest(account_id=account_id), timeout=5
        ).events
        reviews = [e for e in events if e.actor.kind == pb.ACTOR_KIND_REVIEW]
        assert len(reviews) == 1, account_id


def test_a_simulation_counts_what_a_dry_run_review_of_the_same_book_does(limits, clock):
    book(limits, clock)
    dry = list(limits.RunReview(pb.RunReviewRequest(request_id="dry", dry_run=True), timeout=30))
    simulated = limits.SimulatePolicy(
        pb.SimulatePolicyRequest(policy=DEFAULT_POLICY.read_text()), timeout=30
    )
    (prime,) = simulated.tiers
    assert (
        (prime.accounts, prime.rise, prime.fall, prime.unchanged)
        == (
            dry[-1].accounts_reviewed,
            dry[-1].increased,
            dry[-1].reduced,
            dry[-1].unchanged,
        )
        == (5, 3, 0, 2)
    )


def test_simulating_a_policy_changes_nothing_and_reports_by_tier(limits, clock):
    ids = book(limits, clock, fresh=0, stale=0, plain=3)
    candidate = yaml.safe_load(DEFAULT_POLICY.read_text())
    candidate["version"] = "candidate-1"
    candidate["tiers"][0].update(initial_line=300_000, max_line=400_000)  # prime at most 4,000
    response = limits.SimulatePolicy(
        pb.SimulatePolicyRequest(policy=yaml.safe_dump(candidate)), timeout=30
    )
    assert response.policy_version == "candidate-1"
    (prime,) = [t for t in response.tiers if t.tier == "prime"]
    assert (prime.accounts, prime.fall, prime.rise) == (3, 3, 0)
    assert prime.exposure_change.minor_units == -300_000
    assert response.exposure_change.minor_units == -300_000
    assert lines(limits, ids) == [500_000] * 3


def test_a_malformed_candidate_policy_is_invalid(limits):
    with pytest.raises(grpc.RpcError) as raised:
        limits.SimulatePolicy(pb.SimulatePolicyRequest(policy="tiers: [oops"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in violations_of(raised.value)] == ["policy"]


def test_a_run_needs_its_request_id(limits):
    with pytest.raises(grpc.RpcError) as raised:
        list(limits.RunReview(pb.RunReviewRequest(), timeout=10))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in violations_of(raised.value)] == ["request_id"]


def test_a_malformed_policy_file_is_refused_and_the_old_one_keeps_serving(
    start_limits, scoring, tmp_path
):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(DEFAULT_POLICY.read_text())
    limits = start_limits(
        scoring.port, policy_file=policy_file, policy_reload_interval_seconds=0.05
    )
    assert open_account(limits).event.policy_version == "2026.12.5"

    policy_file.write_text("tiers: [not, a, policy")
    time.sleep(0.3)  # several reload checks
    assert open_account(limits).event.policy_version == "2026.12.5"

    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    document["version"] = "2027.1.1"
    policy_file.write_text(yaml.safe_dump(document))
    deadline = time.monotonic() + 10
    while open_account(limits).event.policy_version != "2027.1.1":
        assert time.monotonic() < deadline, "the valid policy was never picked up"
        time.sleep(0.05)


def test_a_review_finishes_past_accounts_it_cannot_decide_and_says_why(limits, clock):
    """Out-of-range behaviour is scored at the model's range (and noted on the decision); an
    unknown income is scored in its missing bin; a profile lacking a value the model needs
    leaves its account undecided and still due, with the reason; the run never stops."""
    ids = book(limits, clock, fresh=3, stale=0, plain=0)
    odd = {**CLEAN_BEHAVIOUR, "partial_payments_6m": 4000, "utilisation": 7.5}
    report(limits, signal(ids[0], "behaviour_rescored", risk=risk(clock.now, odd)))
    lacking = {k: v for k, v in CLEAN_BEHAVIOUR.items() if k != "inquiries_7d"}
    report(limits, signal(ids[1], "behaviour_rescored", risk=risk(clock.now, lacking)))
    no_income = {
        k: v for k, v in CLEAN_BEHAVIOUR.items() if k not in ("income_change", "debt_to_income")
    }
    report(limits, signal(ids[2], "behaviour_rescored", risk=risk(clock.now, no_income)))
    simulated = limits.SimulatePolicy(
        pb.SimulatePolicyRequest(policy=DEFAULT_POLICY.read_text()), timeout=30
    )
    assert [(t.accounts, t.undecided) for t in simulated.tiers] == [(3, 1)]

    progress = list(limits.RunReview(pb.RunReviewRequest(request_id="odd"), timeout=30))
    last = progress[-1]
    assert last.done and (last.accounts_reviewed, last.undecided) == (2, 1)
    undecided = [a for p in progress for a in p.undecided_accounts]
    assert [a.account_id for a in undecided] == [ids[1]]
    assert "inquiries_7d" in undecided[0].reason
    unknown_income = limits.ListLimitEvents(
        pb.ListLimitEventsRequest(account_id=ids[2]), timeout=5
    ).events
    assert any(e.actor.kind == pb.ACTOR_KIND_REVIEW for e in unknown_income)
    history = limits.ListLimitEvents(pb.ListLimitEventsRequest(account_id=ids[0]), timeout=5)
    reviewed = next(e for e in history.events if e.actor.kind == pb.ACTOR_KIND_REVIEW)
    untouched = limits.GetAccount(pb.GetAccountRequest(account_id=ids[1]), timeout=5).account
    assert untouched.next_review_time.ToDatetime(UTC) <= clock.now  # still due: tried again
    with limits.server.bindings[0].servicer.store.read() as uow:
        assert uow.review_exceptions("odd") == [(ids[1], undecided[0].reason)]
        event = uow.get_event(ids[0], reviewed.event_id)
    assert set(event.details["clamped_features"].split(",")) == {
        "partial_payments_6m",
        "utilisation",
    }
    # A decision on the one account: refused with the reason, never the caller's bad input.
    refused = failed(
        limits.ReviewAccount, pb.ReviewAccountRequest(request_id=rid(), account_id=ids[1])
    )
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "inquiries_7d" in refused.details()


def test_a_line_closed_after_its_page_was_read_is_not_reviewed(limits, clock, monkeypatch):
    """The review reads a page, scores it, then locks the rows: an account that changed in
    between is read again, and one closed meanwhile is left alone."""
    ids = book(limits, clock, fresh=3, stale=0, plain=0)
    score_accounts = application.LimitsApplication._score_accounts

    def scored_then_closed(self, policy, accounts):
        scores = score_accounts(self, policy, accounts)
        report(limits, past_due(ids[1], 90, clock.now))  # lands between scoring and the write
        return scores

    monkeypatch.setattr(application.LimitsApplication, "_score_accounts", scored_then_closed)
    last = list(limits.RunReview(pb.RunReviewRequest(request_id="race"), timeout=30))[-1]
    assert last.done and (last.accounts_reviewed, last.increased) == (2, 2)
    closed = limits.GetAccount(pb.GetAccountRequest(account_id=ids[1]), timeout=5).account
    assert closed.status == pb.ACCOUNT_STATUS_CLOSED
