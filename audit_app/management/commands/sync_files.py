from __future__ import annotations

from django.utils import timezone

from audit_app.file_records import mark_deleted, record_file
from audit_app.management.stoppable import StoppableCommand
from audit_app.models import FileOrigin, FileRecord
from proxy_app import upstream
from proxy_app.headers import upstream_credentials

PAGE = 10000


class Command(StoppableCommand):
    help = (
        "Reconcile file records with the OpenAI file list: files gone upstream are marked "
        "deleted, files past their expiry expired, and files created outside the relay are "
        "added as unowned (origin: seen upstream only)."
    )

    def handle(self, *args, **options) -> None:
        self.install_stop_handlers()
        seen: set[str] = set()
        added = 0
        after = None
        while not self.stopping:
            query = f"limit={PAGE}" + (f"&after={after}" if after else "")
            resp = upstream.session().get(upstream.url_for("/files", query), headers=upstream_credentials(),
                                          timeout=upstream.timeouts())
            resp.raise_for_status()
            page = resp.json()
            for obj in page.get("data", []):
                if not FileRecord.objects.filter(file_id=obj.get("id")).exists():
                    added += 1
                record_file(obj, origin=FileOrigin.UPSTREAM_ONLY)
                seen.add(obj.get("id"))
            self.progress(f"  {len(seen)} upstream files read")
            if not page.get("has_more") or not page.get("data"):
                break
            after = page["data"][-1]["id"]
        if self.stopping:
            self.stdout.write("sync_files: stopped before the list was read; nothing marked")
            return
        gone = [f for f in FileRecord.objects.filter(deleted_at__isnull=True).values_list("file_id", flat=True)
                if f not in seen]
        for file_id in gone:
            mark_deleted(file_id)
        expired = 0
        for record in FileRecord.objects.filter(deleted_at__isnull=True, expires_at__lt=timezone.now()).exclude(
                status="expired"):
            record.status = "expired"
            record.save(update_fields=["status", "updated_at"])
            expired += 1
        self.stdout.write(f"sync_files: {len(seen)} upstream files, {added} added unowned, "
                          f"{len(gone)} marked deleted, {expired} marked expired")
