"""WebSocket sessions through the relay under gunicorn: the official SDK's
`client.realtime.connect()` and `client.responses.connect()` against a fake
WebSocket upstream (tests/fake_ws_upstream.py)."""
from __future__ import annotations

import time
from decimal import Decimal

import openai
import pytest

from tests.conftest import UPSTREAM_KEY, settle
from tests.fake_ws_upstream import FakeWsUpstream


@pytest.fixture(scope="session")
def fake_ws_server():
    server = FakeWsUpstream(UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def fake_ws(fake_ws_server):
    fake_ws_server.reset()
    return fake_ws_server


@pytest.fixture
def relay(start_gunicorn, fake_ws):
    return start_gunicorn(OPENAI_WEBSOCKET_BASE_URL=fake_ws.base_url)


def client_for(relay, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{relay.url}/v1", api_key=key, max_retries=0, timeout=30)


def until(event_type: str, conn) -> list:
    seen = []
    for event in conn:
        seen.append(event)
        if event.type in (event_type, "error"):
            return seen
    return seen


def session_rows(count: int = 1, responses: int = 0, timeout: float = 10.0):
    from audit_app.models import ApiCall, Outcome

    deadline = time.monotonic() + timeout
    while True:
        sessions = list(ApiCall.objects.filter(ws_session__isnull=True).exclude(outcome=Outcome.PENDING)
                        .order_by("id"))
        children = list(ApiCall.objects.filter(ws_session__isnull=False).exclude(outcome=Outcome.PENDING)
                        .order_by("id"))
        if (len(sessions) >= count and len(children) >= responses) or time.monotonic() > deadline:
            return sessions, children
        time.sleep(0.05)


def test_realtime_text_turn_through_the_sdk_is_audited_as_a_session_and_a_priced_response(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    with client_for(relay, plaintext).realtime.connect(model="gpt-realtime") as conn:
        assert until("session.created", conn)[-1].type == "session.created"
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        assert until("session.updated", conn)[-1].type == "session.updated"
        conn.response.create()
        events = until("response.done", conn)
        assert [e.type for e in events][-1] == "response.done"
        assert any(getattr(e, "delta", None) == "Hello 1" for e in events)
    sessions, responses = session_rows(1, 1)
    assert len(sessions) == 1 and len(responses) == 1
    session, response = sessions[0], responses[0]
    assert (session.path, session.family, session.model, session.outcome, session.billing) == (
        "/v1/realtime", "realtime", "gpt-realtime", "ok", "free")
    assert session.bytes_in > 0 and session.bytes_out > 0 and session.finished_at is not None
    assert response.ws_session_id == session.id and response.key_id == key.id
    # gpt-realtime: $4.00/M input, $0.40/M cached input, $16.00/M output (shipped price map).
    # Turn 1: 1010 input of which 100 cached, 201 output.
    expected = (Decimal(910) * Decimal("4.00") + Decimal(100) * Decimal("0.40")
                + Decimal(201) * Decimal("16.00")) / 1_000_000
    assert (response.input_tokens, response.cached_input_tokens, response.output_tokens) == (1010, 100, 201)
    assert response.billing == "priced" and response.cost == expected
