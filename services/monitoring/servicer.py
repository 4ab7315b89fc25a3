"""The MonitoringService RPCs: check the events, apply each batch in one transaction, answer
once it is durable; serve alerts and account risk from the store.

Long-lived streams (Ingest, WatchAlerts) each hold one of the server's worker threads, so they
are capped below the pool size: unary calls always find a thread, and a stream over the cap
is refused with RESOURCE_EXHAUSTED rather than left waiting. An Ingest stream also has a
reader thread of its own (from a pool as large as the cap), reading its next batch ahead.
"""

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from creditline.monitoring.v1 import monitoring_service_pb2_grpc
from creditline.type.v1 import risk_pb2
from services.common.errors import NotFound, Unavailable, Violations
from services.common.feeds import Heartbeat, NumberFeed, Page, StreamSlots, follow, parse_cursor
from services.monitoring import converters
from services.monitoring.ingestion import Ingestor
from services.monitoring.profile import Event, features
from services.monitoring.rescoring import BehaviourScorer
from services.monitoring.rules import RulesHolder
from services.monitoring.store import AlertQuery, AlertRecord, MonitoringStore

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
# Alerts read from the store per round of a watch.
WATCH_PAGE = 500
LOCALES = ("en", "zh-CN")


def utc_now() -> datetime:
    return datetime.now(UTC)


class MonitoringServicer(monitoring_service_pb2_grpc.MonitoringServiceServicer):
    def __init__(
        self,
        rules: RulesHolder,
        scorer: BehaviourScorer,
        *,
        currency_code: str = "CNY",
        max_streams: int = 8,
        poll_seconds: float = 0.5,
        heartbeat_seconds: float = 15.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store: MonitoringStore | None = None
        self.rules = rules
        self.scorer = scorer
        self.currency_code = currency_code
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.clock = clock
        self.feed = NumberFeed()
        self._streams = StreamSlots(max_streams)
        # One thread per open Ingest stream at most, each reading and checking its next batch.
        self._readers = ThreadPoolExecutor(max_streams, thread_name_prefix="ingest-reader")
        # Applies what arrives; its other hooks (signals, rescoring) are the workers'.
        self.ingestor = Ingestor(lambda: self.store, rules, clock)
        self.ingestor.on_alerts = self.feed.publish

    @property
    def store(self) -> MonitoringStore:
        if self._store is None:  # the server answers while the database is being migrated
            raise Unavailable("the service is starting; retry shortly", reason="STARTING")
        return self._store

    def attach_store(self, store: MonitoringStore) -> None:
        self._store = store
        with store.read() as uow:
            self.feed.publish(uow.last_alert_number())

    def close(self) -> None:
        self.feed.close()
        self._readers.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            self._store.close()

    # -- ingestion --------------------------------------------------------------------------

    def PublishEvents(self, request: pb.PublishEventsRequest, context) -> pb.PublishEventsResponse:
        return pb.PublishEventsResponse(ack=self._apply(request.batch))

    def Ingest(self, request_iterator, context) -> Iterator[pb.IngestResponse]:
        # One batch at a time, and one read ahead: the next is read from the stream and checked
        # while this one is applied and committed (time otherwise spent waiting on the
        # database), never further ahead, so HTTP/2 flow control still holds a fast producer
        # back. A batch refused is refused after the batches before it are acknowledged.
        with self._stream():
            for batch_id, events in self._checked_ahead(request_iterator):
                if self.feed.closed:
                    raise Unavailable(
                        "the server is stopping; send the unacknowledged batches again",
                        reason="SHUTTING_DOWN",
                    )
                ack = converters.ack_message(batch_id, self.ingestor.apply(events))
                yield pb.IngestResponse(ack=ack)

    def _checked_ahead(
        self, requests: Iterable[pb.IngestRequest]
    ) -> Iterator[tuple[str, list[Event]]]:
        """Each batch of `requests` checked (see `_check`); the next is read and checked on a
        reader thread while the caller works on the one given. A batch refused, or a stream
        broken, raises here when the caller asks for that batch, not before."""
        stream = iter(requests)

        def read_next() -> tuple[str, list[Event]] | None:
            request = next(stream, None)
            return None if request is None else self._check(request.batch)

        ahead = self._readers.submit(read_next)
        while (checked := ahead.result()) is not None:
            ahead = self._readers.submit(read_next)
            yield checked

    def _apply(self, batch: pb.EventBatch) -> pb.BatchAck:
        batch_id, events = self._check(batch)
        return converters.ack_message(batch_id, self.ingestor.apply(events))

    def _check(self, batch: pb.EventBatch) -> tuple[str, list[Event]]:
        """The batch's id and events, or InvalidArgument with every problem found."""
        violations = Violations()
        if len(batch.batch_id) > converters.MAX_ID_LENGTH:
            violations.add("batch.batch_id", f"at most {converters.MAX_ID_LENGTH} characters")
        events = converters.events_of(batch, self.currency_code, violations)
        violations.raise_if_any()
        return batch.batch_id, events

    # -- reading ----------------------------------------------------------------------------

    def WatchAlerts(self, request: pb.WatchAlertsRequest, context):
        violations = Violations()
        query = converters.alert_query(request.filter, violations)
        after = parse_cursor(request.after_cursor, "after_cursor", violations)
        violations.raise_if_any()
        with self._stream():
            if after is None:
                with self.store.read() as uow:
                    after = uow.last_alert_number()
            yield from self._watch(query, after, context)

    def _watch(self, query: AlertQuery, after: int, context) -> Iterator[pb.WatchAlertsResponse]:
        def read(after: int, limit: int) -> Page[AlertRecord]:
            with self.store.read() as uow:
                # The head first: every alert up to it is committed (see store), so after
                # reading up to it nothing below it can still appear.
                head = uow.last_alert_number()
                return Page(head, uow.alerts_after(after, query, limit, up_to=head))

        for item in follow(
            read,
            lambda alert: alert.seq,
            after,
            self.feed,
            context.is_active,
            page_size=WATCH_PAGE,
            poll_seconds=self.poll_seconds,
            heartbeat_seconds=self.heartbeat_seconds,
        ):
            if isinstance(item, Heartbeat):
                yield pb.WatchAlertsResponse(heartbeat_cursor=str(item.cursor))
            else:
                yield pb.WatchAlertsResponse(alert=converters.alert_message(item))

    def ListAlerts(self, request: pb.ListAlertsRequest, context) -> pb.ListAlertsResponse:
        violations = Violations()
        query = converters.alert_query(request.filter, violations)
        before = parse_cursor(request.page_token, "page_token", violations)
        if request.page_size < 0:
            violations.add("page_size", "must not be negative")
        violations.raise_if_any()
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        with self.store.read() as uow:
            found = uow.alerts_before(before, query, size + 1)
        page = found[:size]
        return pb.ListAlertsResponse(
            alerts=[converters.alert_message(a) for a in page],
            next_page_token=str(page[-1].seq) if len(found) > size else "",
        )

    def GetAccountRisk(self, request: pb.GetAccountRiskRequest, context):
        violations = Violations()
        converters.require_id(request.account_id, "account_id", violations)
        locale = request.locale or "en"
        if locale not in LOCALES:
            violations.add("locale", f"one of {', '.join(LOCALES)}")
        violations.raise_if_any()
        with self.store.read() as uow:
            state = uow.account_state(request.account_id)
            if state is None:
                raise NotFound(
                    f"monitoring has no account {request.account_id}",
                    reason="ACCOUNT_NOT_FOUND",
                    metadata={"account_id": request.account_id},
                )
            open_signals = uow.alerts_by_signal_id(
                state.account_id, (e["signal_id"] for e in state.episodes.values())
            )
        risk = pb.AccountRisk(
            account_id=state.account_id,
            profile=features(state),
            open_signals=[converters.alert_message(a) for a in open_signals],
            last_sequence=state.last_sequence,
            last_event_time=converters.timestamp(state.last_event_at),
            closed=state.closed,
        )
        if state.score:
            score = state.score
            risk.scored = True
            risk.probability_of_default = score["probability_of_default"]
            risk.score = score["score"]
            risk.risk_band = converters.band_value(score["risk_band"])
            risk.model_version = score["model_version"]
            risk.score_time.CopyFrom(converters.timestamp(score["at"]))
            risk.reasons.extend(self._reasons(score["reason_codes"], locale))
        return pb.GetAccountRiskResponse(risk=risk)

    def _reasons(self, codes: list[str], locale: str) -> list[risk_pb2.Reason]:
        try:
            texts = self.scorer.schema().reasons
        except Exception:  # noqa: BLE001 - scoring down: the codes still say it
            texts = {}
        reasons = []
        for code in codes:
            feature, text = texts.get(code, ("", {}))
            reasons.append(risk_pb2.Reason(code=code, feature=feature, text=text.get(locale, "")))
        return reasons

    def _stream(self):
        return self._streams.held()
