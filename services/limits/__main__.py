"""Runs the limits service: `python -m services.limits` or `creditline serve limits`."""

from datetime import timedelta

import structlog

from creditline.limits.v1 import limits_service_pb2, limits_service_pb2_grpc
from services.common.channels import ClientSecurity
from services.common.logging import configure_logging
from services.common.periodic import Periodic
from services.common.server import GrpcServer, ServiceBinding, catch_shutdown_signals
from services.common.settings import load_settings
from services.common.tracing import configure_tracing
from services.limits import metrics
from services.limits.application import ReviewSharding
from services.limits.notices import TemplatesError, TemplatesHolder
from services.limits.policy import PolicyError, PolicyHolder
from services.limits.scoring_client import ScoringClient
from services.limits.servicer import LimitsServicer
from services.limits.settings import LimitsSettings
from services.limits.store import LimitsStore

SERVICE_NAME = limits_service_pb2.DESCRIPTOR.services_by_name["LimitsService"].full_name


def build_server(settings: LimitsSettings, **servicer_options) -> GrpcServer:
    """A started limits server: database migrated, policy loaded, health SERVING."""
    try:
        policies = PolicyHolder(settings.policy_file)
        templates = TemplatesHolder(settings.notice_templates_file)
    except (PolicyError, TemplatesError) as error:
        raise SystemExit(str(error)) from None
    scoring = ScoringClient(
        settings.scoring_target,
        settings.scoring_timeout_seconds,
        ClientSecurity.from_settings(settings),  # the same certificate, and limits' own token
    )
    servicer = LimitsServicer(
        None,
        policies,
        scoring,
        templates=templates,
        max_streams=settings.max_streams,
        draw_group=settings.draw_group,
        review=ReviewSharding(
            default_shards=settings.review_shards,
            lease=timedelta(seconds=settings.review_lease_seconds),
            poll_seconds=settings.review_poll_seconds,
            page_size=settings.review_page_size,
        ),
        **servicer_options,
    )

    def reload_documents() -> None:
        policies.reload_if_changed()
        templates.reload_if_changed()

    watcher = Periodic(settings.policy_reload_interval_seconds, reload_documents, "policy-watcher")
    # The book's totals by tier for /metrics: one aggregate query on a timer, not per call.
    book = Periodic(
        settings.book_metrics_interval_seconds,
        lambda: metrics.refresh_book(servicer.app.book_by_tier),
        "book-metrics",
        immediately=True,
    )
    # Early collections on a schedule; each replica runs it, and the account's lock and the
    # steps' keys make every step once.
    collections = Periodic(
        settings.collections_interval_seconds, servicer.app.collections_pass, "collections"
    )

    def on_stop() -> None:
        watcher.stop()
        book.stop()
        collections.stop()
        servicer.close()

    server = GrpcServer(
        settings,
        [
            ServiceBinding(
                limits_service_pb2_grpc.add_LimitsServiceServicer_to_server, servicer, SERVICE_NAME
            )
        ],
        domain="limits.creditline",
        # Notice and treatment watches end at once (clients resume from their cursor elsewhere).
        on_stopping=servicer.app.close_feeds,
        on_stop=on_stop,
    ).start()
    # Health answers NOT_SERVING while the schema is migrated.
    servicer.attach_store(LimitsStore.open(settings.database_url))
    if settings.policy_reload_interval_seconds > 0:
        watcher.start()
    if settings.book_metrics_interval_seconds > 0:
        book.start()
    if settings.collections_interval_seconds > 0:
        collections.start()
    server.mark_ready()
    return server


def main(**overrides: object) -> None:
    settings = load_settings(LimitsSettings, **overrides)
    configure_logging("limits", settings.log_level)
    configure_tracing("limits", settings.otlp_endpoint)
    shutdown = catch_shutdown_signals()
    server = build_server(settings)
    structlog.get_logger("creditline.limits").info(
        "limits.ready", port=server.port, policy=str(settings.policy_file)
    )
    server.serve_until(shutdown)


if __name__ == "__main__":
    main()
