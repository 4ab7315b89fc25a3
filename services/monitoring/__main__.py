"""Runs the monitoring service: `python -m services.monitoring` or `creditline serve monitoring`."""

from collections.abc import Callable
from datetime import datetime

import structlog

from creditline.monitoring.v1 import monitoring_service_pb2, monitoring_service_pb2_grpc
from services.common.channels import ClientSecurity
from services.common.logging import configure_logging
from services.common.periodic import Periodic
from services.common.server import GrpcServer, ServiceBinding, catch_shutdown_signals
from services.common.settings import load_settings
from services.common.tracing import configure_tracing
from services.monitoring.delivery import SignalDelivery
from services.monitoring.jetstream import JetStreamConsumer
from services.monitoring.rescoring import BehaviourScorer, Rescorer
from services.monitoring.retention import EventRetention
from services.monitoring.rules import RulesError, RulesHolder
from services.monitoring.servicer import MonitoringServicer, utc_now
from services.monitoring.settings import MonitoringSettings
from services.monitoring.store import MonitoringStore

SERVICE_NAME = monitoring_service_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name
# The health entry of the JetStream consumer: SERVING while it consumes. The service's own
# health does not follow it: reads and gRPC ingestion still work while NATS is away.
JETSTREAM_HEALTH = "creditline.monitoring.jetstream"


def build_server(
    settings: MonitoringSettings, clock: Callable[[], datetime] = utc_now, **servicer_options
) -> GrpcServer:
    """A started monitoring server: database migrated, rules loaded, workers running, SERVING."""
    try:
        rules = RulesHolder(settings.rules_file)
    except RulesError as error:
        raise SystemExit(str(error)) from None
    # Monitoring's own certificate and token for its calls to limits and scoring.
    security = ClientSecurity.from_settings(settings)
    scorer = BehaviourScorer(
        settings.scoring_target, settings.call_timeout_seconds, security=security
    )
    servicer = MonitoringServicer(
        rules,
        scorer,
        currency_code=settings.currency_code,
        max_streams=settings.max_streams,
        clock=clock,
        **servicer_options,
    )
    watcher = Periodic(settings.rules_reload_interval_seconds, rules.reload_if_changed, "rules")
    workers: list = []

    def on_stop() -> None:
        watcher.stop()
        for worker in workers:
            worker.stop()
        scorer.close()
        servicer.close()

    server = GrpcServer(
        settings,
        [
            ServiceBinding(
                monitoring_service_pb2_grpc.add_MonitoringServiceServicer_to_server,
                servicer,
                SERVICE_NAME,
            )
        ],
        domain="monitoring.creditline",
        # Watches end at once (clients resume from their cursor elsewhere); ingest streams
        # finish the batch in hand.
        on_stopping=servicer.feed.close,
        on_stop=on_stop,
    ).start()
    # Health answers NOT_SERVING while the schema is migrated.
    store = MonitoringStore.open(settings.database_url, settings.cached_states)
    servicer.attach_store(store)
    delivery = SignalDelivery(
        store,
        settings.limits_target,
        utc_now,
        timeout_seconds=settings.call_timeout_seconds,
        batch_size=settings.delivery_batch_size,
        security=security,
    )
    rescorer = Rescorer(
        store, scorer, rules, utc_now, on_alerts=_after_rescoring(servicer, delivery)
    )
    servicer.ingestor.on_signals = delivery.wake
    servicer.ingestor.on_rescore_due = rescorer.wake
    workers.extend([delivery.start(), rescorer.start()])
    if settings.event_retention_days > 0:
        workers.append(EventRetention(store, settings.event_retention_days, utc_now).start())
    if settings.rules_reload_interval_seconds > 0:
        watcher.start()
    if settings.jetstream_url:
        server.set_part_health(JETSTREAM_HEALTH, False)
        consumer = JetStreamConsumer(
            settings,
            servicer.ingestor,
            on_health=lambda consuming: server.set_part_health(JETSTREAM_HEALTH, consuming),
        )
        # First among the workers to stop: no batch is applied after the store closes.
        workers.insert(0, consumer.start())
    server.mark_ready()
    return server


def _after_rescoring(
    servicer: MonitoringServicer, delivery: SignalDelivery
) -> Callable[[int], None]:
    """What follows alerts raised by rescoring: watchers hear of them, delivery sends them."""

    def on_alerts(last_alert: int) -> None:
        servicer.feed.publish(last_alert)
        delivery.wake()

    return on_alerts


def main(**overrides: object) -> None:
    settings = load_settings(MonitoringSettings, **overrides)
    configure_logging("monitoring", settings.log_level)
    configure_tracing("monitoring", settings.otlp_endpoint)
    shutdown = catch_shutdown_signals()
    server = build_server(settings)
    structlog.get_logger("creditline.monitoring").info(
        "monitoring.ready", port=server.port, rules=str(settings.rules_file)
    )
    server.serve_until(shutdown)


if __name__ == "__main__":
    main()
