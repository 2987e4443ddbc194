"""A read-only log of what admins and operators changed: keys, limits, prices, prune runs."""
from __future__ import annotations

from django.db import models
from django.utils import timezone


class AdminAction(models.Model):
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=150, help_text="admin username, or the operator account for commands")
    action = models.CharField(max_length=16)  # created, changed, revoked, deleted, pruned
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    changes = models.JSONField(default=dict, blank=True, help_text="field: [before, after]; secrets omitted")

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="adminaction_object")]

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.object_type} {self.object_repr}"
