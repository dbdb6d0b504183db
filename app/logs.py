"""Logging set-up: plain lines or one JSON object per line (with a request's structured fields)."""

from __future__ import annotations

import json
import logging

HANDLER_NAME = "charrnn"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any structured extras."""

    FIELDS = ("request_id", "method", "path", "route", "status", "ms", "client")

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: getattr(record, k) for k in self.FIELDS if hasattr(record, k)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, as_json: bool = False) -> None:
    """Installs the service's handler on the root logger, unless something else (a test runner, an
    embedding application) already configured logging; then only the levels are set."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if h.get_name() == HANDLER_NAME), None)
    if handler is None and not root.handlers:
        handler = logging.StreamHandler()
        handler.set_name(HANDLER_NAME)
        root.addHandler(handler)
    if handler is not None:
        handler.setFormatter(
            JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root.setLevel(level.upper())
    logging.getLogger("app").setLevel(level.upper())
