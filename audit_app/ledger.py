"""Sealing and verifying the tamper-evident ledger.

Design: every ApiCall row, pending or finished, carries `row_mac`, an HMAC of
its content computed by the relay as it writes the row (cheap, on the hot path,
no shared lock). A single writer, `seal_audit`, then appends ledger entries in order:
it locks the one ChainState row, checks each new row's MAC, and chains
entry N to entry N-1 with an HMAC. Why not chain on the hot path: every call
of every worker on every host would queue on one row lock; sealing in a
single writer keeps the request path lock-free, and the row MAC protects a
row in the seconds before it is sealed. File, batch and prune records change
over their life; the app MACs them as it saves them (audit_app.macs), and the
sealer appends an entry whenever one's content changes and its MAC matches.
A sealed call changes only through `amending()` (reprice), which appends an
amendment entry; verification checks each call against its latest entry.

The HMAC key comes from AUDIT_CHAIN_KEY (or SECRET_KEY): someone with only
database access can edit, delete or insert rows, but cannot make the hashes
agree again.
"""
from __future__ import annotations

import hashlib
import hmac
from bisect import bisect_right
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator

from django.db import models, transaction
from django.utils import timezone

from . import call_rows
from .models.tokens import DIMENSION_FIELDS
from .macs import canonical, mac, record_content_hash, record_mac_ok
from .models import (ApiCall, AsyncJob, BatchRecord, ChainState, FileRecord, LedgerEntry, LedgerKind, Outcome,
                     PruneRun)

GENESIS = "0" * 64
_CALL_KINDS = (LedgerKind.CALL, LedgerKind.AMEND)
SEAL_BATCH = 1000
_CALL_FIELDS = tuple(
    f.attname for f in ApiCall._meta.concrete_fields if f.attname not in ("row_mac", "chain_seq")
)
# The row MAC is computed before an insert knows its id; the ledger entry binds the id.
_MAC_FIELDS = tuple(name for name in _CALL_FIELDS if name != "id")
# Columns added after rows were first MACed (migration 0010 on). They enter a row's
# canonical text only when they hold something other than their default, so a row
# written before the column existed still verifies, and one written after binds it.
LATE_FIELDS = frozenset({"billing", "ws_session_id", "ttfb_ms", "priced_model", "budget_held", *DIMENSION_FIELDS})


# --- calls --------------------------------------------------------------------


def call_values(row: ApiCall | dict[str, Any]) -> dict[str, Any]:
    defaults = call_rows.defaults()
    if isinstance(row, ApiCall):
        values = {name: getattr(row, name) for name in _CALL_FIELDS}
    else:
        values = {name: row.get(name, defaults.get(name)) for name in _CALL_FIELDS}
    for name in LATE_FIELDS:
        if values.get(name) == defaults.get(name):
            del values[name]
    return values


def call_mac(row: ApiCall | dict[str, Any]) -> str:
    """The row MAC of a finished call, from the row or from the values being written."""
    values = call_values(row)
    return mac(b"call\0" + canonical(values, [n for n in _MAC_FIELDS if n in values]))


def call_content_hash(row: ApiCall) -> str:
    values = call_values(row)
    return hashlib.sha256(canonical(values, [n for n in _CALL_FIELDS if n in values])).hexdigest()


# --- files and batches ------------------------------------------------------------


_RECORDS: dict[str, tuple[type[models.Model], str]] = {
    LedgerKind.FILE: (FileRecord, "file_id"),
    LedgerKind.BATCH: (BatchRecord, "batch_id"),
    LedgerKind.JOB: (AsyncJob, "job_id"),
    LedgerKind.PRUNE: (PruneRun, "id"),
}


def entry_hash(seq: int, kind: str, object_id: str, content_hash: str, prev_hash: str) -> str:
    return mac(f"{seq}|{kind}|{object_id}|{content_hash}|{prev_hash}".encode())


# --- sealing -----------------------------------------------------------------------


@dataclass
class SealResult:
    calls: int = 0
    records: int = 0
    rejected: list[str] = field(default_factory=list)  # rows whose MAC does not match

    @property
    def sealed(self) -> int:
        return self.calls + self.records


class _Appender:
    def __init__(self, state: ChainState) -> None:
        self.state = state
        self.entries: list[LedgerEntry] = []

    def add(self, kind: str, object_id: str, content_hash: str) -> int:
        seq = self.state.head_seq + 1
        digest = entry_hash(seq, kind, object_id, content_hash, self.state.head_hash)
        self.entries.append(LedgerEntry(seq=seq, kind=kind, object_id=object_id,
                                        content_hash=content_hash, prev_hash=self.state.head_hash,
                                        entry_hash=digest))
        self.state.head_seq, self.state.head_hash = seq, digest
        return seq

    def save(self) -> None:
        LedgerEntry.objects.bulk_create(self.entries)
        self.state.last_sealed_at = timezone.now()
        self.state.save()


def _locked_state() -> ChainState:
    ChainState.load()
    return ChainState.objects.select_for_update().get(pk=1)


@contextmanager
def amending() -> Iterator[Callable[[ApiCall], int]]:
    """Let the relay change sealed calls (re-pricing), each change sealed as an amendment.

    Inside, the chain head is locked: read the rows to change inside too, so no
    sealer seals one between the read and the write. `amend(row)` appends an entry
    for the row's new content and returns the sequence to store in its chain_seq.
    """
    with transaction.atomic():
        appender = _Appender(_locked_state())

        def amend(row: ApiCall) -> int:
            return appender.add(LedgerKind.AMEND, str(row.pk), call_content_hash(row))

        yield amend
        if appender.entries:
            appender.save()


def seal(limit: int | None = None) -> SealResult:
    """Append every finished, unsealed call and every changed file/batch record.

    Each batch of up to SEAL_BATCH rows is one short transaction holding the
    chain-head lock, so concurrent sealers (several hosts) take turns.
    """
    result = SealResult()
    while limit is None or result.calls < limit:
        with transaction.atomic():
            appender = _Appender(_locked_state())
            # Locked as read: a late completion of an interrupted call (recorder._complete)
            # waits, then finds the row sealed and leaves it, instead of changing it under us.
            rows = list(
                ApiCall.objects.select_for_update().filter(chain_seq__isnull=True).exclude(outcome=Outcome.PENDING)
                .exclude(pk__in=_rejected_ids(result)).order_by("pk")[:SEAL_BATCH]
            )
            sealed: list[ApiCall] = []
            for row in rows:
                if not hmac.compare_digest(row.row_mac, call_mac(row)):
                    result.rejected.append(f"call {row.pk}")
                    continue
                row.chain_seq = appender.add(LedgerKind.CALL, str(row.pk), call_content_hash(row))
                sealed.append(row)
            if sealed:
                ApiCall.objects.bulk_update(sealed, ["chain_seq"], batch_size=500)
                appender.save()
            result.calls += len(sealed)
        if len(rows) < SEAL_BATCH:
            break
    with transaction.atomic():
        appender = _Appender(_locked_state())
        _seal_records(appender, result)
        appender.save()
    return result


# A record saved (updated_at stamped) just before a pass began may commit after the
# pass read: every pass re-reads records updated within this margin of the previous one.
RECORDS_MARGIN = timedelta(minutes=5)


def _seal_records(appender: _Appender, result: SealResult) -> None:
    """Append an entry for each file, batch and prune record changed since the last pass.

    Only records updated since the previous pass (less RECORDS_MARGIN) are read, so a
    pass costs what changed, not the size of the tables, while it holds the chain head.
    """
    state = appender.state
    pass_started = timezone.now()
    since = state.records_pass_at - RECORDS_MARGIN if state.records_pass_at else None
    for kind, (model, id_field) in _RECORDS.items():
        changed = model.objects.order_by("pk")
        if since is not None:
            changed = changed.filter(updated_at__gte=since)
        for chunk in _chunks(changed.iterator(chunk_size=500), 500):
            ids = [str(getattr(obj, id_field)) for obj in chunk]
            hashes: dict[str, str] = {}
            for object_id, content_hash in (LedgerEntry.objects.filter(kind=kind, object_id__in=ids)
                                            .order_by("object_id", "-seq").values_list("object_id", "content_hash")):
                hashes.setdefault(object_id, content_hash)  # the latest entry of each record
            for object_id, obj in zip(ids, chunk):
                digest = record_content_hash(obj)
                if hashes.get(object_id) == digest:
                    continue
                if not record_mac_ok(obj):  # changed, but not by the app: never blessed
                    result.rejected.append(f"{kind} {object_id}")
                else:
                    appender.add(kind, object_id, digest)
                    result.records += 1
    state.records_pass_at = pass_started


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _rejected_ids(result: SealResult) -> list[int]:
    return [int(r.split()[1]) for r in result.rejected if r.startswith("call ")]


# --- verification ----------------------------------------------------------------------


# Findings listed in full; past this many they are only counted. An edit visible
# to anyone must not hide the others, and a wholesale rewrite of the table must
# not print a million lines.
FINDINGS_LISTED = 100


@dataclass
class Verification:
    checked: int = 0
    findings: list[str] = field(default_factory=list)  # the first FINDINGS_LISTED
    count: int = 0  # every finding, listed or not
    stopped: bool = False  # asked to stop before the end: no problem found so far, but not a pass

    @property
    def ok(self) -> bool:
        return not self.count and not self.stopped

    @property
    def problem(self) -> str:
        """The first finding ("" when none)."""
        return self.findings[0] if self.findings else ""

    def add(self, finding: str) -> None:
        if finding:
            self.count += 1
            if len(self.findings) < FINDINGS_LISTED:
                self.findings.append(finding)

    def summary(self) -> str:
        if not self.count:
            return f"{self.checked} entries verified"
        more = f" (the first {len(self.findings)} listed)" if self.count > len(self.findings) else ""
        return f"{self.count} finding(s){more}: " + "; ".join(self.findings)


def verify(since: datetime | None = None, *, record: bool = True,
           progress: Callable[[str], None] | None = None, progress_every: int = 100_000,
           stop: Callable[[], bool] = lambda: False) -> Verification:
    """Walk the chain and report every entry or row that does not hold.

    The walk goes on past a finding: one visible edit must not hide the rest (a
    missing or altered entry is reported and the walk resynchronises on the
    entry it has). `progress` gets a line every `progress_every` entries and at
    each later phase; `stop()` is polled between chunks, and a stopped walk is
    recorded nowhere.
    """
    out = Verification()
    say = progress or (lambda message: None)
    entries = LedgerEntry.objects.order_by("seq")
    prev_hash, expected = GENESIS, 1
    if since is not None:
        first = entries.filter(sealed_at__gte=since).first()
        if first is not None:
            expected = first.seq
            before = entries.filter(seq__lt=first.seq).last()
            prev_hash = before.entry_hash if before else GENESIS
            entries = entries.filter(seq__gte=first.seq)
        else:  # nothing sealed since: check just the head entry (a truncated ledger still shows)
            state = ChainState.load()
            head = entries.filter(seq=state.head_seq).first()
            expected = state.head_seq if state.head_seq else 1
            prev_hash = head.prev_hash if head is not None else state.head_hash
            entries = entries.filter(seq=state.head_seq)
    # Only runs the app wrote account for missing calls; a forged one is reported below.
    # Each run owns its id range outright (prune_audit deletes after the previous run's last id).
    pruned = sorted((run for run in PruneRun.objects.filter(dry_run=False, deleted_calls__gt=0) if record_mac_ok(run)),
                    key=lambda run: run.first_call_id)
    run_starts = [run.first_call_id for run in pruned]
    missing_per_run: dict[int, set[str]] = {run.pk: set() for run in pruned}
    latest_records: dict[tuple[str, str], LedgerEntry] = {}
    chunk: list[LedgerEntry] = []

    def check_calls(batch: list[LedgerEntry]) -> None:
        batch = [e for e in batch if e.kind in _CALL_KINDS]
        rows = ApiCall.objects.in_bulk([int(e.object_id) for e in batch])
        # A row amended later points at its latest entry; that entry must be its own.
        later = {row.chain_seq for row in rows.values() if row.chain_seq is not None}
        later = dict(LedgerEntry.objects.filter(seq__in=later - {e.seq for e in batch}, kind__in=_CALL_KINDS)
                     .values_list("seq", "object_id"))
        later.update({e.seq: e.object_id for e in batch})
        for e in batch:
            row = rows.get(int(e.object_id))
            if row is None:
                i = bisect_right(run_starts, int(e.object_id)) - 1
                run = pruned[i] if i >= 0 and int(e.object_id) <= pruned[i].last_call_id else None
                if run is None:
                    out.add(f"call {e.object_id} (ledger #{e.seq}) was deleted")
                else:
                    missing_per_run[run.pk].add(e.object_id)
            elif row.chain_seq is None or row.chain_seq < e.seq or later.get(row.chain_seq) != e.object_id:
                out.add(f"call {e.object_id} (ledger #{e.seq}) carries sequence {row.chain_seq}: rows were reordered")
            elif row.chain_seq > e.seq:
                continue  # amended since: checked against its latest entry
            elif call_content_hash(row) != e.content_hash or row.row_mac != call_mac(row):
                out.add(f"call {e.object_id} (ledger #{e.seq}) was edited after it was sealed")

    for entry in entries.iterator(chunk_size=2000):
        if entry.seq != expected:
            gap = f"#{expected}" if entry.seq == expected + 1 else f"#{expected} to #{entry.seq - 1}"
            out.add(f"ledger entry {gap} is missing (deleted)")
        if (entry.seq == expected and entry.prev_hash != prev_hash) or entry.entry_hash != entry_hash(
                entry.seq, entry.kind, entry.object_id, entry.content_hash, entry.prev_hash):
            out.add(f"ledger entry #{entry.seq} ({entry.kind} {entry.object_id}) was altered")
        if entry.kind in _RECORDS:
            latest_records[(entry.kind, entry.object_id)] = entry
        chunk.append(entry)
        if len(chunk) >= 2000:
            check_calls(chunk)
            chunk = []
            if stop():
                out.stopped = True
                return out
        prev_hash, expected = entry.entry_hash, entry.seq + 1
        out.checked += 1
        if out.checked % progress_every == 0:
            say(f"  {out.checked} ledger entries verified")
    if chunk:
        check_calls(chunk)
    out.add(_check_head(expected - 1, prev_hash, since is None))
    if since is None:
        for run in pruned:
            if len(missing_per_run[run.pk]) != run.deleted_calls:
                out.add(f"{len(missing_per_run[run.pk])} calls are missing in the range of prune run "
                        f"{run.pk}, which removed {run.deleted_calls}: calls were deleted")
    for phase, check in (("file, batch and prune records", lambda: _check_records(latest_records)),
                         ("calls not sealed yet", _check_unsealed_calls)):
        if stop():
            out.stopped = True
            return out
        say(f"  {out.checked} ledger entries verified; checking {phase}")
        for finding in check():
            out.add(finding)
    if record:
        ChainState.load()
        ChainState.objects.filter(pk=1).update(
            last_verified_at=timezone.now(), last_verified_ok=out.ok,
            last_verification=out.summary()[:1024],
        )
    return out


def _check_head(last_seq: int, last_hash: str, from_start: bool) -> str:
    state = ChainState.load()
    if state.head_seq != last_seq or (last_seq and state.head_hash != last_hash):
        return f"the chain head says #{state.head_seq} but the ledger ends at #{last_seq}: entries were removed"
    if from_start and ApiCall.objects.filter(chain_seq__gt=last_seq).exists():
        return "a call claims a ledger position past the head: it was inserted out of order"
    return ""


def _check_records(latest: dict[tuple[str, str], LedgerEntry]) -> Iterator[str]:
    """Every sealed record still exists; every record carries the app's MAC.

    A record whose content moved on since its latest entry is fine while its MAC
    matches: the app changed it and the next seal pass appends the entry.
    """
    for kind, (model, id_field) in _RECORDS.items():
        ids = {object_id for (k, object_id) in latest if k == kind}
        for obj in model.objects.order_by("pk").iterator(chunk_size=2000):
            object_id = str(getattr(obj, id_field))
            ids.discard(object_id)
            if not record_mac_ok(obj):
                entry = latest.get((kind, object_id))
                if entry is not None and record_content_hash(obj) == entry.content_hash:
                    continue  # sealed as it is (before record MACs existed)
                yield f"{kind} {object_id} was changed or inserted outside the relay (its MAC does not match)"
        for object_id in sorted(ids):
            yield f"{kind} {object_id} was deleted"


def _check_unsealed_calls() -> Iterator[str]:
    """Rows not yet sealed, pending or finished, must still carry a valid MAC."""
    for row in ApiCall.objects.filter(chain_seq__isnull=True).order_by("pk").iterator(2000):
        if not hmac.compare_digest(row.row_mac, call_mac(row)):
            yield f"call {row.pk} was not written by the relay (forged or edited before sealing)"
