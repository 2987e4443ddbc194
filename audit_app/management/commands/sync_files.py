from __future__ import annotations

from urllib.parse import quote

import requests
from django.core.management.base import CommandError
from django.utils import timezone

from audit_app.file_records import mark_deleted, record_file
from audit_app.management.stoppable import StoppableCommand
from audit_app.models import FileOrigin, FileRecord
from relay_project.lib import upstream

PAGE = 10000


def projects() -> list[str]:
    """The relay's own project ("": its default) and each team's, when they are sent."""
    from relay_project.lib.upstream import team_projects_allowed
    from proxy_app.models import Team

    teams = Team.objects.exclude(openai_project_id="").values_list("openai_project_id", flat=True)
    return ["", *sorted(set(teams))] if team_projects_allowed() else [""]


class Command(StoppableCommand):
    help = (
        "Reconcile file records with the OpenAI file list: files gone upstream are marked "
        "deleted, files past their expiry expired, and files created outside the relay are "
        "added as unowned (origin: seen upstream only)."
    )

    def handle(self, *args, **options) -> None:
        self.install_stop_handlers()
        # Files first seen after this moment may be missing from pages read before they were
        # uploaded: they are never taken for deleted.
        started = timezone.now()
        seen: set[str] = set()
        added = 0
        # OpenAI lists a project's files only: read the relay's default project and every
        # team's, or a team's files would be taken for deleted.
        for project in projects():
            after = None
            while not self.stopping:
                page = self.list_page(after, project)
                items = [obj for obj in page.get("data") or []
                         if isinstance(obj, dict) and isinstance(obj.get("id"), str)]
                for obj in items:
                    if not FileRecord.objects.filter(file_id=obj["id"]).exists():
                        added += 1
                    record_file(obj, origin=FileOrigin.UPSTREAM_ONLY)
                    seen.add(obj["id"])
                self.progress(f"  {len(seen)} upstream files read")
                if not page.get("has_more") or not items:
                    break
                after = items[-1]["id"]
        if self.stopping:
            self.stdout.write("sync_files: stopped before the list was read; nothing marked")
            return
        known = FileRecord.objects.filter(deleted_at__isnull=True, first_seen_at__lt=started)
        gone = [f for f in known.values_list("file_id", flat=True) if f not in seen]
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

    def list_page(self, after: str | None, project: str = "") -> dict:
        query = f"limit={PAGE}" + (f"&after={quote(after)}" if after else "")
        try:
            resp = upstream.get("/files", query, project=project)
            if resp.status_code != 200:
                raise CommandError(f"sync_files: upstream answered {resp.status_code} listing files; nothing marked")
            page = resp.json()
        except requests.RequestException as exc:
            raise CommandError(f"sync_files: upstream unreachable ({type(exc).__name__}); nothing marked") from None
        except ValueError:
            raise CommandError("sync_files: upstream's file list is not JSON; nothing marked") from None
        if not isinstance(page, dict):
            raise CommandError("sync_files: upstream's file list is not an object; nothing marked")
        return page
