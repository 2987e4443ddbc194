"""Slow bodies and the database pool (issue 14, item 5), under real gunicorn.

Ten clients that trickle their bodies in must not starve everyone else: no
request holds a database connection while its body streams, a body that
stalls is refused (408) and never forwarded, and with the database down a
client gets its 503 in about two seconds, not sixty.
"""
from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from django.db import connection

SLOW_CLIENTS = 10
STALL_TIMEOUT = 3  # RELAY_BODY_READ_TIMEOUT for these tests


def start_slow_body(port: int, key: str) -> socket.socket:
    """A POST that announces 200 bytes of JSON and sends 20 of them."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall((f"POST /v1/embeddings HTTP/1.1\r\nHost: relay.test\r\nAuthorization: Bearer {key}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n").encode()
                 + b'{"model": "text-embe')
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body[body.find(b"{"):])


def test_slow_bodies_hold_no_connection_and_stall_out_while_others_are_served(
        start_gunicorn, issue_key, upstream):
    _, key = issue_key()
    relay = start_gunicorn(GUNICORN_WORKERS="1", DATABASE_POOL_MAX="2",
                           RELAY_BODY_READ_TIMEOUT=str(STALL_TIMEOUT))
    port = int(relay.url.rsplit(":", 1)[1])
    assert requests.get(f"{relay.url}/v1/models", headers={"Authorization": f"Bearer {key}"},
                        timeout=10).status_code == 200  # the key is known to the worker
    slow = [start_slow_body(port, key) for _ in range(SLOW_CLIENTS)]
    time.sleep(0.5)  # every slow request is now waiting for the rest of its body

    def other_call(i: int) -> tuple[int, float]:
        started = time.monotonic()
        response = requests.post(f"{relay.url}/v1/embeddings", timeout=10,
                                 headers={"Authorization": f"Bearer {key}"},
                                 json={"model": "text-embedding-3-small", "input": str(i)})
        return response.status_code, time.monotonic() - started

    with ThreadPoolExecutor(5) as pool:
        served = list(pool.map(other_call, range(10)))
    assert [status for status, _ in served] == [200] * 10, served
    assert max(seconds for _, seconds in served) < 2, served

    started = time.monotonic()
    answers = [read_response(sock) for sock in slow]
    for sock in slow:
        sock.close()
    assert time.monotonic() - started < STALL_TIMEOUT + 5
    assert {status for status, _ in answers} == {408}
    assert {body["error"]["code"] for _, body in answers} == {"request_body_timeout"}
    # Only the calls that were served reached upstream.
    assert sum(1 for r in upstream.requests if r.path == "/v1/embeddings") == 10


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the pool is PostgreSQL's")
def test_with_the_database_down_a_client_gets_503_within_about_two_seconds(start_gunicorn, issue_key, upstream,
                                                                           tmp_path):
    _, key = issue_key()
    journal = tmp_path / "journal.jsonl"  # the server's own: this process's journal is replayed by other tests
    relay = start_gunicorn(GUNICORN_WORKERS="1", DATABASE_URL="postgres://postgres@127.0.0.1:1/relay_down",
                           RELAY_AUDIT_SPOOL=str(journal))
    started = time.monotonic()
    response = requests.get(f"{relay.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "audit_unavailable"
    assert elapsed < 3.5, elapsed
    assert upstream.requests == []
    # The refusal's row went straight to the journal, to be replayed when the database is back.
    assert json.loads(journal.read_text().splitlines()[-1])["fields"]["status"] == 503


def test_default_pool_sizes_fit_postgresqls_default_connection_limit(monkeypatch):
    from relay_project import settings as relay_settings

    for cpus in (1, 2, 4, 8, 16, 32):
        monkeypatch.delenv("GUNICORN_WORKERS", raising=False)
        monkeypatch.setattr("multiprocessing.cpu_count", lambda cpus=cpus: cpus)
        workers = cpus * 2  # gunicorn.conf.py's default
        assert workers * relay_settings.default_pool_max() <= 90, cpus
