"""System checks for what the relay tells the outside world about itself.

RELAY_PUBLIC_URL becomes the `servers` entry of /openapi.json and the URLs of
/.well-known/ai-plugin.json. Custom GPT Actions call only a public https
server, and the default (http://localhost:8000) is neither, so a relay left on
it serves a schema the Actions editor accepts but cannot use. The warning is
given in `manage.py check --deploy` and, because gunicorn runs no system
checks, by every worker as it loads the app (relay_project/wsgi.py).
"""
from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks

log = logging.getLogger("relay.startup")

_HINT = ("Custom GPT Actions call only a public https address, which /openapi.json gives as its "
         "server: set RELAY_PUBLIC_URL to the address staff and GPTs reach the relay at, e.g. "
         "RELAY_PUBLIC_URL=https://relay.example.com (see docs/fidelity.md).")


def public_url_warnings(url: str) -> list[checks.Warning]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return [checks.Warning(f"RELAY_PUBLIC_URL is {url!r}, not an https address.", hint=_HINT,
                               id="relay.W001")]
    host = parts.hostname
    try:
        address = ipaddress.ip_address(host)
        private = not address.is_global
    except ValueError:
        private = host == "localhost" or host.endswith((".localhost", ".local", ".internal"))
    if private:
        return [checks.Warning(f"RELAY_PUBLIC_URL is {url!r}, an address only this network reaches.",
                               hint=_HINT, id="relay.W002")]
    return []


@checks.register(checks.Tags.security, deploy=True)
def check_public_url(app_configs=None, **kwargs) -> list[checks.Warning]:
    return public_url_warnings(settings.RELAY_PUBLIC_URL)


def warn_at_startup() -> None:
    """Log the warnings above once per process serving requests."""
    for warning in check_public_url():
        log.warning("%s: %s %s", warning.id, warning.msg, warning.hint)
