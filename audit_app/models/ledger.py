"""The tamper-evident ledger over the audit trail.

Every finished call, and every change of a file or batch record, is sealed
into a chain of entries: entry N's hash is an HMAC over its content and
entry N-1's hash, keyed with a secret that is not in the database. Editing,
deleting or inserting audit rows by SQL breaks the chain or the content
hashes, and `verify_audit` says where.
"""
from __future__ import annotations

from typing import Any

from django.db import models, transaction
from django.utils import timezone

from ..macs import record_fields, record_mac


class MacedQuerySet(models.QuerySet):
    def bulk_create(self, objs, *args: Any, **kwargs: Any):
        objs = list(objs)
        for obj in objs:
            obj.row_mac = record_mac(obj)
        return super().bulk_create(objs, *args, **kwargs)


class Maced(models.Model):
    """A record the app MACs each time it saves it (FileRecord, BatchRecord, PruneRun).

    The sealer only seals a record whose MAC matches, and verify_audit reports one
    that does not: a change made by SQL is never blessed by the next seal pass. Writes
    that bypass save() must only touch fields left out of the MAC (macs.UNSEALED_FIELDS).
    """

    row_mac = models.CharField(max_length=64, blank=True, editable=False)
    objects = MacedQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, locked: bool = False, **kwargs: Any) -> None:
        """`locked`: the caller read this object with SELECT ... FOR UPDATE in the
        transaction it is still in, so every field is current and needs no re-read."""
        update_fields = kwargs.get("update_fields")
        if update_fields is None or self._state.adding or locked:
            self.row_mac = record_mac(self)
            if update_fields is not None:
                kwargs["update_fields"] = {*update_fields, "row_mac"}
            super().save(*args, **kwargs)
            return
        # A partial save writes some fields; the MAC covers all of them, so take the
        # others as they are now (another writer may have changed them since this
        # object was read), under a row lock.
        with transaction.atomic(using=kwargs.get("using") or self._state.db):
            current = type(self)._base_manager.select_for_update().get(pk=self.pk)
            written = {self._meta.get_field(name).attname for name in update_fields}
            for f in record_fields(type(self)):
                if f.attname not in written:
                    setattr(self, f.attname, getattr(current, f.attname))
            self.row_mac = record_mac(self)
            kwargs["update_fields"] = {*update_fields, "row_mac"}
            super().save(*args, **kwargs)


class LedgerKind(models.TextChoices):
    CALL = "call", "API call"
    # A sealed call changed by the relay itself (reprice): the row's chain_seq moves to
    # its latest entry, and verification checks the row against that one.
    AMEND = "amend", "API call amended"
    FILE = "file", "File record"
    BATCH = "batch", "Batch record"
    JOB = "job", "Background response or video job"
    PRUNE = "prune", "Prune run"


class LedgerEntry(models.Model):
    seq = models.BigIntegerField(primary_key=True)
    kind = models.CharField(max_length=8, choices=LedgerKind.choices)
    object_id = models.CharField(max_length=128)
    content_hash = models.CharField(max_length=64)
    prev_hash = models.CharField(max_length=64)
    entry_hash = models.CharField(max_length=64)
    sealed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["seq"]
        verbose_name_plural = "ledger entries"
        indexes = [
            models.Index(fields=["kind", "object_id", "-seq"], name="ledger_object"),
            models.Index(fields=["sealed_at"], name="ledger_sealed_at"),  # the admin's date filters
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind} {self.object_id}"


class ChainState(models.Model):
    """One row: the head of the chain (the single writer locks it) and the last verification."""

    head_seq = models.BigIntegerField(default=0)
    head_hash = models.CharField(max_length=64, default="0" * 64)
    last_sealed_at = models.DateTimeField(null=True, blank=True)
    # When the last seal pass over file, batch and prune records began: the next pass
    # only reads records updated since then (less a margin).
    records_pass_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_verified_at = models.DateTimeField(null=True, blank=True)
    last_verified_ok = models.BooleanField(null=True, blank=True)
    last_verification = models.CharField(max_length=1024, blank=True)

    class Meta:
        verbose_name = "audit chain"
        verbose_name_plural = "audit chain"

    def __str__(self) -> str:
        return f"chain head #{self.head_seq}"

    @classmethod
    def load(cls) -> "ChainState":
        state, _ = cls.objects.get_or_create(pk=1)
        return state


class PruneRun(Maced):
    """A retention run: who pruned what. Its ledger entry keeps verification whole
    over the calls it removed."""

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    run_by = models.CharField(max_length=150, help_text="the operator account that ran it")
    older_than_days = models.PositiveIntegerField()
    cutoff = models.DateTimeField(help_text="calls started before this were removed")
    first_call_id = models.BigIntegerField(null=True, blank=True)
    last_call_id = models.BigIntegerField(null=True, blank=True)
    oldest_started_at = models.DateTimeField(null=True, blank=True)
    newest_started_at = models.DateTimeField(null=True, blank=True)
    deleted_calls = models.BigIntegerField(default=0)
    dry_run = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["updated_at"], name="prunerun_updated")]

    def __str__(self) -> str:
        return f"prune of {self.deleted_calls} calls before {self.cutoff:%Y-%m-%d}"
