"""Reading the client's body with a stall timeout.

A client that trickles its body in holds a greenlet, a socket and (before this
module) a database connection; ten of them made every other call fail with 503
after 60 s. Each read of the body now has RELAY_BODY_READ_TIMEOUT seconds to
return something: a body that stalls longer is answered 408 and nothing of it
is forwarded (or, mid-forward, the upstream request is abandoned).

Under gunicorn's gevent workers the timeout is a gevent.Timeout around each
read (the socket calls are cooperative); in the threaded development server it
is not enforced.
"""
from __future__ import annotations

from typing import BinaryIO

from django.conf import settings

from .errors import RelayError


class BodyTimeout(RelayError):
    status_code = 408
    default_code = "request_body_timeout"


def _gevent_timeout():
    try:
        from gevent import Timeout, monkey
    except ImportError:  # pragma: no cover - gevent is a runtime dependency
        return None
    return Timeout if monkey.is_module_patched("socket") else None


_TIMEOUT = None
_CHECKED = False


def read(source: BinaryIO, size: int) -> bytes:
    """`source.read(size)`, refused with a 408 when the client sends nothing for too long."""
    global _TIMEOUT, _CHECKED
    if not _CHECKED:
        _TIMEOUT, _CHECKED = _gevent_timeout(), True
    seconds = settings.RELAY_BODY_READ_TIMEOUT
    if _TIMEOUT is None or not seconds:
        return source.read(size)
    error = BodyTimeout(f"The request body stalled: nothing arrived for {seconds:g} s "
                        "(RELAY_BODY_READ_TIMEOUT). Nothing was forwarded.")
    with _TIMEOUT(seconds, error):
        return source.read(size)


def read_exactly(source: BinaryIO, length: int, step: int = 64 * 1024) -> bytes:
    """Up to `length` bytes, in steps that each get the stall timeout."""
    parts = []
    remaining = length
    while remaining > 0:
        chunk = read(source, min(step, remaining))
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)
