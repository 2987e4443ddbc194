"""The audit trail in the admin: read-only, linked, filterable, exportable, fast at millions of rows.

Lists stay fast on big tables because nothing counts or scans the whole table
(audit_app.admin_toolkit): a capped paginator, a date hierarchy from MIN/MAX,
filters whose choices come from small tables, exact-match search on indexed ids,
and sorting only on indexed columns.
"""
from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from proxy_app.models import RelayKey, Team

from .admin_toolkit import (CsvExportMixin, HasFailuresFilter, LinkPermissionsMixin, OutcomeClassFilter,
                            ReadOnlyAdmin, ResultErrorFilter, StatusClassFilter, call_totals, change_url,
                            changelist_url, date_range, key_filter, link, min_ms_filter, object_link,
                            rollup_values_filter, selected_only_filter, usage_totals, user_filter)
from .models import (AdminAction, ApiCall, AsyncJob, BatchRecord, BatchResult, Billing, BudgetAlert, ChainState,
                     FileRecord, LedgerEntry, LedgerKind, Match, ModelPrice, PruneRun, ReconciledCost,
                     ReconciledDay, ReconciledUsage, ReconcileRun, UploadRecord, UsageDaily)


# Django's navigation sidebar takes 300 px of a 1440 px screen from every list; the
# breadcrumbs and the index lead to the same pages, and the lists need the width.
admin.site.enable_nav_sidebar = False


def _user_calls_link(user) -> str:
    if user is None:
        return "-"
    return link(changelist_url(ApiCall, user__id__exact=user.pk), user.get_username())


def _money(value) -> str:
    if value is None:
        return "-"
    if 0 < abs(value) < Decimal("0.000001"):  # an embedding call: $0.0000004, not $0.000000
        return "$" + f"{value:.10f}".rstrip("0")
    return f"${value:,.6f}"


_BILLING_LABELS = {Billing.FREE: "free", Billing.UNPRICED: "unpriced", Billing.UNKNOWN: "usage unknown"}


def billed_cost(obj) -> str:
    """The cost as the billing state has it: never $0 for a cost the relay does not know."""
    billing = getattr(obj, "billing", "")
    if billing in _BILLING_LABELS:
        return format_html('<span class="billing-{}" title="{}">{}</span>', billing,
                           Billing(billing).label, _BILLING_LABELS[billing])
    if getattr(obj, "unpriced", False):
        return mark_safe('<span class="billing-unpriced">unpriced</span>')
    return _money(obj.cost)


def _when(value) -> str:
    """A list's date and time, compact: 2026-11-30 19:07 (local time)."""
    return "-" if value is None else timezone.localtime(value).strftime("%Y-%m-%d %H:%M")


_OUTCOME_SHORT = {"ok": "ok", "upstream_error": "upstream error", "rejected": "rejected", "failed": "failed",
                  "client_closed": "client closed", "interrupted": "interrupted", "pending": "pending"}


def _ms(value) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _short(text: str, n: int) -> str:
    if len(text) <= n:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[:n - 1])


# --- calls ------------------------------------------------------------------------


@admin.register(ApiCall)
class ApiCallAdmin(CsvExportMixin, ReadOnlyAdmin):
    # What a team admin reads first, in 1440 px with the filter column open; the path,
    # method and ids are one click away on the call's page.
    list_display = ("started", "user_link", "model_short", "status_outcome", "tokens", "cost_usd",
                    "duration", "ttfb", "family_short", "key_short")
    list_filter = (
        date_range("started_at", "started"),
        user_filter("user"),
        key_filter("key", user_field="user"),
        rollup_values_filter("model", "model"),
        rollup_values_filter("family", "endpoint family"),
        "outcome",
        OutcomeClassFilter,
        StatusClassFilter,
        "billing",
        "unpriced",
        min_ms_filter("duration_ms", "duration"),
        min_ms_filter("ttfb_ms", "time to first byte"),
    )
    # Ids are matched exactly, on indexes; see get_search_results.
    search_fields = ("=upstream_request_id", "=relay_request_id")
    search_help_text = "An upstream or relay request id, a username, or a key prefix (tr-…)."
    date_hierarchy = "started_at"
    list_select_related = ("user", "key")
    # Only indexed orderings: sorting a million rows by an unindexed column takes seconds.
    sortable_by = ("started",)
    fieldsets = (
        (None, {"fields": ("started_at", "finished_at", "duration_ms", "ttfb_ms", "outcome", "user", "key")}),
        ("Request", {"fields": ("method", "path", "family", "model", "stream", "client_ip", "user_agent",
                                "relay_request_id", "upstream_request_id", "bytes_in")}),
        ("Response", {"fields": ("upstream_status", "status", "bytes_out", "error")}),
        ("Usage and cost", {"fields": ("input_tokens", "cached_input_tokens", "output_tokens",
                                       "reasoning_tokens", "total_tokens", "images", "audio_seconds",
                                       "characters", "cost", "billing", "unpriced", "price")}),
        ("Audit", {"fields": ("sealed",)}),
    )
    readonly_fields = ("sealed",)
    csv_columns = (
        ("id", "id"), ("started_at", "started_at"), ("finished_at", "finished_at"),
        ("duration_ms", "duration_ms"), ("ttfb_ms", "ttfb_ms"), ("user", "user__username"), ("key_prefix", "key__prefix"),
        ("key_name", "key__name"), ("method", "method"), ("path", "path"), ("family", "family"),
        ("model", "model"), ("stream", "stream"), ("upstream_status", "upstream_status"),
        ("status", "status"), ("outcome", "outcome"), ("relay_request_id", "relay_request_id"),
        ("upstream_request_id", "upstream_request_id"), ("input_tokens", "input_tokens"),
        ("cached_input_tokens", "cached_input_tokens"), ("output_tokens", "output_tokens"),
        ("reasoning_tokens", "reasoning_tokens"), ("total_tokens", "total_tokens"),
        ("images", "images"), ("audio_seconds", "audio_seconds"), ("characters", "characters"),
        ("cost_usd", "cost"), ("billing", "billing"), ("unpriced", "unpriced"), ("bytes_in", "bytes_in"),
        ("bytes_out", "bytes_out"), ("client_ip", "client_ip"), ("user_agent", "user_agent"),
        ("error", "error"),
    )

    @admin.display(description="user")
    def user_link(self, obj: ApiCall) -> str:
        return _user_calls_link(obj.user)

    @admin.display(description="key")
    def key_link(self, obj: ApiCall) -> str:
        return object_link(obj.key)

    @admin.display(description="path")
    def short_path(self, obj: ApiCall) -> str:
        return obj.path if len(obj.path) <= 60 else obj.path[:59] + "…"

    @admin.display(description="cost")
    def cost_usd(self, obj: ApiCall) -> str:
        return billed_cost(obj)

    @admin.display(description="started", ordering="started_at")
    def started(self, obj: ApiCall) -> str:
        return timezone.localtime(obj.started_at).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="tokens")
    def tokens(self, obj: ApiCall) -> str:
        return "-" if obj.total_tokens is None else f"{obj.total_tokens:,}"

    @admin.display(description="family")
    def family_short(self, obj: ApiCall) -> str:
        return obj.family or "-"

    @admin.display(description="key")
    def key_short(self, obj: ApiCall) -> str:
        if obj.key is None:
            return "-"
        return format_html('<span title="{}">{}</span>', obj.key, link(change_url(obj.key), f"{obj.key.prefix}…"))

    @admin.display(description="model")
    def model_short(self, obj: ApiCall) -> str:
        return _short(obj.model, 26) if obj.model else "-"

    @admin.display(description="status")
    def status_outcome(self, obj: ApiCall) -> str:
        label = _OUTCOME_SHORT.get(obj.outcome, obj.outcome)
        if obj.status is None:
            return format_html('<span class="outcome-{}">{}</span>', obj.outcome, label)
        return format_html('<span class="outcome-{}">{} {}</span>', obj.outcome, obj.status, label)

    @admin.display(description="duration")
    def duration(self, obj: ApiCall) -> str:
        return _ms(obj.duration_ms)

    @admin.display(description="1st byte")
    def ttfb(self, obj: ApiCall) -> str:
        return _ms(obj.ttfb_ms)

    def totals(self, request, cl):
        return call_totals(request, cl)

    @admin.display(description="sealed in ledger")
    def sealed(self, obj: ApiCall) -> str:
        return f"entry #{obj.chain_seq}" if obj.chain_seq else "not yet"

    def get_search_results(self, request, queryset, search_term):
        """A username, a key prefix, or an exact upstream or relay request id.

        Django's default would OR icontains over joined columns: a scan of every
        row. Each kind of term gets one indexed condition instead, so the page is
        an ordered index scan (users and keys are looked up first: small tables).
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        user_ids = list(get_user_model().objects.filter(username=term).values_list("pk", flat=True)[:1])
        if user_ids:
            return queryset.filter(user_id=user_ids[0]), False
        if term.startswith("tr-"):
            key_ids = list(RelayKey.objects.filter(prefix__startswith=term[:10]).values_list("pk", flat=True)[:20])
            return queryset.filter(key_id__in=key_ids), False
        return queryset.filter(Q(upstream_request_id=term) | Q(relay_request_id=term)), False


# --- files, uploads, batches ------------------------------------------------------


@admin.register(FileRecord)
class FileRecordAdmin(CsvExportMixin, ReadOnlyAdmin):
    list_display = ("first_seen", "short_file_id", "short_filename", "purpose", "size", "status", "owner_link",
                    "origin", "deleted", "batches_link")
    list_display_links = ("short_file_id",)
    sortable_by = ("first_seen",)
    list_filter = (date_range("first_seen_at", "first seen"), user_filter("created_by"),
                   key_filter("created_by_key", user_field="created_by"), "origin", "purpose", "status")
    search_fields = ("=file_id", "filename", "=created_by__username")
    search_help_text = "A file id (exact), part of a filename, or a username."
    date_hierarchy = "first_seen_at"
    list_select_related = ("created_by",)
    readonly_fields = ("created_call", "result_of_batch", "batches_link", "uploads_link")
    fields = ("file_id", "filename", "purpose", "bytes", "status", "origin", "created_by", "created_by_key",
              "created_call", "result_of_batch", "batches_link", "uploads_link", "created_at", "expires_at",
              "deleted_at", "first_seen_at", "updated_at")
    csv_columns = (
        ("file_id", "file_id"), ("filename", "filename"), ("purpose", "purpose"), ("bytes", "bytes"),
        ("status", "status"), ("origin", "origin"), ("user", "created_by__username"),
        ("key_prefix", "created_by_key__prefix"), ("batch_id", "batch__batch_id"),
        ("created_at", "created_at"), ("expires_at", "expires_at"), ("deleted_at", "deleted_at"),
        ("first_seen_at", "first_seen_at"),
    )

    @admin.display(description="first seen", ordering="first_seen_at")
    def first_seen(self, obj: FileRecord) -> str:
        return _when(obj.first_seen_at)

    @admin.display(description="file id")
    def short_file_id(self, obj: FileRecord) -> str:
        return _short(obj.file_id, 18)

    @admin.display(description="deleted")
    def deleted(self, obj: FileRecord) -> str:
        return _when(obj.deleted_at)

    @admin.display(description="filename")
    def short_filename(self, obj: FileRecord) -> str:
        return _short(obj.filename, 20) if obj.filename else "-"

    @admin.display(description="size")
    def size(self, obj: FileRecord) -> str:
        n = obj.bytes
        if n is None:
            return "-"
        for unit in ("B", "KB", "MB", "GB"):
            if n < 1024 or unit == "GB":
                return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1024
        return "-"

    @admin.display(description="created by")
    def owner_link(self, obj: FileRecord) -> str:
        return object_link(obj.created_by, obj.created_by.get_username() if obj.created_by else None)

    @admin.display(description="batches")
    def batches_link(self, obj: FileRecord) -> str:
        return link(changelist_url(BatchRecord, input_file__exact=obj.file_id), "batches")

    @admin.display(description="uploaded through")
    def uploads_link(self, obj: FileRecord) -> str:
        return link(changelist_url(UploadRecord, file__id__exact=obj.pk), "uploads")

    @admin.display(description="created by call")
    def created_call(self, obj: FileRecord) -> str:
        return object_link(obj.call) if obj.call_id else "-"

    @admin.display(description="output or errors of batch")
    def result_of_batch(self, obj: FileRecord) -> str:
        return object_link(obj.batch) if obj.batch_id else "-"


@admin.register(UploadRecord)
class UploadRecordAdmin(ReadOnlyAdmin):
    list_display = ("upload_id", "filename", "purpose", "bytes", "status", "parts", "file", "created_by",
                    "first_seen_at")
    sortable_by = ("upload_id",)
    list_filter = (date_range("first_seen_at", "first seen"), user_filter("created_by"), "status", "purpose",
                   selected_only_filter("file", FileRecord, "file"))
    search_fields = ("=upload_id", "filename", "=file__file_id", "=created_by__username")
    date_hierarchy = "first_seen_at"
    list_select_related = ("file", "created_by")


FIRST_ERRORS = 5


def _file_cell(file_id: str | None) -> str:
    """A batch's file by upstream id: linked when the relay has a record of it."""
    if not file_id:
        return "-"
    record = FileRecord.objects.filter(file_id=file_id).only("pk").first()
    return link(change_url(record), file_id) if record else file_id


@admin.register(BatchRecord)
class BatchRecordAdmin(CsvExportMixin, ReadOnlyAdmin):
    list_display = ("first_seen", "short_batch_id", "status", "short_endpoint", "owner_link", "requests",
                    "done", "failed_link", "cost_usd", "results_link")
    list_display_links = ("short_batch_id",)
    sortable_by = ("first_seen", "status")
    list_filter = (date_range("first_seen_at", "first seen"), HasFailuresFilter, user_filter("created_by"),
                   key_filter("created_by_key", user_field="created_by"), "status", "endpoint")
    search_fields = ("=batch_id", "=input_file_id", "=output_file_id", "=error_file_id",
                     "=created_by__username")
    search_help_text = "A batch id, a file id (input, output or errors) or a username; exact."
    date_hierarchy = "first_seen_at"
    list_select_related = ("created_by",)
    readonly_fields = ("input_file_link", "output_file_link", "error_file_link", "results_link",
                       "failures")
    fieldsets = (
        (None, {"fields": ("batch_id", "status", "endpoint", "completion_window", "created_by",
                           "created_by_key", "metadata", "errors")}),
        ("Failures", {"fields": ("failures",)}),
        ("Files and results", {"fields": ("input_file_link", "output_file_link", "error_file_link",
                                          "results_link")}),
        ("Requests and cost", {"fields": ("request_total", "request_completed", "request_failed",
                                          "input_tokens", "cached_input_tokens", "output_tokens",
                                          "reasoning_tokens", "total_tokens", "cost", "unpriced_results",
                                          "results_counted_at")}),
        ("Lifecycle", {"fields": ("created_at", "in_progress_at", "finalizing_at", "completed_at",
                                  "failed_at", "expired_at", "cancelling_at", "cancelled_at", "expires_at",
                                  "first_seen_at", "last_polled_at", "last_poll_error")}),
    )
    csv_columns = (
        ("batch_id", "batch_id"), ("status", "status"), ("endpoint", "endpoint"),
        ("user", "created_by__username"), ("key_prefix", "created_by_key__prefix"),
        ("input_file_id", "input_file_id"), ("output_file_id", "output_file_id"),
        ("error_file_id", "error_file_id"), ("request_total", "request_total"),
        ("request_completed", "request_completed"), ("request_failed", "request_failed"),
        ("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
        ("total_tokens", "total_tokens"), ("cost_usd", "cost"), ("unpriced_results", "unpriced_results"),
        ("created_at", "created_at"), ("completed_at", "completed_at"), ("first_seen_at", "first_seen_at"),
    )

    @admin.display(description="created by")
    def owner_link(self, obj: BatchRecord) -> str:
        return object_link(obj.created_by, obj.created_by.get_username() if obj.created_by else None)

    @admin.display(description="cost")
    def cost_usd(self, obj: BatchRecord) -> str:
        if obj.unpriced_results and obj.cost is None:
            return mark_safe('<span class="billing-unpriced">unpriced</span>')
        text = _money(obj.cost)
        if obj.unpriced_results:
            return format_html('{} <span class="billing-unpriced" title="results without a price are not in '
                               'this cost">+ {} unpriced</span>', text, obj.unpriced_results)
        return text

    @admin.display(description="first seen", ordering="first_seen_at")
    def first_seen(self, obj: BatchRecord) -> str:
        return _when(obj.first_seen_at)

    @admin.display(description="requests")
    def requests(self, obj: BatchRecord) -> str:
        return "-" if obj.request_total is None else f"{obj.request_total:,}"

    @admin.display(description="done")
    def done(self, obj: BatchRecord) -> str:
        return "-" if obj.request_completed is None else f"{obj.request_completed:,}"

    @admin.display(description="batch id")
    def short_batch_id(self, obj: BatchRecord) -> str:
        return _short(obj.batch_id, 20)

    @admin.display(description="endpoint")
    def short_endpoint(self, obj: BatchRecord) -> str:
        return obj.endpoint.removeprefix("/v1/")

    @admin.display(description="failed")
    def failed_link(self, obj: BatchRecord) -> str:
        if not obj.request_failed:
            return "0" if obj.request_failed == 0 else "-"
        return format_html('<strong class="failed">{}</strong>', link(
            changelist_url(BatchResult, batch__id__exact=obj.pk, errors="yes"), obj.request_failed))

    @admin.display(description="results")
    def results_link(self, obj: BatchRecord) -> str:
        return link(changelist_url(BatchResult, batch__id__exact=obj.pk), "results")

    @admin.display(description="failed requests")
    def failures(self, obj: BatchRecord) -> str:
        """The first errors of the batch's results, on its page: why requests failed, at a glance."""
        errors = (BatchResult.objects.filter(batch=obj).filter(Q(from_error_file=True) | Q(status_code__gte=400))
                  .order_by("id").values("custom_id", "status_code", "error_code", "error_message"))
        first = list(errors[:FIRST_ERRORS + 1])
        if not first:
            return f"{obj.request_failed or 0} failed; no error results recorded" if obj.request_failed \
                else "no failed requests"
        rows = format_html_join("", '<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>', (
            (e["custom_id"], e["status_code"] or "-", e["error_code"] or "-", e["error_message"] or "-")
            for e in first[:FIRST_ERRORS]))
        more = link(changelist_url(BatchResult, batch__id__exact=obj.pk, errors="yes"),
                    f"all {obj.request_failed or ''} failed results".replace("  ", " "))
        return format_html('<p>{} of {} requests failed. {}</p><table class="batch-failures"><thead><tr>'
                           '<th>custom id</th><th>status</th><th>error code</th><th>message</th></tr></thead>'
                           '<tbody>{}</tbody></table>', obj.request_failed or len(first), obj.request_total or "?",
                           more, rows)

    @admin.display(description="input file")
    def input_file_link(self, obj: BatchRecord) -> str:
        return _file_cell(obj.input_file_id)

    @admin.display(description="output file")
    def output_file_link(self, obj: BatchRecord) -> str:
        return _file_cell(obj.output_file_id)

    @admin.display(description="error file")
    def error_file_link(self, obj: BatchRecord) -> str:
        return _file_cell(obj.error_file_id)


@admin.register(BatchResult)
class BatchResultAdmin(CsvExportMixin, ReadOnlyAdmin):
    list_display = ("custom_id", "status", "error_code", "short_error", "cost_usd", "model",
                    "tokens", "short_batch")
    sortable_by = ("custom_id",)
    list_filter = (selected_only_filter("batch", BatchRecord, "batch"), ResultErrorFilter,
                   date_range("batch__first_seen_at", "batch seen"),
                   "from_error_file", "billing", "unpriced", "status_code", "model")
    search_fields = ("=custom_id", "=request_id", "=batch__batch_id")
    search_help_text = "A custom_id, request id or batch id; exact."
    date_hierarchy = "batch__first_seen_at"
    list_select_related = ("batch",)
    readonly_fields = ("batch_link",)
    fields = ("batch_link", "custom_id", "request_id", "status_code", "model", "input_tokens",
              "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens", "cost", "unpriced",
              "error_code", "error_message", "from_error_file")
    csv_columns = (
        ("batch_id", "batch__batch_id"), ("custom_id", "custom_id"), ("request_id", "request_id"),
        ("status_code", "status_code"), ("model", "model"), ("input_tokens", "input_tokens"),
        ("cached_input_tokens", "cached_input_tokens"), ("output_tokens", "output_tokens"),
        ("reasoning_tokens", "reasoning_tokens"), ("total_tokens", "total_tokens"), ("cost_usd", "cost"),
        ("unpriced", "unpriced"), ("error_code", "error_code"), ("error_message", "error_message"),
        ("from_error_file", "from_error_file"),
    )

    @admin.display(description="batch")
    def batch_link(self, obj: BatchResult) -> str:
        return object_link(obj.batch)

    @admin.display(description="cost")
    def cost_usd(self, obj: BatchResult) -> str:
        return billed_cost(obj)

    @admin.display(description="error message")
    def short_error(self, obj: BatchResult) -> str:
        return _short(obj.error_message, 42) if obj.error_message else "-"

    @admin.display(description="status")
    def status(self, obj: BatchResult) -> str:
        return "-" if obj.status_code is None else str(obj.status_code)

    @admin.display(description="tokens")
    def tokens(self, obj: BatchResult) -> str:
        return "-" if obj.total_tokens is None else f"{obj.total_tokens:,}"

    @admin.display(description="batch")
    def short_batch(self, obj: BatchResult) -> str:
        return link(change_url(obj.batch), _short(obj.batch.batch_id, 14))


# --- usage and prices ----------------------------------------------------------------


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = ("date", "user_link", "key_link", "model", "family", "calls_link", "input_tokens",
                    "output_tokens", "total_tokens", "cost_usd", "unpriced_calls", "unknown_calls")
    sortable_by = ("date",)
    list_filter = (date_range("date"), user_filter("user"), key_filter("key", user_field="user"),
                   rollup_values_filter("model", "model"), rollup_values_filter("family", "endpoint family"))
    search_fields = ("=model", "=user__username")
    date_hierarchy = "date"
    list_select_related = ("user", "key")

    @admin.display(description="user")
    def user_link(self, obj: UsageDaily) -> str:
        return link(changelist_url(UsageDaily, user__id__exact=obj.user_id), obj.user.get_username())

    @admin.display(description="key")
    def key_link(self, obj: UsageDaily) -> str:
        return object_link(obj.key)

    @admin.display(description="calls")
    def calls_link(self, obj: UsageDaily) -> str:
        day = obj.date
        return link(changelist_url(ApiCall, started_at__year=day.year, started_at__month=day.month,
                                   started_at__day=day.day, user__id__exact=obj.user_id,
                                   key__id__exact=obj.key_id, model__exact=obj.model,
                                   family__exact=obj.family), obj.calls)

    @admin.display(description="cost")
    def cost_usd(self, obj: UsageDaily) -> str:
        if obj.calls and obj.unpriced_calls + obj.unknown_calls >= obj.calls:
            return mark_safe('<span class="billing-unpriced">unknown</span>')
        return _money(obj.cost)

    def totals(self, request, cl):
        return usage_totals(request, cl)


PRICE_FIELDS = ("input_per_1m", "cached_input_per_1m", "output_per_1m", "batch_input_per_1m",
                "batch_output_per_1m", "image_input_per_1m", "per_image", "per_second", "per_character")


class ModelPriceForm(forms.ModelForm):
    class Meta:
        model = ModelPrice
        fields = ("model", "effective_from", *PRICE_FIELDS, "source")
        help_texts = {"effective_from": "When this price starts. Changing a saved price saves a new row "
                                        "effective from here (now, if you leave it); the old row keeps "
                                        "pricing earlier calls."}


@admin.register(ModelPrice)
class ModelPriceAdmin(LinkPermissionsMixin, admin.ModelAdmin):
    """Prices are never rewritten: saving a change to a price creates a new row
    effective from its date, so past calls stay priced as they were (only
    `manage.py reprice` re-costs them)."""

    form = ModelPriceForm
    list_display = ("model", "effective_from", "input_per_1m", "cached_input_per_1m", "output_per_1m",
                    "batch_input_per_1m", "batch_output_per_1m", "source", "usage_link")
    list_filter = ("source", date_range("effective_from", "effective from"))
    search_fields = ("model",)
    date_hierarchy = "effective_from"
    show_facets = admin.ShowFacets.NEVER

    @admin.display(description="usage")
    def usage_link(self, obj: ModelPrice) -> str:
        return link(changelist_url(UsageDaily, model__exact=obj.model), "daily usage")

    def save_model(self, request, obj: ModelPrice, form, change: bool) -> None:
        if change and form.has_changed():
            previous = ModelPrice.objects.get(pk=obj.pk)
            if obj.effective_from == previous.effective_from:  # no date given: from now on
                obj.effective_from = timezone.now()
            obj.pk = obj.id = None
            obj._state.adding = True
            obj.save()
            self.message_user(
                request,
                f"Saved as a new price for {obj.model} effective from {obj.effective_from:%Y-%m-%d %H:%M}; "
                "the previous row still prices earlier calls. Run `manage.py reprice` to re-cost past calls.",
                messages.INFO,
            )
            return
        super().save_model(request, obj, form, change)


# --- admin actions, the ledger, prune runs ----------------------------------------------------


@admin.register(AdminAction)
class AdminActionAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor", "action", "object_type", "object_id", "object_repr")
    sortable_by = ()
    list_filter = (date_range("at"), "action", "object_type")
    search_fields = ("=actor", "=object_id", "object_repr")
    date_hierarchy = "at"


@admin.register(ChainState)
class ChainStateAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "head_seq", "head_hash", "last_sealed_at", "last_verified_at", "verified",
                    "last_verification")
    fields = ("head_seq", "head_hash", "last_sealed_at", "last_verified_at", "last_verified_ok",
              "last_verification")

    @admin.display(description="last verification", boolean=True)
    def verified(self, obj: ChainState) -> bool | None:
        return obj.last_verified_ok


_LEDGER_TARGETS = {
    LedgerKind.CALL: (ApiCall, "pk"),
    LedgerKind.FILE: (FileRecord, "file_id"),
    LedgerKind.BATCH: (BatchRecord, "batch_id"),
    LedgerKind.PRUNE: (PruneRun, "pk"),
}


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("seq", "kind", "object_id", "sealed_at", "short_hash")
    list_filter = (date_range("sealed_at", "sealed"), "kind")
    search_fields = ("=object_id",)
    date_hierarchy = "sealed_at"
    ordering = ("-seq",)
    sortable_by = ("seq",)
    readonly_fields = ("record",)
    fields = ("seq", "kind", "object_id", "record", "sealed_at", "content_hash", "prev_hash", "entry_hash")

    @admin.display(description="entry hash")
    def short_hash(self, obj: LedgerEntry) -> str:
        return obj.entry_hash[:16] + "…"

    @admin.display(description="sealed record")
    def record(self, obj: LedgerEntry) -> str:
        model, field = _LEDGER_TARGETS.get(obj.kind, (None, ""))
        if model is None:
            return "-"
        try:
            target = model.objects.filter(**{field: obj.object_id}).first()
        except (ValueError, TypeError):
            target = None
        return object_link(target) if target else format_html("{} (no longer kept)", obj.object_id)


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    """The budget alerts sent (audit_app.budgets): which threshold, when, to whom."""

    list_display = ("sent_at", "kind", "budget_of", "month", "threshold", "spend_usd", "budget", "recipients")
    list_filter = (date_range("sent_at", "sent"), "kind", "threshold")
    date_hierarchy = "sent_at"
    sortable_by = ()

    @admin.display(description="of")
    def budget_of(self, obj: BudgetAlert) -> str:
        model = {BudgetAlert.KIND_KEY: RelayKey, BudgetAlert.KIND_TEAM: Team}.get(obj.kind, get_user_model())
        target = model.objects.filter(pk=obj.object_id).first()
        return object_link(target) if target else f"{obj.kind} #{obj.object_id}"

    @admin.display(description="spent")
    def spend_usd(self, obj: BudgetAlert) -> str:
        return f"${obj.spend.quantize(Decimal('0.01'))}"


@admin.register(PruneRun)
class PruneRunAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "run_by", "older_than_days", "cutoff", "deleted_calls", "first_call_id",
                    "last_call_id", "dry_run", "finished_at")
    list_filter = (date_range("started_at", "started"), "dry_run")
    search_fields = ("=run_by",)
    date_hierarchy = "started_at"


# --- reconciliation with OpenAI ----------------------------------------------------------


class ReconciledUsageInline(admin.TabularInline):
    model = ReconciledUsage
    fields = readonly_fields = ("model", "project_id", "status", "openai_input_tokens", "relay_input_tokens",
                                "openai_cached_tokens", "relay_cached_tokens", "openai_output_tokens",
                                "relay_output_tokens", "openai_images", "relay_images", "openai_characters",
                                "relay_characters", "openai_seconds", "relay_seconds", "openai_requests",
                                "relay_requests")
    extra = 0
    can_delete = False
    verbose_name_plural = "usage by model (requests are for context: the relay counts refused and read calls too)"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def get_queryset(self, request):  # differences first
        return super().get_queryset(request).order_by("status", "model")


class ReconciledCostInline(ReconciledUsageInline):
    model = ReconciledCost
    fields = readonly_fields = ("project_id", "status", "openai_cost", "relay_cost", "relay_uncosted_calls",
                                "line_items")
    verbose_name_plural = "dollars by project (OpenAI's line items)"

    def get_queryset(self, request):
        return admin.TabularInline.get_queryset(self, request).order_by("status", "project_id")


@admin.register(ReconciledDay)
class ReconciledDayAdmin(ReadOnlyAdmin):
    """Per UTC day: matched or differing with OpenAI, and spend OpenAI saw that the relay did not."""

    list_display = ("date", "state", "openai_cost_usd", "relay_cost_usd", "difference_usd", "relay_uncosted_calls",
                    "by_project", "summary", "fetched_at")
    list_filter = ("status", "by_project")
    date_hierarchy = None
    inlines = [ReconciledUsageInline, ReconciledCostInline]
    change_list_template = "admin/audit_app/reconciledday/change_list.html"

    @admin.display(description="state", ordering="status")
    def state(self, obj: ReconciledDay) -> str:
        colour = {Match.MATCHED: "#2e7d32", Match.RELAY_ONLY: "#8a6d00"}.get(obj.status, "#b71c1c")
        return format_html('<strong style="color:{}">{}</strong>', colour, obj.get_status_display())

    @admin.display(description="OpenAI USD")
    def openai_cost_usd(self, obj: ReconciledDay) -> str:
        return _money(obj.openai_cost)

    @admin.display(description="relay USD")
    def relay_cost_usd(self, obj: ReconciledDay) -> str:
        return _money(obj.relay_cost)

    @admin.display(description="difference")
    def difference_usd(self, obj: ReconciledDay) -> str:
        return _money(obj.cost_difference)

    def changelist_view(self, request, extra_context=None):
        since = timezone.now().date() - timezone.timedelta(days=62)
        outside = (ReconciledUsage.objects.filter(status=Match.OUTSIDE, day__date__gte=since)
                   .select_related("day").order_by("-day__date", "model")[:20])
        outside_costs = (ReconciledCost.objects.filter(status=Match.OUTSIDE, day__date__gte=since)
                         .select_related("day").order_by("-day__date")[:20])
        extra_context = {**(extra_context or {}), "outside_usage": outside, "outside_costs": outside_costs,
                         "last_run": ReconcileRun.objects.first()}
        return super().changelist_view(request, extra_context)


@admin.register(ReconcileRun)
class ReconcileRunAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "period_start", "period_end", "ok", "days", "message")
    list_filter = ("ok",)


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
