"""Structured logging: JSON in the journal (or with --log-format json), readable on a TTY.

Every line of an operation is bound to its policy, volume and archive id by the action
that runs it (`structlog.contextvars.bound_contextvars`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_WORDS = ("password", "passphrase", "secret", "token", "access_key", "key_file")


def _redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a value under a secret-looking key reach a log line (SPEC §5.6)."""
    for key in event:
        if any(word in key.lower() for word in SECRET_WORDS):
            event[key] = "[redacted]"
    return event


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    """Set up structlog for the process; `log_format` is auto, json or console."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # sys.stderr looked up for each logger, not once: it may be replaced after setup
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
