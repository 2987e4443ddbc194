"""Last line of defence: no client ever gets Django's HTML error page or a traceback."""
from __future__ import annotations

from typing import Callable

from django.http import HttpRequest, HttpResponse

from .errors import render_exception


class JsonErrorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if request.path.startswith("/admin/"):
            return None  # the admin keeps Django's own error handling
        return render_exception(exc)
