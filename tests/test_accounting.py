"""Every dollar counted exactly once: reads are free, jobs are billed once when first
seen finished, and a billed call whose usage cannot be read is "unknown", never $0.

Prices (USD per 1M tokens, from the shipped map audit_app/data/openai-model-prices.json):
gpt-4o-mini input 0.15, cached input 0.075, output 0.60. The fake's Responses and
chat usage is 12 input tokens (4 cached) and 7 output tokens (JSON), so one call costs
  8 * 0.15e-6 + 4 * 0.075e-6 + 7 * 0.60e-6 = 0.0000057.
sora-2: 0.10 per second of video.
"""
from __future__ import annotations

import io
import json
import re
import time
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal
from pathlib import Path

import openai
import pytest
import requests
from django.db.models import Sum

from audit_app.models import ApiCall, AsyncJob, Billing, UsageDaily
from tests.conftest import settle
from tests.test_files_batches import RESULT_COST, create_batch, output_lines, poll

CALL_COST = Decimal("0.0000057")
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


@pytest.fixture
def alice(sdk, django_user_model):
    return django_user_model.objects.get(username="alice")


def rollup_totals() -> dict:
    settle()
    return UsageDaily.objects.aggregate(cost=Sum("cost"), calls=Sum("calls"), tokens=Sum("total_tokens"),
                                        unknown=Sum("unknown_calls"))


def test_a_client_that_polls_pays_once_for_each_thing_it_generated(sdk, upstream, alice):
    # A stored response retrieved 3 times.
    created = sdk.responses.create(model="gpt-4o-mini", input="hi")
    for _ in range(3):
        assert sdk.responses.retrieve(created.id).usage.output_tokens == 7
    # A stored chat completion retrieved twice.
    chat = sdk.chat.completions.create(model="gpt-4o-mini", store=True, messages=[{"role": "user", "content": "hi"}])
    for _ in range(2):
        assert sdk.chat.completions.retrieve(chat.id).usage.completion_tokens == 7
    # A background response polled until it completed, and twice more.
    background = sdk.responses.create(model="gpt-4o-mini", input="hi", background=True)
    settle()  # its job is recorded as the create call's row closes
    assert background.status == "queued"
    assert sdk.responses.retrieve(background.id).status == "queued"
    upstream.advance_response(background.id, "in_progress")
    assert sdk.responses.retrieve(background.id).status == "in_progress"
    upstream.advance_response(background.id, "completed")
    for _ in range(3):
        assert sdk.responses.retrieve(background.id).status == "completed"
    # A 2-line batch retrieved past completion, then counted by the poller.
    batch_id = create_batch(sdk, lines=2)
    upstream.advance_batch(batch_id, "completed", completed=2, output_lines=output_lines(upstream, 2))
    for _ in range(2):
        assert sdk.batches.retrieve(batch_id).status == "completed"
    poll()

    totals = rollup_totals()
    # Three generating calls (response, chat, background) and two batch results.
    # 3 × 0.0000057 + 2 × 0.000225 = 0.0000171 + 0.000450
    assert totals["cost"] == 3 * CALL_COST + 2 * RESULT_COST == Decimal("0.0004671")
    assert totals["unknown"] == 0
    rows = UsageDaily.objects.all()
    assert {(r.user_id, r.key.owner_id) for r in rows} == {(alice.pk, alice.pk)}
    assert {r.date for r in rows} == {datetime.now(dt_timezone.utc).date()}
    by_model = {m: c for m, c in UsageDaily.objects.values("model").annotate(c=Sum("cost"))
                .values_list("model", "c") if c}
    assert by_model == {"gpt-4o-mini": 3 * CALL_COST, "gpt-4o-mini-2024-07-18": 2 * RESULT_COST}
    # Every read is free, with no tokens of its own.
    reads = ApiCall.objects.filter(method="GET")
    assert reads.count() == 3 + 2 + 5 + 2
    assert set(reads.values_list("billing", flat=True)) == {Billing.FREE}
    assert not reads.filter(total_tokens__isnull=False).exists()
    assert not reads.filter(cost__isnull=False).exists()
    # The background create call is free: its cost is on its job.
    job = AsyncJob.objects.get(job_id=background.id)
    assert (job.created_by, job.model, job.billing, job.cost, job.total_tokens) == (
        alice, "gpt-4o-mini", Billing.PRICED, CALL_COST, 19)
    create_row = ApiCall.objects.get(method="POST", path="/v1/responses", cost__isnull=True)
    assert create_row.billing == Billing.FREE


def test_a_background_response_is_billed_to_its_creator_even_when_someone_else_sees_it_finish(
        sdk, upstream, alice, relay_url, issue_key):
    background = sdk.responses.create(model="gpt-4o-mini", input="hi", background=True)
    settle()  # its job is recorded as the create call's row closes
    upstream.advance_response(background.id, "completed")
    _, bob_secret = issue_key("bob")
    bob = openai.OpenAI(base_url=f"{relay_url}/v1", api_key=bob_secret, max_retries=0)
    assert bob.responses.retrieve(background.id).status == "completed"
    assert sdk.responses.retrieve(background.id).status == "completed"
    assert rollup_totals()["cost"] == CALL_COST
    row = UsageDaily.objects.get(cost__gt=0)
    # Alice's bucket for the model: her (free) create call, and the job's cost added to it.
    assert (row.user_id, row.key.owner_id, row.model, row.family, row.calls) == (
        alice.pk, alice.pk, "gpt-4o-mini", "responses", 1)


def test_a_resumed_stream_that_shows_the_end_bills_the_background_response_once(sdk, upstream):
    background = sdk.responses.create(model="gpt-4o-mini", input="hi", background=True)
    settle()  # its job is recorded as the create call's row closes
    upstream.advance_response(background.id, "completed")
    events = list(sdk.responses.retrieve(background.id, stream=True))
    assert events[-1].type == "response.completed"
    list(sdk.responses.retrieve(background.id, stream=True))
    assert rollup_totals()["cost"] == CALL_COST
    assert AsyncJob.objects.get().status == "completed"


def test_a_streamed_background_create_is_a_job_not_a_billed_call(sdk, upstream):
    events = list(sdk.responses.create(model="gpt-4o-mini", input="hi", background=True, stream=True))
    assert events[0].response.background is True
    job = AsyncJob.objects.get()
    assert (job.status, job.counted_at) == ("queued", None)
    settle()
    assert ApiCall.objects.get().billing == Billing.FREE


def test_a_background_stream_cut_early_still_records_its_job_and_bills_it_once(
        relay_url, relay_key, upstream, alice):
    # The job runs on upstream whoever stops listening; the client resumes it later by id.
    upstream.inject("/v1/responses", method="POST", drop_after_events=1)
    with requests.post(f"{relay_url}/v1/responses", stream=True, timeout=30,
                       headers={"Authorization": f"Bearer {relay_key}"},
                       json={"model": "gpt-4o-mini", "input": "hi", "background": True, "stream": True}) as r:
        first = next(r.iter_lines())  # event: response.created
        assert first.startswith(b"event: response.created")
    deadline = time.monotonic() + 10
    while not AsyncJob.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    settle()
    job = AsyncJob.objects.get()
    assert (job.created_by, job.status, job.counted_at) == (alice, "queued", None)
    assert ApiCall.objects.get(method="POST").billing == Billing.FREE  # the call is free, the job is billed
    upstream.advance_response(job.job_id, "completed")
    assert "jobs: checked 1, changed 1, completed 1" in poll()
    assert rollup_totals()["cost"] == CALL_COST


def test_a_cancelled_background_response_counts_the_partial_usage_upstream_reports(sdk, upstream):
    background = sdk.responses.create(model="gpt-4o-mini", input="hi", background=True)
    settle()  # its job is recorded as the create call's row closes
    upstream.advance_response(background.id, "in_progress")
    assert sdk.responses.cancel(background.id).status == "cancelled"
    # 12 input (4 cached), 3 output: 8 * 0.15e-6 + 4 * 0.075e-6 + 3 * 0.60e-6
    assert rollup_totals()["cost"] == Decimal("0.0000033")
    assert AsyncJob.objects.get().billing == Billing.PRICED


def test_a_background_response_cancelled_before_it_started_is_free(sdk, upstream):
    background = sdk.responses.create(model="gpt-4o-mini", input="hi", background=True)
    settle()  # its job is recorded as the create call's row closes
    assert sdk.responses.cancel(background.id).status == "cancelled"
    totals = rollup_totals()
    assert (totals["cost"], totals["unknown"]) == (0, 0)
    assert AsyncJob.objects.get().billing == Billing.FREE


def test_a_video_is_billed_per_second_once_when_first_seen_completed(sdk, upstream, alice):
    video = sdk.videos.create(model="sora-2", prompt="a cat", seconds="8")
    settle()  # its job is recorded as the create call's row closes
    assert sdk.videos.retrieve(video.id).status == "queued"
    upstream.advance_video(video.id, "completed")
    for _ in range(2):
        assert sdk.videos.retrieve(video.id).status == "completed"
    list(sdk.videos.list())
    # 8 seconds at sora-2's 0.10 per second.
    assert rollup_totals()["cost"] == Decimal("0.8")
    job = AsyncJob.objects.get()
    assert (job.kind, job.video_seconds, job.cost, job.created_by) == ("video", Decimal("8"), Decimal("0.8"), alice)
    assert set(ApiCall.objects.values_list("billing", flat=True)) == {Billing.FREE}


@pytest.mark.parametrize("make", ["edit", "extend"])
def test_video_edits_and_extensions_are_jobs_billed_per_second_once(sdk, upstream, alice, make,
                                                                     relay_url, relay_key):
    source = sdk.videos.create(model="sora-2", prompt="a cat", seconds="4")
    settle()
    upstream.advance_video(source.id, "completed")
    sdk.videos.retrieve(source.id)  # the source is billed: 4 x 0.10 = 0.40
    # By reference, in JSON (the SDK would upload the video as a file).
    body = {"prompt": "a dog", "video": {"id": source.id}, **({"seconds": "8"} if make == "extend" else {})}
    r = requests.post(f"{relay_url}/v1/videos/{'edits' if make == 'edit' else 'extensions'}", json=body,
                      headers={"Authorization": f"Bearer {relay_key}"}, timeout=30)
    assert r.status_code == 200, r.text
    video = sdk.videos.retrieve(r.json()["id"])
    settle()
    upstream.advance_video(video.id, "completed")
    for _ in range(2):
        sdk.videos.retrieve(video.id)
    job = AsyncJob.objects.get(job_id=video.id)
    # The edit generates as long as its source (4 s), the extension the 8 s it asked for, at 0.10.
    seconds = Decimal(4) if make == "edit" else Decimal(8)
    assert (job.kind, job.model, job.video_seconds, job.created_by) == ("video", "sora-2", seconds, alice)
    assert job.cost == seconds * Decimal("0.10")
    assert rollup_totals()["cost"] == Decimal("0.4") + seconds * Decimal("0.10")


def test_a_video_whose_client_left_as_the_answer_came_is_still_recorded_and_billed(
        relay_url, relay_key, upstream, alice):
    import socket

    # The whole answer is read from upstream, then the client is gone before it is relayed.
    upstream.latency = 0.3
    host, port = relay_url.split("//")[1].split(":")
    body = json.dumps({"model": "sora-2", "prompt": "a cat", "seconds": "4"}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + relay_key.encode() + b"\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    deadline = time.monotonic() + 10
    while not AsyncJob.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    settle()
    job = AsyncJob.objects.get()
    upstream.advance_video(job.job_id, "completed")
    assert "jobs: checked 1, changed 1, completed 1" in poll()
    assert rollup_totals()["cost"] == Decimal("0.4")  # 4 s at 0.10


def test_a_failed_video_costs_nothing(sdk, upstream):
    video = sdk.videos.create(model="sora-2", prompt="a cat", seconds="4")
    settle()  # its job is recorded as the create call's row closes
    upstream.advance_video(video.id, "failed")
    sdk.videos.retrieve(video.id)
    assert rollup_totals()["cost"] == 0
    assert AsyncJob.objects.get().billing == Billing.FREE


# --- usage unknown ---------------------------------------------------------------------


def test_a_stream_cut_before_its_usage_is_usage_unknown_not_free(sdk, upstream):
    upstream.inject("/v1/responses", drop_after_events=3)
    with pytest.raises(openai.APIError):
        list(sdk.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    totals = rollup_totals()
    assert (totals["calls"], totals["unknown"], totals["cost"]) == (1, 1, 0)
    row = ApiCall.objects.get()
    assert (row.billing, row.cost, row.total_tokens) == (Billing.UNKNOWN, None, None)


def test_a_text_transcription_is_usage_unknown_not_free(sdk, upstream):
    text = sdk.audio.transcriptions.create(model="whisper-1", file=("a.mp3", io.BytesIO(b"ID3" + b"\0" * 64)),
                                           response_format="text")
    assert text.strip() == "hello"
    assert rollup_totals()["unknown"] == 1
    assert ApiCall.objects.get().billing == Billing.UNKNOWN


def test_a_refused_generation_is_free(sdk, upstream):
    upstream.inject("/v1/responses", status=400, body={"error": {"message": "bad", "type": "invalid_request_error",
                                                                "param": None, "code": None}})
    with pytest.raises(openai.BadRequestError):
        sdk.responses.create(model="gpt-4o-mini", input="hi")
    settle()
    assert ApiCall.objects.get().billing == Billing.FREE
    assert rollup_totals()["unknown"] == 0


def test_the_operation_table_decides_by_method_and_path():
    from audit_app.operations import Kind, kind_of

    assert kind_of("POST", "/v1/responses") is Kind.GENERATES
    assert kind_of("GET", "/v1/responses/resp_1") is Kind.FREE
    assert kind_of("POST", "/v1/responses/resp_1/cancel") is Kind.FREE
    assert kind_of("GET", "/v1/chat/completions/chatcmpl-1") is Kind.FREE
    assert kind_of("POST", "/v1/chat/completions/chatcmpl-1") is Kind.FREE  # metadata update
    assert kind_of("POST", "/v1/moderations") is Kind.FREE
    assert kind_of("POST", "/v1/videos") is Kind.JOB
    assert kind_of("POST", "/v1/batches") is Kind.JOB
    assert kind_of("GET", "/v1/batches/batch_1") is Kind.FREE
    assert kind_of("POST", "/v1/fine_tuning/jobs") is Kind.UNMETERED
    # Work that generates on upstream where the relay cannot follow it is never free.
    assert kind_of("POST", "/v1/videos/edits") is kind_of("POST", "/v1/videos/extensions") is Kind.JOB
    for path in ("/v1/threads/runs", "/v1/threads/thread_1/runs", "/v1/threads/thread_1/runs/run_1/submit_tool_outputs",
                 "/v1/chatkit/sessions"):
        assert kind_of("POST", path) is Kind.UNMETERED, path


# Every POST in OpenAI's spec (tests/data/openai_post_paths.json) that the operation table
# leaves free, and why. A new endpoint fails the test below until someone decides.
FREE_BY_DESIGN = {
    "configuration, no generation": [
        "/v1/assistants", "/v1/assistants/{}", "/v1/audio/voice_consents", "/v1/audio/voice_consents/{}",
        "/v1/audio/voices", "/v1/chat/completions/{}", "/v1/containers/{}/files", "/v1/conversations",
        "/v1/conversations/{}", "/v1/conversations/{}/items", "/v1/evals", "/v1/evals/{}",
        "/v1/fine_tuning/alpha/graders/validate", "/v1/fine_tuning/checkpoints/{}/permissions", "/v1/skills",
        "/v1/skills/{}", "/v1/skills/{}/versions", "/v1/threads", "/v1/threads/{}", "/v1/threads/{}/messages",
        "/v1/threads/{}/messages/{}", "/v1/threads/{}/runs/{}", "/v1/videos/characters",
        "/v1/content_provenance_checks",
    ],
    "files and stores (storage is billed by OpenAI per day, not per call)": [
        "/v1/files", "/v1/uploads", "/v1/uploads/{}/cancel", "/v1/uploads/{}/complete", "/v1/uploads/{}/parts",
        "/v1/vector_stores", "/v1/vector_stores/{}", "/v1/vector_stores/{}/file_batches",
        "/v1/vector_stores/{}/file_batches/{}/cancel", "/v1/vector_stores/{}/files",
        "/v1/vector_stores/{}/files/{}", "/v1/vector_stores/{}/search",
    ],
    "cancels and pauses (what ran before is billed on its job)": [
        "/v1/batches/{}/cancel", "/v1/responses/{}/cancel", "/v1/evals/{}/runs/{}", "/v1/threads/{}/runs/{}/cancel",
        "/v1/fine_tuning/jobs/{}/cancel", "/v1/fine_tuning/jobs/{}/pause", "/v1/fine_tuning/jobs/{}/resume",
        "/v1/chatkit/sessions/{}/cancel",
    ],
    "free upstream": ["/v1/moderations", "/v1/responses/input_tokens"],
    "Realtime sessions started here run between the client and OpenAI (docs/websockets.md); "
    "a limited key may only mint a checked client secret": [
        "/v1/realtime/calls", "/v1/realtime/calls/{}/hangup",
        "/v1/realtime/calls/{}/refer", "/v1/realtime/calls/{}/reject", "/v1/realtime/client_secrets",
        "/v1/realtime/sessions", "/v1/realtime/transcription_sessions", "/v1/realtime/translations/client_secrets",
    ],
}


def test_every_post_in_openais_spec_is_billed_or_free_by_decision():
    from audit_app.operations import Kind, kind_of

    spec_paths = json.loads((Path(__file__).parent / "data" / "openai_post_paths.json").read_text())
    free = {path for paths in FREE_BY_DESIGN.values() for path in paths}
    blocked = ("/v1/organization", "/v1/projects")  # the admin-key APIs, blocked by default
    undecided = []
    for spec_path in spec_paths:
        path = re.sub(r"\{[^}]+\}", "{}", spec_path)
        kind = kind_of("POST", path.replace("{}", "x_1"))
        if kind is Kind.FREE and path not in free and not path.startswith(blocked):
            undecided.append(path)
        if kind is not Kind.FREE:
            assert path not in free, f"{path} is {kind.value}, not free"
    assert undecided == []
    assert free <= {re.sub(r"\{[^}]+\}", "{}", p) for p in spec_paths}, "a free path OpenAI no longer lists"


# --- include_usage for streamed chat whose body the relay will not hold -----------------

CHAT_STREAM = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _post_raw(url: str, raw: bytes, key: str, *, chunked: bool) -> tuple[requests.Response, bytes]:
    data = iter([raw[:7], raw[7:20], raw[20:]]) if chunked else raw
    with requests.post(url, data=data, stream=True, timeout=30,
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as r:
        return r, r.raw.read(decode_content=False)


def test_streamed_chat_the_relay_cannot_hold_gets_usage_added_only_where_it_is_safe(
        start_gunicorn, relay_key, upstream):
    """Chunked bodies, and bodies over RELAY_REWRITE_MAX_BYTES, under real gunicorn."""
    relay = start_gunicorn(RELAY_REWRITE_MAX_BYTES="64")
    upstream.chat_stream_id = "chatcmpl-fixed"
    url = f"{relay.url}/v1/chat/completions"
    # Filler makes the body longer than the limit: it must be streamed, not rewritten in memory.
    raw = json.dumps({**CHAT_STREAM, "user": "x" * 200}).encode() + b"\n"
    _, direct = _post_raw(f"{upstream.base_url}/chat/completions", raw, "sk-direct", chunked=False)
    for chunked in (True, False):
        response, via_relay = _post_raw(url, raw, relay_key, chunked=chunked)
        assert response.status_code == 200
        sent = upstream.requests[-1].body
        assert json.loads(sent)["stream_options"] == {"include_usage": True}, "the relay asked"
        assert sent.startswith(raw.rstrip()[:-1]), "every byte before the closing brace is the client's"
        assert via_relay == direct and b'"usage"' not in via_relay, "the client gets what it asked for"
        settle()
        row = ApiCall.objects.get(relay_request_id=response.headers["x-relay-request-id"])
        # 12 input (4 cached), 5 output at gpt-4o's 2.50 / 1.25 / 10.00 per 1M: 20 + 5 + 50 = 75 per 1M.
        assert (row.billing, row.total_tokens, row.cost) == (Billing.PRICED, 17, Decimal("0.000075")), chunked

    for body, expected in [
        # The client's own stream_options, last in its body: a second key beside it would be read
        # however upstream's parser reads duplicates, so the relay adds none.
        ({**CHAT_STREAM, "stream_options": {"include_usage": False}}, Billing.UNKNOWN),
        ({**CHAT_STREAM, "stream_options": {"include_usage": True}}, Billing.PRICED),
        ({**CHAT_STREAM, "stream": False}, Billing.PRICED),  # not streamed: the option would be a 400
    ]:
        raw = json.dumps(body).encode()
        response, _ = _post_raw(url, raw, relay_key, chunked=True)
        assert response.status_code == 200
        assert upstream.requests[-1].body == raw
        settle()
        row = ApiCall.objects.get(relay_request_id=response.headers["x-relay-request-id"])
        assert row.billing == expected, body
        assert (row.cost is None) is (expected == Billing.UNKNOWN)
    assert UsageDaily.objects.get().unknown_calls == 1


# --- one poller for all asynchronous work ------------------------------------------------


def test_the_poller_bills_background_responses_and_videos_nobody_retrieved(sdk, upstream, alice):
    background = sdk.responses.create(model="gpt-4o-mini", input="hi", background=True)
    settle()  # its job is recorded as the create call's row closes
    video = sdk.videos.create(model="sora-2", prompt="a cat", seconds="4")
    settle()  # the jobs are recorded as the create calls' rows close
    assert "jobs: checked 2, changed 0, completed 0" in poll()
    upstream.advance_response(background.id, "completed")
    upstream.advance_video(video.id, "completed")
    assert "jobs: checked 2, changed 2, completed 2" in poll()
    assert "polling 0 job(s)" in poll()
    sdk.responses.retrieve(background.id)
    sdk.videos.retrieve(video.id)
    # One response (0.0000057) and 4 seconds of sora-2 at 0.10.
    assert rollup_totals()["cost"] == CALL_COST + Decimal("0.4")
    assert set(AsyncJob.objects.values_list("created_by", "billing")) == {(alice.pk, Billing.PRICED)}


def test_asking_for_one_job_or_batch_by_id_takes_over_a_dead_pollers_lease(sdk, upstream):
    from django.utils import timezone

    from audit_app.models import BatchRecord

    background = sdk.responses.create(model="gpt-4o-mini", input="hi", background=True)
    settle()  # its job is recorded as the create call's row closes
    batch_id = create_batch(sdk, lines=2)
    upstream.advance_response(background.id, "completed")
    upstream.advance_batch(batch_id, "completed", completed=2, output_lines=output_lines(upstream, 2))
    settle()
    # A poller claimed both and died: its lease runs for another 15 minutes.
    later = timezone.now() + timezone.timedelta(minutes=15)
    settle()
    AsyncJob.objects.update(claimed_until=later)
    BatchRecord.objects.update(claimed_until=later)
    assert "polling 0 batch(es)" in poll() and "polling 0 job(s)" in poll()
    assert "jobs: checked 1, changed 1, completed 1" in poll("--job", background.id)
    assert "batches: checked 1, changed 1, completed 1" in poll("--batch", batch_id)
    assert rollup_totals()["cost"] == CALL_COST + 2 * RESULT_COST


def test_admins_see_jobs_read_only(sdk, upstream, admin_client):
    video = sdk.videos.create(model="sora-2", prompt="a cat", seconds="4")
    settle()  # its job is recorded as the create call's row closes
    upstream.advance_video(video.id, "completed")
    sdk.videos.retrieve(video.id)
    settle()
    page = admin_client.get("/admin/audit_app/asyncjob/").content.decode()
    assert video.id in page and "0.4" in page
    job = AsyncJob.objects.get()
    assert admin_client.post(f"/admin/audit_app/asyncjob/{job.pk}/delete/").status_code == 403


def test_two_pollers_and_a_client_at_once_bill_each_job_once(sdk, upstream):
    """On PostgreSQL the pollers split the jobs (SKIP LOCKED); on SQLite they queue on the
    database. Either way billing is one conditional write: nothing is billed twice."""
    from django.db import connection

    from tests.test_files_batches import poller_process

    responses = [sdk.responses.create(model="gpt-4o-mini", input="hi", background=True).id for _ in range(6)]
    videos = [sdk.videos.create(model="sora-2", prompt="a cat", seconds="4").id for _ in range(6)]
    for rid in responses:
        upstream.advance_response(rid, "completed")
    for vid in videos:
        upstream.advance_video(vid, "completed")
    settle()
    upstream.latency = 0.2  # long enough for the runs to overlap
    pollers = [poller_process(upstream, "--only", "jobs", "--concurrency", "3") for _ in range(2)]
    try:
        for rid in responses[:3]:  # clients looking at the same time
            sdk.responses.retrieve(rid)
        outputs = [p.communicate(timeout=90)[0] for p in pollers]
    finally:
        for p in pollers:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in pollers] == [0, 0], outputs
    # Six responses at 0.0000057 and six 4-second videos at 0.40.
    assert rollup_totals()["cost"] == 6 * CALL_COST + 6 * Decimal("0.4")
    assert AsyncJob.objects.filter(counted_at__isnull=False).count() == 12
    if connection.vendor == "postgresql":
        fetched = [r.path for r in upstream.requests if r.method == "GET" and "/v1/videos/" in r.path]
        assert len(fetched) == len(set(fetched)) == 6, "each video polled by one poller only"


def test_a_job_deleted_upstream_before_anyone_saw_it_end_is_usage_unknown_not_polled_forever(sdk, upstream):
    background = sdk.responses.create(model="gpt-4o-mini", input="hi", background=True)
    settle()  # its job is recorded as the create call's row closes
    upstream.responses.pop(background.id)
    settle()  # the job is recorded as the create call's row closes
    assert "jobs: checked 1, changed 1" in poll()
    assert "polling 0 job(s)" in poll()
    job = AsyncJob.objects.get()
    assert (job.status, job.billing, job.cost) == ("gone", Billing.UNKNOWN, None)
    assert rollup_totals()["unknown"] == 1


def test_jobs_are_sealed_into_the_ledger_and_an_edited_cost_is_caught(sdk, upstream):
    from audit_app.ledger import seal, verify
    from audit_app.models import LedgerEntry, LedgerKind

    background = sdk.responses.create(model="gpt-4o-mini", input="hi", background=True)
    settle()  # its job is recorded as the create call's row closes
    video = sdk.videos.create(model="sora-2", prompt="a cat", seconds="4")
    settle()  # its job is recorded as the create call's row closes
    sdk.responses.retrieve(background.id)  # queued -> queued: nothing changes
    upstream.advance_response(background.id, "in_progress")
    settle()
    assert "jobs: checked 2, changed 1" in poll()  # a status change, MACed by the app
    upstream.advance_response(background.id, "completed")
    upstream.advance_video(video.id, "completed")
    sdk.responses.retrieve(background.id)
    poll()
    settle()
    seal()
    assert LedgerEntry.objects.filter(kind=LedgerKind.JOB).values("object_id").distinct().count() == 2
    assert verify(record=False).ok
    AsyncJob.objects.filter(job_id=video.id).update(cost=Decimal("0.01"))  # by SQL, not the app
    result = verify(record=False)
    assert not result.ok and video.id in result.problem


def test_the_usage_report_counts_usage_unknown_apart(sdk, upstream, capsys):
    from django.core.management import call_command

    upstream.inject("/v1/responses", drop_after_events=3)
    with pytest.raises(openai.APIError):
        list(sdk.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    sdk.responses.create(model="gpt-4o-mini", input="hi")
    settle()
    capsys.readouterr()
    call_command("usage_report", "--by", "user", "--csv")
    header, alice, total = capsys.readouterr().out.strip().splitlines()
    row = dict(zip(header.split(","), alice.split(",")))
    assert (row["user"], row["calls"], Decimal(row["cost"]), row["unpriced_calls"], row["unknown_calls"]) == (
        "alice", "2", CALL_COST, "0", "1")


def test_the_metrics_show_how_long_open_jobs_have_waited_for_the_poller(sdk, upstream):
    from proxy_app.telemetry import BatchLagCollector

    sdk.responses.create(model="gpt-4o-mini", input="hi", background=True)
    settle()
    AsyncJob.objects.update(first_seen_at=AsyncJob.objects.get().first_seen_at - timedelta(minutes=10))
    gauges = {m.name: m.samples[0].value for m in BatchLagCollector().collect()}
    assert gauges["relay_poll_jobs_lag_seconds"] >= 600
    poll()
    gauges = {m.name: m.samples[0].value for m in BatchLagCollector().collect()}
    assert gauges["relay_poll_jobs_lag_seconds"] < 60


def test_a_high_resolution_sora_2_pro_video_is_priced_at_the_high_res_rate(sdk, upstream):
    for size, seconds in (("1024x1792", "4"), ("720x1280", "8")):
        video = sdk.videos.create(model="sora-2-pro", prompt="a cat", seconds=seconds, size=size)
        settle()  # its job is recorded as the create call's row closes
        upstream.advance_video(video.id, "completed")
    poll()
    # 4 s at sora-2-pro-high-res's 0.50, and 8 s at sora-2-pro's 0.30.
    assert sorted(AsyncJob.objects.values_list("cost", flat=True)) == [Decimal("2"), Decimal("2.4")]
    assert rollup_totals()["cost"] == Decimal("4.4")
