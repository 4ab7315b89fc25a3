"""Resumable server streams over a numbered outbox: a cursor, no gap, no repeat.

A service numbers the rows of an outbox (monitoring's alerts, limits' notices) from a counter
row that each writing transaction takes last and holds to its commit, so rows become visible
in the order of their numbers: a reader that has seen row n has seen every row before it. A
stream then reads up to the counter's value (the head), hands out every row up to it, and
resumes from the last number it gave, on any replica and across restarts.

`NumberFeed` wakes the streams of this process when it stored a new row; rows stored by other
replicas are found by polling. `follow` is the loop every such stream runs; `StreamSlots` caps
the streams a replica holds open, since each holds one of the server's worker threads.
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.common.errors import ResourceExhausted, Violations

ItemT = TypeVar("ItemT")
MAX_CURSOR_DIGITS = 18


class NumberFeed:
    """The number of the newest row this process stored, for streams to wait on."""

    def __init__(self) -> None:
        self._latest = 0
        self._closed = False
        self._condition = threading.Condition()

    def publish(self, number: int) -> None:
        with self._condition:
            if number > self._latest:
                self._latest = number
                self._condition.notify_all()

    def wait_beyond(self, number: int, timeout: float) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._latest > number or self._closed, timeout)

    def close(self) -> None:
        """Wakes every stream for good: the server is stopping."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass(frozen=True)
class Page(Generic[ItemT]):
    """What one read of the outbox found: the head (every row up to it is committed), and the
    matching rows above the cursor up to the head, oldest first, at most a page of them."""

    head: int
    items: list[ItemT]


@dataclass(frozen=True)
class Heartbeat:
    """Nothing matched for a while; the stream may resume from `cursor`."""

    cursor: int


def follow(
    read: Callable[[int, int], Page[ItemT]],
    number_of: Callable[[ItemT], int],
    after: int,
    feed: NumberFeed,
    is_active: Callable[[], bool],
    *,
    page_size: int = 500,
    poll_seconds: float = 0.5,
    heartbeat_seconds: float = 15.0,
) -> Iterator[ItemT | Heartbeat]:
    """Every row numbered above `after`, in order, then each new one as it is stored, with a
    heartbeat when nothing came for `heartbeat_seconds`; until the caller leaves or the feed
    closes. `read(after, page_size)` reads the head first, then the rows up to it."""
    quiet_since = time.monotonic()
    while is_active() and not feed.closed:
        page = read(after, page_size)
        yield from page.items
        full = len(page.items) == page_size
        after = number_of(page.items[-1]) if full else max(after, page.head)
        if page.items:
            quiet_since = time.monotonic()
            if full:
                continue
        elif time.monotonic() - quiet_since >= heartbeat_seconds:
            yield Heartbeat(after)
            quiet_since = time.monotonic()
        feed.wait_beyond(after, poll_seconds)


class StreamSlots:
    """At most `limit` open streams: unary calls always find a thread, and a stream over the
    cap is refused with RESOURCE_EXHAUSTED rather than left waiting.

    A stream whose caller hung up keeps its slot until its loop next looks (a poll), so a
    new stream waits up to `grace_seconds` for a slot before it is refused: a client that
    closes one watch and opens the next is not turned away."""

    def __init__(self, limit: int, grace_seconds: float = 1.0) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self._grace_seconds = grace_seconds

    @contextmanager
    def held(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self._grace_seconds):
            raise ResourceExhausted(
                "too many open streams on this replica; retry later",
                reason="TOO_MANY_STREAMS",
            )
        try:
            yield
        finally:
            self._slots.release()


def parse_cursor(cursor: str, field: str, violations: Violations) -> int | None:
    """A cursor is the number of a row; empty means none."""
    if not cursor:
        return None
    if not cursor.isdigit() or len(cursor) > MAX_CURSOR_DIGITS:
        violations.add(field, "not a cursor this service gave out")
        return None
    return int(cursor)
