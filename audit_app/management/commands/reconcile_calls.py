from __future__ import annotations

import hmac
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit_app import budgets, latency, rollups, spool
from audit_app.ledger import call_mac
from audit_app.management.stoppable import StoppableCommand
from audit_app.models import ApiCall, AsyncJob, Billing, Outcome
from audit_app.recorder import replay_journal
from audit_app.operations import billed_on_call

BATCH = 500


class Command(StoppableCommand):
    help = (
        "Replay audit writes the database refused (journaled in RELAY_AUDIT_SPOOL; each applied "
        "exactly once, even after a replay killed part-way; a second run at once leaves the journal "
        "to the first), keep the journal's reserve against a full disk, then mark "
        "calls still left pending (a worker killed mid-request) as interrupted once they are "
        "older than the pending timeout. Run it from cron. A pending row that does not carry "
        "the relay's MAC (inserted by SQL) is left as it is and reported."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--older-than", type=int, default=None, metavar="SECONDS",
            help="pending rows started longer ago than this are interrupted "
                 "(default: RELAY_PENDING_TIMEOUT_SECONDS)",
        )
        parser.add_argument("--dry-run", action="store_true", help="count, change nothing")

    def handle(self, *args, older_than: int | None, dry_run: bool, **options) -> None:
        self.install_stop_handlers()
        if not dry_run:
            try:
                applied, failing = replay_journal()
            except spool.JournalBusy:
                self.stdout.write("journal: another reconcile_calls is replaying it; left to that one")
            else:
                if applied or failing:
                    self.stdout.write(f"journal: {applied} audit writes replayed, {failing} still failing")
            if not spool.ensure_reserve():
                self.stderr.write(f"journal: no room for its reserve next to {spool.path()}: "
                                  "a full disk could lose audit writes")
        seconds = settings.RELAY_PENDING_TIMEOUT_SECONDS if older_than is None else older_than
        now = timezone.now()
        stale = ApiCall.objects.filter(
            outcome=Outcome.PENDING, started_at__lt=now - timedelta(seconds=seconds)
        ).order_by("pk")
        if dry_run:
            self.stdout.write(f"{stale.count()} pending calls older than {seconds}s would be interrupted.")
            return
        count = 0
        touched: set[str] = set()
        forged: list[int] = []
        last_id = 0
        while not self.stopping:
            rows = list(stale.filter(pk__gt=last_id).select_related("key__team", "user__relay_limit")[:BATCH])
            if not rows:
                break
            last_id = rows[-1].pk
            with transaction.atomic():
                # Calls that created a job (a background stream cut by the kill): their usage is the job's.
                job_calls = set(AsyncJob.objects.filter(call_id__in=[r.pk for r in rows])
                                .values_list("call_id", flat=True))
                for row in rows:
                    # Only a row the relay opened: finishing a row forged by SQL would give
                    # it a valid MAC and the sealer would seal it.
                    if not hmac.compare_digest(row.row_mac, call_mac(row)):
                        forged.append(row.pk)
                        continue
                    row.outcome, row.finished_at = Outcome.INTERRUPTED, now
                    row.error = "interrupted: the relay stopped before the call finished"
                    # A generating call went upstream and may have been billed: usage unknown, never
                    # free; unless it created a job, which is billed when it ends (audit_app.jobs).
                    billed = billed_on_call(row.method, row.path) and row.pk not in job_calls
                    row.billing = Billing.UNKNOWN if billed else Billing.FREE
                    if not billed:  # the budget's hold the row carries (open_call) stays only on a cost unknown
                        row.budget_held = None
                    row.row_mac = call_mac(row)  # the relay's own write: keep the row verifiable
                    # Only if still pending: the call may have ended since it was read.
                    if ApiCall.objects.filter(pk=row.pk, outcome=Outcome.PENDING).update(
                            outcome=row.outcome, finished_at=now, error=row.error, billing=row.billing,
                            budget_held=row.budget_held, row_mac=row.row_mac):
                        rollups.add_call(row)  # a finished call with a key is in the rollups
                        latency.add_call(row)  # and every finished call in the error rate
                        count += 1
                        if row.budget_held:  # now in the rollups: budgets read them again
                            touched.update(owner for owner, _, _ in budgets.budget_of(row.key, row.user))
            budgets.mark_spend_stale(sorted(touched))
            touched.clear()
            self.progress(f"  {count} interrupted so far")
        for pk in forged:
            self.stderr.write(f"NOT reconciled: pending call {pk} does not match its MAC "
                              f"(not opened by the relay; run verify_audit)")
        stopped = " (stopped early)" if self.stopping else ""
        self.stdout.write(f"reconciled: {count} pending calls older than {seconds}s marked interrupted, "
                          f"{len(forged)} left as they do not match their MAC{stopped}.")
