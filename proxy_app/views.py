"""Thin views: the relay's own endpoints and the one view that forwards /v1."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from rest_framework.exceptions import MethodNotAllowed, NotAuthenticated
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView

from audit_app.recorder import CallContext, record_rejected

from . import actions_schema, envelope, paths, pipeline, policy, realtime_http, telemetry, websocket
from .auth import HasRelayKey
from .errors import error_response, render_exception


def client_ip(request: HttpRequest) -> str | None:
    if settings.RELAY_TRUST_X_FORWARDED_FOR:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[0].strip() or None
    return request.META.get("REMOTE_ADDR") or None


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
    """Every relayed /v1 path, every method, through the one pipeline."""

    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]

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
        super().initial(request, *args, **kwargs)  # authentication, permissions
        self.ctx.key, self.ctx.user = request.auth, request.user
        self.forwarded = django_request
        if django_request.path == envelope.ENVELOPE_PATH:
            self.forwarded = self._unwrap(django_request)
        self.api_path = paths.parse(self.forwarded.path)
        policy.check_path(self.api_path)
        policy.check_request(self.api_path, self.forwarded.method, self.ctx)

    def _unwrap(self, outer: HttpRequest) -> HttpRequest:
        if outer.method != "POST":
            raise MethodNotAllowed(outer.method)
        call = envelope.unwrap(outer)
        # From here on the call is what the envelope asked for, in the audit too.
        self.ctx.method, self.ctx.path, self.ctx.family = call.method, call.path, paths.family_hint(call.path)
        return envelope.inner_request(outer, call)

    def permission_denied(self, request: Request, message: str | None = None, code: str | None = None):
        # DRF drops the permission's message when nobody authenticated.
        if request.auth is None:
            raise NotAuthenticated(HasRelayKey.message)
        super().permission_denied(request, message, code)

    def relay(self, request: Request, *args, **kwargs):
        if websocket.is_upgrade(self.forwarded):
            return websocket.open_session(self.forwarded, self.api_path, self.ctx)
        realtime_http.check_has_body(self.forwarded, self.api_path, self.ctx)
        return pipeline.forward(self.forwarded, self.api_path, self.ctx)

    get = post = put = patch = delete = head = options = relay

    def handle_exception(self, exc: Exception):
        response = render_exception(exc)
        if hasattr(self, "ctx"):
            response["x-relay-request-id"] = self.ctx.request_id
            if not getattr(exc, "audited", False):
                record_rejected(self.ctx, response.status_code, response.relay_error)
                telemetry.call_finished(self.ctx, status=response.status_code, outcome="rejected",
                                        error=response.relay_error)
        return response



def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_response(404, f"Unknown path {request.path}.", code="unknown_url")


def server_error(request: HttpRequest) -> JsonResponse:
    return error_response(500, "The relay failed to handle this request.", type="server_error",
                          code="relay_error")
