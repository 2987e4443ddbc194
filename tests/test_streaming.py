"""Streams pass through as they arrive, under the production server too."""
import time

import requests

from tests.conftest import finished_call
from audit_app.models import ApiCall, Outcome


def read_events(response: requests.Response):
    """Yield (seconds since the request started, event) as each SSE event arrives."""
    buf = b""
    # read1, not iter_content: without chunked framing (Django's test server)
    # iter_content(None) would wait for the whole body.
    while chunk := response.raw.read1(65536):
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            yield event


def first_event_delay(base_url: str, key: str, upstream) -> tuple[float, float, list[bytes]]:
    upstream.sse_delay_first = 0.0
    upstream.sse_delay_between = 0.6
    upstream.sse_event_count = 3
    started = time.monotonic()
    with requests.post(f"{base_url}/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "stream": True},
                       headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = []
        first_at = None
        for event in read_events(response):
            if first_at is None:
                first_at = time.monotonic() - started
            events.append(event)
    return first_at, time.monotonic() - started, events


def test_first_event_arrives_before_upstream_finishes(relay_url, relay_key, upstream):
    first_at, total, events = first_event_delay(relay_url, relay_key, upstream)
    # Upstream pauses 0.6 s between events, so it takes well over a second in all.
    assert total > 1.5
    assert first_at < 0.5, f"first event after {first_at:.2f}s: the stream was buffered"
    assert events[-1].startswith(b"event: response.completed")


def test_first_event_arrives_early_under_gunicorn(gunicorn_relay, relay_key, upstream):
    first_at, total, events = first_event_delay(gunicorn_relay.url, relay_key, upstream)
    assert total > 1.5
    assert first_at < 0.5, f"first event after {first_at:.2f}s: the stream was buffered"
    row = finished_call()
    assert row.outcome == Outcome.OK and row.stream and row.total_tokens


def test_stream_row_is_completed_when_the_stream_ends(relay_url, relay_key, upstream):
    upstream.sse_delay_between = 0.3
    with requests.post(f"{relay_url}/v1/chat/completions",
                       json={"model": "gpt-4o", "messages": [], "stream": True},
                       headers={"Authorization": f"Bearer {relay_key}"}, stream=True, timeout=30) as response:
        first = next(read_events(response))
        assert first.startswith(b"data: ")
        # Mid-stream, the row exists and is still open.
        assert ApiCall.objects.get().outcome == Outcome.PENDING
        list(read_events(response))
    row = finished_call()
    assert row.outcome == Outcome.OK and row.duration_ms >= 300
