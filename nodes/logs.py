"""Structured JSON logs: one object per line, with the node id on every record.

Fields passed as ``extra={"fields": {...}}`` (a message id, a peer, a status)
are merged into the object, so logs can be filtered by message id across nodes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO


class JsonFormatter(logging.Formatter):
    """Formats records as single-line JSON objects."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "node": self.node_id,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(node_id: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Send the `mesh` loggers to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(node_id))
    root = logging.getLogger("mesh")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


__all__ = ["JsonFormatter", "configure"]
