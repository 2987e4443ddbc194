from __future__ import annotations

from datetime import datetime, time
from datetime import timezone as dt_timezone

from django.core.management.base import BaseCommand, CommandError

from audit_app.ledger import verify


class Command(BaseCommand):
    help = (
        "Walk the tamper-evident ledger and check every entry and the rows it seals. "
        "Reports the first record that was edited, deleted or inserted out of order, and "
        "exits non-zero if it finds one."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", metavar="YYYY-MM-DD", help="start at entries sealed on or after this day")

    def handle(self, *args, since: str | None, **options) -> None:
        start = None
        if since:
            try:
                start = datetime.combine(datetime.strptime(since, "%Y-%m-%d").date(), time.min,
                                         tzinfo=dt_timezone.utc)
            except ValueError as exc:
                raise CommandError("--since must be YYYY-MM-DD") from exc
        result = verify(start)
        if not result.ok:
            self.stderr.write(f"verify_audit: FAILED after {result.checked} entries: {result.problem}")
            raise SystemExit(1)
        self.stdout.write(f"verify_audit: OK, {result.checked} ledger entries verified")
