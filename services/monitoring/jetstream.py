"""Repayment events from a NATS JetStream stream: a durable pull consumer that applies each
fetched batch through the same Ingestor as the gRPC calls, in one transaction, and acknowledges
its messages only once that transaction has committed.

Subjects are `<subject>.<account key>`: every event of an account on one subject, so the stream
keeps them in the account's order (the key is the account id, or a digest of it where the id is
not a valid subject token; the consumer reads the account from the event itself). With
partitions they are `<subject>.<partition>.<account key>` (`services.monitoring.partitions`),
each partition with a durable consumer of its own, `<consumer>-<partition>`, and a replica
fetches from each of the partitions it is given, one task each, taking turns. A message is a
serialized `creditline.monitoring.v1.RepaymentEvent`.

What becomes of each message (`settle`, no NATS in it):
- applied, or a duplicate (its event id was applied before: a redelivery after a crash between
  the commit and the acknowledgement, or a producer's retry): acknowledged;
- ahead of its account's sequence, or past the first of an account not yet opened: delivered
  again after a delay, since the missing event may still come (after a crash, messages never
  delivered can overtake the unacknowledged ones until these are redelivered; replicas sharing
  a consumer commit an account's events in batches of their own); still missing after
  `max_deliveries` deliveries, it is dead-lettered;
- never applicable (not a RepaymentEvent, an invalid field, an account never opened, a sequence
  the account has passed): published to the dead-letter subject with the reason in its headers,
  then terminated in the source stream, so the events behind it flow on.
"""

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import nats
import structlog
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType
from nats.js.errors import NotFoundError

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from services.common.errors import Violations
from services.monitoring import converters, metrics
from services.monitoring.ingestion import Ingestor, Outcome
from services.monitoring.settings import MonitoringSettings

log = structlog.get_logger("creditline.monitoring.jetstream")

# The dead-letter headers (besides the original message's, which are kept).
REASON_HEADER = "Creditline-Dead-Letter-Reason"
DETAIL_HEADER = "Creditline-Dead-Letter-Detail"
SOURCE_SUBJECT_HEADER = "Creditline-Source-Subject"
SOURCE_SEQUENCE_HEADER = "Creditline-Source-Sequence"
# JetStream refuses a second message with the same id within the stream's duplicate window.
MSG_ID_HEADER = "Nats-Msg-Id"
DUPLICATE_WINDOW_SECONDS = 120.0
FETCH_SECONDS = 1.0  # how long one fetch waits for messages; also how soon a stop is noticed
MAX_BACKOFF_SECONDS = 30.0
STALL_SECONDS = 10  # a NATS round trip taking longer is taken for a broken connection


# -- what becomes of each message -------------------------------------------------------------


class Verdict(StrEnum):
    ack = "ack"
    retry = "retry"
    dead = "dead"


class DeadReason(StrEnum):
    malformed = "malformed"  # not a serialized RepaymentEvent
    invalid = "invalid"  # a field the gRPC path would refuse with INVALID_ARGUMENT
    unknown_account = "unknown_account"  # no account_opened before it
    stale_sequence = "stale_sequence"  # the account is past this sequence
    sequence_gap = "sequence_gap"  # the events before it never came


@dataclass(frozen=True, slots=True)
class Delivery:
    data: bytes
    deliveries: int  # times JetStream delivered it, this time included


@dataclass(frozen=True, slots=True)
class Settlement:
    verdict: Verdict
    result: str  # for the metrics: applied, duplicate, retried, dead_lettered
    reason: DeadReason | None = None
    detail: str = ""


RETRY = Settlement(Verdict.retry, "retried")


def _dead(reason: DeadReason, detail: str) -> Settlement:
    return Settlement(Verdict.dead, "dead_lettered", reason, detail)


def settle(
    deliveries: Sequence[Delivery], ingestor: Ingestor, currency: str, max_deliveries: int
) -> list[Settlement]:
    """Applies the applicable events of `deliveries` in one transaction (committed on return)
    and says what to do with each message. Raises what the commit raised: nothing is settled."""
    settlements: list[Settlement | None] = [None] * len(deliveries)
    events, positions = [], []
    for i, delivery in enumerate(deliveries):
        try:
            message = pb.RepaymentEvent.FromString(delivery.data)
        except DecodeError:
            settlements[i] = _dead(DeadReason.malformed, "not a serialized RepaymentEvent")
            continue
        violations = Violations()
        event = converters.event_of(message, "event", currency, violations)
        if event is None:
            detail = "; ".join(f"{v.field}: {v.description}" for v in violations.items)
            settlements[i] = _dead(DeadReason.invalid, detail)
            continue
        events.append(event)
        positions.append(i)
    if events:
        result = ingestor.apply(events, set_aside_unknown_accounts=True)
        for i, event, outcome in zip(positions, events, result.results, strict=True):
            settlements[i] = _settlement(
                event.sequence,
                outcome.outcome,
                outcome.expected_sequence,
                deliveries[i].deliveries >= max_deliveries,
            )
    return [s for s in settlements if s is not None]


def _settlement(sequence: int, outcome: Outcome, expected: int, last_try: bool) -> Settlement:
    if outcome in (Outcome.applied, Outcome.duplicate):
        return Settlement(Verdict.ack, outcome.value)
    if outcome is Outcome.unknown_account:
        # Past the first sequence, its account_opened may still come: committing on another
        # replica fetching from the same consumer, or overtaken after a crash.
        if sequence > 1 and not last_try:
            return RETRY
        return _dead(DeadReason.unknown_account, "no account_opened event came before it")
    if sequence < expected:
        return _dead(
            DeadReason.stale_sequence, f"sequence {sequence}; the account expects {expected}"
        )
    if last_try:
        return _dead(DeadReason.sequence_gap, f"sequence {sequence}; {expected} never came")
    return RETRY


# -- the consumer ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lane:
    """One durable consumer this replica fetches from: the whole stream, or one partition."""

    consumer: str
    filter_subject: str
    partition: int | None = None  # None: unpartitioned


def lanes_of(settings: MonitoringSettings) -> list[Lane]:
    """The durable consumers a replica with `settings` binds, one per partition it consumes."""
    subject, consumer = settings.jetstream_subject, settings.jetstream_consumer
    if settings.jetstream_partitions == 0:
        return [Lane(consumer, f"{subject}.*")]
    return [
        Lane(f"{consumer}-{p}", f"{subject}.{p}.*", p)
        for p in settings.jetstream_consumed_partitions
    ]


def stream_subjects(settings: MonitoringSettings) -> str:
    """The subjects of the stream monitoring creates when it is missing."""
    return f"{settings.jetstream_subject}.{'*.*' if settings.jetstream_partitions else '*'}"


class JetStreamConsumer:
    """Runs the durable pull consumers (one, or one per partition it is given) in a thread of
    its own (nats-py is asyncio) until stopped.

    Unreachable NATS, a missing stream or consumer: logged, reported through `on_health` (and
    the `jetstream_connected` gauge), and retried with backoff; the gRPC API serves meanwhile.
    Consuming means every one of its consumers is bound; one failing makes them all connect
    and bind again.
    """

    def __init__(
        self,
        settings: MonitoringSettings,
        ingestor: Ingestor,
        on_health: Callable[[bool], None] = lambda _consuming: None,
    ) -> None:
        assert settings.jetstream_url, "the consumer needs jetstream_url"
        self.settings = settings
        self.servers = [url.strip() for url in settings.jetstream_url.split(",") if url.strip()]
        self.ingestor = ingestor
        self.on_health = on_health
        self.lanes = lanes_of(settings)
        self._pending: dict[Lane, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="jetstream", daemon=True)

    def start(self) -> "JetStreamConsumer":
        self._thread.start()
        self._started.wait()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Finishes the batch in hand (applied and acknowledged, or left to be redelivered),
        then disconnects."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._started.set()
        backoff = 0.0
        while not self._stopping.is_set():
            try:
                await self._connect_and_consume()
                backoff = 0.0
            except Exception as error:  # noqa: BLE001 - the consumer must outlive NATS trouble
                self._set_consuming(False)
                backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF_SECONDS)
                log.warning(
                    "jetstream.unavailable",
                    error=type(error).__name__,
                    message=str(error)[:200],
                    retry_in=backoff,
                )
                await self._sleep(backoff)
        self._set_consuming(False)

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _set_consuming(self, consuming: bool) -> None:
        metrics.JETSTREAM_CONNECTED.set(1 if consuming else 0)
        self.on_health(consuming)

    async def _connect_and_consume(self) -> None:
        # The client's own reconnecting is off: this loop reconnects, with backoff, and binds
        # the consumer again, and a stop is never stuck in a connect that retries forever.
        connection: list[nats.NATS] = []

        async def disconnected() -> None:
            self._set_consuming(False)
            if self._stopping is not None and not self._stopping.is_set():
                log.warning("jetstream.disconnected")

        async def error(problem: Exception) -> None:
            if connection and connection[0].is_connected:  # a failed connect is logged below
                log.warning("jetstream.error", error=type(problem).__name__)

        nc = await nats.connect(
            servers=self.servers,
            name="creditline-monitoring",
            connect_timeout=2,
            allow_reconnect=False,
            user_credentials=(
                str(self.settings.jetstream_credentials_file)
                if self.settings.jetstream_credentials_file
                else None
            ),
            disconnected_cb=disconnected,
            error_cb=error,
        )
        connection.append(nc)
        try:
            js = nc.jetstream()
            if self.settings.jetstream_create:
                await self._create_missing(js)
            metrics.JETSTREAM_PARTITIONS.set(self.settings.jetstream_partitions)
            subscriptions = [await self._bind(js, lane) for lane in self.lanes]
            self._set_consuming(True)
            log.info(
                "jetstream.consuming",
                stream=self.settings.jetstream_stream,
                consumers=[lane.consumer for lane in self.lanes],
                subjects=[lane.filter_subject for lane in self.lanes],
            )
            # One batch in hand at a time: the partitions take turns. Batches applied side by
            # side in one process share its GIL and take as long together as one after
            # another, but each one's acknowledgement wait runs from its fetch: under load they
            # could outlive it and come again.
            turn = asyncio.Semaphore(1)
            await _first_failure(
                self._consume(nc, js, lane, subscription, turn)
                for lane, subscription in zip(self.lanes, subscriptions, strict=True)
            )
        finally:
            await nc.close()

    async def _bind(self, js: JetStreamContext, lane: Lane) -> JetStreamContext.PullSubscription:
        # Binding checks nothing: a missing stream or consumer must fail here, not look like
        # an empty stream.
        info = await js.consumer_info(self.settings.jetstream_stream, lane.consumer)
        self._set_pending(lane, info.num_pending or 0)
        return await js.pull_subscribe_bind(
            durable=lane.consumer, stream=self.settings.jetstream_stream
        )

    def _set_pending(self, lane: Lane, pending: int) -> None:
        self._pending[lane] = pending
        if lane.partition is not None:
            metrics.JETSTREAM_PARTITION_PENDING.labels(str(lane.partition)).set(pending)
        metrics.JETSTREAM_PENDING.set(sum(self._pending.values()))

    async def _create_missing(self, js: JetStreamContext) -> None:
        """The two streams and the durable consumers, each created only when missing: an
        existing one is used as it is (the operator's configuration wins)."""
        s = self.settings
        max_age = s.jetstream_max_age_days * 86400
        for name, subjects in (
            (s.jetstream_stream, [stream_subjects(s)]),
            (s.jetstream_dead_letter_stream, [s.jetstream_dead_letter_subject]),
        ):
            try:
                await js.stream_info(name)
            except NotFoundError:
                await js.add_stream(
                    name=name,
                    subjects=subjects,
                    # Limits retention: acknowledged messages stay until max_age, so a new
                    # consumer or a replay can read them again (each applies once by event id).
                    retention=RetentionPolicy.LIMITS,
                    storage=StorageType.FILE,
                    max_age=max_age,
                    duplicate_window=DUPLICATE_WINDOW_SECONDS,
                )
                log.info("jetstream.stream_created", stream=name, max_age_days=max_age / 86400)
        for lane in self.lanes:
            try:
                await js.consumer_info(s.jetstream_stream, lane.consumer)
            except NotFoundError:
                await js.add_consumer(
                    s.jetstream_stream,
                    ConsumerConfig(
                        durable_name=lane.consumer,
                        deliver_policy=DeliverPolicy.ALL,
                        ack_policy=AckPolicy.EXPLICIT,
                        ack_wait=s.jetstream_ack_wait_seconds,
                        filter_subject=lane.filter_subject,
                        # Redelivery is ours to bound (`settle`): JetStream would drop silently.
                        max_deliver=-1,
                    ),
                )
                log.info("jetstream.consumer_created", consumer=lane.consumer)

    async def _consume(
        self,
        nc: nats.NATS,
        js: JetStreamContext,
        lane: Lane,
        subscription: JetStreamContext.PullSubscription,
        turn: asyncio.Semaphore,
    ) -> None:
        assert self._stopping is not None
        # The full wait, though an empty partition then holds the turn that long: a fetch
        # that times out while its batch still streams in leaves the rest for a later turn,
        # and a message taken off nats-py's queue just as its wait ends can be lost (asyncio's
        # wait_for before Python 3.12), to come again only after the acknowledgement wait.
        while not self._stopping.is_set():
            async with turn:
                try:
                    # Bounded from outside as well: a fetch that never returns must not stall
                    # the consumer for good (the connection is then made again).
                    messages = await asyncio.wait_for(
                        subscription.fetch(
                            self.settings.jetstream_batch_size, timeout=FETCH_SECONDS
                        ),
                        FETCH_SECONDS + STALL_SECONDS,
                    )
                except nats.errors.TimeoutError:
                    messages = []
                if not messages:
                    self._set_pending(lane, 0)  # nothing was waiting to be delivered
                    continue
                # The lag comes with every message: how many were still undelivered behind it.
                # It costs no request (consumer-info requests every 2 s went with fetches that
                # stalled, on the NATS 2.9 server these tests run against).
                self._set_pending(lane, messages[-1].metadata.num_pending)
                await self._settle(js, messages)
                await nc.flush(timeout=STALL_SECONDS)

    async def _settle(self, js: JetStreamContext, messages: list[Msg]) -> None:
        deliveries = [Delivery(m.data, m.metadata.num_delivered) for m in messages]
        delay = self.settings.jetstream_retry_delay_seconds
        try:
            # The database work blocks: off the event loop, so NATS keeps its heartbeats.
            settlements = await asyncio.to_thread(
                settle,
                deliveries,
                self.ingestor,
                self.settings.currency_code,
                self.settings.jetstream_max_deliveries,
            )
        except Exception as error:  # noqa: BLE001 - nothing committed: all of them come again
            log.warning(
                "jetstream.batch_failed",
                error=type(error).__name__,
                messages=len(messages),
                retry_in=delay,
            )
            for message in messages:
                await message.nak(delay=delay)
            metrics.JETSTREAM_MESSAGES.labels(RETRY.result).inc(len(messages))
            return
        for message, settlement in zip(messages, settlements, strict=True):
            if settlement.verdict is Verdict.ack:
                await message.ack()
            elif settlement.verdict is Verdict.retry:
                await message.nak(delay=delay)
            elif not await self._dead_letter(js, message, settlement):
                continue  # not kept anywhere yet: left unacknowledged, it comes again
            metrics.JETSTREAM_MESSAGES.labels(settlement.result).inc()

    async def _dead_letter(
        self, js: JetStreamContext, message: Msg, settlement: Settlement
    ) -> bool:
        """Publishes `message` to the dead-letter subject and, once JetStream has stored it,
        terminates it in the source stream. False if it could not be stored."""
        assert settlement.reason is not None
        sequence = message.metadata.sequence.stream
        headers = {
            **(message.headers or {}),
            REASON_HEADER: settlement.reason.value,
            DETAIL_HEADER: settlement.detail,
            SOURCE_SUBJECT_HEADER: message.subject,
            SOURCE_SEQUENCE_HEADER: str(sequence),
            # A crash before the term below publishes it again: the dead-letter stream drops it.
            MSG_ID_HEADER: f"{self.settings.jetstream_stream}:{sequence}",
        }
        try:
            await js.publish(
                self.settings.jetstream_dead_letter_subject, message.data, headers=headers
            )
        except Exception as error:  # noqa: BLE001 - retried on redelivery
            log.warning("jetstream.dead_letter_failed", error=type(error).__name__)
            return False
        await message.term()
        metrics.JETSTREAM_DEAD_LETTERS.labels(settlement.reason.value).inc()
        log.warning(
            "jetstream.dead_lettered",
            reason=settlement.reason.value,
            stream_sequence=sequence,
            deliveries=message.metadata.num_delivered,
        )
        return True


async def _first_failure(work: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Runs `work` concurrently until all of it returns or one raises: the rest is then
    cancelled (and awaited), and that error raised."""
    tasks = [asyncio.create_task(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if (error := task.exception()) is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
