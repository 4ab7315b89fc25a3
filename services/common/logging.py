"""JSON logging for every service: structlog, one object a line, on standard output.

Log lines carry ids, codes and timings. They never carry a feature value, an income, a name or
any other personal data: callers log identifiers and outcomes only.
"""

import logging
import sys

import orjson
import structlog


def configure_logging(service: str, level: str = "info") -> None:
    """Routes structlog and the standard library's logging through one JSON renderer."""
    numeric_level = logging.getLevelNamesMapping()[level.upper()]

    def add_service(_logger, _method, event: dict) -> dict:
        event.setdefault("service", service)
        return event

    shared = [
        add_service,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            # orjson: the access log writes a line per RPC, and this is its hot path.
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    # Libraries (grpc, onnxruntime glue) log through the standard library: same format.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.INFO))
