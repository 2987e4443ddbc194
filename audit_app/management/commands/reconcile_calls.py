from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from audit_app.models import ApiCall, Outcome


class Command(BaseCommand):
    help = (
        "Mark calls left pending (a worker killed mid-request, a lost database write) "
        "as interrupted once they are older than the pending timeout."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--older-than", type=int, default=None, metavar="SECONDS",
            help="pending rows started longer ago than this are interrupted "
                 "(default: RELAY_PENDING_TIMEOUT_SECONDS)",
        )
        parser.add_argument("--dry-run", action="store_true", help="count, change nothing")

    def handle(self, *args, older_than: int | None, dry_run: bool, **options) -> None:
        seconds = settings.RELAY_PENDING_TIMEOUT_SECONDS if older_than is None else older_than
        now = timezone.now()
        stale = ApiCall.objects.filter(
            outcome=Outcome.PENDING, started_at__lt=now - timedelta(seconds=seconds)
        )
        if dry_run:
            self.stdout.write(f"{stale.count()} pending calls older than {seconds}s would be interrupted.")
            return
        count = stale.update(
            outcome=Outcome.INTERRUPTED, finished_at=now,
            error="interrupted: the relay stopped before the call finished",
        )
        self.stdout.write(f"reconciled: {count} pending calls older than {seconds}s marked interrupted.")
