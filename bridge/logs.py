"""Log lines on stderr: one JSON object per line (the default) or plain text, with the id of
the webhook request they belong to, which the audit records of that request carry too."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from flask import g, has_request_context

from bridge.audit import iso

FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s%(request)s"


def _request_id() -> str:
    return str(g.get("request_id", "")) if has_request_context() else ""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": iso(record.created), "level": record.levelname.lower(),
            "logger": record.name, "pid": record.process, "message": record.getMessage(),
        }
        request_id = _request_id()
        if request_id:
            doc["request_id"] = request_id
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        request_id = _request_id()
        record.request = f" (request {request_id})" if request_id else ""
        return super().format(record)


def formatter(kind: str) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else TextFormatter()


def setup(kind: str) -> None:
    """Log INFO and above to stderr in the given format, for this process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(kind))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def gunicorn_config(kind: str) -> dict[str, Any]:
    """gunicorn's logconfig_dict: its own lines in the same format as the bridge's."""
    name = "JsonFormatter" if kind == "json" else "TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"bridge": {"()": f"bridge.logs.{name}"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "bridge",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
        },
    }
