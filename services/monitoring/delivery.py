"""Delivery of signals to limits: the alerts table is the outbox.

A signal is stored with the batch that raised it, in the same transaction, as `pending`. This
worker sends pending signals to limits' ReportSignals in batches, oldest first, and marks them
delivered once limits answered. Limits applies a signal id once, so a batch sent again after a
crash between its delivery and the mark changes nothing: none lost, none applied twice.

While limits is down or slow, the worker retries with exponential backoff. A batch limits
refuses for good (an account it does not know) is retried signal by signal, and only the
refused ones are set aside as `rejected`, with limits' answer, for an operator to look at.
Among replicas, one holds the delivery lease at a time, so signals reach limits in order.
"""

import uuid
from collections.abc import Callable
from datetime import datetime

import grpc
import structlog

from creditline.limits.v1 import limits_service_pb2 as limits_pb
from creditline.limits.v1 import limits_service_pb2_grpc
from creditline.type.v1 import signal_pb2
from services.common.channels import ChannelOptions, create_channel
from services.common.workers import BackgroundWorker
from services.monitoring import metrics
from services.monitoring.converters import band_value, timestamp
from services.monitoring.rules import reported_type
from services.monitoring.store import AlertRecord, MonitoringStore

log = structlog.get_logger("creditline.monitoring.delivery")

SERVICE = limits_pb.DESCRIPTOR.services_by_name["LimitsService"].full_name
LEASE = "signal-delivery"
# Limits' answers that will not change on a retry of the same signal.
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


def signal_message(alert: AlertRecord) -> limits_pb.Signal:
    """The alert as limits hears it. An alert stored under older rules whose kind has no type
    any more goes as unspecified: limits refuses it, and it is set aside as rejected."""
    signal_type = reported_type(alert.type)
    days_past_due = 0
    if signal_type == signal_pb2.SIGNAL_TYPE_DAYS_PAST_DUE:
        days_past_due = int(alert.evidence["days_past_due"])
    # Every signal carries the account's behaviour: limits keeps the newest as its risk state.
    risk = limits_pb.RiskReport(
        profile=alert.profile,
        profile_time=timestamp(alert.detected_at),
        days_past_due=int(alert.profile.get("days_past_due", 0)),
    )
    if signal_type == signal_pb2.SIGNAL_TYPE_BEHAVIOUR_RESCORED:  # the one alert scored now
        risk.risk_band = band_value(alert.risk_band)
        risk.score_time.CopyFrom(timestamp(alert.created_at))
    return limits_pb.Signal(
        signal_id=alert.signal_id,
        account_id=alert.account_id,
        type=signal_type,
        severity=limits_pb.SignalSeverity.ValueType(alert.severity),  # the same numbers
        days_past_due=days_past_due,
        loan_id=alert.evidence.get("loan_id", ""),
        evidence=alert.evidence,
        detect_time=timestamp(alert.detected_at),
        risk=risk,
    )


class SignalDelivery(BackgroundWorker):
    def __init__(
        self,
        store: MonitoringStore,
        limits_target: str,
        clock: Callable[[], datetime],
        *,
        timeout_seconds: float = 5.0,
        batch_size: int = 100,
        lease_seconds: float = 15.0,
        **channel_options,
    ) -> None:
        super().__init__("delivery")
        self.store = store
        self.clock = clock
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.owner = uuid.uuid4().hex
        self.channel = create_channel(
            limits_target,
            service=SERVICE,
            retryable_methods=("ReportSignals",),  # idempotent by signal id
            options=ChannelOptions(default_timeout_seconds=timeout_seconds),
            **channel_options,
        )
        self.stub = limits_service_pb2_grpc.LimitsServiceStub(self.channel)
        self._lease_until = 0.0

    def stop(self) -> None:
        super().stop()
        self.channel.close()
        if not self._lease_until:
            return
        try:  # let another replica take over now rather than when the lease runs out
            with self.store.unit_of_work() as uow:
                uow.release_lease(LEASE, self.owner)
        except Exception:  # noqa: BLE001 - it runs out by itself; stopping goes on
            log.warning("delivery.lease_not_released", exc_info=True)

    def run_once(self) -> bool:
        return self.deliver_once() > 0

    def deliver_once(self) -> int:
        """Sends one batch of pending signals; returns how many were settled (0: none)."""
        if not self._hold_lease():
            # The replica holding the lease reports the outbox's age; a stale one from when
            # this replica held it would keep the backlog alert firing.
            metrics.OUTBOX_OLDEST_SECONDS.set(0.0)
            return 0
        # Only numbered signals go, in their order: number any a crash left unnumbered.
        self.store.number_alerts()
        with self.store.read() as uow:
            pending = uow.pending_signals(self.batch_size)
        now = self.clock()
        oldest = (now - pending[0].created_at).total_seconds() if pending else 0.0
        metrics.OUTBOX_OLDEST_SECONDS.set(max(oldest, 0.0))
        if not pending:
            return 0
        try:
            self.stub.ReportSignals(
                limits_pb.ReportSignalsRequest(signals=[signal_message(a) for a in pending])
            )
        except grpc.RpcError as error:
            if error.code() not in REFUSALS:
                self._count_attempt(pending, error)
                raise
            return self._one_by_one(pending)
        with self.store.unit_of_work() as uow:
            uow.mark_delivered([a.seq for a in pending], self.clock())
        metrics.SIGNALS_DELIVERED.labels("delivered").inc(len(pending))
        log.info("delivery.sent", signals=len(pending))
        return len(pending)

    def _one_by_one(self, pending: list[AlertRecord]) -> int:
        """Sends a refused batch signal by signal, setting aside only what limits refuses."""
        for alert in pending:
            try:
                self.stub.ReportSignals(
                    limits_pb.ReportSignalsRequest(signals=[signal_message(alert)])
                )
            except grpc.RpcError as error:
                if error.code() not in REFUSALS:
                    self._count_attempt([alert], error)
                    raise
                with self.store.unit_of_work() as uow:
                    uow.mark_rejected(alert.seq, _describe(error), self.clock())
                metrics.SIGNALS_DELIVERED.labels("rejected").inc()
                log.warning(
                    "delivery.rejected",
                    signal_id=alert.signal_id,
                    code=error.code().name,
                    type=alert.type,
                )
                continue
            with self.store.unit_of_work() as uow:
                uow.mark_delivered([alert.seq], self.clock())
            metrics.SIGNALS_DELIVERED.labels("delivered").inc()
        return len(pending)

    def _count_attempt(self, pending: list[AlertRecord], error: grpc.RpcError) -> None:
        metrics.DELIVERY_FAILURES.labels(error.code().name).inc()
        with self.store.unit_of_work() as uow:
            uow.count_attempt([a.seq for a in pending], _describe(error))

    def _hold_lease(self) -> bool:
        now = self.clock()
        if now.timestamp() < self._lease_until - self.lease_seconds / 2:
            return True
        with self.store.unit_of_work() as uow:
            held = uow.take_lease(LEASE, self.owner, now, self.lease_seconds)
        self._lease_until = now.timestamp() + self.lease_seconds if held else 0.0
        return held


def _describe(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"
