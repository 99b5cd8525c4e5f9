"""One logging set-up for the API, the workers and `selfsup up`: readable text or JSON lines.

Every line carries what the code that logged it was working for, from a context variable: the
request id and tenant during an API request, the job, corpus or dataset id during a worker task.
The context is a dict shared by the whole request, so a dependency that finds the tenant in a worker
thread (whose context changes would otherwise be lost) can add it with `bind_log_context`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

# The fields a log line may carry from its context, in the order text lines show them.
CONTEXT_FIELDS = ("request_id", "tenant", "key_id", "job_id", "corpus_id", "dataset_id", "task")

_context: ContextVar[dict[str, str] | None] = ContextVar("selfsup_log_context", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def log_context(**fields: str) -> Iterator[dict[str, str]]:
    """Log lines inside carry `fields` (and those of the enclosing context); yields the mutable context."""
    context = {**(_context.get() or {}), **fields}
    token = _context.set(context)
    try:
        yield context
    finally:
        _context.reset(token)


def enter_log_context(**fields: str) -> Token[dict[str, str] | None]:
    """Like `log_context`, for code that enters and leaves in two calls (Celery's task signals)."""
    return _context.set({**(_context.get() or {}), **fields})


def exit_log_context(token: Token[dict[str, str] | None]) -> None:
    """Leave the context that `enter_log_context` returned `token` for."""
    _context.reset(token)


def bind_log_context(**fields: str) -> None:
    """Add `fields` to the current context (seen by the rest of the request, also from another thread)."""
    context = _context.get()
    if context is not None:
        context.update(fields)


class ContextFilter(logging.Filter):
    """Copies the context's fields onto each record, where both formatters find them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """`time level logger: message [request_id=… tenant=…]`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if getattr(record, name, None)]
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the first line
        return f"{head} [{' '.join(fields)}]{newline}{rest}"


class _IsoTimeJsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def json_formatter() -> logging.Formatter:
    """One JSON object a line: time (ISO 8601, UTC), level, logger, message, the context's fields and any `extra`."""
    return _IsoTimeJsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        json_ensure_ascii=False,
    )


def configure_logging(log_format: Literal["text", "json"] = "text", *, level: int = logging.INFO) -> None:
    """Send every logger's records to stderr in `log_format`; replaces whatever was configured before."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # library warnings become log lines too (JSON where asked)
    logging.getLogger("alembic").setLevel(logging.WARNING)
