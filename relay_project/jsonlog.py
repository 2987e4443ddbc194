"""JSON log lines (no Django imports: logging is configured before apps load)."""
from __future__ import annotations

import json
import logging

ACCESS_LOGGER = "relay.access"


class JsonFormatter(logging.Formatter):
    """Access events are already JSON; anything else is wrapped into one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == ACCESS_LOGGER:
            return message
        line = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "message": message}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)
