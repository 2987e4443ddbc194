from __future__ import annotations

from datetime import timedelta

from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import Max, Min, Q, QuerySet
from django.utils import timezone

from audit_app import change_history
from audit_app.ledger import seal
from audit_app.management.stoppable import StoppableCommand
from audit_app.models import ApiCall, FileRecord, Outcome, PruneRun


def _doomed(cutoff) -> QuerySet[ApiCall]:
    """The calls this run deletes: one contiguous run of ids, after every earlier run's.

    Ids and start times do not agree exactly (concurrent workers), so "started before
    the cutoff" is not an id range, and two runs' ranges would overlap: verification
    could not tell which run removed a missing call. Instead a run deletes the sealed
    calls after the last id any earlier run deleted, up to (not including) the first
    call it must keep (started at or after the cutoff, or not sealed yet). Each run then
    owns the ids first_call_id..last_call_id outright, and verify_audit checks that
    exactly deleted_calls of them are gone. A call started before the cutoff but after
    that first kept id waits for a later run.
    """
    after = PruneRun.objects.filter(dry_run=False).aggregate(last=Max("last_call_id"))["last"] or 0
    calls = ApiCall.objects.filter(pk__gt=after)
    keep = calls.filter(Q(started_at__gte=cutoff) | Q(chain_seq__isnull=True) | Q(outcome=Outcome.PENDING))
    first_kept = keep.aggregate(first=Min("pk"))["first"]
    if first_kept is not None:
        calls = calls.filter(pk__lt=first_kept)
    # Re-checked per row: a call can commit after first_kept was read with a smaller id.
    return calls.filter(started_at__lt=cutoff, chain_seq__isnull=False).exclude(outcome=Outcome.PENDING)


class Command(StoppableCommand):
    help = (
        "Delete raw call rows older than the retention period, in small batches (short "
        "locks, bounded memory). Daily rollups, files and batches are kept, and the ledger "
        "keeps verifying: each run is recorded (who, when, what range, how many) and sealed. "
        "Only sealed calls are deleted (seal_audit runs first), as one contiguous id range after "
        "the previous run's, so that each run's accounting is exact. Run one at a time."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--older-than", type=int, required=True, metavar="DAYS",
                            help="delete calls started more than DAYS days ago")
        parser.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
        parser.add_argument("--batch-size", type=int, default=2000, help="rows per delete (default 2000)")
        parser.add_argument("--run-by", default=None, help="who is pruning (default: the OS user)")

    def handle(self, *args, older_than: int, dry_run: bool, batch_size: int, run_by: str | None,
               **options) -> None:
        if older_than < 1:
            raise CommandError("--older-than must be at least 1 day")
        self.install_stop_handlers()
        cutoff = timezone.now() - timedelta(days=older_than)
        if not dry_run:
            sealed = seal()
            self.progress(f"sealed {sealed.calls} calls before pruning")
        doomed = _doomed(cutoff)
        run = PruneRun(run_by=(run_by or change_history.current_actor())[:150], older_than_days=older_than, cutoff=cutoff,
                       dry_run=dry_run)
        if dry_run:
            span = doomed.aggregate(first=Min("pk"), last=Max("pk"))
            self.stdout.write(f"prune_audit (dry run): {doomed.count()} calls before {cutoff:%Y-%m-%d %H:%M} "
                              f"UTC would be deleted (ids {span['first']}..{span['last']})")
            return
        run.save()
        while not self.stopping:
            batch = list(doomed.order_by("pk").values_list("pk", "started_at")[:batch_size])
            if not batch:
                break
            ids = [pk for pk, _ in batch]
            with transaction.atomic():
                # Unlink file records through save(), which re-MACs them; the delete's own
                # SET NULL would be an UPDATE the sealer rejects as an edit.
                for record in FileRecord.objects.filter(call_id__in=ids):
                    record.call = None
                    record.save(update_fields=["call", "updated_at"])
                deleted = ApiCall.objects.filter(pk__in=ids).delete()[1].get("audit_app.ApiCall", 0)
            run.deleted_calls += deleted
            run.first_call_id = min(run.first_call_id or ids[0], ids[0])
            run.last_call_id = max(run.last_call_id or ids[-1], ids[-1])
            oldest, newest = min(s for _, s in batch), max(s for _, s in batch)
            run.oldest_started_at = min(filter(None, [run.oldest_started_at, oldest]))
            run.newest_started_at = max(filter(None, [run.newest_started_at, newest]))
            run.save()
            self.progress(f"  deleted {run.deleted_calls} calls so far")
        run.finished_at = timezone.now()
        run.save()
        change_history.record("pruned", run, {
            "cutoff": [None, cutoff.isoformat()], "deleted_calls": [None, run.deleted_calls],
            "call_ids": [None, f"{run.first_call_id}..{run.last_call_id}"]})
        # The run itself, and file records whose creating call is gone, go into the ledger.
        seal()
        stopped = " (stopped early)" if self.stopping else ""
        self.stdout.write(
            f"prune_audit: deleted {run.deleted_calls} calls started before {cutoff:%Y-%m-%d %H:%M} UTC "
            f"(ids {run.first_call_id}..{run.last_call_id}), recorded as prune run {run.pk}{stopped}"
        )

