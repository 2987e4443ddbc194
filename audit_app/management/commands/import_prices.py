from __future__ import annotations

from datetime import datetime, time
from datetime import timezone as dt_timezone
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from audit_app.models import ModelPrice
from audit_app.pricing import import_map, load_map


class Command(BaseCommand):
    help = (
        "Import model prices from a file in LiteLLM's price-map format (USD per token). "
        "Each changed price becomes a new row effective from --effective (default: now); "
        "past calls keep the price they were made at. Run `reprice` to re-cost past calls."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--effective", metavar="YYYY-MM-DD", default=None,
                            help="date the new prices take effect (UTC midnight)")

    def handle(self, *args, file: Path, effective: str | None, **options) -> None:
        try:
            entries = load_map(file)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {file}: {exc}") from exc
        when = timezone.now()
        if effective:
            try:
                day = datetime.strptime(effective, "%Y-%m-%d").date()
            except ValueError as exc:
                raise CommandError("--effective must be YYYY-MM-DD") from exc
            when = datetime.combine(day, time.min, tzinfo=dt_timezone.utc)
        result = import_map(ModelPrice, entries, when, f"import: {file.name}")
        self.stdout.write(
            f"prices: {result.created} new, {result.unchanged} unchanged, "
            f"{result.skipped} skipped, effective {when:%Y-%m-%d %H:%M} UTC"
        )
