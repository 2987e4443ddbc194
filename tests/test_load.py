"""Load without loss: 10,000 requests at concurrency 64 to 4 gunicorn workers.

Every request must get its answer (no 5xx: the fake upstream never sends one,
so any would be the relay's) and leave exactly one completed audit row, with
its usage. Runs on whatever DATABASE_URL the suite runs with; it is marked slow
and runs as its own CI step: `./scripts/test -m slow`.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from django.db.models import Count

from audit_app.models import ApiCall, Outcome
from bench.client import closed_loop, json_request
from bench.procs import wait_for_port
from tests.conftest import ROOT, GunicornRelay, free_port

pytestmark = pytest.mark.slow

TOTAL = 10_000
CONCURRENCY = 64
WORKERS = 4


@pytest.fixture
def standalone_upstream():
    """The fake upstream in its own process: in this one it would share the GIL with the client."""
    port = free_port()
    log = ROOT / "test-artifacts" / f"load-upstream-{port}.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "tests/fake_openai.py", "--port", str(port)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, proc, "fake upstream", log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


def requests_for(base: str, key: str):
    """A mix of what staff send: JSON and streamed Responses, streamed chat (usage added by the
    relay), embeddings."""
    auth = {"Authorization": f"Bearer {key}"}
    kinds = [
        json_request("POST", f"{base}/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, auth),
        json_request("POST", f"{base}/v1/chat/completions",
                     {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                     auth),
        json_request("POST", f"{base}/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}, auth),
        json_request("POST", f"{base}/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True}, auth),
    ]
    return lambda i: kinds[i % len(kinds)]


def test_ten_thousand_requests_leave_ten_thousand_completed_rows(
        transactional_db, shipped_prices, issue_key, standalone_upstream):
    _, key = issue_key()
    relay = GunicornRelay(standalone_upstream, workers=WORKERS)
    try:
        relay.start()
        started = time.monotonic()
        completed, statuses, errors, seconds = asyncio.run(closed_loop(
            relay.url, requests_for(relay.url, key), concurrency=CONCURRENCY, total=TOTAL,
            max_seconds=600, sse=True, timeout=60))
        print(f"\nload: {completed} requests in {seconds:.1f} s ({completed / seconds:.0f}/s) "
              f"at concurrency {CONCURRENCY}, {WORKERS} workers, {os.environ.get('DATABASE_URL', 'sqlite')}")
        assert errors == [], errors[:5]
        assert statuses == {200: TOTAL}, statuses

        # Rows are completed as each response is closed, a moment after its last byte.
        deadline = time.monotonic() + 30
        while ApiCall.objects.filter(outcome=Outcome.PENDING).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"load: all rows completed {time.monotonic() - started - seconds:.1f} s after the last answer")
        # Read before stopping: a quick stop makes gevent print its own exit tracebacks.
        log = relay.log()
    finally:
        relay.stop()
    assert "Traceback" not in log, log[-3000:]
    outcomes = dict(ApiCall.objects.values_list("outcome").annotate(n=Count("id")))
    assert outcomes == {Outcome.OK: TOTAL}, outcomes
    assert ApiCall.objects.filter(status=200).count() == TOTAL
    # Usage was read from every response, streams included, under load.
    assert not ApiCall.objects.filter(total_tokens__isnull=True).exists()
    by_path = dict(ApiCall.objects.values_list("path").annotate(n=Count("id")))
    assert by_path == {"/v1/responses": TOTAL // 2, "/v1/chat/completions": TOTAL // 4,
                       "/v1/embeddings": TOTAL // 4}
