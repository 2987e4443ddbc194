"""A small, fast HTTP/1.1 load client on asyncio streams, for 127.0.0.1 only.

The load generator shares two cores with the relay and the fake upstream, so
it must cost as little CPU per request as possible: raw keep-alive sockets,
requests pre-encoded once, responses parsed just enough (status, framing,
SSE event boundaries). No TLS, no redirects, no cookies.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

READ = 256 * 1024


@dataclass
class Result:
    status: int = 0
    body: bytes = b""  # kept only when asked (small responses)
    bytes_in: int = 0
    events: int = 0  # complete SSE events (blank-line terminated)
    event_times: list[float] = field(default_factory=list)  # monotonic time each event completed
    started: float = 0.0
    ended: float = 0.0
    error: str = ""

    @property
    def elapsed(self) -> float:
        return self.ended - self.started


def encode_request(method: str, url: str, headers: dict[str, str] | None = None,
                   body: bytes | None = None, *, length: int | None = None) -> bytes:
    """The request head (and body, when given) as bytes, ready to send many times."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    size = len(body) if body is not None else length
    if size is not None:
        lines.append(f"Content-Length: {size}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + (body or b"")


def json_request(method: str, url: str, obj: object, headers: dict[str, str] | None = None) -> bytes:
    body = json.dumps(obj).encode()
    return encode_request(method, url, {**(headers or {}), "Content-Type": "application/json"}, body)


class Connection:
    """One keep-alive connection; reopened transparently when the server closes it."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    def for_url(cls, url: str, timeout: float = 60.0) -> "Connection":
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, timeout)

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=READ * 4)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def request(self, raw: bytes, *, body: AsyncIterator[bytes] | Iterable[bytes] | None = None,
                      keep_body: bool = True, sse: bool = False, stop_after_events: int | None = None
                      ) -> Result:
        """Send a pre-encoded request (plus a streamed body) and read the whole response."""
        try:
            return await asyncio.wait_for(
                self._request(raw, body, keep_body, sse, stop_after_events), self.timeout)
        except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            await self.close()
            return Result(error=f"{type(exc).__name__}: {exc}", ended=time.monotonic())

    async def _request(self, raw, body, keep_body, sse, stop_after_events) -> Result:
        if self.writer is None:
            await self._open()
        assert self.reader is not None and self.writer is not None
        result = Result(started=time.monotonic())
        self.writer.write(raw)
        if body is not None:
            if hasattr(body, "__aiter__"):
                async for chunk in body:  # type: ignore[union-attr]
                    self.writer.write(chunk)
                    await self.writer.drain()
            else:
                for chunk in body:  # type: ignore[union-attr]
                    self.writer.write(chunk)
                    await self.writer.drain()
        await self.writer.drain()
        reader = self.reader
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        result.status = int(status_line.split(b" ", 2)[1])
        length: int | None = None
        chunked = close = False
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        kept = bytearray()
        tail = b""  # last byte of the previous piece, to find "\n\n" across pieces

        def take(data: bytes) -> bool:
            nonlocal tail
            result.bytes_in += len(data)
            if keep_body:
                kept.extend(data)
            if sse:
                count = data.count(b"\n\n") + (1 if tail == b"\n" and data[:1] == b"\n" else 0)
                if count:
                    now = time.monotonic()
                    result.events += count
                    result.event_times.extend([now] * count)
                tail = data[-1:]
                if stop_after_events is not None and result.events >= stop_after_events:
                    return False
            return True

        async def take_exactly(remaining: int) -> bool:
            """Feed `remaining` body bytes to take(); False once it wants no more."""
            while remaining:
                data = await reader.read(min(remaining, READ))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                if not take(data):
                    return False
            return True

        going = True
        if chunked:
            while going:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                going = await take_exactly(size)
                if going:
                    await reader.readexactly(2)
        elif length is not None:
            going = await take_exactly(length)
        else:
            close = True
            while going and (data := await reader.read(READ)):
                going = take(data)
        result.body = bytes(kept)
        result.ended = time.monotonic()
        if close or not going:
            await self.close()
        return result


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


async def sequential(url: str, raw: bytes, count: int, *, warmup: int = 50) -> tuple[list[float], int]:
    """`count` requests one after another on one keep-alive connection: (latencies in s, failures)."""
    conn = Connection.for_url(url, timeout=30)
    latencies: list[float] = []
    failures = 0
    for i in range(warmup + count):
        r = await conn.request(raw)
        if r.error or r.status != 200:
            failures += 1
        elif i >= warmup:
            latencies.append(r.elapsed)
    await conn.close()
    return latencies, failures


async def closed_loop(url: str, make_raw: Callable[[int], bytes], *, concurrency: int, total: int,
                      max_seconds: float, sse: bool = False, timeout: float = 60.0
                      ) -> tuple[int, dict[int, int], list[str], float]:
    """`concurrency` keep-alive connections sending back to back until `total` requests
    are done or `max_seconds` have passed: (completed, status counts, errors, seconds)."""
    next_index = 0
    completed = 0
    statuses: dict[int, int] = {}
    errors: list[str] = []
    started = time.monotonic()
    deadline = started + max_seconds

    async def worker() -> None:
        nonlocal next_index, completed
        conn = Connection.for_url(url, timeout=timeout)
        while next_index < total and time.monotonic() < deadline:
            i = next_index
            next_index += 1
            r = await conn.request(make_raw(i), keep_body=False, sse=sse)
            if r.error:
                errors.append(r.error)
            else:
                statuses[r.status] = statuses.get(r.status, 0) + 1
                completed += 1
        await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return completed, statuses, errors, time.monotonic() - started
