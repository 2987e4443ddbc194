"""Template filters of the usage dashboard."""
from __future__ import annotations

from decimal import Decimal

from django import template

from audit_app.dashboard_format import format_int, format_usd

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
