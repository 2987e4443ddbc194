"""WebSocket sessions through the relay: the Realtime API (`/v1/realtime`) and
the Responses API's WebSocket mode (`/v1/responses`).

How a session runs, under gunicorn's gevent worker (docs/websockets.md):

1. The upgrade request goes through the ordinary view: relay-key authentication,
   path policy, family scope, rate limit and budget, like any call. `open_session`
   then checks the URL's model, opens the session's audit row, and opens the
   upstream WebSocket (ws_upstream) with the team's key. Upstream's refusal is
   relayed as an HTTP answer; nothing has been written to the client yet.
2. The WSGI entry point (relay_project/wsgi.py) sees the session in the environ
   once Django is done with the request, and runs it on the raw socket gunicorn
   hands over (`gunicorn.socket`): it answers 101 and pumps messages both ways,
   one greenlet per direction plus an idle watchdog.
3. Every client event is parsed before it is forwarded: `session.update` and
   `response.create` go through the key's model scope, `response.create` also
   through its rate limit and budget. A refused event is answered with an `error`
   event in OpenAI's shape and never forwarded. Non-JSON and binary messages are
   refused the same way: the relay cannot read them the way upstream would.
4. Each upstream response (`response.created` ... `response.done` for realtime,
   `response.completed`/`failed`/`incomplete` for the Responses mode) gets its own
   ApiCall row, linked to the session row by `ws_session`, priced from its usage
   and counted once in the rollups. The session row itself is free: it counts the
   connection (who, model, times, bytes each way, how it ended), not tokens.

Frames are parsed and written by wsproto (sans-IO); the relay only moves bytes
and reassembles messages, each at most RELAY_WS_MAX_MESSAGE_BYTES. Nothing is
queued between the two sides: a message is written to the other side before
the next read, so a slow reader slows the sender down through TCP instead of
growing a buffer in the relay.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
import weakref
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, Request,
                            TextMessage)
from wsproto.utilities import ProtocolError

from audit_app import pricing
from audit_app.models import Billing, Outcome
from audit_app.recorder import CallContext, close_call, open_call, priced_fields, release_connection
from audit_app.usage import Usage

from . import access, telemetry, ws_upstream
from . import headers as header_rules
from .call_audit import CallAudit
from .errors import PolicyDenied, RelayError, UpstreamUnreachable
from .paths import ApiPath

log = logging.getLogger(__name__)

# The environ key under which the view hands a session to the WSGI entry point.
ENVIRON_KEY = "relay.websocket"
# Paths that speak WebSocket, and the event that ends a response on each.
KINDS = {"/v1/realtime": "realtime", "/v1/responses": "responses"}
_DONE = {
    "realtime": frozenset({"response.done"}),
    "responses": frozenset({"response.completed", "response.failed", "response.incomplete"}),
}
# Upstream events the audit reads; any other message is forwarded without being parsed.
# (Upstream is OpenAI: a marker inside some text only costs a parse, the type decides.)
# A realtime input transcription OpenAI bills on its own (usage in its completed event).
_TRANSCRIBED = "conversation.item.input_audio_transcription.completed"
_WATCHED = {kind: tuple(f'"{t}"' for t in (*done, "response.created", "response.in_progress",
                                            "session.created", "session.updated",
                                            *((_TRANSCRIBED,) if kind == "realtime" else ())))
            for kind, done in _DONE.items()}
# Close codes that may not be sent in a close frame (RFC 6455 7.4.1).
_UNSENDABLE = frozenset({1005, 1006, 1015})


def is_upgrade(request: HttpRequest) -> bool:
    meta = request.META
    return (request.method == "GET" and meta.get("HTTP_UPGRADE", "").lower() == "websocket"
            and "upgrade" in meta.get("HTTP_CONNECTION", "").lower())


class UpgradeError(RelayError):
    default_code = "invalid_websocket_upgrade"


class WebSocketsUnavailable(RelayError):
    status_code = 501
    error_type = "server_error"
    default_code = "websockets_unavailable"
    default_detail = ("This server cannot take over the connection for a WebSocket; "
                      "run the relay under its gunicorn configuration (gevent workers).")


def open_session(request: HttpRequest, api_path: ApiPath, audit: CallAudit) -> HttpResponse:
    """Everything that can still be answered with an HTTP status, then the hand-over.

    The session's row belongs to `audit` (proxy_app.call_audit), as an HTTP call's does:
    opened here, failed here if upstream cannot be reached, finished by the session.
    """
    ctx = audit.ctx
    kind = KINDS.get(api_path.path)
    if kind is None:
        raise UpgradeError(f"{api_path.path} does not accept WebSocket connections.", status=404,
                           code="unknown_url")
    meta = request.META
    if "gunicorn.socket" not in meta or not _cooperative_worker():
        raise WebSocketsUnavailable()
    client_ws = _server_handshake(meta)
    models = request.GET.getlist("model")
    if len(models) > 1:
        # Another reader could take the other one: refuse rather than guess which.
        raise UpgradeError("The URL names `model` more than once.", param="model")
    model = models[0] if models else ""
    policy = SessionPolicy(api_path, ctx, kind, model)
    policy.check_connect()

    audit.open()  # 503 when the row cannot be written: no session without its row
    telemetry.forwarding(ctx)
    try:
        upstream = ws_upstream.connect(api_path.upstream_suffix, meta.get("QUERY_STRING", ""), meta,
                                       ctx.key.openai_project if ctx.key is not None else "")
    except Exception as exc:
        if not isinstance(exc, RelayError):
            log.exception("websocket: opening the upstream connection failed")
            exc = UpstreamUnreachable()
        audit.fail(status=exc.status_code, error=exc.message, model=model[:128])
        raise exc from None  # the view's reject() finds the row closed
    telemetry.upstream_answered(ctx)
    if isinstance(upstream, ws_upstream.Rejected):
        error = f"upstream refused the WebSocket upgrade ({upstream.status})"
        audit.finish(outcome=Outcome.UPSTREAM_ERROR, status=upstream.status, upstream_status=upstream.status,
                     model=model[:128], bytes_out=len(upstream.body), error=error,
                     telemetry_fields={"model": model, "error": error})
        response = HttpResponse(upstream.body, status=upstream.status)
        del response["Content-Type"]
        for name, value in header_rules.response_headers(upstream.headers):
            response[name] = value
        response["x-relay-request-id"] = ctx.request_id
        return response
    meta[ENVIRON_KEY] = Session(meta["gunicorn.socket"], client_ws, upstream, audit, policy)
    return HttpResponse(status=101)  # never sent: the WSGI entry point runs the session instead


def _cooperative_worker() -> bool:
    """Whether this process runs gevent's patched sockets (gunicorn's gevent worker).

    Every gunicorn worker class hands over `gunicorn.socket`; under a sync or gthread
    worker a session would hold the whole worker or one of its threads for as long as
    it lasts, and its pumps' threads would be real threads: answered 501 instead.
    """
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")


def _server_handshake(meta: dict) -> WSConnection:
    """The client's upgrade request, validated by wsproto from the headers gunicorn parsed."""
    lines = [f"GET {meta.get('RAW_URI') or '/'} HTTP/1.1"]
    for name in ("HOST", "UPGRADE", "CONNECTION", "SEC_WEBSOCKET_KEY", "SEC_WEBSOCKET_VERSION",
                 "SEC_WEBSOCKET_PROTOCOL"):
        value = meta.get(f"HTTP_{name}")
        if value:
            lines.append(f"{name.replace('_', '-')}: {value}")
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.receive_data(("\r\n".join(lines) + "\r\n\r\n").encode("latin1"))
        events = list(ws.events())
    except (ProtocolError, UnicodeEncodeError) as exc:
        raise UpgradeError(f"The WebSocket upgrade request is invalid: {exc}") from None
    if not events or not isinstance(events[0], Request):
        raise UpgradeError("The WebSocket upgrade request is incomplete.")
    return ws


# --- policy on every frame ------------------------------------------------------------


class SessionPolicy:
    """The key's scopes, rate limit and budget, applied to the session's events.

    Uses access.py's public checks, so a WebSocket event is judged exactly as the
    HTTP call with the same model would be.
    """

    def __init__(self, api_path: ApiPath, ctx: CallContext, kind: str, model: str) -> None:
        self.api_path, self.ctx, self.kind, self.model = api_path, ctx, kind, model

    def check_connect(self) -> None:
        if self.kind == "realtime" and access.has_model_scope(self.ctx) and not self.model:
            raise PolicyDenied(
                f"Relay key {self.ctx.key.prefix}… may only use some models: name the model in the "
                "URL (?model=...) so the relay can check it before the session starts.",
                code="outside_key_scope", param="model")
        if self.model:
            self._check_model(self.model)

    def _check_model(self, model: str) -> None:
        access.check_model_scope(self.ctx, self.api_path, "POST", {"model": model})
        if access.has_budget(self.ctx) and pricing.price_for(model, _now()) is None:
            # decisions.md: under a budget, a model without a rate is refused, not run at $0.
            raise PolicyDenied(f"Model '{model}' has no price, and this key or its owner has a monthly "
                               "budget, so the relay could not count it. An admin can add a price for it.",
                               code="relay_unpriced_under_budget", param="model")

    def check_event(self, event: dict) -> None:
        etype = event["type"]
        limited = access.is_limited(self.ctx)
        if limited and etype not in CLIENT_EVENTS[self.kind]:
            # An event the relay does not know may name a model or start generation in a
            # way it never checks: a limited key's session forwards only known ones.
            raise RelayError(
                f"Relay key {self.ctx.key.prefix}… is limited to some models or by a budget, and the relay "
                f"forwards only the client events it checks; '{etype[:100]}' was not forwarded.",
                code="invalid_event", param="type")
        if etype in ("session.update", "transcription_session.update"):
            _session_models(event.get("session"))  # refuses shapes the relay cannot read
        if limited:
            # Every field named `model`, at any depth (moderation.model, a transcription's
            # model, a tool's model ...): each must be allowed, and priced under a budget.
            for model in _all_models(event):
                if not isinstance(model, str):
                    raise PolicyDenied(
                        f"Relay key {self.ctx.key.prefix}… is limited to some models or by a budget, and "
                        f"this event names a model that is a {type(model).__name__}, not a string; "
                        "it was not forwarded.", code="outside_key_scope", param="model")
                self._check_model(model)
        if etype in ("session.update", "transcription_session.update"):
            access.check_budgets(self.api_path, "POST", self.ctx)
        elif etype in GENERATING_EVENTS:
            model = event.get("model") if self.kind == "responses" else self.model
            if self.kind == "responses" and access.has_model_scope(self.ctx) and not isinstance(model, str):
                raise PolicyDenied(
                    f"Relay key {self.ctx.key.prefix}… may only use some models: {etype} "
                    "must name its model.", code="outside_key_scope", param="model")
            if isinstance(model, str) and model:
                self._check_model(model)
            access.check_rate_limit(self.api_path, "POST", self.ctx)
            access.check_budgets(self.api_path, "POST", self.ctx)

    def accepted(self, event: dict) -> None:
        """Remember the model a forwarded session.update asked for."""
        if event.get("type") == "session.update" and self.kind == "realtime":
            session = event.get("session")
            if isinstance(session, dict) and isinstance(session.get("model"), str):
                self.model = session["model"]


# The client events a limited key's session may send (OpenAI's documented client events);
# anything else is refused with an `error` event. Unlimited keys' events pass through.
CLIENT_EVENTS = {
    "realtime": frozenset({
        "session.update", "transcription_session.update",
        "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
        "conversation.item.create", "conversation.item.retrieve", "conversation.item.truncate",
        "conversation.item.delete", "response.create", "response.cancel", "output_audio_buffer.clear",
    }),
    "responses": frozenset({"response.create"}),
}
# Client events that start generation: each passes the rate limit and the budget.
GENERATING_EVENTS = frozenset({"response.create", "response.steer"})


def _all_models(value: Any) -> list[Any]:
    """The value of every key named `model` anywhere in a parsed event (iterative: depth is free)."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for name, child in item.items():
                if name == "model":
                    found.append(child)
                if isinstance(child, (dict, list)):
                    stack.append(child)
        elif isinstance(item, list):
            stack.extend(child for child in item if isinstance(child, (dict, list)))
    return found


def _unreadable(where: str, value: Any) -> RelayError:
    return RelayError(f"`{where}` must be an object, not a {type(value).__name__}; the relay cannot read "
                      "it the way upstream would, so it was not forwarded.", code="invalid_event", param=where)


def _session_models(session: Any) -> list[str]:
    """Every model a realtime session configuration names: the session's and its transcription's.

    Raises RelayError (invalid_event) when a part that holds a model is not an object:
    the relay could not read it the way upstream would.
    """
    if session is None:
        return []
    if not isinstance(session, dict):
        raise _unreadable("session", session)
    found = [session.get("model")]
    audio = session.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            raise _unreadable("session.audio", audio)
        audio_input = audio.get("input")
        if audio_input is not None:
            if not isinstance(audio_input, dict):
                raise _unreadable("session.audio.input", audio_input)
            transcription = audio_input.get("transcription")
            if transcription is not None:
                if not isinstance(transcription, dict):
                    raise _unreadable("session.audio.input.transcription", transcription)
                found.append(transcription.get("model"))
    legacy = session.get("input_audio_transcription")
    if legacy is not None:
        if not isinstance(legacy, dict):
            raise _unreadable("session.input_audio_transcription", legacy)
        found.append(legacy.get("model"))
    return [m for m in found if isinstance(m, str)]


class _ClientGone(Exception):
    pass


class _UpstreamGone(Exception):
    pass


_TOO_BIG = object()


class _Assembler:
    """Reassembles one message from wsproto's partial frames, up to a size limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list = []
        self.size = 0

    def add(self, event: TextMessage | BytesMessage):
        """The whole message once its last part is in (str or bytes), _TOO_BIG, or None."""
        self.size += len(event.data)
        if self.size > self.limit:
            return _TOO_BIG
        self.parts.append(event.data)
        if not event.message_finished:
            return None
        parts, self.parts, self.size = self.parts, [], 0
        return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate keys in one object")
    return dict(pairs)


def parse_event(text: str) -> dict:
    """A client event, read strictly: another reader could take a different one of
    two duplicate keys, so an event with any is refused."""
    try:
        event = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError("an event must be a JSON object with a string `type`")
    return event


# --- the session -----------------------------------------------------------------------


def deadline_sendall(sock: socket.socket, data: bytes, timeout: float) -> None:
    """sendall that gives up (OSError, socket.timeout) once the peer takes nothing for `timeout` seconds.

    The socket's timeout is set only for this write; the pumps read it without one.
    Another greenlet reading the same socket meanwhile would see the timeout too, but
    this is only used while the session ends, when a pump's read ending is wanted.
    """
    previous = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        sock.sendall(data)
    finally:
        try:
            sock.settimeout(previous)
        except OSError:
            pass

# The sessions this worker is running, so that a graceful stop can close them.
_LIVE: "weakref.WeakSet[Session]" = weakref.WeakSet()


def stop_all_sessions() -> int:
    """Close every session of this worker with 1012 (service restart), audited.

    Called when the worker starts a graceful stop (gunicorn.conf.py: SIGTERM on a
    deploy or reload). Waiting instead would not help: an hour-long voice session
    outlives any graceful timeout, and the master's SIGKILL at its end would leave
    the rows pending and the clients with a bare 1006. Clients reconnect to a new worker.
    """
    sessions = list(_LIVE)
    for session in sessions:
        session._end(Outcome.INTERRUPTED, "the relay worker stopped (restart or deploy)",
                     client=(1012, "The relay is restarting; reconnect."), upstream=(1001, "relay restarting"))
    return len(sessions)



class Session:
    def __init__(self, sock: socket.socket, client_ws: WSConnection, upstream: ws_upstream.Upstream,
                 audit: CallAudit, policy: SessionPolicy) -> None:
        self.client_sock = sock
        self.client_ws = client_ws
        self.up = upstream
        self.audit = audit  # the session row's owner; each response's row is its own (_child_ctx)
        self.call_id = audit.call_id
        self.ctx = audit.ctx
        self.policy = policy
        self.kind = policy.kind
        self.bytes_in = 0  # wire bytes from the client
        self.bytes_out = 0  # wire bytes to the client
        self.last_activity = time.monotonic()
        self.outcome: str | None = None
        self.error = ""
        self._end_lock = threading.Lock()
        self._client_lock = threading.Lock()
        self._up_lock = threading.Lock()
        self.ended = threading.Event()
        # Upstream responses seen created and not yet done: response id -> (row id, context).
        self.open_responses: dict[str, tuple[int, CallContext]] = {}
        self.transcription_model = ""  # the input transcription's model, from session.created/updated
        self.responses = 0
        self._budget_due = False  # a response just cost money: check the budget once it is forwarded
        self.max_message = settings.RELAY_WS_MAX_MESSAGE_BYTES

    # -- running

    def run(self) -> None:
        _LIVE.add(self)
        telemetry.OPEN_STREAMS.inc()
        try:
            release_connection()  # a session can last an hour; its DB connection should not
            self._guard(self._accept)
            if self.outcome is None:
                pump = threading.Thread(target=self._guard, args=(self._pump_upstream,), daemon=True)
                watchdog = threading.Thread(target=self._watchdog, daemon=True)
                pump.start()
                watchdog.start()
                self._guard(self._pump_client)
                pump.join(settings.RELAY_WS_CLOSE_GRACE_SECONDS + 1)
        except BaseException as exc:  # a worker stopping (GreenletExit, SystemExit) still audits
            self._end(Outcome.INTERRUPTED, f"the relay stopped the session: {type(exc).__name__}",
                      client=(1012, "The relay is restarting."), upstream=(1001, "relay restarting"))
            raise
        finally:
            self._close_sockets()
            self._finish()
            telemetry.OPEN_STREAMS.dec()
            _LIVE.discard(self)

    def _accept(self) -> None:
        """101 to the client, with upstream's allowlisted headers (x-request-id, openai-*) and ours."""
        headers = [*header_rules.response_headers(self.up.headers), ("x-relay-request-id", self.ctx.request_id)]
        self._send_client(AcceptConnection(
            subprotocol=self.up.subprotocol,
            extra_headers=[(name.encode("latin1"), value.encode("latin1")) for name, value in headers]))

    def _guard(self, pump) -> None:
        try:
            pump()
        except _ClientGone:
            self._end(Outcome.CLIENT_CLOSED, "the client's connection broke",
                      upstream=(1001, "client went away"))
        except _UpstreamGone:
            self._end(Outcome.FAILED, "the connection to the OpenAI API broke",
                      client=(1011, "The OpenAI API closed the connection unexpectedly."))
        except Exception:
            log.exception("websocket session %s failed", self.ctx.request_id)
            self._end(Outcome.FAILED, "the relay failed while relaying the session",
                      client=(1011, "The relay failed."), upstream=(1011, "relay failure"))

    def _watchdog(self) -> None:
        idle = settings.RELAY_WS_IDLE_TIMEOUT_SECONDS
        while not self.ended.is_set():
            wait = self.last_activity + idle - time.monotonic()
            if wait <= 0:
                reason = f"Idle for {idle:g} seconds (RELAY_WS_IDLE_TIMEOUT_SECONDS)."
                self._end(Outcome.OK, f"closed after {idle:g} s idle", client=(1000, reason),
                          upstream=(1000, "idle"))
                return
            self.ended.wait(wait)

    def _end(self, outcome: str, error: str, *, client: tuple[int, str] | None = None,
             upstream: tuple[int, str] | None = None) -> None:
        """The first end wins: record how, send each side its close frame, wake both pumps."""
        with self._end_lock:
            if self.outcome is not None:
                return
            self.outcome, self.error = outcome, error
        self.ended.set()
        # A pump may be blocked inside sendall, holding that side's lock (a client that stops
        # reading): the close frame waits for the lock at most the close grace, then that
        # side's socket is shut down without one, which also unblocks the pump's write.
        grace = settings.RELAY_WS_CLOSE_GRACE_SECONDS
        for send, close in ((self._send_client, client), (self._send_upstream, upstream)):
            if close is not None:
                code, reason = close
                try:
                    send(CloseConnection(code=1000 if code in _UNSENDABLE else code,
                                         reason=_truncate(reason)), timeout=grace)
                except (_ClientGone, _UpstreamGone, ProtocolError):
                    pass
        for sock in (self.client_sock, self.up.sock):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close_sockets(self) -> None:
        for sock in (self.client_sock, self.up.sock):
            try:
                sock.close()
            except OSError:
                pass

    # -- writing (one writer at a time per side; wsproto objects are not thread-safe)

    def _send_client(self, event, timeout: float | None = None) -> None:
        self._send(self._client_lock, lambda: self.client_ws, self.client_sock, event, timeout, _ClientGone,
                   outgoing=True)

    def _send_upstream(self, event, timeout: float | None = None) -> None:
        self._send(self._up_lock, lambda: self.up.ws, self.up.sock, event, timeout, _UpstreamGone)

    def _send(self, lock, ws, sock, event, timeout: float | None, gone: type[Exception],
              outgoing: bool = False) -> None:
        """Write one event; `timeout` bounds the wait for the side's lock (closing only)."""
        if not (lock.acquire() if timeout is None else lock.acquire(timeout=timeout)):
            raise gone()
        try:
            # The timed sendall only while closing: a close frame must not wait forever either.
            if timeout is not None:
                data = ws().send(event)
                deadline_sendall(sock, data, timeout)
            else:
                data = ws().send(event)
                sock.sendall(data)
            if outgoing:
                self.bytes_out += len(data)
        except OSError as exc:
            raise gone() from exc
        finally:
            lock.release()
        self.last_activity = time.monotonic()

    # -- client -> upstream

    def _pump_client(self) -> None:
        assembler = _Assembler(self.max_message)
        while self.outcome is None:
            try:
                data = self.client_sock.recv(ws_upstream.RECV_BYTES)
            except OSError:
                data = b""
            if not data:
                self._end(Outcome.CLIENT_CLOSED, "the client dropped the connection without a close frame",
                          upstream=(1001, "client went away"))
                return
            self.bytes_in += len(data)
            self.last_activity = time.monotonic()
            with self._client_lock:
                self.client_ws.receive_data(data)
                events = list(self.client_ws.events())
            for event in events:
                if isinstance(event, Ping):
                    self._send_client(event.response())
                elif isinstance(event, CloseConnection):
                    clean = event.code in (1000, 1001)
                    self._end(Outcome.OK if clean else Outcome.CLIENT_CLOSED,
                              "" if clean else f"the client closed the session: {event.code} {event.reason or ''}".strip(),
                              client=(event.code, event.reason or ""),
                              upstream=(event.code, event.reason or "client closed"))
                    return
                elif isinstance(event, (TextMessage, BytesMessage)):
                    message = assembler.add(event)
                    if message is _TOO_BIG:
                        self._end(Outcome.REJECTED, f"a client message exceeded {self.max_message} bytes",
                                  client=(1009, f"Messages are limited to {self.max_message} bytes."),
                                  upstream=(1000, "client sent an oversized message"))
                        return
                    if isinstance(message, bytes):
                        self._refuse(None, RelayError("The relay relays JSON text events only; a binary "
                                                      "message was not forwarded.", code="invalid_event"))
                    elif message is not None:
                        self._client_message(message)

    def _client_message(self, text: str) -> None:
        try:
            event = parse_event(text)
        except ValueError as exc:
            self._refuse(None, RelayError(f"The event is not a JSON object the relay can read ({exc}); "
                                          "it was not forwarded.", code="invalid_event"))
            return
        try:
            self.policy.check_event(event)
        except RelayError as exc:
            self._refuse(event, exc)
            return
        self.policy.accepted(event)
        self._send_upstream(TextMessage(data=text))

    def _refuse(self, event: dict | None, exc: RelayError) -> None:
        event_id = event.get("event_id") if isinstance(event, dict) else None
        self._send_client(TextMessage(data=json.dumps(error_event(self.kind, exc, event_id))))

    # -- upstream -> client

    def _pump_upstream(self) -> None:
        assembler = _Assembler(self.max_message)
        data: bytes | None = None  # frames that came with the handshake's answer are already in wsproto
        while self.outcome is None:
            with self._up_lock:
                if data is not None:
                    self.up.ws.receive_data(data)
                events = list(self.up.ws.events())
            for event in events:
                if isinstance(event, Ping):
                    self._send_upstream(event.response())
                elif isinstance(event, CloseConnection):
                    clean = event.code == 1000
                    reason = event.reason or ""
                    self._end(Outcome.OK if clean else Outcome.UPSTREAM_ERROR,
                              f"the OpenAI API closed the session: {event.code} {reason}".strip(),
                              client=(event.code if event.code not in _UNSENDABLE else 1011,
                                      f"OpenAI closed the session: {reason}" if reason
                                      else "OpenAI closed the session."),
                              upstream=(event.code, reason))
                    return
                elif isinstance(event, (TextMessage, BytesMessage)):
                    message = assembler.add(event)
                    if message is _TOO_BIG:
                        self._end(Outcome.FAILED, f"an upstream message exceeded {self.max_message} bytes",
                                  client=(1009, "An OpenAI message exceeded the relay's limit."),
                                  upstream=(1009, "message too big"))
                        return
                    if isinstance(message, str):
                        self._upstream_message(message)
                        self._send_client(TextMessage(data=message))
                        if self._budget_due:
                            # After forwarding: the client gets the event it was billed for
                            # before any close frame the budget check sends.
                            self._budget_due = False
                            self._check_budget_after_response()
                    elif isinstance(message, bytes):
                        self._send_client(BytesMessage(data=message))
            if self.outcome is not None:
                return
            try:
                data = self.up.sock.recv(ws_upstream.RECV_BYTES)
            except OSError:
                data = b""
            if not data:
                self._end(Outcome.FAILED, "the OpenAI API dropped the connection without a close frame",
                          client=(1011, "The OpenAI API closed the connection unexpectedly."))
                return
            self.last_activity = time.monotonic()

    def _upstream_message(self, text: str) -> None:
        """Watch the events the audit needs; everything is forwarded as it came."""
        if not any(marker in text for marker in _WATCHED[self.kind]):
            return  # deltas (audio ones are most of a session's bytes): not parsed
        try:
            event = json.loads(text)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        etype = event.get("type")
        if etype in ("session.created", "session.updated") and self.kind == "realtime":
            session = event.get("session")
            if isinstance(session, dict) and isinstance(session.get("model"), str):
                self.policy.model = session["model"]
            try:
                models = _session_models(session)
            except RelayError:
                models = []
            if isinstance(session, dict) and len(models) > (1 if isinstance(session.get("model"), str) else 0):
                self.transcription_model = models[-1]
        elif etype == _TRANSCRIBED and self.kind == "realtime":
            try:
                self._transcribed(event)
            finally:
                release_connection()
        elif etype in ("response.created", "response.in_progress") or etype in _DONE[self.kind]:
            response = event.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                try:
                    if etype in _DONE[self.kind]:
                        self._response_done(response)
                    elif response["id"] not in self.open_responses:
                        self._response_created(response)
                finally:
                    release_connection()

    # -- audit

    def _child_ctx(self) -> CallContext:
        return replace(self.ctx, method="WS", request_id=uuid.uuid4().hex, started_at=_now(),
                       started_monotonic=time.monotonic(), forwarded_at=None, upstream_ms=None)

    def _response_created(self, response: dict) -> None:
        ctx = self._child_ctx()
        try:
            call_id = open_call(ctx)
        except Exception:
            # The session goes on: its response is recorded at the end from the done event.
            log.exception("audit: could not open the row of response %s", response["id"])
            return
        self.open_responses[response["id"]] = (call_id, ctx)

    def _transcribed(self, event: dict) -> None:
        """An input audio transcription: billed by OpenAI apart from responses, so a row of its own,
        priced from its `usage` (tokens), or `unknown` when the relay cannot read one."""
        ctx = self._child_ctx()
        try:
            call_id = open_call(ctx)
        except Exception:
            log.exception("audit: could not open the row of a transcription")
            return
        model = self.transcription_model or ""
        fields = response_fields(event.get("usage"), model, ctx.started_at) if model else {"billing": Billing.UNKNOWN}
        item = event.get("item_id") if isinstance(event.get("item_id"), str) else ""
        self.responses += 1
        close_call(call_id, ctx, outcome=Outcome.OK, status=200, upstream_status=200,
                   upstream_request_id=f"transcription:{item}"[:128], model=model[:128],
                   ws_session_id=self.call_id, stream=True, **fields)
        self._budget_due = True

    def _response_done(self, response: dict) -> None:
        opened = self.open_responses.pop(response["id"], None)
        if opened is None:
            self._response_created(response)
            opened = self.open_responses.pop(response["id"], None)
            if opened is None:
                return
        call_id, ctx = opened
        self.responses += 1
        model = response.get("model") if isinstance(response.get("model"), str) else self.policy.model
        status = response.get("status")
        fields = response_fields(response.get("usage"), model or "", ctx.started_at)
        error = ""
        if status not in ("completed", None):
            details = response.get("status_details") or response.get("incomplete_details") or response.get("error")
            error = f"response {status}" + (f": {json.dumps(details)[:300]}" if details else "")
        close_call(call_id, ctx, outcome=Outcome.UPSTREAM_ERROR if status == "failed" else Outcome.OK,
                   status=200, upstream_status=200, upstream_request_id=response["id"][:128],
                   model=(model or "")[:128], ws_session_id=self.call_id, stream=True,
                   **fields, **({"error": error} if error else {}))
        self._budget_due = True

    def _check_budget_after_response(self) -> None:
        """Responses the server starts by itself (voice activity) pass no response.create:
        once a response's cost has put the key over its budget, the session ends."""
        try:
            if access.has_budget(self.ctx):
                access.forget_spend(self.ctx)  # the response's cost is in the rollups now
            access.check_budgets(self.policy.api_path, "POST", self.ctx)
        except RelayError as exc:
            self._send_client(TextMessage(data=json.dumps(error_event(self.kind, exc, None))))
            self._end(Outcome.REJECTED, exc.message, client=(1008, "Budget exhausted."),
                      upstream=(1000, "budget exhausted"))

    def _finish(self) -> None:
        """Close the rows of responses that never finished, then the session's."""
        for response_id, (call_id, ctx) in list(self.open_responses.items()):
            # OpenAI bills what it generated before the session ended; the relay never saw how much.
            close_call(call_id, ctx, outcome=Outcome.INTERRUPTED, status=200, upstream_status=200,
                       upstream_request_id=response_id[:128], model=(self.policy.model or "")[:128],
                       ws_session_id=self.call_id, stream=True, billing=Billing.UNKNOWN,
                       error="the session ended before this response was done; usage unknown")
        self.open_responses.clear()
        outcome = self.outcome or Outcome.OK
        upstream_request_id = next((v for k, v in self.up.headers if k.lower() == "x-request-id"), "")
        self.audit.finish(outcome=outcome, status=101, upstream_status=101,
                          upstream_request_id=upstream_request_id[:128],
                          model=(self.policy.model or "")[:128], bytes_in=self.bytes_in,
                          bytes_out=self.bytes_out, stream=True, billing=Billing.FREE,
                          **({"error": self.error} if self.error else {}),
                          telemetry_fields={"model": self.policy.model, "responses": self.responses,
                                            "error": self.error})
        release_connection()


def response_fields(usage: Any, model: str, at) -> dict[str, Any]:
    """Usage, cost and billing state of one WebSocket response, from its `usage` object.

    Realtime reports `input_token_details`/`output_token_details` where the Responses
    API says `input_tokens_details`; both are read. Audio tokens: while the usage
    record has no audio-token dimension to price them by their own rate, a response
    that used any is `unpriced` (cost unknown), never priced at the text rate.
    """
    if not isinstance(usage, dict):
        return {"billing": Billing.UNKNOWN}
    normalized = dict(usage)
    for short, long in (("input_token_details", "input_tokens_details"),
                        ("output_token_details", "output_tokens_details")):
        if isinstance(usage.get(short), dict) and long not in usage:
            normalized[long] = usage[short]
    parsed = Usage.from_api(normalized)
    if parsed is None:
        return {"billing": Billing.UNKNOWN}
    fields = priced_fields(parsed, model, at)
    if _audio_tokens(usage) and not any("audio" in name and "token" in name and getattr(parsed, name)
                                        for name in vars(parsed)):
        fields.update(cost=None, unpriced=True, billing=Billing.UNPRICED, price=None)
    price = fields.pop("price", None)
    fields["price_id"] = price.pk if price is not None else None  # an id survives the audit journal
    return fields


def _audio_tokens(usage: dict) -> int:
    total = 0
    for name in ("input_token_details", "output_token_details", "input_tokens_details", "output_tokens_details"):
        details = usage.get(name)
        if isinstance(details, dict) and isinstance(details.get("audio_tokens"), int):
            total += details["audio_tokens"]
    return total


def error_event(kind: str, exc: RelayError, event_id: str | None) -> dict[str, Any]:
    """An `error` server event in the shape of the session's API."""
    if kind == "responses":
        return {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param,
                "sequence_number": 0,
                "error": {"type": exc.error_type, "code": exc.code, "message": exc.message, "param": exc.param}}
    return {"type": "error", "event_id": f"event_relay_{uuid.uuid4().hex[:20]}",
            "error": {"type": exc.error_type, "code": exc.code, "message": exc.message,
                      "param": exc.param, "event_id": event_id}}


def _truncate(reason: str) -> str:
    """Close reasons are limited to 123 bytes of UTF-8."""
    raw = reason.encode()[:123]
    return raw.decode(errors="ignore")


def _now():
    from django.utils import timezone

    return timezone.now()
