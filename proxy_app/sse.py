"""Usage out of server-sent events, as the chunks pass by.

Usage arrives once per stream, in one event (`response.completed` and its
siblings for Responses, the final chunk for chat and completions). The
scanner therefore looks for the bytes `"usage"` with `bytes.find` and parses
only the lines that carry them; every other event costs a search, not a parse.
"""
from __future__ import annotations

import json
import re
from typing import Any

_LINE_LIMIT = 8 * 1024 * 1024  # one event line; a completed Response echoes its output
_USAGE_LINE = re.compile(rb'^data:[^\n]*"usage"[^\n]*$', re.MULTILINE)
# What upstream adds to every chat chunk once include_usage is on.
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null')


def usage_in_event(data: bytes) -> tuple[dict[str, Any] | None, str | None, dict[str, Any]]:
    """(usage, model, event) from one `data:` payload, if it carries usage."""
    try:
        obj = json.loads(data)
    except ValueError:
        return None, None, {}
    if not isinstance(obj, dict):
        return None, None, {}
    inner = obj.get("response") if isinstance(obj.get("response"), dict) else obj
    usage = inner.get("usage")
    model = inner.get("model")
    return (usage if isinstance(usage, dict) else None), (model if isinstance(model, str) else None), obj


class SseUsageScanner:
    """Finds the usage event in a stream without keeping the stream."""

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        # The object the usage came in (a Response): its tier, output items and tools are billed too.
        self.response: dict[str, Any] | None = None
        self._line = bytearray()  # the unfinished last line of the previous chunk

    def feed(self, chunk: bytes) -> None:
        first = chunk.find(b"\n")
        if first < 0:
            if len(self._line) < _LINE_LIMIT:
                self._line += chunk
            return
        if self._line:
            self._line += chunk[:first]
            self._consider(bytes(self._line))
            self._line.clear()
        elif chunk.startswith(b"data:"):
            self._consider(chunk[:first])
        last = chunk.rfind(b"\n")
        if last > first and chunk.find(b'"usage"', first, last) >= 0:
            for m in _USAGE_LINE.finditer(chunk, first + 1, last):
                self._consider(m.group(0))
        if last + 1 < len(chunk):
            self._line += chunk[last + 1:]

    def _consider(self, line: bytes) -> None:
        # Chunks with `"usage": null` (include_usage on) are the common case: skip the parse.
        if line.startswith(b"data:") and b'"usage"' in _USAGE_NULL.sub(b"", line):
            usage, model, obj = usage_in_event(line[5:].strip())
            if usage is not None:
                self.usage, self.model = usage, model or self.model
                self.response = obj.get("response") if isinstance(obj.get("response"), dict) else obj


class ChatUsageStripper:
    """For a chat stream where the relay, not the client, asked for usage:
    takes the usage-only chunk out and the `"usage": null` that upstream adds
    to every other chunk, so the client gets the bytes it asked for.

    Works on whole events; a partial event waits for its end, as any SSE
    client would have to.
    """

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.response: dict[str, Any] | None = None  # the usage chunk (its service_tier)
        self._pending = bytearray()

    def transform(self, chunk: bytes) -> bytes:
        self._pending += chunk
        end = self._pending.rfind(b"\n\n")
        if end < 0:
            return b""
        complete = bytes(self._pending[: end + 2])
        del self._pending[: end + 2]
        out = []
        for event in complete.split(b"\n\n")[:-1]:
            if event.startswith(b"data:") and b'"usage"' in event:
                event = _USAGE_NULL.sub(b"", event)
                if b'"usage"' in event:  # a real usage object, not a null
                    usage, model, obj = usage_in_event(event[5:].strip())
                    if usage is not None:
                        self.usage, self.model, self.response = usage, model or self.model, obj
                        if obj.get("choices") == []:
                            continue  # the usage-only chunk the client did not ask for
            out.append(event + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        rest = bytes(self._pending)
        self._pending.clear()
        return rest
