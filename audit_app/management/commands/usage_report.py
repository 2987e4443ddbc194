"""A monthly usage statement a finance user can reconcile with OpenAI's invoice."""
from __future__ import annotations

import csv
import json
from datetime import date
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Case, F, Sum, Value, When
from django.utils import timezone

from audit_app.models import UsageDaily

_GROUPS = {"user": "user__username", "model": "model", "key": "key__prefix", "team": "key__team__group__name"}
# Columns summed from the daily rollups, in report order.
SUMS = ("calls", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
        "audio_input_tokens", "audio_output_tokens", "image_input_tokens", "image_output_tokens",
        "images", "audio_seconds", "characters", "web_search_calls", "file_search_calls",
        "code_interpreter_sessions", "image_generation_calls", "tool_cost", "cost",
        "unpriced_calls", "unknown_calls")
_MONEY = frozenset({"tool_cost", "cost"})
# The table's columns: (heading, key, width); the CSV and JSON carry every column of SUMS.
_TABLE = (("calls", "calls", 8), ("input", "input_tokens", 12), ("cached", "cached_input_tokens", 11),
          ("output", "output_tokens", 11), ("audio in", "audio_input_tokens", 9),
          ("audio out", "audio_output_tokens", 9), ("img in", "image_input_tokens", 9),
          ("img out", "image_output_tokens", 9), ("images", "images", 7), ("audio s", "audio_seconds", 10),
          ("chars", "characters", 9), ("searches", "web_search_calls", 8),
          ("containers", "code_interpreter_sessions", 10), ("tool fees", "tool_cost", 11))


class Command(BaseCommand):
    help = (
        "Print a monthly usage statement from the daily rollups, by user, model or key, with "
        "batch and interactive use and each service tier on rows of their own. Costs are USD "
        "of priced calls; calls whose cost is unknown (no price for a dimension they used, or "
        "usage the relay could not read) are counted in their own columns and never shown as 0."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--month", metavar="YYYY-MM", help="default: the current month")
        parser.add_argument("--by", choices=sorted(_GROUPS), default="user")
        parser.add_argument("--format", choices=("table", "csv", "json"), default="table", dest="fmt",
                            help="table (default), or csv / json on stdout")
        parser.add_argument("--csv", action="store_const", const="csv", dest="fmt", help="same as --format csv")

    def handle(self, *args, month: str | None, by: str, fmt: str, **options) -> None:
        first = self._month(month)
        after = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
        rows = list(
            UsageDaily.objects.filter(date__gte=first, date__lt=after)
            .annotate(mode=Case(When(family="batches", then=Value("batch")), default=Value("interactive")))
            .values("mode", "service_tier", name=F(_GROUPS[by]))
            .annotate(**{s: Sum(s) for s in SUMS})
            .order_by("name", "mode", "service_tier")
        )
        for r in rows:
            r["name"] = r["name"] or "-"
            r["service_tier"] = r["service_tier"] or "-"
            for s in SUMS:
                r[s] = r[s] or (Decimal(0) if s in _MONEY or s == "audio_seconds" else 0)
        totals = {"name": "TOTAL", "mode": "", "service_tier": "", **{s: sum(r[s] for r in rows) for s in SUMS}}
        if fmt == "csv":
            self._csv(by, rows, totals)
        elif fmt == "json":
            self._json(first, by, rows, totals)
        else:
            self._table(first, by, rows, totals)

    @staticmethod
    def _month(month: str | None) -> date:
        if not month:
            return timezone.localdate().replace(day=1)
        try:
            year, mon = (int(p) for p in month.split("-"))
            return date(year, mon, 1)
        except ValueError as exc:
            raise CommandError("--month must be YYYY-MM") from exc

    @staticmethod
    def cost_value(r: dict) -> Decimal | None:
        """The row's known cost; None when every billed call of it has an unknown cost.

        A row of only unpriced or usage-unknown calls has no known cost: it is None
        (empty in CSV, null in JSON, "unpriced" in the table), never 0.
        """
        unknown = r["unpriced_calls"] + r["unknown_calls"]
        return None if unknown and not r["cost"] else r["cost"]

    def _csv(self, by: str, rows: list[dict], totals: dict) -> None:
        writer = csv.writer(self.stdout)
        writer.writerow([by, "mode", "service_tier", *SUMS, "cost_complete"])
        for r in [*rows, totals]:
            values = [r["name"], r["mode"], r["service_tier"]]
            for s in SUMS:
                v = self.cost_value(r) if s == "cost" else r[s]
                values.append("" if v is None else v)
            values.append(str(not (r["unpriced_calls"] or r["unknown_calls"])).lower())
            writer.writerow(values)

    def _json(self, first: date, by: str, rows: list[dict], totals: dict) -> None:
        def out(r: dict) -> dict[str, Any]:
            d: dict[str, Any] = {by: r["name"], "mode": r["mode"], "service_tier": r["service_tier"]}
            for s in SUMS:
                v = self.cost_value(r) if s == "cost" else r[s]
                d[s] = str(v) if isinstance(v, Decimal) else v
            d["cost_complete"] = not (r["unpriced_calls"] or r["unknown_calls"])
            return d

        json.dump({"month": f"{first:%Y-%m}", "by": by, "currency": "USD",
                   "rows": [out(r) for r in rows], "total": out(totals)}, self.stdout, indent=1)
        self.stdout.write("")

    def _table(self, first: date, by: str, rows: list[dict], totals: dict) -> None:
        name_width = max([len(by), 5, *(len(r["name"]) for r in rows)])  # full model names
        tier_width = max([4, *(len(r["service_tier"]) for r in rows)])
        self.stdout.write(f"Usage statement for {first:%B %Y}, by {by} (USD; unknown costs counted apart)")
        header = (f"{by:<{name_width}} {'mode':<11} {'tier':<{tier_width}} "
                  + " ".join(f"{h:>{w}}" for h, _, w in _TABLE) + f" {'cost USD':>14} {'unpriced':>8} {'unknown':>7}")
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for r in [*rows, totals]:
            cells = []
            for _, key, w in _TABLE:
                v = r[key]
                cells.append(f"{v:>{w}.6f}" if key == "tool_cost" else f"{v:>{w}}")
            cost = self.cost_value(r)
            shown = "unpriced" if cost is None else f"{cost:.6f}"
            self.stdout.write(f"{r['name']:<{name_width}} {r['mode']:<11} {r['service_tier']:<{tier_width}} "
                              + " ".join(cells) + f" {shown:>14} {r['unpriced_calls']:>8} {r['unknown_calls']:>7}")
