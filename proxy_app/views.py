"""Thin views: the relay's own endpoints and the one view that forwards /v1."""
from __future__ import annotations

import functools
import ipaddress
from functools import cached_property

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from rest_framework.exceptions import AuthenticationFailed, MethodNotAllowed, NotAuthenticated
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView

from audit_app.recorder import CallContext, release_connection

from . import actions_schema, envelope, inspection, paths, pipeline, websocket
from .access import CostReserved, FamilyInScope, KeyRateLimit, ModelInScope, WithinBudget
from .auth import HasRelayKey, TooManyFailedAuthentications, failed_auth, refuse_key_in_query
from .call_audit import CallAudit
from .inspection import BodyReadable
from .policy import NoUserDataFiles, PathAllowed
from .realtime_http import ClientSecretChecked, RealtimeCallAllowed
from .errors import AuditUnavailable, error_response, render_exception


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, read from the right of X-Forwarded-For.

    Each proxy appends the address it was reached from, so only the entries the
    relay's own proxies added can be believed; anything to their left is
    whatever the client wrote. With RELAY_TRUSTED_PROXIES = N (the proxies in
    front of the relay, nginx alone is 1), the client is the N-th entry from the
    right; with RELAY_TRUSTED_PROXY_NETWORKS, the rightmost entry outside them.
    An entry that is not an IP address (`not-an-ip`, `1.2.3.4:5678`, which once
    gave a 500 on PostgreSQL's inet column) is never recorded: the relay falls
    back to the peer's address.
    """
    peer = _valid_ip(request.META.get("REMOTE_ADDR", ""))
    hops = settings.RELAY_TRUSTED_PROXIES
    networks = settings.RELAY_TRUSTED_PROXY_NETWORKS
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if not forwarded or not (hops or networks):
        return peer
    chain = [entry.strip() for entry in forwarded.split(",")]
    if networks:
        if peer is None or not _in_networks(peer, networks):
            return peer  # not sent by one of our proxies: its header means nothing
        for entry in reversed(chain):
            address = _valid_ip(entry)
            if address is None:
                return peer
            if not _in_networks(address, networks):
                return address
        return peer
    if len(chain) < hops:
        return peer
    return _valid_ip(chain[-hops]) or peer


def _valid_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _in_networks(address: str, networks: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in net for net in _parsed_networks(tuple(networks)))


@functools.lru_cache(maxsize=8)
def _parsed_networks(networks: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(net.strip(), strict=False) for net in networks if net.strip())


class LocalView(APIView):
    """Answered by the relay itself, no key needed, never audited."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    http_method_names = ["get", "head"]
    body: dict = {"status": "ok"}

    def get(self, request: Request) -> JsonResponse:
        return JsonResponse(self.body)


class HealthView(LocalView):
    body = {"status": "ok", "version": settings.VERSION}


class PingView(LocalView):
    pass


class ActionsSchemaView(LocalView):
    def get(self, request: Request) -> JsonResponse:
        return JsonResponse(actions_schema.document())


class PluginManifestView(LocalView):
    def get(self, request: Request) -> JsonResponse:
        return JsonResponse(actions_schema.plugin_manifest())


class RelayView(APIView):
    """Every relayed /v1 path, every method, through the one pipeline.

    The request policy is this view's `permission_classes` and `throttle_classes`,
    which DRF runs in `initial()`, in the order listed, after authentication; the
    first refusal answers, and nothing refused is forwarded. In full, in order:

    1. no relay key in the query string (400), before anything is logged or looked up;
    2. authentication: the relay key (401), `authentication_classes`;
    3. HasRelayKey: a valid key is present (401);
    4. past RELAY_UNAUTHENTICATED_PER_MINUTE failures from the client's address this
       minute, a 401 becomes a 429 with no audit row (proxy_app.auth, in handle_exception);
    5. PathAllowed: the envelope, for /v1/proxy (400); the path validated (400) and
       outside RELAY_BLOCKED_PATH_PREFIXES (403);
    6. FamilyInScope (403), WithinBudget: spend alone fills no budget (429);
    7. NoUserDataFiles (403), RealtimeCallAllowed (403);
    8. BodyReadable: framing, size and type (400/413/415), its JSON or fields (400),
       read once (`body`); ModelInScope (400/403); ClientSecretChecked, the session a
       limited key's client secret mints (400/403); CostReserved (403/429);
    9. KeyRateLimit, the only throttle and so last (429): only admitted requests count;
    10. the audit row is opened (503 if it cannot be), then the call is forwarded.

    A WebSocket upgrade goes through the same lists: it has no body, so the body's
    permissions pass. The call's audit row has one owner, `self.audit`
    (proxy_app.call_audit.CallAudit): the pipeline opens and closes it, and a refusal
    here asks it to reject, which writes nothing if the row is closed already.
    """

    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]
    permission_classes = [HasRelayKey, PathAllowed, FamilyInScope, WithinBudget, NoUserDataFiles,
                          RealtimeCallAllowed, BodyReadable, ModelInScope, ClientSecretChecked, CostReserved]
    throttle_classes = [KeyRateLimit]

    @property
    def default_response_headers(self) -> dict[str, str]:
        return {}  # upstream's headers are the response's headers

    def initial(self, request: Request, *args, **kwargs) -> None:
        django_request = request._request
        self.ctx = CallContext(
            method=request.method,
            path=django_request.path,
            family=paths.family_hint(django_request.path),
            client_ip=client_ip(django_request),
            user_agent=django_request.META.get("HTTP_USER_AGENT", ""),
        )
        self.audit = CallAudit(self.ctx)
        refuse_key_in_query(django_request)
        super().initial(request, *args, **kwargs)  # authentication, permission_classes, throttle_classes

    def perform_authentication(self, request: Request) -> None:
        super().perform_authentication(request)
        if request.auth is not None:
            self.ctx.key, self.ctx.user = request.auth, request.user

    # What the rules judge, each worked out once, when a rule first asks for it.

    @cached_property
    def forwarded(self) -> HttpRequest:
        """The request to forward: the client's, or the one inside its /v1/proxy envelope."""
        outer = self.request._request
        if outer.path != envelope.ENVELOPE_PATH:
            return outer
        if outer.method != "POST":
            raise MethodNotAllowed(outer.method)
        release_connection()  # not held while the envelope's body comes in
        call = envelope.unwrap(outer)
        # From here on the call is what the envelope asked for, in the audit too.
        self.ctx.method, self.ctx.path, self.ctx.family = call.method, call.path, paths.family_hint(call.path)
        inner = envelope.inner_request(outer, call)
        refuse_key_in_query(inner)  # the envelope's `query` would put it in the URL upstream
        return inner

    @cached_property
    def api_path(self) -> paths.ApiPath:
        parsed = paths.parse(self.forwarded.path, paths.raw_path(self.forwarded))
        self.ctx.path = parsed.path  # what every rule, the operation table and the audit row go by
        return parsed

    @cached_property
    def body(self) -> inspection.Body:
        """The body as the policy read it (BodyReadable), shared with the pipeline and its observers."""
        if websocket.is_upgrade(self.forwarded):
            return inspection.NO_BODY
        return inspection.inspect(self.forwarded, self.api_path, self.ctx)

    def permission_denied(self, request: Request, message: str | None = None, code: str | None = None):
        # DRF drops the permission's message when nobody authenticated.
        if request.auth is None:
            raise NotAuthenticated(HasRelayKey.message)
        super().permission_denied(request, message, code)

    def relay(self, request: Request, *args, **kwargs):
        if websocket.is_upgrade(self.forwarded):
            return websocket.open_session(self.forwarded, self.api_path, self.audit)
        return pipeline.forward(self.forwarded, self.api_path, self.audit, self.body)

    get = post = put = patch = delete = head = options = relay

    def handle_exception(self, exc: Exception):
        audit: CallAudit | None = getattr(self, "audit", None)
        if audit is None:  # refused before the call had a context (cannot happen past initial's start)
            return render_exception(exc)
        if isinstance(exc, (NotAuthenticated, AuthenticationFailed)) and failed_auth(self.ctx.client_ip):
            # Counted, not audited: a flood of bad keys must not write a row each.
            response = render_exception(TooManyFailedAuthentications.now())
            response["x-relay-request-id"] = self.ctx.request_id
            return response
        response = render_exception(exc)
        if (known := getattr(exc, "relay_key", None)) is not None:
            # A revoked or expired key: the row says whose it was, so that the
            # use of a leaked key shows in the admin.
            self.ctx.key, self.ctx.user = known, known.owner
        response["x-relay-request-id"] = self.ctx.request_id
        # A no-op when the call's row is already closed (the pipeline failed it).
        # With the database down, straight to the journal: a second wait for a
        # connection would double the time the client waits for its 503.
        audit.reject(response.status_code, response.relay_error,
                     database=not isinstance(exc, (DatabaseError, AuditUnavailable)))
        if (body := self.__dict__.get("body")) is not None:
            body.discard()  # refused after its body was read: the relay's copy goes
        return response



def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """Django's 400s (a disallowed Host, other suspicious requests), in OpenAI's shape."""
    return error_response(400, "The request was refused as malformed (for example, a Host this relay "
                               "does not serve).", code="bad_request")


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_response(404, f"Unknown path {request.path}.", code="unknown_url")


def server_error(request: HttpRequest) -> JsonResponse:
    return error_response(500, "The relay failed to handle this request.", type="server_error",
                          code="relay_error")
