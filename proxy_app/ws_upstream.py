"""The relay's WebSocket connection to OpenAI: TCP (and TLS), then the upgrade
handshake, done by wsproto (sans-IO) over a plain socket.

Under gunicorn's gevent worker the socket and ssl modules are gevent's, so a
session waiting on OpenAI holds a greenlet, not a thread. The handshake carries
the team's credentials and the client's allowlisted headers only: the relay key
(in Authorization, X-Relay-Key or a browser's `openai-insecure-api-key.`
subprotocol) never leaves the relay.
"""
from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import ProtocolError

from . import headers as header_rules
from .errors import UpstreamTimeout, UpstreamUnreachable

RECV_BYTES = 64 * 1024
# An upstream refusal's body is relayed to the client; a longer one is cut here.
_REJECT_BODY_MAX = 64 * 1024
# The relay's credentials replace these; subprotocols carrying a key are dropped.
_KEY_SUBPROTOCOL = "openai-insecure-api-key."


def websocket_base_url() -> str:
    """OPENAI_WEBSOCKET_BASE_URL, or OPENAI_BASE_URL with ws(s) for http(s)."""
    if settings.OPENAI_WEBSOCKET_BASE_URL:
        return settings.OPENAI_WEBSOCKET_BASE_URL.rstrip("/")
    base = settings.OPENAI_BASE_URL
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):]
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):]
    return base


@dataclass
class Rejected:
    """Upstream answered the upgrade with an HTTP response instead of 101."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


@dataclass
class Upstream:
    sock: socket.socket
    ws: WSConnection
    subprotocol: str | None
    headers: list[tuple[str, str]] = field(default_factory=list)


def client_subprotocols(meta: dict) -> list[str]:
    """The client's offered subprotocols, without any that carry a key."""
    offered = meta.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")
    return [p.strip() for p in offered.split(",")
            if p.strip() and not p.strip().startswith(_KEY_SUBPROTOCOL)]


def connect(suffix: str, query: str, meta: dict, project: str = "") -> Upstream | Rejected:
    """Open the upstream WebSocket for `/v1{suffix}?{query}`.

    Raises UpstreamUnreachable / UpstreamTimeout when OpenAI cannot be reached;
    returns Rejected when it answers with anything but 101. `project`: the caller's
    team's OpenAI project, sent as on every HTTP call of the team's keys.
    """
    base = urlsplit(websocket_base_url())
    secure = base.scheme == "wss"
    host = base.hostname or ""
    port = base.port or (443 if secure else 80)
    target = base.path.rstrip("/") + suffix + (f"?{query}" if query else "")
    host_header = host if base.port is None else f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=settings.UPSTREAM_CONNECT_TIMEOUT)
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    except socket.timeout:
        raise UpstreamTimeout() from None
    except OSError:
        raise UpstreamUnreachable() from None
    try:
        return _handshake(sock, host_header, target, meta, project)
    except BaseException:
        sock.close()
        raise


def _handshake(sock: socket.socket, host: str, target: str, meta: dict, project: str = "") -> Upstream | Rejected:
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [(name, value) for name, value in header_rules.request_headers_from_meta(meta, project).items()
             if name not in ("content-type", "content-length")]
    sock.sendall(ws.send(Request(host=host, target=target, extra_headers=extra,
                                 subprotocols=client_subprotocols(meta))))
    sock.settimeout(settings.UPSTREAM_CONNECT_TIMEOUT)
    rejected: Rejected | None = None
    try:
        while True:
            data = sock.recv(RECV_BYTES)
            if not data:
                if rejected is not None:
                    return rejected
                raise UpstreamUnreachable("The OpenAI API closed the connection during the WebSocket handshake.")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    sock.settimeout(None)
                    return Upstream(sock=sock, ws=ws, subprotocol=event.subprotocol,
                                    headers=[(k.decode("latin1"), v.decode("latin1"))
                                             for k, v in event.extra_headers])
                if isinstance(event, RejectConnection):
                    rejected = Rejected(status=event.status_code,
                                        headers=[(k.decode("latin1"), v.decode("latin1"))
                                                 for k, v in event.headers])
                    if not event.has_body:
                        return rejected
                elif isinstance(event, RejectData) and rejected is not None:
                    if len(rejected.body) < _REJECT_BODY_MAX:
                        rejected.body += event.data[:_REJECT_BODY_MAX - len(rejected.body)]
                    if event.body_finished:
                        return rejected
    except socket.timeout:
        raise UpstreamTimeout("The OpenAI API did not complete the WebSocket handshake in time.") from None
    except ProtocolError as exc:
        raise UpstreamUnreachable(f"The OpenAI API's WebSocket handshake was invalid: {exc}") from None
    except OSError:
        raise UpstreamUnreachable() from None
