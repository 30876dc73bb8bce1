"""structlog set-up: events named ``segment_membership.<area>.<what>`` with key=value fields.

Events go through the standard library logger ``membership_pipeline.<area>`` so that whoever runs
the code decides where they land (a terminal, a file, Dagster's managed python loggers), rendered
as one JSON object per line.
"""

from __future__ import annotations

import logging
import sys

import structlog


def _configure() -> None:
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # so that structlog.testing.capture_logs sees events
    )


def get_logger(area: str) -> structlog.stdlib.BoundLogger:
    if not structlog.is_configured():
        _configure()
    return structlog.get_logger(f"membership_pipeline.{area}")


def log_to_stderr(level: int = logging.INFO) -> None:
    """For command-line entry points: show the project's events on stderr."""
    logger = logging.getLogger("membership_pipeline")
    handler = next((h for h in logger.handlers if getattr(h, "_membership_pipeline", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._membership_pipeline = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    # On the handler too: Dagster raises the logger's level to its python_log_level during runs.
    handler.setLevel(level)
    logger.setLevel(level)
