"""Runs the scoring service: `python -m services.scoring` or `creditline serve scoring`."""

import structlog

from creditline.scoring.v1 import scoring_service_pb2, scoring_service_pb2_grpc
from services.common.logging import configure_logging
from services.common.server import GrpcServer, ServiceBinding, catch_shutdown_signals
from services.common.settings import load_settings
from services.common.tracing import configure_tracing
from services.scoring.registry import ModelRegistry
from services.scoring.servicer import ScoringServicer
from services.scoring.settings import ScoringSettings

SERVICE_NAME = scoring_service_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name


def build_server(settings: ScoringSettings) -> tuple[GrpcServer, ModelRegistry]:
    """A started scoring server with its models loaded and health SERVING."""
    registry = ModelRegistry(
        settings.model_dir,
        challenger_versions=settings.challenger_versions,
        psi_min_count=settings.psi_min_count,
    )
    server = GrpcServer(
        settings,
        [
            ServiceBinding(
                scoring_service_pb2_grpc.add_ScoringServiceServicer_to_server,
                ScoringServicer(registry, max_batch_rows=settings.max_batch_rows),
                SERVICE_NAME,
            )
        ],
        domain="scoring.creditline",
        on_stop=registry.close,
    ).start()
    registry.refresh()
    if not registry.names():
        server.stop(0)
        raise SystemExit(f"no valid model found under {settings.model_dir}")
    if settings.reload_interval_seconds > 0:
        registry.watch(settings.reload_interval_seconds)
    server.mark_ready()
    return server, registry


def main(**overrides: object) -> None:
    settings = load_settings(ScoringSettings, **overrides)
    configure_logging("scoring", settings.log_level)
    configure_tracing("scoring", settings.otlp_endpoint)
    shutdown = catch_shutdown_signals()
    server, registry = build_server(settings)
    structlog.get_logger("creditline.scoring").info(
        "scoring.ready", port=server.port, models=registry.names()
    )
    server.serve_until(shutdown)


if __name__ == "__main__":
    main()
