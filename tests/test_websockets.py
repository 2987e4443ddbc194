"""WebSocket sessions through the relay under gunicorn: the official SDK's
`client.realtime.connect()` and `client.responses.connect()` against a fake
WebSocket upstream (tests/fake_ws_upstream.py)."""
from __future__ import annotations

import socket
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


def scoped_key(issue_key, models: list[str]):
    key, plaintext = issue_key()
    key.allowed_models = models
    key.save()
    return key, plaintext


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
    assert session.upstream_request_id == "req_ws_fake_1"
    assert response.ws_session_id == session.id and response.key_id == key.id
    # gpt-realtime: $4.00/M input, $0.40/M cached input, $16.00/M output (shipped price map).
    # Turn 1: 1010 input of which 100 cached, 201 output.
    expected = (Decimal(910) * Decimal("4.00") + Decimal(100) * Decimal("0.40")
                + Decimal(201) * Decimal("16.00")) / 1_000_000
    assert (response.input_tokens, response.cached_input_tokens, response.output_tokens) == (1010, 100, 201)
    assert response.billing == "priced" and response.cost == expected


def test_two_realtime_turns_on_one_connection_are_two_priced_responses_in_the_rollups(relay, fake_ws, issue_key):
    from django.db.models import Sum

    from audit_app.models import UsageDaily

    key, plaintext = issue_key()
    with client_for(relay, plaintext).realtime.connect(model="gpt-realtime") as conn:
        for _ in range(2):
            conn.response.create()
            assert until("response.done", conn)[-1].type == "response.done"
    sessions, responses = session_rows(1, 2)
    assert len(sessions) == 1 and len(responses) == 2
    # Turn n: 1000 + 10n input (100 cached), 200 + n output, at gpt-realtime's $4 / $0.40 / $16 per 1M.
    costs = [(Decimal(900 + 10 * n) * Decimal("4.00") + Decimal(100) * Decimal("0.40")
              + Decimal(200 + n) * Decimal("16.00")) / 1_000_000 for n in (1, 2)]
    assert [r.cost for r in responses] == costs
    assert len({r.upstream_request_id for r in responses}) == 2
    rollup = UsageDaily.objects.filter(key=key).aggregate(calls=Sum("calls"), cost=Sum("cost"),
                                                          input=Sum("input_tokens"), output=Sum("output_tokens"))
    # The session row counts as a call of its own, free; each response once, with its cost.
    assert rollup == {"calls": 3, "cost": sum(costs), "input": 1010 + 1020, "output": 201 + 202}


def test_responses_websocket_mode_through_the_sdk_prices_each_completed_response(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    with client_for(relay, plaintext).responses.connect() as conn:
        for text in ("Hi", "Again"):
            conn.response.create(model="gpt-4o-mini", input=text)
            events = until("response.completed", conn)
            assert events[-1].type == "response.completed"
    sessions, responses = session_rows(1, 2)
    assert sessions[0].path == "/v1/responses" and sessions[0].family == "responses"
    assert [r.model for r in responses] == ["gpt-4o-mini", "gpt-4o-mini"]
    # gpt-4o-mini: $0.15/M input, $0.075/M cached input, $0.60/M output.
    costs = [(Decimal(900 + 10 * n) * Decimal("0.15") + Decimal(100) * Decimal("0.075")
              + Decimal(200 + n) * Decimal("0.60")) / 1_000_000 for n in (1, 2)]
    assert [r.cost for r in responses] == costs and {r.billing for r in responses} == {"priced"}
    assert [e["input"] for e in fake_ws.connections[0].events] == ["Hi", "Again"]


def test_a_response_create_for_a_model_outside_the_key_scope_gets_an_error_event_and_is_not_forwarded(
        relay, fake_ws, issue_key):
    key, plaintext = scoped_key(issue_key, ["gpt-4o-mini"])
    with client_for(relay, plaintext).responses.connect() as conn:
        conn.response.create(model="gpt-4o", input="forbidden")
        refused = until("response.completed", conn)[-1]
        assert refused.type == "error" and refused.code == "outside_key_scope"
        assert "gpt-4o" in refused.message and refused.param == "model"
        conn.response.create(model="gpt-4o-mini", input="allowed")  # the session goes on
        assert until("response.completed", conn)[-1].type == "response.completed"
    session_rows(1, 1)
    assert [e["input"] for e in fake_ws.connections[0].events] == ["allowed"]


def test_a_realtime_session_update_to_a_model_outside_the_key_scope_is_refused_with_an_error_event(
        relay, fake_ws, issue_key):
    key, plaintext = scoped_key(issue_key, ["gpt-realtime-mini"])
    with client_for(relay, plaintext).realtime.connect(model="gpt-realtime-mini") as conn:
        until("session.created", conn)
        conn.session.update(session={"type": "realtime", "model": "gpt-realtime"})
        refused = until("session.updated", conn)[-1]
        assert refused.type == "error" and refused.error.code == "outside_key_scope"
        assert refused.error.type == "invalid_request_error" and "gpt-realtime" in refused.error.message
    session_rows(1)
    assert fake_ws.connections[0].events == []


def test_a_realtime_url_model_outside_the_key_scope_is_refused_before_anything_reaches_upstream(
        relay, fake_ws, issue_key):
    key, plaintext = scoped_key(issue_key, ["gpt-realtime-mini"])
    with pytest.raises(Exception) as refused:
        with client_for(relay, plaintext).realtime.connect(model="gpt-realtime") as conn:
            conn.recv()
    assert "403" in str(refused.value)
    assert fake_ws.connections == []


def test_a_bad_relay_key_is_refused_in_the_handshake_and_never_reaches_upstream(relay, fake_ws, transactional_db):
    from audit_app.models import ApiCall

    with pytest.raises(Exception) as refused:
        with client_for(relay, "sk-relay-not-a-key").realtime.connect(model="gpt-realtime") as conn:
            conn.recv()
    assert "401" in str(refused.value)
    assert fake_ws.connections == []
    settle()
    row = ApiCall.objects.get()
    assert (row.outcome, row.status, row.key_id) == ("rejected", 401, None)


def test_keys_stay_on_their_side_the_team_key_upstream_and_the_relay_key_nowhere_in_logs(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    with client_for(relay, plaintext).realtime.connect(model="gpt-realtime") as conn:
        conn.response.create()
        until("response.done", conn)
    session_rows(1, 1)
    sent = fake_ws.connections[0].headers
    assert conn._connection.response.headers["x-request-id"] == "req_ws_fake_1"
    assert len(conn._connection.response.headers["x-relay-request-id"]) == 32
    assert "set-cookie" not in conn._connection.response.headers  # not on the allowlist
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert not any(plaintext in value for value in sent.values())
    log = relay.log()
    assert plaintext not in log and UPSTREAM_KEY not in log


def test_when_the_client_drops_the_connection_upstream_is_closed_within_a_second(relay, fake_ws, issue_key):
    from websockets.sync.client import connect

    key, plaintext = issue_key()
    ws = connect(f"ws://127.0.0.1:{relay.port}/v1/realtime?model=gpt-realtime",
                 additional_headers={"Authorization": f"Bearer {plaintext}"})
    ws.recv(timeout=10)  # session.created: upstream is connected
    dropped = time.monotonic()
    ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the client just goes
    ws.socket.close()
    deadline = time.monotonic() + 5
    while fake_ws.connections[0].closed_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake_ws.connections[0].closed_at is not None
    assert fake_ws.connections[0].closed_at - dropped < 1.0
    sessions, _ = session_rows(1)
    assert sessions[0].outcome == "client_closed"


def test_when_upstream_closes_the_session_the_client_gets_a_close_frame_with_the_reason(relay, fake_ws, issue_key):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    key, plaintext = issue_key()
    ws = connect(f"ws://127.0.0.1:{relay.port}/v1/realtime?model=gpt-realtime",
                 additional_headers={"Authorization": f"Bearer {plaintext}"})
    ws.recv(timeout=10)
    ws.send('{"type": "response.create", "response": {"instructions": "close:1011"}}')
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=10)
    assert ws.close_code == 1011 and "upstream exploded" in ws.close_reason
    sessions, responses = session_rows(1, 1)
    assert sessions[0].outcome == "upstream_error" and "1011" in sessions[0].error
    # Created, never done: OpenAI bills it, the relay could not see how much.
    assert (responses[0].outcome, responses[0].billing, responses[0].cost) == ("interrupted", "unknown", None)


def test_when_upstream_drops_the_connection_the_client_gets_a_close_frame_saying_so(relay, fake_ws, issue_key):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    key, plaintext = issue_key()
    ws = connect(f"ws://127.0.0.1:{relay.port}/v1/responses",
                 additional_headers={"Authorization": f"Bearer {plaintext}"})
    ws.send('{"type": "response.create", "model": "gpt-4o-mini", "input": "drop"}')
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=10)
    assert ws.close_code == 1011 and "unexpectedly" in ws.close_reason
    sessions, _ = session_rows(1, 1)
    assert sessions[0].outcome == "failed"


def test_upstream_refusing_the_upgrade_is_relayed_with_its_status(start_gunicorn, fake_ws, issue_key):
    relay = start_gunicorn(OPENAI_WEBSOCKET_BASE_URL=fake_ws.base_url, OPENAI_API_KEY="sk-team-key-revoked")
    key, plaintext = issue_key()
    with pytest.raises(Exception) as refused:
        with client_for(relay, plaintext).realtime.connect(model="gpt-realtime") as conn:
            conn.recv()
    assert "401" in str(refused.value)
    sessions, _ = session_rows(1)
    assert (sessions[0].outcome, sessions[0].status) == ("upstream_error", 401)


def test_an_idle_session_is_closed_after_the_configured_timeout(start_gunicorn, fake_ws, issue_key):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    relay = start_gunicorn(OPENAI_WEBSOCKET_BASE_URL=fake_ws.base_url, RELAY_WS_IDLE_TIMEOUT_SECONDS="1")
    key, plaintext = issue_key()
    ws = connect(f"ws://127.0.0.1:{relay.port}/v1/responses",
                 additional_headers={"Authorization": f"Bearer {plaintext}"})
    started = time.monotonic()
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    assert 0.9 < time.monotonic() - started < 3
    assert ws.close_code == 1000 and "RELAY_WS_IDLE_TIMEOUT_SECONDS" in ws.close_reason


def raw_session(relay, plaintext: str, path: str = "/v1/realtime?model=gpt-realtime"):
    from websockets.sync.client import connect

    return connect(f"ws://127.0.0.1:{relay.port}{path}", additional_headers={"Authorization": f"Bearer {plaintext}"})


def test_events_the_relay_cannot_read_are_refused_with_an_error_event_and_not_forwarded(relay, fake_ws, issue_key):
    import json

    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext)
    assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    for unreadable in ("not json", b"\x00binary", '{"type": "session.update", "type": "response.create"}', "[1]"):
        ws.send(unreadable)
        refused = json.loads(ws.recv(timeout=10))
        assert refused["type"] == "error" and refused["error"]["code"] == "invalid_event", unreadable
    ws.send('{"type": "response.create", "event_id": "evt_ok"}')
    assert json.loads(ws.recv(timeout=10))["type"] == "response.created"  # the session goes on
    ws.close()
    session_rows(1, 1)
    assert [e["type"] for e in fake_ws.connections[0].events] == ["response.create"]


def test_each_response_create_counts_against_the_key_rate_limit(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    key.requests_per_minute = 2  # the connection is one request, the first response.create the second
    key.save()
    with client_for(relay, plaintext).responses.connect() as conn:
        conn.response.create(model="gpt-4o-mini", input="one")
        assert until("response.completed", conn)[-1].type == "response.completed"
        conn.response.create(model="gpt-4o-mini", input="two")
        refused = until("response.completed", conn)[-1]
        assert refused.type == "error" and refused.code == "rate_limit_exceeded"
    session_rows(1, 1)
    assert [e["input"] for e in fake_ws.connections[0].events] == ["one"]


def test_a_key_over_its_budget_cannot_open_a_session(relay, fake_ws, issue_key):
    from django.utils import timezone

    from audit_app.models import UsageDaily

    key, plaintext = issue_key()
    key.monthly_budget_usd = Decimal("1.00")
    key.save()
    UsageDaily.objects.create(date=timezone.localdate(), user=key.owner, key=key, model="gpt-realtime",
                              family="realtime", calls=1, cost=Decimal("1.50"))
    with pytest.raises(Exception) as refused:
        with client_for(relay, plaintext).realtime.connect(model="gpt-realtime") as conn:
            conn.recv()
    assert "429" in str(refused.value)
    assert fake_ws.connections == []


def test_realtime_audio_tokens_are_priced_at_the_audio_rate_not_the_text_rate(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    fake_ws.audio_tokens = 500
    with client_for(relay, plaintext).realtime.connect(model="gpt-realtime") as conn:
        conn.response.create()
        until("response.done", conn)
    _, responses = session_rows(1, 1)
    row = responses[0]
    assert (row.billing, row.audio_output_tokens, row.cached_input_tokens) == ("priced", 500, 100)
    # gpt-realtime in the price file: input_cost_per_token 4e-06, cache_read_input_token_cost
    # 4e-07, output_cost_per_token 1.6e-05, output_cost_per_audio_token 6.4e-05.
    text_in, text_out = row.input_tokens - 100, row.output_tokens - 500
    assert row.cost == (text_in * Decimal("4e-6") + 100 * Decimal("4e-7") + text_out * Decimal("1.6e-5")
                        + 500 * Decimal("6.4e-5"))


def test_session_and_response_rows_carry_valid_macs_and_seal_into_the_ledger(relay, fake_ws, issue_key):
    from audit_app.ledger import seal, verify

    key, plaintext = issue_key()
    with client_for(relay, plaintext).realtime.connect(model="gpt-realtime") as conn:
        for _ in range(2):
            conn.response.create()
            until("response.done", conn)
    session_rows(1, 2)
    settle()
    result = seal()
    assert (result.calls, result.rejected) == (3, [])
    assert verify(record=False).ok


def test_closing_the_sdk_connection_closes_upstream_within_a_second(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    with client_for(relay, plaintext).realtime.connect(model="gpt-realtime") as conn:
        until("session.created", conn)
        closed = time.monotonic()
    deadline = time.monotonic() + 5
    while fake_ws.connections[0].closed_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake_ws.connections[0].closed_at - closed < 1.0
    assert fake_ws.connections[0].close_code == 1000
    sessions, _ = session_rows(1)
    assert (sessions[0].outcome, sessions[0].error) == ("ok", "")


def test_the_sdk_sees_the_close_code_and_reason_when_upstream_ends_the_session(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    with pytest.raises(Exception) as ended:
        with client_for(relay, plaintext).realtime.connect(model="gpt-realtime") as conn:
            until("session.created", conn)
            conn.response.create(response={"instructions": "close:1011"})
            until("response.done", conn)
            conn.recv()
    assert "1011" in str(ended.value) and "upstream exploded" in str(ended.value)


def test_a_client_that_stops_reading_does_not_make_the_relay_buffer_upstream_flood(relay, fake_ws, issue_key):
    from websockets.sync.client import connect

    def worker_rss_kib() -> int:
        total = 0
        for pid in relay.worker_pids():
            with open(f"/proc/{pid}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return total

    key, plaintext = issue_key()
    ws = connect(f"ws://127.0.0.1:{relay.port}/v1/realtime?model=gpt-realtime", max_size=None, max_queue=1,
                 additional_headers={"Authorization": f"Bearer {plaintext}"})
    ws.recv(timeout=10)
    before = worker_rss_kib()
    # 800 deltas of 64 KiB: 50 MiB that upstream sends as fast as its socket takes them.
    ws.send('{"type": "response.create", "response": {"instructions": "flood:800"}}')
    time.sleep(3)  # the client reads nothing
    grown = worker_rss_kib() - before
    assert grown < 10 * 1024, f"the relay grew by {grown} KiB while its client read nothing"
    received = 0
    while received < 801:  # response.created and every delta still arrive, in order
        ws.recv(timeout=30)
        received += 1
    ws.close()


def test_under_a_budget_a_model_without_a_price_is_refused_in_the_session(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    key.monthly_budget_usd = Decimal("100.00")
    key.save()
    with client_for(relay, plaintext).responses.connect() as conn:
        conn.response.create(model="gpt-unpriced-experiment", input="hi")
        refused = until("response.completed", conn)[-1]
        assert refused.type == "error" and refused.code == "relay_unpriced_under_budget"
        conn.response.create(model="gpt-4o-mini", input="priced")
        assert until("response.completed", conn)[-1].type == "response.completed"
    assert [e["input"] for e in fake_ws.connections[0].events] == ["priced"]


def test_a_malformed_upgrade_is_answered_in_openai_shape_and_nothing_reaches_upstream(relay, fake_ws, issue_key):
    import requests

    key, plaintext = issue_key()
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Authorization": f"Bearer {plaintext}"}
    no_key = requests.get(f"{relay.url}/v1/realtime?model=gpt-realtime", headers=upgrade, timeout=10)
    assert no_key.status_code == 400 and no_key.json()["error"]["code"] == "invalid_websocket_upgrade"
    handshake = {**upgrade, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    twice = requests.get(f"{relay.url}/v1/realtime?model=gpt-realtime&model=gpt-4o", headers=handshake, timeout=10)
    assert twice.status_code == 400 and twice.json()["error"]["param"] == "model"
    elsewhere = requests.get(f"{relay.url}/v1/models", headers=handshake, timeout=10)
    assert elsewhere.status_code == 404 and elsewhere.json()["error"]["code"] == "unknown_url"
    assert fake_ws.connections == []


def test_a_worker_stopping_gracefully_closes_its_sessions_with_1012_and_audits_them(start_gunicorn, fake_ws, issue_key):
    import os
    import signal

    from websockets.exceptions import ConnectionClosed

    # The default graceful timeout (60 s): sessions are closed at once, not when it runs out.
    relay = start_gunicorn(OPENAI_WEBSOCKET_BASE_URL=fake_ws.base_url)
    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext)
    ws.recv(timeout=10)
    os.kill(relay.proc.pid, signal.SIGTERM)
    stopped = time.monotonic()
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=15)
    assert ws.close_code == 1012 and time.monotonic() - stopped < 5
    sessions, _ = session_rows(1)
    assert sessions[0].outcome == "interrupted"
