"""WebSocket sessions through the relay under gunicorn: the official SDK's
`client.realtime.connect()` and `client.responses.connect()` against a fake
WebSocket upstream (tests/fake_ws_upstream.py)."""
from __future__ import annotations

import json
import socket
import time
from decimal import Decimal

import openai
import pytest

from tests.conftest import UPSTREAM_KEY, settle


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


def raw_session(relay, plaintext: str, path: str = "/v1/realtime?model=gpt-realtime", **options):
    """A WebSocket to the relay without the SDK (`options` go to websockets' connect)."""
    from websockets.sync.client import connect

    return connect(f"ws://127.0.0.1:{relay.port}{path}", additional_headers={"Authorization": f"Bearer {plaintext}"},
                   **options)


def next_event(ws, timeout: float = 10) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def skip_to(ws, event_type: str) -> None:
    """Read events until one of `event_type`."""
    while next_event(ws)["type"] != event_type:
        pass


def read_until_closed(ws) -> list:
    """Every message received until the relay closes the connection, which it must."""
    from websockets.exceptions import ConnectionClosed

    received = []
    with pytest.raises(ConnectionClosed):
        while True:
            received.append(ws.recv(timeout=10))
    return received


def wait_for_upstream_close(fake_ws, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while fake_ws.connections[0].closed_at is None and time.monotonic() < deadline:
        time.sleep(0.01)


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
    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext)
    ws.recv(timeout=10)  # session.created: upstream is connected
    dropped = time.monotonic()
    ws.socket.shutdown(socket.SHUT_RDWR)  # no close frame: the client just goes
    ws.socket.close()
    wait_for_upstream_close(fake_ws)
    assert fake_ws.connections[0].closed_at is not None
    assert fake_ws.connections[0].closed_at - dropped < 1.0
    sessions, _ = session_rows(1)
    assert sessions[0].outcome == "client_closed"


def test_when_upstream_closes_the_session_the_client_gets_a_close_frame_with_the_reason(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext)
    ws.recv(timeout=10)
    ws.send('{"type": "response.create", "response": {"instructions": "close:1011"}}')
    read_until_closed(ws)
    assert ws.close_code == 1011 and "upstream exploded" in ws.close_reason
    sessions, responses = session_rows(1, 1)
    assert sessions[0].outcome == "upstream_error" and "1011" in sessions[0].error
    # Created, never done: OpenAI bills it, the relay could not see how much.
    assert (responses[0].outcome, responses[0].billing, responses[0].cost) == ("interrupted", "unknown", None)


def test_when_upstream_drops_the_connection_the_client_gets_a_close_frame_saying_so(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext, "/v1/responses")
    ws.send('{"type": "response.create", "model": "gpt-4o-mini", "input": "drop"}')
    read_until_closed(ws)
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

    relay = start_gunicorn(OPENAI_WEBSOCKET_BASE_URL=fake_ws.base_url, RELAY_WS_IDLE_TIMEOUT_SECONDS="1")
    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext, "/v1/responses")
    started = time.monotonic()
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    assert 0.9 < time.monotonic() - started < 3
    assert ws.close_code == 1000 and "RELAY_WS_IDLE_TIMEOUT_SECONDS" in ws.close_reason


def test_events_the_relay_cannot_read_are_refused_with_an_error_event_and_not_forwarded(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext)
    assert next_event(ws)["type"] == "session.created"
    for unreadable in ("not json", b"\x00binary", '{"type": "session.update", "type": "response.create"}', "[1]"):
        ws.send(unreadable)
        refused = next_event(ws)
        assert refused["type"] == "error" and refused["error"]["code"] == "invalid_event", unreadable
    ws.send('{"type": "response.create", "event_id": "evt_ok"}')
    assert next_event(ws)["type"] == "response.created"  # the session goes on
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
    wait_for_upstream_close(fake_ws)
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
    def worker_rss_kib() -> int:
        total = 0
        for pid in relay.worker_pids():
            with open(f"/proc/{pid}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return total

    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext, max_size=None, max_queue=1)
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


# --- review findings: every event checked, limits from every budget, sessions that end ---------


def _team_key(django_user_model, name: str, **team_fields):
    from django.contrib.auth.models import Group

    from proxy_app.models import RelayKey, Team

    team = Team.objects.create(group=Group.objects.create(name=name), **team_fields)
    owner = django_user_model.objects.create_user(f"{name}-owner")
    owner.groups.add(team.group)
    key, plaintext = RelayKey.issue(owner)
    assert key.team == team
    return key, plaintext


def test_a_limited_key_cannot_reach_a_denied_model_through_fields_or_events_the_relay_did_not_check(
        relay, fake_ws, issue_key):
    key, plaintext = scoped_key(issue_key, ["gpt-4o-mini", "gpt-realtime"])
    ws = raw_session(relay, plaintext, "/v1/responses")
    ws.send(json.dumps({"type": "response.create", "model": "gpt-4o-mini", "input": "hi",
                        "moderation": {"model": "omni-moderation-NOT-ALLOWED"}}))
    refused = next_event(ws)
    assert refused["type"] == "error" and refused["code"] == "outside_key_scope", refused
    # response.steer starts generation and is no event the relay checks: refused for a limited key.
    ws.send(json.dumps({"type": "response.steer", "previous_response_id": "resp_x", "input": "go on"}))
    refused = next_event(ws)
    assert refused["type"] == "error" and refused["code"] == "invalid_event" and "response.steer" in refused["message"]
    ws.send(json.dumps({"type": "response.create", "model": "gpt-4o-mini", "input": "allowed"}))
    skip_to(ws, "response.completed")
    ws.close()
    rt = raw_session(relay, plaintext)  # realtime, allowed URL model
    rt.recv(timeout=10)
    rt.send(json.dumps({"type": "transcription_session.update",
                        "session": {"input_audio_transcription": {"model": "gpt-4o-transcribe-NOT-ALLOWED"}}}))
    refused = next_event(rt)
    assert refused["type"] == "error" and refused["error"]["code"] == "outside_key_scope", refused
    rt.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": [
        {"type": "image_generation", "model": {"name": "gpt-image-NOT-ALLOWED"}}]}}))
    refused = next_event(rt)
    assert refused["type"] == "error" and refused["error"]["code"] == "outside_key_scope", refused
    rt.close()
    session_rows(2, 1)
    forwarded = [e for c in fake_ws.connections for e in c.events]
    assert [e.get("input") for e in forwarded] == ["allowed"], forwarded


def test_response_steer_from_an_unlimited_key_passes_the_rate_limit_like_response_create(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    key.requests_per_minute = 2  # the connection, then one event that starts generation
    key.save()
    ws = raw_session(relay, plaintext, "/v1/responses")
    ws.send(json.dumps({"type": "response.steer", "previous_response_id": "resp_x", "input": "go on"}))
    ws.send(json.dumps({"type": "response.steer", "previous_response_id": "resp_x", "input": "again"}))
    refused = next_event(ws)
    assert refused["type"] == "error" and refused["code"] == "rate_limit_exceeded", refused
    ws.close()
    session_rows(1)
    assert [e.get("input") for e in fake_ws.connections[0].events] == ["go on"]


def test_a_non_object_transcription_is_answered_with_an_invalid_event_error_and_the_session_goes_on(
        relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext)
    ws.recv(timeout=10)
    for bad in ({"type": "realtime", "audio": {"input": {"transcription": "x"}}},
                {"type": "realtime", "audio": {"input": ["x"]}},
                {"input_audio_transcription": ["x"]}, "session"):
        ws.send(json.dumps({"type": "session.update", "session": bad}))
        refused = next_event(ws, timeout=5)
        assert refused["type"] == "error" and refused["error"]["code"] == "invalid_event", (bad, refused)
    ws.send('{"type": "response.create"}')
    assert next_event(ws)["type"] == "response.created"
    ws.close()
    session_rows(1, 1)
    assert [e["type"] for e in fake_ws.connections[0].events] == ["response.create"]


def test_a_session_goes_to_its_teams_openai_project(relay, fake_ws, django_user_model):
    key, plaintext = _team_key(django_user_model, "research", openai_project_id="proj_research01")
    ws = raw_session(relay, plaintext)
    ws.recv(timeout=10)
    ws.close()
    assert fake_ws.connections[0].headers.get("openai-project") == "proj_research01"


def test_a_team_budget_limits_a_session_like_a_key_budget(relay, fake_ws, django_user_model):
    key, plaintext = _team_key(django_user_model, "ops", monthly_budget_usd=Decimal("100.00"))
    assert key.monthly_budget_usd is None
    ws = raw_session(relay, plaintext, "/v1/responses")
    ws.send(json.dumps({"type": "response.create", "model": "gpt-unpriced-experiment", "input": "hi"}))
    refused = next_event(ws)
    assert refused["type"] == "error" and refused["code"] == "relay_unpriced_under_budget", refused
    ws.send(json.dumps({"type": "response.steer", "input": "x"}))  # limited: known events only
    assert next_event(ws)["code"] == "invalid_event"
    ws.close()
    session_rows(1)
    assert fake_ws.connections[0].events == []


def test_the_idle_watchdog_ends_a_session_whose_client_stopped_reading(start_gunicorn, fake_ws, issue_key):
    from audit_app.models import ApiCall

    relay = start_gunicorn(OPENAI_WEBSOCKET_BASE_URL=fake_ws.base_url, RELAY_WS_IDLE_TIMEOUT_SECONDS="2")
    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext, max_size=None, max_queue=1)
    ws.recv(timeout=10)
    # The relay's write to the client blocks, holding the client side's lock.
    ws.send('{"type": "response.create", "response": {"instructions": "flood:800"}}')
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            session = ApiCall.objects.get(method="GET")
            if session.outcome != "pending" and fake_ws.connections[0].closed_at is not None:
                break
            time.sleep(0.2)
        child = ApiCall.objects.exclude(method="GET").first()
        assert session.outcome != "pending" and fake_ws.connections[0].closed_at is not None, (
            session.outcome, child and child.outcome)
        assert child is not None and (child.outcome, child.billing) == ("interrupted", "unknown")
    finally:
        ws.socket.close()


def test_reconcile_calls_marks_an_unfinished_ws_response_unknown_not_free(relay, fake_ws, issue_key):
    from django.core.management import call_command

    from audit_app.models import ApiCall, UsageDaily

    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext)
    ws.recv(timeout=10)
    ws.send('{"type": "response.create", "response": {"instructions": "hang"}}')
    assert next_event(ws)["type"] == "response.created"
    time.sleep(0.5)
    call_command("reconcile_calls", older_than=0)  # what cron does after a SIGKILL/SIGQUIT/OOM
    child = ApiCall.objects.exclude(method="GET").get()
    assert (child.outcome, child.billing) == ("interrupted", "unknown")
    ws.close()
    session_rows(1)
    settle()
    # The session's end closes the response row too (interrupted, unknown): the rollups take
    # reconcile's count back first, so the response is one call, once unknown.
    from django.db.models import Sum
    totals = UsageDaily.objects.filter(key=key).aggregate(calls=Sum("calls"), unknown=Sum("unknown_calls"))
    assert totals == {"calls": 2, "unknown": 1}, totals


def test_an_input_transcription_is_recorded_as_a_row_of_its_own_never_free(relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    ws = raw_session(relay, plaintext)
    ws.recv(timeout=10)
    ws.send(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}}}))
    assert next_event(ws)["type"] == "session.updated"
    ws.send('{"type": "input_audio_buffer.commit"}')
    event = next_event(ws)
    assert event["type"] == "conversation.item.input_audio_transcription.completed"
    ws.close()
    _, rows = session_rows(1, 1)
    row = rows[0]
    assert (row.model, row.input_tokens, row.output_tokens) == ("gpt-4o-transcribe", 500, 20)
    # 500 audio tokens and no audio-token rate: unpriced (cost unknown), never $0.
    assert row.billing in ("priced", "unpriced") and row.billing != "free"
    assert row.billing == "priced" or row.cost is None


def test_when_a_response_exhausts_the_budget_the_client_gets_its_done_event_before_the_close(
        relay, fake_ws, issue_key):
    key, plaintext = issue_key()
    key.monthly_budget_usd = Decimal("0.01")  # one turn costs $0.006896, two $0.013808
    key.save()
    ws = raw_session(relay, plaintext)
    ws.recv(timeout=10)
    ws.send('{"type": "response.create"}')
    skip_to(ws, "response.done")
    ws.send('{"type": "response.create"}')
    seen = [json.loads(message)["type"] for message in read_until_closed(ws)]
    assert seen[-2:] == ["response.done", "error"], seen
    assert ws.close_code == 1008


def test_a_worker_class_other_than_gevent_answers_501_rather_than_holding_the_worker(
        start_gunicorn, fake_ws, issue_key):
    import requests

    relay = start_gunicorn(OPENAI_WEBSOCKET_BASE_URL=fake_ws.base_url, GUNICORN_WORKER_CLASS="sync")
    key, plaintext = issue_key()
    resp = requests.get(f"{relay.url}/v1/realtime?model=gpt-realtime", timeout=10, headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Authorization": f"Bearer {plaintext}",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
    assert resp.status_code == 501 and resp.json()["error"]["code"] == "websockets_unavailable"
    assert fake_ws.connections == []
