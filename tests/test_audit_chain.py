"""The tamper-evident ledger: sealing, verification, and what it catches."""
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from django.db.models import Sum

from audit_app.ledger import seal, verify
from audit_app.models import ApiCall, ChainState, LedgerEntry, Outcome, PruneRun, UsageDaily
from tests.conftest import ROOT, finished_calls, settle


def make_calls(relay_url, key, n=5):
    for i in range(n):
        requests.post(f"{relay_url}/v1/responses", json={"model": "gpt-4o-mini", "input": str(i)},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)
    requests.get(f"{relay_url}/v1/models", timeout=10)  # a rejected call is audited too
    finished_calls(n + 1)
    settle()


def verify_command() -> tuple[int, str]:
    """verify_audit as an operator runs it: its exit status and what it printed."""
    from io import StringIO

    out, err = StringIO(), StringIO()
    try:
        call_command("verify_audit", stdout=out, stderr=err)
        return 0, out.getvalue()
    except SystemExit as exc:
        return exc.code, err.getvalue()


def sql(statement: str, *params) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


@pytest.fixture
def sealed(relay_url, relay_key, upstream):
    make_calls(relay_url, relay_key)
    result = seal()
    assert result.calls == 6 and not result.rejected
    return list(ApiCall.objects.order_by("pk"))


def test_sealed_chain_verifies(sealed):
    assert verify_command()[0] == 0
    assert [c.chain_seq for c in sealed] == list(range(1, 7))
    state = ChainState.load()
    assert state.head_seq == LedgerEntry.objects.count() == 6
    assert state.last_verified_ok is True and state.last_verified_at is not None
    assert seal().sealed == 0  # nothing new: nothing sealed twice


def test_edited_row_is_caught(sealed):
    victim = sealed[2]
    sql(f"UPDATE {ApiCall._meta.db_table} SET cost = 0 WHERE id = %s", victim.pk)
    status, message = verify_command()
    assert status == 1
    assert f"call {victim.pk}" in message and "edited" in message
    assert ChainState.load().last_verified_ok is False


def test_deleted_row_is_caught(sealed):
    victim = sealed[1]
    sql(f"DELETE FROM {ApiCall._meta.db_table} WHERE id = %s", victim.pk)
    status, message = verify_command()
    assert status == 1 and f"call {victim.pk}" in message and "deleted" in message


def test_forged_row_inserted_by_sql_is_caught_and_never_sealed(sealed):
    table = ApiCall._meta.db_table
    columns = [f.column for f in ApiCall._meta.concrete_fields if f.column not in ("id", "chain_seq")]
    sql(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM {table} WHERE id = %s",
        sealed[0].pk)
    forged = ApiCall.objects.order_by("-pk").first()
    sql(f"UPDATE {table} SET user_agent = 'forged' WHERE id = %s", forged.pk)
    status, message = verify_command()
    assert status == 1 and f"call {forged.pk}" in message
    result = seal()
    assert result.calls == 0 and result.rejected == [f"call {forged.pk}"]


def test_forged_ledger_position_is_caught(sealed):
    sql(f"UPDATE {ApiCall._meta.db_table} SET chain_seq = 99 WHERE id = %s", sealed[3].pk)
    status, message = verify_command()
    assert status == 1 and ("reordered" in message or "out of order" in message)


def test_altered_ledger_entry_is_caught(sealed):
    sql(f"UPDATE {LedgerEntry._meta.db_table} SET content_hash = %s WHERE seq = 3", "f" * 64)
    status, message = verify_command()
    assert status == 1 and "#3" in message and "altered" in message


def test_removed_ledger_entry_is_caught(sealed):
    sql(f"DELETE FROM {LedgerEntry._meta.db_table} WHERE seq = 2")
    status, message = verify_command()
    assert status == 1 and "#2 is missing" in message


def test_truncated_ledger_is_caught(sealed):
    sql(f"DELETE FROM {LedgerEntry._meta.db_table} WHERE seq = 6")
    status, message = verify_command()
    assert status == 1 and "head" in message


def test_prune_keeps_verification_rollups_and_a_record(sealed, capsys):
    old = sealed[:4]
    ApiCall.objects.filter(pk__in=[c.pk for c in old]).update(started_at=timezone.now() - timedelta(days=100))
    # Moving rows in time is itself an edit; re-derive their MACs as the relay would have.
    from audit_app.ledger import call_content_hash, call_mac
    for row in ApiCall.objects.filter(pk__in=[c.pk for c in old]):
        row.row_mac = call_mac(row)
        row.save(update_fields=["row_mac"])
        LedgerEntry.objects.filter(seq=row.chain_seq).update(content_hash=call_content_hash(row))
    _rehash_chain()
    assert verify_command()[0] == 0
    rollup_total = sum(UsageDaily.objects.values_list("calls", flat=True))
    call_command("prune_audit", "--older-than", "30", "--run-by", "ops@example.com", "--batch-size", "3")
    assert "deleted 4 calls" in capsys.readouterr().out
    assert ApiCall.objects.count() == 2
    run = PruneRun.objects.get()
    assert (run.deleted_calls, run.run_by, run.first_call_id, run.last_call_id) == (
        4, "ops@example.com", old[0].pk, old[-1].pk)
    assert sum(UsageDaily.objects.values_list("calls", flat=True)) == rollup_total
    status, message = verify_command()
    assert status == 0, message
    # A row deleted inside the pruned range afterwards is still caught.
    ApiCall.objects.filter(pk=sealed[4].pk).update(started_at=timezone.now())
    sql(f"DELETE FROM {ApiCall._meta.db_table} WHERE id = %s", sealed[5].pk)
    assert verify_command()[0] == 1


def test_prune_dry_run_changes_nothing(sealed, capsys):
    call_command("prune_audit", "--older-than", "1", "--dry-run")
    assert "would be deleted" in capsys.readouterr().out
    assert ApiCall.objects.count() == 6 and not PruneRun.objects.exists()


def _rehash_chain():
    """Rebuild the chain hashes after a test rewrote content hashes on purpose."""
    from audit_app.ledger import GENESIS, entry_hash

    prev = GENESIS
    for entry in LedgerEntry.objects.order_by("seq"):
        entry.prev_hash = prev
        entry.entry_hash = prev = entry_hash(entry.seq, entry.kind, entry.object_id, entry.content_hash, prev)
        entry.save()
    ChainState.objects.filter(pk=1).update(head_hash=prev)


def test_concurrent_writers_and_sealers_make_one_valid_chain(start_gunicorn, issue_key, upstream):
    keys = [issue_key(f"user{i}")[1] for i in range(4)]
    relay = start_gunicorn(GUNICORN_WORKERS="3")
    stop = threading.Event()
    sealer_errors = []

    def run_sealer():
        while not stop.is_set():
            result = subprocess.run([sys.executable, "manage.py", "seal_audit"], cwd=ROOT, env=relay.env,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                sealer_errors.append(result.stderr[-500:])

    def call(i):
        return requests.post(f"{relay.url}/v1/responses", json={"model": "gpt-4o-mini", "input": str(i)},
                             headers={"Authorization": f"Bearer {keys[i % 4]}"}, timeout=60).status_code

    sealers = [threading.Thread(target=run_sealer) for _ in range(2)]
    for t in sealers:
        t.start()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(call, range(120)))
    settle()
    stop.set()
    for t in sealers:
        t.join()
    assert statuses == [200] * 120 and not sealer_errors
    seal()
    calls = ApiCall.objects.exclude(outcome=Outcome.PENDING)
    assert calls.count() == 120
    seqs = sorted(calls.values_list("chain_seq", flat=True))
    assert seqs == list(range(1, 121))  # every call sealed exactly once, no gaps
    assert verify(record=False).ok


def _open(key, path="/v1/files", family="files"):
    from audit_app.recorder import CallContext, open_call

    ctx = CallContext(method="POST", path=path, family=family, key=key, user=key.owner)
    return ctx, ApiCall.objects.get(pk=open_call(ctx))


def test_a_call_ending_after_it_was_sealed_as_interrupted_is_amended_with_its_real_outcome(
        issue_key, shipped_prices):
    from audit_app.models import LedgerEntry, LedgerKind
    from audit_app.recorder import close_call
    from audit_app.usage import Usage

    key, _ = issue_key()
    ctx, call = _open(key, "/v1/responses", "responses")  # e.g. a long stream still running past RELAY_PENDING_TIMEOUT
    call_command("reconcile_calls", "--older-than", "0")
    assert ApiCall.objects.get(pk=call.pk).billing == "unknown"  # it went upstream: maybe billed
    assert UsageDaily.objects.get().unknown_calls == 1
    assert seal().calls == 1
    close_call(call.pk, ctx, outcome=Outcome.OK, status=200, upstream_status=200, model="gpt-4o-mini",
               usage=Usage(input_tokens=10, output_tokens=5, total_tokens=15))
    row = ApiCall.objects.get(pk=call.pk)
    assert (row.outcome, row.total_tokens, row.error) == (Outcome.OK, 15, "")
    assert row.cost is not None and row.cost > 0
    assert LedgerEntry.objects.filter(kind=LedgerKind.AMEND, object_id=str(call.pk)).count() == 1
    assert verify(record=False).ok
    assert sorted(UsageDaily.objects.values_list("model", "calls", "total_tokens")) == [
        ("", 0, 0), ("gpt-4o-mini", 1, 15)]
    # The same completion again (a journal replay) changes nothing.
    close_call(call.pk, ctx, outcome=Outcome.OK, status=200, upstream_status=200, model="gpt-4o-mini",
               usage=Usage(input_tokens=10, output_tokens=5, total_tokens=15))
    assert LedgerEntry.objects.filter(kind=LedgerKind.AMEND).count() == 1
    assert sum(UsageDaily.objects.values_list("total_tokens", flat=True)) == 15
    assert sum(UsageDaily.objects.values_list("unknown_calls", flat=True)) == 0
    assert verify(record=False).ok


def test_a_call_ending_after_reconcile_but_before_sealing_keeps_its_real_outcome(issue_key, shipped_prices):
    from audit_app.recorder import close_call
    from audit_app.usage import Usage

    key, _ = issue_key()
    ctx, call = _open(key, "/v1/responses", "responses")
    call_command("reconcile_calls", "--older-than", "0")
    close_call(call.pk, ctx, outcome=Outcome.OK, status=200, upstream_status=200, model="gpt-4o-mini",
               usage=Usage(input_tokens=10, output_tokens=5, total_tokens=15))
    assert ApiCall.objects.get(pk=call.pk).outcome == Outcome.OK
    assert seal().calls == 1 and verify(record=False).ok
    assert sorted(UsageDaily.objects.values_list("model", "calls", "total_tokens")) == [
        ("", 0, 0), ("gpt-4o-mini", 1, 15)]


def test_an_interrupted_budgeted_call_keeps_its_hold_counted_until_its_real_outcome_replaces_it(
        issue_key, shipped_prices, settings):
    from audit_app import budgets
    from audit_app.recorder import CallContext, close_call, open_call
    from audit_app.usage import Usage

    key, _ = issue_key()
    hold = Decimal("0.25")
    ctx = CallContext(method="POST", path="/v1/responses", family="responses", key=key, user=key.owner,
                      reservation=budgets.Reservation(amount=hold))
    call = ApiCall.objects.get(pk=open_call(ctx))
    assert call.budget_held == hold and verify(record=False).ok  # the pending row's MAC binds it
    budgets.mark_spend_stale([f"k{key.pk}"])  # the cache may be shared: no figure from another test
    assert budgets.month_spend(f"k{key.pk}") == 0  # its reservation counts it meanwhile
    # The worker dies; its reservation lapses with the pending timeout, the row's hold does not:
    # counted while the row waits for reconcile_calls, and after.
    settings.RELAY_PENDING_TIMEOUT_SECONDS = 0
    budgets.mark_spend_stale([f"k{key.pk}"])  # (the cached figure lives RELAY_SPEND_CACHE_SECONDS)
    assert budgets.month_spend(f"k{key.pk}") == hold
    call_command("reconcile_calls")
    row = ApiCall.objects.get(pk=call.pk)
    assert (row.outcome, row.billing, row.budget_held) == (Outcome.INTERRUPTED, "unknown", hold)
    assert budgets.month_spend(f"k{key.pk}") == hold  # of unknown cost: counted, never as $0
    assert verify(record=False).ok
    # It was only slow: its real cost replaces the hold.
    # (10 - 0 cached) x 0.15e-06 + 5 x 0.60e-06 (gpt-4o-mini) = 0.0000045
    close_call(call.pk, ctx, outcome=Outcome.OK, status=200, upstream_status=200, model="gpt-4o-mini",
               usage=Usage(input_tokens=10, output_tokens=5, total_tokens=15))
    row = ApiCall.objects.get(pk=call.pk)
    assert (row.outcome, row.billing, row.budget_held, row.cost) == (Outcome.OK, "priced", None, Decimal("0.0000045"))
    totals = UsageDaily.objects.aggregate(held=Sum("budget_held"), cost=Sum("cost"), unknown=Sum("unknown_calls"))
    assert totals == {"held": 0, "cost": Decimal("0.0000045"), "unknown": 0}
    assert verify(record=False).ok


def test_a_lapsed_call_whose_job_took_over_its_hold_is_counted_once(issue_key, shipped_prices, settings):
    from audit_app import budgets, jobs
    from audit_app.recorder import CallContext, open_call

    key, _ = issue_key()
    hold = Decimal("0.25")
    ctx = CallContext(method="POST", path="/v1/responses", family="responses", key=key, user=key.owner,
                      reservation=budgets.Reservation(amount=hold))
    call_id = open_call(ctx)
    # A background stream: its job holds the reservation from response.created on.
    jobs.record_job({"object": "response", "id": "resp_bg", "status": "queued", "model": "gpt-4o-mini"},
                    user=key.owner, key=key, call_id=call_id, budget_hold=hold)
    settings.RELAY_PENDING_TIMEOUT_SECONDS = 0  # the worker died; the call's reservation has lapsed
    budgets.mark_spend_stale([f"k{key.pk}"])
    assert budgets.month_spend(f"k{key.pk}") == hold  # the job's hold, not the row's as well
    call_command("reconcile_calls")
    assert ApiCall.objects.get(pk=call_id).budget_held is None  # free: its usage is the job's
    assert budgets.month_spend(f"k{key.pk}") == hold


def test_rejected_calls_with_a_key_are_in_the_rollups(relay_url, relay_key, upstream):
    # A valid key refused by the relay (unknown route); one without any key is nobody's usage.
    requests.post(f"{relay_url}/v1/responses", data=b"{not json", timeout=10,
                  headers={"Authorization": f"Bearer {relay_key}", "Content-Type": "application/json"})
    requests.get(f"{relay_url}/v1/models", timeout=10)
    rows = finished_calls(2)
    assert {r.outcome for r in rows} == {Outcome.REJECTED}
    keyed = [r for r in rows if r.key_id is not None]
    assert len(keyed) == 1
    assert sum(UsageDaily.objects.values_list("calls", flat=True)) == 1
    assert UsageDaily.objects.get().key_id == keyed[0].key_id


def test_reprice_of_sealed_calls_is_sealed_as_amendments(sealed):
    from datetime import datetime, timezone as tz
    from decimal import Decimal

    from audit_app.models import LedgerKind, ModelPrice

    ModelPrice.objects.create(model="gpt-4o-mini", effective_from=datetime(2024, 1, 2, tzinfo=tz.utc),
                              input_per_1m=Decimal("9"), output_per_1m=Decimal("9"))
    call_command("reprice", "--since", (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%d"))
    priced = [c for c in sealed if c.cost is not None]
    amended = LedgerEntry.objects.filter(kind=LedgerKind.AMEND)
    assert sorted(amended.values_list("object_id", flat=True)) == sorted(str(c.pk) for c in priced)
    status, message = verify_command()
    assert status == 0, message
    # The amendment is what the row is checked against: an edit by SQL is still caught,
    first = ApiCall.objects.get(pk=priced[0].pk)
    assert first.chain_seq > 6
    sql(f"UPDATE {ApiCall._meta.db_table} SET cost = 0 WHERE id = %s", first.pk)
    assert f"call {first.pk}" in verify(record=False).problem
    sql(f"UPDATE {ApiCall._meta.db_table} SET cost = %s WHERE id = %s", first.cost, first.pk)
    assert verify(record=False).ok
    # and so is a row put back on its first entry with its original content.
    sql(f"UPDATE {ApiCall._meta.db_table} SET cost = %s, chain_seq = %s WHERE id = %s",
        priced[1].cost, priced[1].chain_seq, priced[1].pk)
    assert f"call {priced[1].pk}" in verify(record=False).problem


def test_records_changed_by_sql_are_never_sealed(sealed, issue_key):
    from audit_app.models import BatchRecord, FileRecord

    key, _ = issue_key("bob")
    file = FileRecord.objects.create(file_id="file-1", filename="a.jsonl", origin="files_api",
                                     created_by=key.owner, created_by_key=key)
    batch = BatchRecord.objects.create(batch_id="batch-1", status="in_progress", created_by=key.owner)
    BatchRecord.objects.filter(pk=batch.pk).update(last_polled_at=timezone.now())  # poll bookkeeping
    assert seal().records == 2 and verify(record=False).ok
    file.bytes = 10
    file.save()  # the app's own change: sealed
    sql(f"UPDATE {BatchRecord._meta.db_table} SET cost = 0 WHERE id = %s", batch.pk)
    result = seal()
    assert (result.records, result.rejected) == (1, ["batch batch-1"])
    assert "batch batch-1" in verify(record=False).problem


def test_a_forged_prune_run_does_not_cover_a_deleted_call(sealed):
    victim = sealed[2]
    sql(f"DELETE FROM {ApiCall._meta.db_table} WHERE id = %s", victim.pk)
    table = PruneRun._meta.db_table
    sql(f"INSERT INTO {table} (started_at, updated_at, run_by, older_than_days, cutoff, first_call_id, last_call_id, "
        f"deleted_calls, dry_run, row_mac) VALUES (%s, %s, 'nobody', 1, %s, %s, %s, 1, %s, '')",
        timezone.now(), timezone.now(), timezone.now(), victim.pk, victim.pk, False)
    assert seal().rejected == [f"prune {PruneRun.objects.get().pk}"]
    assert f"call {victim.pk}" in verify(record=False).problem


def test_reconcile_finishes_only_pending_rows_the_relay_opened(sealed, capsys):
    from audit_app.ledger import call_mac

    table = ApiCall._meta.db_table
    columns = [f.column for f in ApiCall._meta.concrete_fields if f.column not in ("id", "chain_seq", "row_mac",
                                                                                   "outcome")]
    sql(f"INSERT INTO {table} ({', '.join(columns)}, row_mac, outcome) SELECT {', '.join(columns)}, '', 'pending' "
        f"FROM {table} WHERE id = %s", sealed[0].pk)
    forged = ApiCall.objects.order_by("-pk").first()
    assert f"call {forged.pk}" in verify(record=False).problem  # pending rows are checked too
    call_command("reconcile_calls", "--older-than", "0")
    assert f"pending call {forged.pk} does not match its MAC" in capsys.readouterr().err
    assert ApiCall.objects.get(pk=forged.pk).outcome == Outcome.PENDING
    assert seal().calls == 0
    # A row the relay opened carries its MAC while pending.
    ctx, opened = _open(sealed[0].key)
    assert opened.row_mac == call_mac(ApiCall.objects.get(pk=opened.pk))


def test_verify_since_a_day_with_nothing_sealed_passes(sealed):
    out = verify(timezone.now() + timedelta(days=1), record=False)
    assert out.ok, out.problem
    sql(f"UPDATE {ApiCall._meta.db_table} SET user_agent = 'x' WHERE id = %s", sealed[0].pk)
    assert verify(timezone.now() - timedelta(days=1), record=False).problem
    sql(f"UPDATE {ApiCall._meta.db_table} SET user_agent = %s WHERE id = %s", sealed[0].user_agent, sealed[0].pk)
    sql(f"DELETE FROM {LedgerEntry._meta.db_table} WHERE seq = 6")
    assert "head" in verify(timezone.now() + timedelta(days=1), record=False).problem


def _age(rows, days):
    """Move sealed rows back in time, re-deriving MACs and hashes as the relay would have."""
    from audit_app.ledger import call_content_hash, call_mac

    for row in ApiCall.objects.filter(pk__in=[r.pk for r in rows]):
        row.started_at = timezone.now() - timedelta(days=days)
        row.row_mac = call_mac(row)
        row.save(update_fields=["started_at", "row_mac"])
        LedgerEntry.objects.filter(seq=row.chain_seq).update(content_hash=call_content_hash(row))


def test_two_prunes_with_ids_out_of_time_order_account_exactly(sealed):
    # Calls 1, 2, 4, 5 are 100 days old, 3 and 6 are 40 days old: id order is not time order.
    _age([sealed[0], sealed[1], sealed[3], sealed[4]], 100)
    _age([sealed[2], sealed[5]], 40)
    _rehash_chain()
    call_command("prune_audit", "--older-than", "60", "--run-by", "ops")
    assert sorted(ApiCall.objects.values_list("pk", flat=True)) == [c.pk for c in sealed[2:]]
    assert verify(record=False).ok  # 4 and 5 wait: a run deletes one id range
    call_command("prune_audit", "--older-than", "30", "--run-by", "ops")
    assert not ApiCall.objects.exists()
    ranges = sorted(PruneRun.objects.values_list("first_call_id", "last_call_id", "deleted_calls"))
    assert ranges == [(sealed[0].pk, sealed[1].pk, 2), (sealed[2].pk, sealed[5].pk, 4)]
    out = verify(record=False)
    assert out.ok, out.problem


def test_a_seal_pass_reads_only_records_changed_since_the_previous_pass(sealed):
    from audit_app.models import FileRecord

    files = [FileRecord.objects.create(file_id=f"file-{i}", origin="files_api") for i in range(3)]
    assert seal().records == 3
    hour_ago = timezone.now() - timedelta(hours=1)
    FileRecord.objects.update(updated_at=hour_ago)  # as if saved long ago (updated_at is not MAC'd)
    ChainState.objects.update(records_pass_at=hour_ago + timedelta(minutes=30))
    sql(f"UPDATE {FileRecord._meta.db_table} SET bytes = 1 WHERE file_id = 'file-0'")  # updated_at untouched
    files[1].status = "processed"
    files[1].save()
    result = seal()
    assert (result.records, result.rejected) == (1, [])  # file-0 was not even read
    assert "file file-0" in verify(record=False).problem  # verification reads everything


def test_verify_audit_prints_progress_and_stops_cleanly_on_sigterm(sealed):
    import io
    import os
    import signal

    out = io.StringIO()
    call_command("verify_audit", "--progress-every", "2", stdout=out)
    lines = out.getvalue().splitlines()
    assert [line.strip() for line in lines[:3]] == [f"{n} ledger entries verified" for n in (2, 4, 6)]
    assert lines[-1] == "verify_audit: OK, 6 ledger entries verified"

    class SigtermOnFirstLine(io.StringIO):
        def write(self, text):
            if not self.getvalue():
                os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled by the command
            return super().write(text)

    ChainState.objects.update(last_verified_at=None)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    err = io.StringIO()
    try:
        with pytest.raises(SystemExit) as exit_:
            call_command("verify_audit", "--progress-every", "1", stdout=SigtermOnFirstLine(), stderr=err)
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    assert exit_.value.code == 2 and "STOPPED after 6 entries" in err.getvalue()
    assert ChainState.load().last_verified_at is None  # a stopped walk is not a verification


def test_a_partial_save_keeps_the_record_mac_whole_when_another_writer_got_there_first(db):
    from audit_app.macs import record_mac_ok
    from audit_app.models import FileRecord

    FileRecord.objects.create(file_id="file-1", origin="files_api", status="uploaded")
    mine, theirs = FileRecord.objects.get(), FileRecord.objects.get()
    theirs.bytes = 42
    theirs.save()
    mine.status = "deleted"
    mine.save(update_fields=["status", "updated_at"])
    row = FileRecord.objects.get()
    assert (row.bytes, row.status) == (42, "deleted") and record_mac_ok(row)


@pytest.mark.django_db
def test_a_jobs_budget_hold_is_bound_by_its_mac_and_a_job_without_one_verifies_as_before(user):
    from audit_app import jobs
    from audit_app.macs import record_mac_ok
    from audit_app.models import AsyncJob

    held = jobs.record_job({"object": "video", "id": "video_held", "model": "sora-2", "status": "queued"},
                           user=user, budget_hold=Decimal("0.4"))
    plain = jobs.record_job({"object": "video", "id": "video_plain", "model": "sora-2", "status": "queued"},
                            user=user)
    assert record_mac_ok(AsyncJob.objects.get(pk=held.pk)) and record_mac_ok(AsyncJob.objects.get(pk=plain.pk))
    # Lowering a hold by SQL would lift a budget: the MAC no longer matches.
    AsyncJob.objects.filter(pk=held.pk).update(budget_hold=Decimal("0.01"))
    assert not record_mac_ok(AsyncJob.objects.get(pk=held.pk))
