"""Read a few top-level fields (model, stream, purpose) out of a request body
as it streams past, without holding the body.

Both sniffers work chunk by chunk with C-speed searches (`re`, `bytes.find`),
so a 500 MB upload or a 20 MB JSON body full of base64 costs one pass and a
few hundred bytes of state.
"""
from __future__ import annotations

import json
import re

_MAX_VALUE = 512  # longest value worth keeping; a model name is ~40 bytes
_STRUCTURAL = re.compile(rb'["{}\[\]]')
_STRING_END = re.compile(rb'["\\]')


class JsonFieldSniffer:
    """Collects scalar values of chosen top-level keys of a JSON object.

    A small state machine: depth, whether we are inside a string, and at depth
    1 the last key seen and the bytes between tokens (`: true,`), which is
    where top-level scalars live.
    """

    def __init__(self, wanted: frozenset[str]) -> None:
        self.wanted = wanted
        self.values: dict[str, object] = {}
        self.is_object: bool | None = None
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._buf: bytearray | None = None  # the string being kept, if any
        self._buf_is_key = False
        self._key: str | None = None  # top-level key awaiting its value
        self._between = bytearray()

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        if self.is_object is None:
            stripped = data.lstrip()
            if not stripped:
                return
            self.is_object = stripped[:1] == b"{"
        if not self.is_object:
            return
        while i < n:
            if self._in_string:
                i = self._feed_string(data, i, n)
                continue
            m = _STRUCTURAL.search(data, i)
            end = m.start() if m else n
            if self._depth == 1 and len(self._between) < _MAX_VALUE:
                self._between += data[i:end]
            if m is None:
                return
            self._structural(data[end:end + 1])
            i = end + 1

    def _feed_string(self, data: bytes, i: int, n: int) -> int:
        if self._escape:
            self._keep(data[i:i + 1])
            self._escape = False
            return i + 1
        m = _STRING_END.search(data, i)
        if m is None:
            self._keep(data[i:])
            return n
        j = m.start()
        self._keep(data[i:j])
        if data[j:j + 1] == b"\\":
            self._keep(b"\\")
            self._escape = True
            return j + 1
        self._in_string = False
        self._end_string()
        return j + 1

    def _keep(self, part: bytes) -> None:
        if self._buf is not None and len(self._buf) < _MAX_VALUE:
            self._buf += part

    def _structural(self, ch: bytes) -> None:
        if ch == b'"':
            self._in_string = True
            self._buf = None
            if self._depth == 1:
                self._scalar_from_between()
                if self._key is None:
                    self._buf, self._buf_is_key = bytearray(), True
                elif self._key in self.wanted:
                    self._buf, self._buf_is_key = bytearray(b'"'), False
            return
        if self._depth == 1:
            self._scalar_from_between()
            if ch in (b"{", b"["):
                self._key = None  # a container value: not a scalar we keep
        self._depth += 1 if ch in (b"{", b"[") else -1

    def _end_string(self) -> None:
        if self._depth != 1:
            return
        if self._buf_is_key:
            self._key = self._decode(b'"' + bytes(self._buf or b"") + b'"')
            self._buf_is_key = False
        elif self._key is not None:
            if self._buf is not None:
                self.values[self._key] = self._decode(bytes(self._buf) + b'"')
            self._key = None
        self._buf = None
        self._between.clear()

    def _scalar_from_between(self) -> None:
        """Between tokens at depth 1: `: 1.5 ,` holds a scalar value for the pending key."""
        between = bytes(self._between)
        self._between.clear()
        if self._key is None or b":" not in between:
            return
        literal = between.split(b":", 1)[1].split(b",", 1)[0].strip()
        if literal:
            if self._key in self.wanted:
                self.values[self._key] = self._decode(literal)
            self._key = None

    @staticmethod
    def _decode(raw: bytes) -> object:
        try:
            return json.loads(raw)
        except ValueError:
            return None


class MultipartFieldSniffer:
    """Collects small form fields (`model`, `purpose`) from a multipart body.

    Keeps only a short tail of the previous chunk, so that a field header split
    across two chunks is still found.
    """

    _TAIL = 2048

    def __init__(self, boundary: str, wanted: frozenset[str]) -> None:
        names = b"|".join(re.escape(w.encode()) for w in sorted(wanted))
        self._pattern = re.compile(
            rb'content-disposition:[^\r\n]*?\bname="(' + names + rb')"[^\r\n]*\r\n'
            rb"(?:[^\r\n]+\r\n)*\r\n([^\r\n]{0,512})\r\n--" + re.escape(boundary.encode()),
            re.IGNORECASE,
        )
        self._tail = b""
        self.values: dict[str, object] = {}

    def feed(self, data: bytes) -> None:
        window = self._tail + data
        for m in self._pattern.finditer(window):
            self.values.setdefault(m.group(1).decode(), m.group(2).decode("utf-8", "replace"))
        self._tail = window[-self._TAIL:]


def boundary_of(content_type: str) -> str | None:
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    return m.group(1) if m else None
