"""Template filters of the usage dashboard."""
from __future__ import annotations

from decimal import Decimal

from django import template
from django.utils.html import format_html

from audit_app.dashboard import format_int, format_usd

register = template.Library()


@register.filter
def usd(value: Decimal | None) -> str:
    return format_usd(value)


@register.filter
def num(value: int | None) -> str:
    return format_int(value)


@register.filter
def percent(share: float) -> str:
    """A share of 0..1 as a CSS width, e.g. "37.5%" (display only: the figures stay Decimal)."""
    return f"{max(0.0, min(float(share), 1.0)) * 100:.1f}%"


@register.filter
def linked(text: object, url: str | None) -> str:
    """The text as a link to `url`, or plain text when there is no page to go to (no
    permission to view it): staff never get a link that answers 403."""
    return format_html('<a href="{}">{}</a>', url, text) if url else format_html("{}", text)


@register.filter
def ms(value: float | None) -> str:
    from audit_app.errors import format_ms

    return format_ms(value)


@register.filter
def rate(value) -> str:
    return "—" if value is None else f"{value}%"
