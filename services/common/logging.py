"""Logging for every service: structlog, one event a line, on standard output. JSON, one object a
line, for machines; readable text when standard output is a terminal, except in Kubernetes,
whose pods always log JSON.

Log lines carry ids, codes and timings. They never carry a feature value, an income, a name or
any other personal data: callers log identifiers and outcomes only.
"""

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor


def logs_for_a_person() -> bool:
    """Standard output is a terminal, outside Kubernetes (which sets KUBERNETES_SERVICE_HOST in
    every pod: a pod with a TTY still feeds a log collector)."""
    return sys.stdout.isatty() and "KUBERNETES_SERVICE_HOST" not in os.environ


def configure_logging(service: str, level: str = "info") -> None:
    """Routes structlog and the standard library's logging through one renderer: JSON, or
    structlog's ConsoleRenderer for a person at a terminal."""
    numeric_level = logging.getLevelNamesMapping()[level.upper()]

    def add_service(_logger, _method, event: EventDict) -> EventDict:
        event.setdefault("service", service)
        return event

    shared: list[Processor] = [
        add_service,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if logs_for_a_person():
        # ConsoleRenderer formats exceptions itself (format_exc_info would flatten them first).
        console = structlog.dev.ConsoleRenderer()
        processors: list[Processor] = [*shared, console]
        logger_factory: Callable[..., Any] = structlog.PrintLoggerFactory(sys.stdout)
        foreign_renderer: Processor = console
    else:
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            # orjson: the access log writes a line per RPC, and this is its hot path.
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        logger_factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
        foreign_renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    # Libraries (grpc, onnxruntime glue) log through the standard library: same format.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                foreign_renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.INFO))
