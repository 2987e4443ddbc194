from __future__ import annotations

from django.contrib import admin

from .models import ApiCall


class ReadOnlyAdmin(admin.ModelAdmin):
    """Audit rows are never added, edited or deleted in the admin, not even by superusers."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ApiCall)
class ApiCallAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "user", "key", "method", "path", "model", "status", "outcome", "duration_ms")
    list_filter = ("outcome", "family", "stream", "method")
    search_fields = ("path", "model", "upstream_request_id", "user__username")
    date_hierarchy = "started_at"
    list_select_related = ("user", "key")
    show_full_result_count = False
