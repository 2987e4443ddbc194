"""The official Node SDK (`openai` npm package) through the relay under gunicorn.

Its Realtime client only speaks wss://, so gunicorn serves a throwaway
certificate here, as nginx would in production. CI installs the package with
`npm ci --prefix tests/node` (see docs/websockets.md); without it these tests skip.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import GunicornRelay, settle
from tests.test_websockets import session_rows

NODE_DIR = Path(__file__).resolve().parent / "node"

pytestmark = pytest.mark.skipif(
    not shutil.which("node") or not (NODE_DIR / "node_modules" / "openai").is_dir(),
    reason="Node or the openai npm package is not installed (npm ci --prefix tests/node)",
)


@pytest.fixture
def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_relay(transactional_db, upstream, shipped_prices, fake_ws, certificate, monkeypatch):
    cert, key = certificate
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # the fixture's health check
    relay = GunicornRelay(upstream.base_url, OPENAI_WEBSOCKET_BASE_URL=fake_ws.base_url,
                          GUNICORN_CMD_ARGS=f"--certfile {cert} --keyfile {key}")
    relay.url = relay.url.replace("http://", "https://")
    relay.start()
    yield relay
    settle()
    relay.stop()


def test_the_node_sdk_realtime_and_responses_websocket_clients_work_through_the_relay(
        tls_relay, certificate, issue_key):
    key, plaintext = issue_key()
    result = subprocess.run(
        ["node", "ws_check.mjs"], cwd=NODE_DIR, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "RELAY_BASE": f"{tls_relay.url}/v1", "RELAY_KEY": plaintext,
             "NODE_EXTRA_CA_CERTS": str(certificate[0])})
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"realtime": {"status": "completed", "output_tokens": 201},
                   "responses": {"status": "completed", "model": "gpt-4o-mini"}}
    sessions, responses = session_rows(2, 2)
    assert sorted(s.path for s in sessions) == ["/v1/realtime", "/v1/responses"]
    assert {r.billing for r in responses} == {"priced"} and all(r.key_id == key.id for r in responses)
