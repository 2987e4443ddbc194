"""gunicorn's own answers to malformed HTTP (bad request line, oversized
headers, broken chunking), in OpenAI's error shape instead of an HTML page.

gunicorn writes these before Django ever sees the request, through
`gunicorn.util.write_error`; the config file swaps in this JSON writer.
"""
from __future__ import annotations

import json

from gunicorn import util

_TYPES = {500: "server_error"}


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    body = json.dumps({"error": {
        "message": f"{reason}: {mesg}" if mesg else reason,
        "type": _TYPES.get(status_int, "invalid_request_error"),
        "param": None,
        "code": reason.lower().replace(" ", "_"),
    }}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin1") + body)


def install() -> None:
    util.write_error = write_json_error
