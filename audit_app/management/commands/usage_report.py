from __future__ import annotations

import csv
from datetime import date

from django.core.management.base import BaseCommand, CommandError
from django.db.models import F, Sum
from django.utils import timezone

from audit_app.models import UsageDaily

_GROUPS = {"user": "user__username", "model": "model", "key": "key__prefix", "team": "key__team__group__name"}
_SUMS = ("calls", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
         "total_tokens", "cost", "unpriced_calls", "unknown_calls")


class Command(BaseCommand):
    help = "Print a monthly usage statement from the daily rollups, by user, model or key."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--month", metavar="YYYY-MM", help="default: the current month")
        parser.add_argument("--by", choices=sorted(_GROUPS), default="user")
        parser.add_argument("--csv", action="store_true", dest="as_csv", help="CSV on stdout instead of a table")

    def handle(self, *args, month: str | None, by: str, as_csv: bool, **options) -> None:
        first = self._month(month)
        after = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
        rows = list(
            UsageDaily.objects.filter(date__gte=first, date__lt=after)
            .values(name=F(_GROUPS[by]))
            .annotate(**{s: Sum(s) for s in _SUMS})
            .order_by("-cost", "name")
        )
        totals = {s: sum((r[s] or 0) for r in rows) for s in _SUMS}
        if as_csv:
            self._csv(by, rows, totals)
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

    def _csv(self, by: str, rows: list[dict], totals: dict) -> None:
        writer = csv.writer(self.stdout)
        writer.writerow([by, *_SUMS])
        for r in rows:
            writer.writerow([r["name"] or "", *(r[s] for s in _SUMS)])
        writer.writerow(["TOTAL", *(totals[s] for s in _SUMS)])

    def _table(self, first: date, by: str, rows: list[dict], totals: dict) -> None:
        self.stdout.write(f"Usage statement for {first:%B %Y}, by {by}")
        header = f"{by:<28} {'calls':>9} {'input':>12} {'cached':>12} {'output':>12} {'cost USD':>14} {'unpriced':>9} {'unknown':>9}"
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        for r in [*rows, {"name": "TOTAL", **totals}]:
            self.stdout.write(
                f"{(r['name'] or '-')[:28]:<28} {r['calls'] or 0:>9} {r['input_tokens'] or 0:>12} "
                f"{r['cached_input_tokens'] or 0:>12} {r['output_tokens'] or 0:>12} "
                f"{(r['cost'] or 0):>14.6f} {r['unpriced_calls'] or 0:>9} {r['unknown_calls'] or 0:>9}"
            )
