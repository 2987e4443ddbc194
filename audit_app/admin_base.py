"""What every audit ModelAdmin shares: read-only, and cheap on big tables."""
from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin import ShowFacets
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from .admin_dates import calendar_hierarchy
from .admin_pagination import CappedPaginator


def change_url(obj: Any) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])


def changelist_url(model: Any, **params: Any) -> str:
    meta = model._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def link(url: str, text: Any) -> str:
    return format_html('<a href="{}">{}</a>', url, text)


def object_link(obj: Any, text: Any = None) -> str:
    if obj is None:
        return "-"
    return link(change_url(obj), text if text is not None else obj)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Audit rows are never added, edited or deleted in the admin, not even by
    superusers: only the retention command (prune_audit) removes them."""

    actions = None
    paginator = CappedPaginator
    # The full count and facet counts are COUNT(*) over the whole table.
    show_full_result_count = False
    show_facets = ShowFacets.NEVER
    list_per_page = 100

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        cl = context.get("cl") if context else None
        if cl is not None:
            # Still lazy: the TemplateResponse renders after this.
            context["calendar"] = calendar_hierarchy(cl)
            if hasattr(self, "export_url"):
                context["export_url"] = self.export_url(cl)
        return response
