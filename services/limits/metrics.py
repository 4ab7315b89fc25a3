"""Limits' own Prometheus metrics: the decisions it records, the draws it refuses, the book by
tier, and how far the portfolio reviews running now have got."""

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

from services.limits.records import LimitEvent

DECISIONS = Counter(
    "creditline_limits_decisions_total",
    "Limit events recorded (committed), by type and whether the decision is adverse.",
    ["type", "adverse"],
)
DRAWS_REFUSED = Counter(
    "creditline_limits_draws_refused_total",
    "Draws refused with FAILED_PRECONDITION, by reason (INSUFFICIENT_CREDIT, PAST_DUE, ...).",
    ["reason"],
)
DRAW_GROUPS = Histogram(
    "creditline_limits_draw_group_size",
    "Draws and repayments committed together in one transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
# The book: lines that are open (active, watchlisted or frozen), by tier. Every replica reads
# the same database, so each reports the same totals: aggregate them with max, never sum.
BOOK_ACCOUNTS = Gauge(
    "creditline_limits_book_accounts",
    "Open lines (active, watchlisted, frozen), by tier.",
    ["tier"],
)
BOOK_CREDIT_LINE = Gauge(
    "creditline_limits_book_credit_line_minor_units",
    "Total credit line of the open lines, by tier, in minor units of the policy's currency.",
    ["tier"],
)
BOOK_DRAWN = Gauge(
    "creditline_limits_book_drawn_minor_units",
    "Total drawn on the open lines, by tier, in minor units of the policy's currency.",
    ["tier"],
)
BOOK_REFRESHED = Gauge(
    "creditline_limits_book_refreshed_timestamp_seconds",
    "When the book gauges were last computed (Unix time).",
)
REVIEW_RUNS_ACTIVE = Gauge(
    "creditline_limits_review_runs_active",
    "Portfolio review runs (RunReview) this process is working through now.",
)
REVIEW_LAST_PROGRESS = Gauge(
    "creditline_limits_review_last_progress_timestamp_seconds",
    "Of the review runs active now, the oldest time one of them last committed a page or "
    "started (Unix time): a run stuck on a page holds it back.",
)

# Accounts without a tier (none of the policy's tiers applied when they were last decided).
NO_TIER = "none"


def count_decisions(events: Iterable[LimitEvent]) -> None:
    """Counts stored events by type and adverse flag: one update per pair, not per event."""
    for (kind, adverse), count in Tally((e.type.value, e.adverse) for e in events).items():
        DECISIONS.labels(kind, "true" if adverse else "false").inc(count)


class _BookTiers:
    """The tiers the book gauges hold now, so a tier with no open line left is dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tiers: set[str] = set()

    def publish(self, rows: Iterable[tuple[str | None, int, int, int]]) -> None:
        totals = {(tier or NO_TIER): (count, line, drawn) for tier, count, line, drawn in rows}
        with self._lock:
            for tier, (count, line, drawn) in totals.items():
                BOOK_ACCOUNTS.labels(tier).set(count)
                BOOK_CREDIT_LINE.labels(tier).set(line)
                BOOK_DRAWN.labels(tier).set(drawn)
            for gone in self._tiers - set(totals):
                for gauge in (BOOK_ACCOUNTS, BOOK_CREDIT_LINE, BOOK_DRAWN):
                    gauge.remove(gone)
            self._tiers = set(totals)
            BOOK_REFRESHED.set(time.time())


_BOOK = _BookTiers()


def refresh_book(book_by_tier: Callable[[], Iterable[tuple[str | None, int, int, int]]]) -> None:
    """Computes the book gauges again from one aggregate query (`LimitsStore.book_by_tier`).

    The query reads every open line, so it runs on a timer in the background (a few times a
    minute at most), never per RPC, and never in the scrape: a slow database cannot stall
    /metrics, and a scrape costs the database nothing."""
    _BOOK.publish(book_by_tier())


class _ReviewProgress:
    """The review runs active in this process, and when each last got on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[object, float] = {}

    @contextmanager
    def tracking(self) -> Iterator[Callable[[], None]]:
        """Counts a run as active for the block; the callable yielded marks a page done."""
        token = object()

        def progressed() -> None:
            with self._lock:
                self._runs[token] = time.time()
                self._publish()

        progressed()
        try:
            yield progressed
        finally:
            with self._lock:
                del self._runs[token]
                self._publish()

    def _publish(self) -> None:
        REVIEW_RUNS_ACTIVE.set(len(self._runs))
        if self._runs:  # with none active the last value stays; the alert needs a run active
            REVIEW_LAST_PROGRESS.set(min(self._runs.values()))


REVIEWS = _ReviewProgress()
