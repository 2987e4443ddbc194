"""Background responses and video jobs in the admin: read-only, like every audit record."""
from __future__ import annotations

from django.contrib import admin

from .admin_base import ReadOnlyAdmin, object_link
from .models import AsyncJob


@admin.register(AsyncJob)
class AsyncJobAdmin(ReadOnlyAdmin):
    list_display = ("job_id", "kind", "status", "model", "created_by", "billing", "total_tokens",
                    "video_seconds", "cost", "first_seen_at", "counted_at")
    list_filter = ("kind", "status", "billing")
    search_fields = ("=job_id",)
    list_select_related = ("created_by",)
    date_hierarchy = "first_seen_at"
    readonly_fields = ("owner_link",)

    @admin.display(description="created by")
    def owner_link(self, obj: AsyncJob) -> str:
        return object_link(obj.created_by)
