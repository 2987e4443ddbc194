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


@checks.register()
def check_time_zone(app_configs=None, **kwargs) -> list[checks.Warning]:
    """Rollup days follow TIME_ZONE; OpenAI's usage and costs, and the accounting rules
    (docs/accounting.md), are by UTC day. Another zone splits days differently from the
    invoice, so reconcile_usage refuses to compare them."""
    if settings.TIME_ZONE == "UTC":
        return []
    return [checks.Warning(
        f"TIME_ZONE is {settings.TIME_ZONE!r}: daily rollups, budgets' months and job billing days "
        "follow it, while OpenAI's figures are by UTC day; reconcile_usage will refuse to run.",
        hint="Leave TIME_ZONE at UTC (the default); the admin still shows times as stored.",
        id="relay.W003")]
