"""The relay's figures beside OpenAI's own, per day: does the total match the invoice?"""
from __future__ import annotations

from django.db import models

from .tokens import MONEY


class Match(models.TextChoices):
    MATCHED = "matched", "Matched"
    DIFFERS = "differs", "Differs"
    # OpenAI saw usage the relay did not: the team key was used outside the relay (or a relay bug).
    OUTSIDE = "outside", "Outside the relay"
    # The relay recorded usage OpenAI does not show (yet: OpenAI's figures lag by hours).
    RELAY_ONLY = "relay_only", "Relay only"


class ReconciledDay(models.Model):
    """One UTC day of a reconciliation: the worst of its rows' states, and the dollars."""

    date = models.DateField(unique=True)
    status = models.CharField(max_length=16, choices=Match.choices)
    openai_cost = models.DecimalField(**MONEY, default=0)
    relay_cost = models.DecimalField(**MONEY, default=0, help_text="priced calls only")
    # Relay calls with no known cost that day (unpriced or usage unknown): a dollar gap
    # on those days is expected and shown, not hidden.
    relay_uncosted_calls = models.BigIntegerField(default=0)
    by_project = models.BooleanField(default=False, help_text="compared per OpenAI project")
    fetched_at = models.DateTimeField()
    summary = models.CharField(max_length=512, blank=True)

    class Meta:
        ordering = ["-date"]
        verbose_name = "reconciliation (daily)"
        verbose_name_plural = "reconciliation (daily)"

    def __str__(self) -> str:
        return f"{self.date} {self.status}"

    @property
    def cost_difference(self):
        return self.openai_cost - self.relay_cost


class ReconciledUsage(models.Model):
    """Per day × model (× project when every call's project is known): both sides' units."""

    day = models.ForeignKey(ReconciledDay, on_delete=models.CASCADE, related_name="usage")
    model = models.CharField(max_length=128, help_text="the model family: dated snapshots fold into it")
    project_id = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Match.choices)
    openai_requests = models.BigIntegerField(default=0)
    relay_requests = models.BigIntegerField(default=0)
    openai_input_tokens = models.BigIntegerField(default=0)
    relay_input_tokens = models.BigIntegerField(default=0)
    openai_cached_tokens = models.BigIntegerField(default=0)
    relay_cached_tokens = models.BigIntegerField(default=0)
    openai_output_tokens = models.BigIntegerField(default=0)
    relay_output_tokens = models.BigIntegerField(default=0)
    # Units of the endpoints that do not bill by token.
    openai_images = models.BigIntegerField(default=0)
    relay_images = models.BigIntegerField(default=0)
    openai_characters = models.BigIntegerField(default=0)
    relay_characters = models.BigIntegerField(default=0)
    openai_seconds = models.DecimalField(max_digits=16, decimal_places=3, default=0)
    relay_seconds = models.DecimalField(max_digits=16, decimal_places=3, default=0)

    class Meta:
        ordering = ["day", "model", "project_id"]
        constraints = [models.UniqueConstraint(fields=["day", "model", "project_id"],
                                               name="reconciledusage_day_model_project")]
        indexes = [models.Index(fields=["status"], name="reconciledusage_status")]

    def __str__(self) -> str:
        return f"{self.day.date} {self.model} {self.project_id or '-'}"


class ReconciledCost(models.Model):
    """Per day × project: OpenAI's dollars (with its line items) beside the relay's."""

    day = models.ForeignKey(ReconciledDay, on_delete=models.CASCADE, related_name="costs")
    project_id = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Match.choices)
    openai_cost = models.DecimalField(**MONEY, default=0)
    relay_cost = models.DecimalField(**MONEY, default=0)
    relay_uncosted_calls = models.BigIntegerField(default=0)
    line_items = models.JSONField(default=dict, blank=True, help_text="OpenAI's line items: USD each")

    class Meta:
        ordering = ["day", "project_id"]
        constraints = [models.UniqueConstraint(fields=["day", "project_id"], name="reconciledcost_day_project")]

    def __str__(self) -> str:
        return f"{self.day.date} {self.project_id or '-'}"


class ReconcileRun(models.Model):
    """Each run of reconcile_usage: a failed fetch leaves the previous figures and says so here."""

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    period_start = models.DateField()
    period_end = models.DateField(help_text="inclusive")
    ok = models.BooleanField(default=False)
    days = models.PositiveIntegerField(default=0)
    message = models.CharField(max_length=1024, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.period_start}..{self.period_end} {'ok' if self.ok else 'failed'}"
