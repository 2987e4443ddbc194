"""The audit trail: one row per /v1 request the relay answers."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from .tokens import BilledDimensions, TokenUsage


class Outcome(models.TextChoices):
    PENDING = "pending", "Pending"
    OK = "ok", "OK"
    UPSTREAM_ERROR = "upstream_error", "Upstream error"
    REJECTED = "rejected", "Rejected by relay"
    CLIENT_CLOSED = "client_closed", "Client closed"
    FAILED = "failed", "Failed"
    INTERRUPTED = "interrupted", "Interrupted"


class Billing(models.TextChoices):
    """One billing state per call, job result and WebSocket response (docs/accounting.md).

    Only PRICED has a cost. UNPRICED and UNKNOWN are counted apart everywhere,
    never as $0.
    """

    PRICED = "priced", "Priced"  # usage read, every dimension it used has a rate
    FREE = "free", "Free"  # the operation does not generate (reads, lists, deletes, refusals)
    UNPRICED = "unpriced", "Unpriced"  # usage read, some dimension has no rate
    UNKNOWN = "unknown", "Usage unknown"  # OpenAI bills it, the relay could not read its usage


class ApiCall(TokenUsage, BilledDimensions):
    """Written before the call goes upstream, completed once the response is sent.

    No bodies and no secrets: only what an admin needs to answer "who called
    what, when, and how did it end".
    """

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    # From the start of the request to the first byte of the response on its way to the
    # client; empty when none was sent (refused, failed before upstream answered).
    ttfb_ms = models.FloatField("time to first byte (ms)", null=True, blank=True)

    # No index of their own: apicall_key_started and apicall_user_started lead with
    # these columns and serve every lookup by key or user, and each index is one
    # more write on the relay's hot path.
    key = models.ForeignKey(
        "proxy_app.RelayKey", null=True, blank=True, on_delete=models.PROTECT, related_name="calls",
        db_index=False,
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
        related_name="api_calls", db_index=False,
    )

    method = models.CharField(max_length=10)
    path = models.CharField(max_length=2048)
    family = models.CharField("endpoint family", max_length=32, blank=True)
    model = models.CharField(max_length=128, blank=True)
    # The model upstream says it used (a dated snapshot, a fine-tune), which is what the
    # call is priced as; empty when the call has no usage. `reprice` prices by it too.
    priced_model = models.CharField(max_length=128, blank=True, null=True)
    stream = models.BooleanField(default=False)

    upstream_status = models.PositiveSmallIntegerField(null=True, blank=True)
    status = models.PositiveSmallIntegerField("status sent", null=True, blank=True)
    upstream_request_id = models.CharField(max_length=128, blank=True)
    relay_request_id = models.CharField(max_length=32, blank=True, db_index=True,
                                        help_text="x-relay-request-id, as returned to the client")
    bytes_in = models.BigIntegerField(default=0)
    bytes_out = models.BigIntegerField(default=0)

    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    error = models.CharField(max_length=1024, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.PENDING)

    # Usage beyond tokens, for endpoints that bill by the unit.
    images = models.PositiveIntegerField(null=True, blank=True)
    audio_seconds = models.DecimalField(max_digits=12, decimal_places=3, null=True, blank=True)
    characters = models.PositiveIntegerField(null=True, blank=True)
    # A call with usage but no price for its model: cost stays NULL, never 0.
    unpriced = models.BooleanField(default=False)
    billing = models.CharField(max_length=8, choices=Billing.choices, blank=True, default="")
    # What a budget counts for a call whose cost is unknown (unpriced, usage unknown):
    # the cost reserved for it before it was forwarded (audit_app.budgets).
    budget_held = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True,
                                      help_text="USD a budget counts for this call while its cost is unknown")
    price = models.ForeignKey(
        "audit_app.ModelPrice", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # A response of a WebSocket session (Realtime, Responses WebSocket mode) points at
    # the session's own row; each response is a call of its own in the rollups. No
    # database constraint: prune_audit removes old rows by date, and a session that
    # began before the cut-off must not hold back (or take along) its later responses.
    ws_session = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.DO_NOTHING, related_name="ws_responses",
        db_index=False, db_constraint=False, verbose_name="WebSocket session",
    )
    # Keyed hash of the finished row, written with it: a row edited or inserted
    # by anyone without the relay's chain key does not match.
    row_mac = models.CharField(max_length=64, blank=True, editable=False)
    # Set by the sealer (seal_audit): the row's place in the tamper-evident ledger.
    chain_seq = models.BigIntegerField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["-started_at"], name="apicall_started"),
            models.Index(fields=["user", "-started_at"], name="apicall_user_started"),
            models.Index(fields=["key", "-started_at"], name="apicall_key_started"),
            models.Index(fields=["outcome", "started_at"], name="apicall_outcome_started"),
            # The admin's model and family filters, and its search on upstream ids.
            models.Index(fields=["model", "started_at"], name="apicall_model_started"),
            models.Index(fields=["family", "started_at"], name="apicall_family_started"),
            models.Index(fields=["upstream_request_id"], name="apicall_upstream_request_id"),
            # The errors view's 5xx and 4xx links (status_class=5xx, 4xx): a few percent of the
            # rows, listed newest first and counted from the index alone. Partial, so a call
            # answered 2xx adds no write. Two of them because SQLite uses a partial index only
            # when the query has its condition's terms as they are (status >= 500 for 5xx).
            models.Index(fields=["-started_at", "-id", "status"], name="apicall_5xx_started",
                         condition=models.Q(status__gte=500)),
            models.Index(fields=["-started_at", "-id", "status"], name="apicall_4xx_started",
                         condition=models.Q(status__gte=400, status__lt=500)),
            # "Slower than N s" (the p95 links, the duration filter): counted from the index, and
            # listed from it when few calls are that slow (admin_toolkit.MinMillisecondsFilter).
            models.Index(fields=["duration_ms"], name="apicall_duration"),
            # Unpriced calls (a few percent), which the dashboard links to.
            models.Index(fields=["started_at"], name="apicall_unpriced_started",
                         condition=models.Q(unpriced=True)),
            # A WebSocket session's responses (a small share of the rows).
            models.Index(fields=["ws_session"], name="apicall_ws_session",
                         condition=models.Q(ws_session__isnull=False)),
            # The sealer's work queue: finished calls not yet in the ledger.
            models.Index(fields=["id"], name="apicall_unsealed",
                         condition=models.Q(chain_seq__isnull=True)),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} [{self.outcome}]"
