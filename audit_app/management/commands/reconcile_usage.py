"""manage.py reconcile_usage: the relay's figures beside OpenAI's Usage and Costs APIs."""
from __future__ import annotations

from datetime import date, timedelta

from django.core.management.base import CommandError
from django.utils import timezone

from audit_app.management.stoppable import StoppableCommand
from audit_app.reconciliation import ReconcileError, reconcile


class Command(StoppableCommand):
    help = (
        "Read OpenAI's usage (per day, model and project) and costs (per day, project and line item) "
        "for a period with OPENAI_ADMIN_KEY, and store them beside the relay's daily rollups with "
        "the differences; the admin's Reconciliation page shows them. Re-running a period replaces "
        "its figures; a failed fetch keeps the previous ones and exits non-zero. Days are UTC. "
        "Today is left out unless --until names it: OpenAI's figures for it are incomplete. Meant for a daily cron or "
        "systemd timer, e.g. `reconcile_usage --since $(date -d '3 days ago' +%F)`."
    )

    def add_arguments(self, parser) -> None:
        period = parser.add_mutually_exclusive_group()
        period.add_argument("--month", metavar="YYYY-MM", help="a calendar month (default: the current one)")
        period.add_argument("--since", metavar="YYYY-MM-DD", help="from this day up to yesterday")
        parser.add_argument("--until", metavar="YYYY-MM-DD", help="with --since: the last day (inclusive)")

    def handle(self, *args, month: str | None, since: str | None, until: str | None, **options) -> None:
        self.install_stop_handlers()
        start, end = self.period(month, since, until)
        if end < start:
            self.stdout.write(f"reconcile_usage: nothing to do ({start} has not ended yet)")
            return
        self.progress(f"reconcile_usage: {start}..{end}")
        if end > timezone.now().date() - timedelta(days=1):
            self.progress("  note: OpenAI's figures for today are incomplete until the day ends")
        try:
            run, outcome = reconcile(start, end, progress=self.progress)
        except ReconcileError as exc:
            raise CommandError(f"reconcile_usage: {exc}; previous figures kept") from None
        for finding in outcome.findings[:20]:
            self.stdout.write(f"  {finding}")
        if len(outcome.findings) > 20:
            self.stdout.write(f"  … and {len(outcome.findings) - 20} more")
        self.stdout.write(outcome.line(run))

    @staticmethod
    def period(month: str | None, since: str | None, until: str | None) -> tuple[date, date]:
        yesterday = timezone.now().date() - timedelta(days=1)
        try:
            if since:
                start = date.fromisoformat(since)
                end = date.fromisoformat(until) if until else yesterday
            else:
                if until:
                    raise CommandError("--until goes with --since")
                if month:
                    year, mon = (int(p) for p in month.split("-"))
                    start = date(year, mon, 1)
                else:
                    start = yesterday.replace(day=1)
                end = date(start.year + (start.month == 12), start.month % 12 + 1, 1) - timedelta(days=1)
        except ValueError as exc:
            raise CommandError(f"bad date: {exc} (--month YYYY-MM, --since/--until YYYY-MM-DD)") from None
        return start, end if until else min(end, yesterday)
