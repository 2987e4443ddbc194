"""Failures on either side: clear errors for the client, and the row records what happened."""
import io
import json
import os
import signal
import socket
import threading
import time
from decimal import Decimal

import openai
import pytest
import requests
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum

from audit_app.models import ApiCall, AsyncJob, Billing, Outcome, UsageDaily
from tests.conftest import finished_call, settle
from tests.fake_openai import FakeUpstream


def wait_for_row(**expected) -> ApiCall:
    row = finished_call()
    for field, value in expected.items():
        assert getattr(row, field) == value, (field, getattr(row, field), row.error)
    return row


def test_upstream_refusing_connections_is_502(relay_url, relay_key, settings):
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{FakeUpstream.unused_port()}/v1"
    response = requests.get(f"{relay_url}/v1/models", headers={"Authorization": f"Bearer {relay_key}"}, timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    wait_for_row(outcome=Outcome.FAILED, status=502, upstream_status=None)


def test_upstream_hanging_is_504_after_the_read_timeout(relay_url, relay_key, upstream, settings):
    settings.UPSTREAM_READ_TIMEOUT = 0.5
    upstream.inject("/v1/responses", hang=3)
    started = time.monotonic()
    response = requests.post(f"{relay_url}/v1/responses", json={"model": "m"},
                             headers={"Authorization": f"Bearer {relay_key}"}, timeout=10)
    assert response.status_code == 504
    assert time.monotonic() - started < 2.5
    assert response.json()["error"]["code"] == "upstream_timeout"
    wait_for_row(outcome=Outcome.FAILED, status=504)


def test_upstream_dropping_mid_stream_is_an_error_the_client_sees(relay_url, relay_key, upstream):
    upstream.inject("/v1/chat/completions", drop_after_events=2)
    client = openai.OpenAI(base_url=f"{relay_url}/v1", api_key=relay_key, max_retries=0)
    received = []
    with pytest.raises((openai.APIError, openai.APIConnectionError, Exception)) as excinfo:
        for chunk in client.chat.completions.create(model="gpt-4o", messages=[], stream=True):
            received.append(chunk)
    assert not isinstance(excinfo.value, AssertionError)
    assert len(received) == 2
    row = wait_for_row(outcome=Outcome.FAILED, status=200)
    assert "broke off" in row.error


def open_stream_and_hang_up(base_url: str, key: str) -> None:
    """A raw HTTP client that reads the first event of a stream, then closes its socket."""
    host, port = base_url.removeprefix("http://").split(":")
    body = json.dumps({"model": "gpt-4o-mini", "input": "x", "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/responses HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        received = b""
        while b"data:" not in received:
            received += sock.recv(65536)


@pytest.mark.parametrize("server", ["live", "gunicorn"])
def test_client_disconnecting_mid_stream_closes_the_row_and_upstream(
        request, server, relay_url, relay_key, upstream):
    upstream.sse_delay_between = 0.5
    upstream.sse_event_count = 20
    base = request.getfixturevalue("gunicorn_relay").url if server == "gunicorn" else relay_url
    open_stream_and_hang_up(base, relay_key)
    row = wait_for_row(outcome=Outcome.CLIENT_CLOSED)
    # Twenty events at 0.5 s would take ten seconds: upstream was let go early.
    assert row.duration_ms < 5000
    assert row.bytes_out > 0
    # And upstream saw its connection closed (its next write failed), not read to the end.
    deadline = time.monotonic() + 3
    while upstream.streams_cut_short < 1:
        assert time.monotonic() < deadline, "upstream's stream was never cut short"
        time.sleep(0.05)


def test_database_unavailable_is_503_and_nothing_is_forwarded(relay_url, relay_key, upstream):
    table = ApiCall._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        response = requests.get(f"{relay_url}/v1/models", headers={"Authorization": f"Bearer {relay_key}"},
                                timeout=10)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "audit_unavailable"
    assert upstream.requests == []


def test_a_background_response_whose_job_cannot_be_written_is_billed_as_unknown_not_free(
        relay_url, relay_key, upstream):
    # Upstream runs (and bills) the job; a relay that cannot record it must not call the call free.
    table = AsyncJob._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        response = requests.post(f"{relay_url}/v1/responses", headers={"Authorization": f"Bearer {relay_key}"},
                                 json={"model": "gpt-4o-mini", "input": "hi", "background": True}, timeout=10)
        assert response.status_code == 200 and response.json()["status"] == "queued"
        row = wait_for_row(outcome=Outcome.OK)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    assert (row.billing, row.cost) == (Billing.UNKNOWN, None)


def test_worker_killed_mid_request_is_marked_interrupted_by_reconcile(start_gunicorn, relay_key, upstream):
    """A SIGKILLed worker cannot close its row; reconcile_calls does, once the row is old enough."""
    upstream.inject("/v1/responses", hang=20)
    relay = start_gunicorn()
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["status"] = requests.post(f"{relay.url}/v1/responses", json={"model": "gpt-4o-mini"},
                                              headers={"Authorization": f"Bearer {relay_key}"},
                                              timeout=15).status_code
        except requests.RequestException as exc:
            outcome["error"] = exc

    client = threading.Thread(target=call)
    client.start()
    deadline = time.monotonic() + 10
    while not ApiCall.objects.filter(outcome=Outcome.PENDING).exists():
        assert time.monotonic() < deadline, "the call never opened its row"
        time.sleep(0.02)
    (worker,) = relay.worker_pids()
    os.kill(worker, signal.SIGKILL)
    client.join(15)
    assert "status" not in outcome, outcome  # the client saw its connection die, not an answer

    call_command("reconcile_calls")  # the default timeout (an hour) has not passed: left alone
    assert ApiCall.objects.get().outcome == Outcome.PENDING
    call_command("reconcile_calls", "--older-than", "0")
    row = ApiCall.objects.get()
    assert row.outcome == Outcome.INTERRUPTED and row.finished_at is not None
    assert "interrupted" in row.error


def test_a_background_stream_whose_worker_is_killed_leaves_a_job_billed_once_and_a_free_call(
        start_gunicorn, relay_key, upstream):
    """The job is recorded as `response.created` passes, not when the stream ends: a worker
    killed mid-stream leaves upstream's work billed (by the poller) and the call free."""
    upstream.sse_delay_between = 30  # response.queued 30 s after response.created (until unpaced)
    relay = start_gunicorn()
    with requests.post(f"{relay.url}/v1/responses", stream=True, timeout=30,
                       headers={"Authorization": f"Bearer {relay_key}"},
                       json={"model": "gpt-4o-mini", "input": "hi", "background": True, "stream": True}) as r:
        assert next(r.iter_lines(chunk_size=1)).startswith(b"event: response.created")  # as it comes
        deadline = time.monotonic() + 10
        while not AsyncJob.objects.exists():
            assert time.monotonic() < deadline, "the job was not recorded while the stream was open"
            time.sleep(0.02)
        call = ApiCall.objects.get()
        assert call.outcome == Outcome.PENDING
        (worker,) = relay.worker_pids()
        os.kill(worker, signal.SIGKILL)
    upstream.unpaced.set()
    job = AsyncJob.objects.get()
    assert (job.call_id, job.status, job.counted_at) == (call.pk, "queued", None)

    call_command("reconcile_calls", "--older-than", "0")
    call = ApiCall.objects.get()
    assert (call.outcome, call.billing) == (Outcome.INTERRUPTED, Billing.FREE)  # its usage is the job's
    upstream.advance_response(job.job_id, "completed")
    call_command("poll_batches", "--concurrency", "1", stdout=io.StringIO())
    job.refresh_from_db()
    # 8 * 0.15e-6 + 4 * 0.075e-6 + 7 * 0.60e-6 (gpt-4o-mini, 12 input of which 4 cached, 7 output)
    assert (job.billing, job.cost) == (Billing.PRICED, Decimal("0.0000057"))
    settle()
    assert UsageDaily.objects.aggregate(c=Sum("cost"))["c"] == Decimal("0.0000057")
