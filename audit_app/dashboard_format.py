"""How the dashboard writes money and counts: Decimal in, text out, no float on the way."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
SMALL = Decimal("0.0001")


def format_usd(value: Decimal | None) -> str:
    """Dollars and cents; amounts under a cent keep four decimals (an embedding call costs $0.0000004)."""
    if value is None:
        return "—"
    value = Decimal(value)
    if value == 0:
        return "$0.00"
    if abs(value) < SMALL:
        return "< $0.0001"
    quantum = CENT if abs(value) >= CENT else SMALL
    return f"${value.quantize(quantum, rounding=ROUND_HALF_UP):,}"


def format_int(value: int | None) -> str:
    return "—" if value is None else f"{int(value):,}"
