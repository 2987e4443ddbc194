from __future__ import annotations

from datetime import datetime, time
from datetime import timezone as dt_timezone

from django.core.management.base import CommandError

from audit_app.ledger import verify
from audit_app.management.stoppable import StoppableCommand


class Command(StoppableCommand):
    help = (
        "Walk the tamper-evident ledger and check every entry and the rows it seals, then "
        "the file, batch and prune records and the calls not sealed yet. Reports every record "
        "that was edited, deleted or inserted out of order (the first 100 listed, all counted). "
        "Exit status: 0 verified, 1 a problem was found, 2 stopped (SIGTERM/SIGINT) before the end: no problem so far, "
        "but not a verification (and not recorded as one)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", metavar="YYYY-MM-DD", help="start at entries sealed on or after this day")
        parser.add_argument("--progress-every", type=int, default=100_000, metavar="N",
                            help="print a progress line every N ledger entries (default 100000)")

    def handle(self, *args, since: str | None, progress_every: int, **options) -> None:
        start = None
        if since:
            try:
                start = datetime.combine(datetime.strptime(since, "%Y-%m-%d").date(), time.min,
                                         tzinfo=dt_timezone.utc)
            except ValueError as exc:
                raise CommandError("--since must be YYYY-MM-DD") from exc
        if progress_every < 1:
            raise CommandError("--progress-every must be at least 1")
        self.install_stop_handlers()
        result = verify(start, progress=self.progress, progress_every=progress_every,
                        stop=lambda: self.stopping)
        if result.stopped:
            self.stderr.write(f"verify_audit: STOPPED after {result.checked} entries, no problem found so far; "
                              f"this was not a full verification")
            raise SystemExit(2)
        if not result.ok:
            for finding in result.findings:
                self.stderr.write(f"  {finding}")
            if result.count > len(result.findings):
                self.stderr.write(f"  … and {result.count - len(result.findings)} more")
            self.stderr.write(f"verify_audit: FAILED, {result.count} finding(s) in {result.checked} entries")
            raise SystemExit(1)
        self.stdout.write(f"verify_audit: OK, {result.checked} ledger entries verified")
