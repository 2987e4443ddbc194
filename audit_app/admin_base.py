"""What every audit ModelAdmin shares: read-only, and cheap on big tables."""
from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin import ShowFacets
from django.contrib.admin.views.main import ORDER_VAR, ChangeList
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from .admin_dates import calendar_hierarchy
from .admin_pagination import CappedPaginator
from .dashboard import VISIBLE_MODELS, visible_models


def _visible(model: Any) -> bool:
    """May the current admin user open this model's pages? (True outside an admin view.)"""
    allowed = VISIBLE_MODELS.get()
    return allowed is None or model._meta.label in allowed


def change_url(obj: Any) -> str | None:
    """The object's admin page, or None when the current user may not view it."""
    meta = obj._meta
    if not _visible(obj):
        return None
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])


def changelist_url(model: Any, **params: Any) -> str | None:
    """The model's changelist with these filters, or None when the current user may not view it."""
    meta = model._meta
    if not _visible(model):
        return None
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def link(url: str | None, text: Any) -> str:
    """A link, or the bare text when there is no page the user may open: no link leads to a 403."""
    if url is None:
        return format_html("{}", text)
    return format_html('<a href="{}">{}</a>', url, text)


def object_link(obj: Any, text: Any = None) -> str:
    if obj is None:
        return "-"
    return link(change_url(obj), text if text is not None else obj)


class LinkPermissionsMixin:
    """Renders admin pages with the user's view permissions at hand, so that change_url,
    changelist_url and link() offer only pages the user can open. The response is
    rendered here, inside that context, rather than later by the handler."""

    def _with_links(self, request, view, *args, **kwargs):
        token = VISIBLE_MODELS.set(visible_models(request.user))
        try:
            response = view(request, *args, **kwargs)
            if hasattr(response, "render") and not getattr(response, "is_rendered", True):
                response.render()
            return response
        finally:
            VISIBLE_MODELS.reset(token)

    def changelist_view(self, request, extra_context=None):
        return self._with_links(request, super().changelist_view, extra_context)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return self._with_links(request, super().changeform_view, object_id, form_url, extra_context)


class IndexedOrderingChangeList(ChangeList):
    """Honours `?o=` only for columns in `sortable_by`: Django itself sorts by any column
    named in the URL, and sorting a million calls by an unindexed column takes seconds."""

    def get_ordering(self, request, queryset):
        order = self.params.get(ORDER_VAR)
        if order and self.sortable_by is not None:
            kept = []
            for part in str(order).split("."):
                index = part.lstrip("-")
                if not index.isdigit() or int(index) >= len(self.list_display):
                    continue
                if self.list_display[int(index)] in self.sortable_by:
                    kept.append(part)
            if kept:
                self.params[ORDER_VAR] = ".".join(kept)
            else:
                self.params.pop(ORDER_VAR, None)
        return super().get_ordering(request, queryset)


class ReadOnlyAdmin(LinkPermissionsMixin, admin.ModelAdmin):
    """Audit rows are never added, edited or deleted in the admin, not even by
    superusers: only the retention command (prune_audit) removes them."""

    actions = None
    paginator = CappedPaginator
    # The full count and facet counts are COUNT(*) over the whole table.
    show_full_result_count = False
    show_facets = ShowFacets.NEVER
    list_per_page = 100
    # Only indexed columns (each admin names its own); the default ordering still applies.
    sortable_by: tuple[str, ...] = ()

    def get_changelist(self, request, **kwargs):
        return IndexedOrderingChangeList

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        return self._with_links(request, self._changelist_view, extra_context)

    def _changelist_view(self, request, extra_context=None):
        response = admin.ModelAdmin.changelist_view(self, request, extra_context)
        context = getattr(response, "context_data", None)
        cl = context.get("cl") if context else None
        if cl is not None:
            # Still lazy: the TemplateResponse renders after this.
            context["calendar"] = calendar_hierarchy(cl)
            if hasattr(self, "export_url"):
                context["export_url"] = self.export_url(cl)
            if hasattr(self, "totals"):
                context["totals"] = self.totals(request, cl)
        return response
