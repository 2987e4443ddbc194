"""Files, uploads and batches through the relay: who uploaded what, every batch's lifecycle,
results counted exactly once at batch prices, and the user_data rule."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

import openai
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audit_app.polling import CLAIM_LEASE, due_batches
from audit_app.batch_records import record_batch
from audit_app.models import BatchRecord, BatchResult, FileOrigin, FileRecord, UploadRecord, UsageDaily
from tests.conftest import ROOT, UPSTREAM_KEY, database_url_for_subprocess, finished_calls, settle

BATCH_MODEL = "gpt-4o-mini-2024-07-18"
# gpt-4o-mini at batch prices (input_cost_per_token_batches, output_cost_per_token_batches,
# USD per 1M): input 0.075, output 0.30. A result of 1000 prompt tokens and 500 completion
# tokens costs 1000 * 0.075e-6 + 500 * 0.30e-6 = 0.000225. (The map has no batch rate for
# cached gpt-4o-mini input: a result with cached tokens is unpriced, see test_pricing_dimensions.)
RESULT_COST = Decimal("0.000225")


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def batch_input(n: int = 3, model: str = "gpt-4o-mini") -> bytes:
    return jsonl([{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]}}
                  for i in range(n)])


def output_lines(upstream, n: int, model: str = BATCH_MODEL, start: int = 0) -> list[dict]:
    return [upstream.make_batch_output_line(f"req-{i}", model, 1000, 500)
            for i in range(start, start + n)]


@pytest.fixture
def alice(sdk, django_user_model):
    """The owner of the SDK's relay key."""
    return django_user_model.objects.get(username="alice")


def poll(*args: str) -> str:
    out = io.StringIO()
    call_command("poll_batches", "--concurrency", "1", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def create_batch(sdk, lines: int = 3) -> str:
    input_file = sdk.files.create(file=("in.jsonl", io.BytesIO(batch_input(lines))), purpose="batch")
    batch = sdk.batches.create(input_file_id=input_file.id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={"project": "q4-report"})
    return batch.id


# --- files and uploads ----------------------------------------------------------------


def test_an_upload_records_who_uploaded_what_and_a_delete_marks_it(sdk, alice):
    uploaded = sdk.files.create(file=("notes.jsonl", io.BytesIO(b'{"a": 1}\n')), purpose="batch")
    finished_calls(1)
    record = FileRecord.objects.get(file_id=uploaded.id)
    assert (record.filename, record.purpose, record.bytes, record.origin) == (
        "notes.jsonl", "batch", 9, FileOrigin.FILES_API)
    assert record.created_by == alice and record.created_by_key.owner == alice
    assert record.call.path == "/v1/files" and record.deleted_at is None

    assert sdk.files.delete(uploaded.id).deleted is True
    settle()
    record.refresh_from_db()
    assert record.deleted_at is not None and record.status == "deleted"


def test_a_failed_upload_records_no_file(sdk, upstream):
    upstream.inject("/v1/files", method="POST", status=400,
                    body={"error": {"message": "bad purpose", "type": "invalid_request_error",
                                    "param": "purpose", "code": None}})
    with pytest.raises(openai.BadRequestError):
        sdk.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    settle()
    assert not FileRecord.objects.exists()


def test_the_uploads_api_records_parts_completion_and_the_file(sdk, alice):
    upload = sdk.uploads.create(bytes=6, filename="big.jsonl", mime_type="text/jsonl", purpose="batch")
    part_a = sdk.uploads.parts.create(upload_id=upload.id, data=b"abc")
    part_b = sdk.uploads.parts.create(upload_id=upload.id, data=b"def")
    done = sdk.uploads.complete(upload_id=upload.id, part_ids=[part_a.id, part_b.id])
    settle()
    record = UploadRecord.objects.get(upload_id=upload.id)
    assert (record.parts, record.status, record.filename, record.created_by) == (2, "completed", "big.jsonl", alice)
    assert record.completed_at is not None
    assert record.file.file_id == done.file.id
    assert (record.file.origin, record.file.created_by) == (FileOrigin.UPLOADS_API, alice)

    other = sdk.uploads.create(bytes=1, filename="x", mime_type="text/plain", purpose="batch")
    sdk.uploads.cancel(other.id)
    settle()
    cancelled = UploadRecord.objects.get(upload_id=other.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None and cancelled.file is None


def test_user_data_content_is_refused_and_nothing_is_forwarded(sdk, upstream):
    seen = sdk.files.create(file=("private.pdf", io.BytesIO(b"%PDF-1.4 secret")), purpose="user_data")
    # A file the relay never saw: its purpose comes from a metadata lookup upstream.
    unseen = upstream.add_file(filename="elsewhere.pdf", purpose="user_data", content=b"%PDF secret")
    for file_id in (seen.id, unseen["id"]):
        with pytest.raises(openai.PermissionDeniedError) as denied:
            sdk.files.content(file_id)
        assert denied.value.body["code"] == "user_data_content"
    assert not [r for r in upstream.requests if r.path.endswith("/content")]
    assert [r.path for r in upstream.requests if r.method == "GET"] == [f"/v1/files/{unseen['id']}"]
    looked_up = FileRecord.objects.get(file_id=unseen["id"])
    assert (looked_up.purpose, looked_up.origin, looked_up.created_by) == ("user_data", FileOrigin.UPSTREAM_ONLY, None)
    # When upstream cannot say what a file is, the relay refuses rather than guess.
    mystery = upstream.add_file(filename="mystery.pdf", purpose="user_data", content=b"%PDF secret")
    upstream.inject(f"/v1/files/{mystery['id']}", method="GET", status=500, body={"error": {
        "message": "boom", "type": "server_error", "param": None, "code": None}})
    with pytest.raises(openai.InternalServerError) as unknown:
        sdk.with_options(max_retries=0).files.content(mystery["id"])
    assert unknown.value.status_code == 502 and unknown.value.body["code"] == "file_purpose_unknown"
    assert not [r for r in upstream.requests if r.path.endswith("/content")]
    # Other purposes download as usual.
    ordinary = upstream.add_file(filename="ok.jsonl", purpose="batch", content=b"{}\n")
    assert sdk.files.content(ordinary["id"]).read() == b"{}\n"


def test_sync_files_adds_outside_files_and_marks_deleted_and_expired(sdk, upstream, alice):
    mine = sdk.files.create(file=("mine.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    gone = sdk.files.create(file=("gone.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    outside = upstream.add_file(filename="outside.jsonl", purpose="fine-tune", content=b"{}\n")
    stale = upstream.add_file(filename="stale.jsonl", purpose="batch", content=b"{}\n")
    stale["expires_at"] = int(time.time()) - 60
    settle()
    with upstream.lock:
        upstream.files.pop(gone.id)  # deleted upstream, not through the relay

    out = io.StringIO()
    call_command("sync_files", stdout=out)
    assert "1 marked deleted" in out.getvalue() and "2 added unowned" in out.getvalue()
    assert FileRecord.objects.get(file_id=mine.id).created_by == alice
    assert FileRecord.objects.get(file_id=gone.id).deleted_at is not None
    added = FileRecord.objects.get(file_id=outside["id"])
    assert (added.origin, added.created_by, added.purpose) == (FileOrigin.UPSTREAM_ONLY, None, "fine-tune")
    assert FileRecord.objects.get(file_id=stale["id"]).status == "expired"


def test_sync_files_marks_nothing_when_upstream_fails(relay_url, upstream):
    FileRecord.objects.create(file_id="file-kept", origin=FileOrigin.FILES_API, purpose="batch")
    upstream.inject("/v1/files", method="GET", status=503, body={"error": {
        "message": "down", "type": "server_error", "param": None, "code": None}})
    with pytest.raises(CommandError, match="upstream answered 503 listing files; nothing marked"):
        call_command("sync_files", stdout=io.StringIO())
    assert FileRecord.objects.get(file_id="file-kept").deleted_at is None


# --- batches --------------------------------------------------------------------------


def test_a_batch_from_upload_to_results_at_batch_price(sdk, upstream, alice, django_user_model):
    batch_id = create_batch(sdk)
    settle()
    record = BatchRecord.objects.get(batch_id=batch_id)
    assert (record.status, record.endpoint, record.completion_window) == ("validating", "/v1/chat/completions", "24h")
    assert record.created_by == alice and record.metadata == {"project": "q4-report"}
    assert record.input_file.filename == "in.jsonl" and record.cost is None

    upstream.advance_batch(batch_id, "in_progress")
    assert "checked 1, changed 1, completed 0" in poll()
    record.refresh_from_db()
    assert record.status == "in_progress" and record.in_progress_at is not None

    upstream.advance_batch(batch_id, "finalizing", completed=2, failed=1)
    upstream.advance_batch(batch_id, "completed", output_lines=output_lines(upstream, 2),
                           error_lines=[upstream.make_batch_error_line("req-2", "invalid_model", "no such model")])
    assert "checked 1, changed 1, completed 1, failed 0, errors 0, results read 3" in poll()
    record.refresh_from_db()
    assert (record.status, record.request_total, record.request_completed, record.request_failed) == (
        "completed", 3, 2, 1)
    assert record.finalizing_at and record.completed_at and record.last_polled_at and not record.last_poll_error
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (2000, 0, 1000)
    assert record.cost == 2 * RESULT_COST and record.unpriced_results == 0

    results = {r.custom_id: r for r in record.results.all()}
    assert set(results) == {"req-0", "req-1", "req-2"}
    assert (results["req-0"].status_code, results["req-0"].model, results["req-0"].cost) == (200, BATCH_MODEL, RESULT_COST)
    assert (results["req-2"].status_code, results["req-2"].error_code, results["req-2"].cost) == (400, "invalid_model", None)
    assert results["req-2"].from_error_file

    output, errors = record.output_file, record.error_file
    assert (output.origin, output.created_by, output.batch) == (FileOrigin.BATCH_OUTPUT, alice, record)
    assert (errors.origin, errors.created_by) == (FileOrigin.BATCH_ERROR, alice)
    rollup = UsageDaily.objects.get(family="batches", model=BATCH_MODEL)
    assert (rollup.calls, rollup.cost, rollup.user) == (2, 2 * RESULT_COST, alice)

    # The output downloads through the relay.
    lines = sdk.files.content(output.file_id).read().splitlines()
    assert [json.loads(line)["custom_id"] for line in lines] == ["req-0", "req-1"]

    # The admin shows who ran it, how it ended and what it cost, with its files and results.
    admin = Client()
    admin.force_login(django_user_model.objects.create_superuser("root", password="unused"))
    page = admin.get(f"/admin/audit_app/batchrecord/{record.pk}/change/").content.decode()
    for shown in ("completed", "alice", "0.00045", output.file_id, errors.file_id, record.input_file_id,
                  f"batch__id__exact={record.pk}"):
        assert shown in page, shown
    results_page = admin.get(f"/admin/audit_app/batchresult/?batch__id__exact={record.pk}").content.decode()
    assert all(f"req-{i}" in results_page for i in range(3))
    file_page = admin.get(f"/admin/audit_app/filerecord/{output.pk}/change/").content.decode()
    assert record.batch_id in file_page

    # A second run changes nothing.
    assert due_batches() == []
    assert "checked 0, changed 0, completed 0, failed 0, errors 0, results read 0" in poll()
    assert poll("--batch", batch_id).startswith("polling 1 batch(es)")
    assert BatchResult.objects.count() == 3
    assert BatchRecord.objects.get(pk=record.pk).cost == 2 * RESULT_COST
    assert UsageDaily.objects.get(family="batches", model=BATCH_MODEL).cost == 2 * RESULT_COST


@pytest.mark.parametrize("final", ["failed", "expired", "cancelled"])
def test_batches_that_end_badly_keep_their_timestamps_and_partial_results(sdk, upstream, final):
    batch_id = create_batch(sdk)
    if final == "failed":
        upstream.batches[batch_id]["errors"] = {"object": "list", "data": [
            {"code": "invalid_json_line", "message": "line 2 is not JSON", "param": None, "line": 2}]}
        upstream.advance_batch(batch_id, "failed")
    elif final == "expired":
        upstream.advance_batch(batch_id, "in_progress")
        upstream.advance_batch(batch_id, "expired", completed=1, output_lines=output_lines(upstream, 1))
    else:
        sdk.batches.cancel(batch_id)  # recorded from the object the relay forwards
        settle()
        assert BatchRecord.objects.get(batch_id=batch_id).status == "cancelling"
        upstream.advance_batch(batch_id, "cancelled", completed=1, output_lines=output_lines(upstream, 1))

    assert "completed 0, failed 1, errors 0" in poll()
    record = BatchRecord.objects.get(batch_id=batch_id)
    assert record.status == final and getattr(record, f"{final}_at") is not None
    if final == "failed":
        assert record.errors["data"][0]["code"] == "invalid_json_line"
        assert record.results_counted_at is None and due_batches() == []
    else:
        assert record.results.count() == 1 and record.cost == RESULT_COST
    if final == "cancelled":
        assert record.cancelling_at is not None


def test_retrieve_and_list_through_the_relay_refresh_the_record(sdk, upstream):
    batch_id = create_batch(sdk)
    upstream.advance_batch(batch_id, "in_progress", completed=1)
    assert sdk.batches.retrieve(batch_id).status == "in_progress"
    settle()
    assert BatchRecord.objects.get(batch_id=batch_id).request_completed == 1
    upstream.advance_batch(batch_id, "finalizing", completed=3)
    assert [b.id for b in sdk.batches.list()] == [batch_id]
    settle()
    record = BatchRecord.objects.get(batch_id=batch_id)
    assert (record.status, record.request_completed, record.created_by.username) == ("finalizing", 3, "alice")


def test_a_batch_started_outside_the_relay_can_be_polled_by_id(relay_url, upstream):
    upstream.batches["batch_outside"] = dict(upstream.batches.get("x", {}), id="batch_outside", object="batch",
                                             status="in_progress", endpoint="/v1/embeddings",
                                             request_counts={"total": 4, "completed": 1, "failed": 0})
    assert "checked 1" in poll("--batch", "batch_outside")
    record = BatchRecord.objects.get(batch_id="batch_outside")
    assert (record.status, record.created_by, record.request_total) == ("in_progress", None, 4)
    with pytest.raises(Exception, match="404"):
        poll("--batch", "batch_missing")


def test_a_result_without_a_price_leaves_the_batch_cost_unknown(sdk, upstream):
    batch_id = create_batch(sdk, lines=2)
    upstream.advance_batch(batch_id, "completed", output_lines=[
        *output_lines(upstream, 1), upstream.make_batch_output_line("req-1", "house-model-7", 10, 5)])
    poll()
    record = BatchRecord.objects.get(batch_id=batch_id)
    assert record.cost is None and record.unpriced_results == 1 and record.input_tokens == 1010
    assert record.results.get(custom_id="req-1").unpriced


def test_pollers_claim_batches_without_returning_too(sdk, upstream, monkeypatch):
    # SQLite before 3.35 has no UPDATE ... RETURNING: the claim writes, then reads.
    if connection.vendor != "sqlite":
        pytest.skip("every PostgreSQL the relay supports has RETURNING")
    monkeypatch.setattr(connection.features, "can_return_columns_from_insert", False)
    batch_id = create_batch(sdk, lines=2)
    upstream.advance_batch(batch_id, "completed", output_lines=output_lines(upstream, 2))
    assert "completed 1" in poll()
    record = BatchRecord.objects.get(batch_id=batch_id)
    assert record.cost == 2 * RESULT_COST and record.claimed_until is None
    assert "polling 0 batch(es)" in poll()


def test_an_upstream_error_is_recorded_on_the_batch_and_retried(sdk, upstream):
    batch_id = create_batch(sdk)
    upstream.inject(f"/v1/batches/{batch_id}", method="GET", status=500,
                    body={"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
    assert "errors 1" in poll()
    record = BatchRecord.objects.get(batch_id=batch_id)
    assert "500" in record.last_poll_error and record.last_polled_at is not None
    upstream.advance_batch(batch_id, "in_progress")
    assert "errors 0" in poll()
    record.refresh_from_db()
    assert record.status == "in_progress" and record.last_poll_error == ""


# --- exactly once, under crashes and concurrency ------------------------------------------


def poller_process(upstream, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "relay_project.settings",
           "DATABASE_URL": database_url_for_subprocess(), "OPENAI_BASE_URL": upstream.base_url,
           "OPENAI_API_KEY": UPSTREAM_KEY, "SECRET_KEY": "test-only-secret-key"}
    return subprocess.Popen([sys.executable, "manage.py", "poll_batches", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_poller_killed_half_way_through_an_output_file_counts_each_result_once(sdk, upstream, alice):
    batch_id = create_batch(sdk, lines=2000)
    lines = output_lines(upstream, 2000)
    upstream.advance_batch(batch_id, "completed", completed=2000, output_lines=lines)
    output_id = upstream.batches[batch_id]["output_file_id"]
    size = len(upstream.file_content[output_id])
    upstream.inject(f"/v1/files/{output_id}/content", stall_after_bytes=size // 2, hang=60)

    poller = poller_process(upstream)
    try:
        wait_for(lambda: upstream.stalled_downloads == 1)
        # Results are committed in chunks as the file is read: some are in when it dies.
        wait_for(lambda: BatchResult.objects.exists())
        poller.send_signal(signal.SIGKILL)
        poller.wait(10)
    finally:
        if poller.poll() is None:
            poller.kill()
    assert 0 < BatchResult.objects.count() < 2000
    record = BatchRecord.objects.get(batch_id=batch_id)
    assert record.results_counted_at is None and record.claimed_until is not None

    # The dead poller's lease keeps other pollers off the batch until it expires.
    assert "polling 0 batch(es)" in poll()
    BatchRecord.objects.filter(pk=record.pk).update(claimed_until=record.claimed_until - CLAIM_LEASE)
    assert "completed 1" in poll()
    record = BatchRecord.objects.get(batch_id=batch_id)
    assert record.results.count() == 2000
    assert record.results.values("custom_id").distinct().count() == 2000
    assert record.cost == 2000 * RESULT_COST and record.input_tokens == 2000 * 1000
    rollup = UsageDaily.objects.get(family="batches", model=BATCH_MODEL)
    assert (rollup.calls, rollup.cost) == (2000, 2000 * RESULT_COST)
    assert "completed 0" in poll() and BatchResult.objects.count() == 2000


def test_two_pollers_at_once_on_postgresql_process_each_batch_once(sdk, upstream):
    if connection.vendor != "postgresql":
        pytest.skip("row claims (FOR UPDATE SKIP LOCKED) are what makes this safe; PostgreSQL only")
    batch_ids = [create_batch(sdk, lines=2) for _ in range(12)]
    for batch_id in batch_ids:
        upstream.advance_batch(batch_id, "completed", completed=2, output_lines=output_lines(upstream, 2))
    settle()
    upstream.latency = 0.3  # long enough for the two runs to overlap throughout
    pollers = [poller_process(upstream, "--concurrency", "3") for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=90)[0] for p in pollers]
    finally:
        for p in pollers:
            if p.poll() is None:
                p.kill()
    first, second = pollers
    assert all(p.returncode == 0 for p in (first, second)), outputs

    def count(name: str, output: str) -> int:
        return int(output.split(f"{name} ")[1].split(",")[0])

    assert sum(count("completed", out) for out in outputs) == 12, outputs
    assert all(count("checked", out) < 12 for out in outputs), outputs  # both took part
    content_reads = [r.path for r in upstream.requests if r.path.endswith("/content")]
    assert len(content_reads) == len(set(content_reads)) == 12
    assert BatchResult.objects.count() == 24
    rollup = UsageDaily.objects.get(family="batches", model=BATCH_MODEL)
    assert (rollup.calls, rollup.cost) == (24, 24 * RESULT_COST)


def test_a_looping_poller_stops_cleanly_on_sigterm(sdk, upstream):
    batch_id = create_batch(sdk)
    upstream.advance_batch(batch_id, "in_progress")
    settle()
    poller = poller_process(upstream, "--loop", "--interval", "0.2")
    try:
        wait_for(lambda: BatchRecord.objects.get(batch_id=batch_id).status == "in_progress")
        poller.send_signal(signal.SIGTERM)
        output = poller.communicate(timeout=20)[0]
    finally:
        if poller.poll() is None:
            poller.kill()
    assert poller.returncode == 0, output
    assert "SIGTERM: finishing the current step, then stopping" in output
    assert output.rstrip().splitlines()[-1].startswith("poll_batches: jobs: checked ")


def test_a_status_refresh_writes_only_what_upstream_changed(sdk, upstream):
    """A client retrieving its batch through the relay while poll_batches counts its results
    must not write back the totals it read before the count: they would be NULL again, and
    the next pass would count the results twice."""
    batch_id = create_batch(sdk, lines=1)
    upstream.advance_batch(batch_id, "completed", completed=1, output_lines=output_lines(upstream, 1))
    poll()
    upstream.batches[batch_id]["metadata"] = {"project": "renamed"}
    with CaptureQueriesContext(connection) as queries:
        record_batch(upstream.batches[batch_id])
    updates = [q["sql"] for q in queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1 and "metadata" in updates[0]
    assert not any(column in updates[0] for column in ("results_counted_at", '"cost"', "input_tokens"))
    record = BatchRecord.objects.get(batch_id=batch_id)
    assert record.results_counted_at is not None and record.cost == RESULT_COST
    assert due_batches() == [] and "results read 0" in poll()
    assert UsageDaily.objects.get(family="batches", model=BATCH_MODEL).calls == 1


def test_malformed_upstream_objects_never_cost_a_call_its_row(sdk, upstream):
    batch_id = create_batch(sdk)
    settle()
    upstream.batches[batch_id].update(in_progress_at=1e20, request_counts={"total": [1], "completed": 0})
    sdk.batches.retrieve(batch_id)
    rows = finished_calls(4)
    assert [r.outcome for r in rows][-1] == "ok" and rows[-1].status == 200
    # The poller records the problem on the batch and carries on.
    output = poll()
    assert "errors 1" in output
    assert BatchRecord.objects.get(batch_id=batch_id).last_poll_error
