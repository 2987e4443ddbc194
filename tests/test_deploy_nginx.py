"""The relay behind the nginx site config it ships (scripts/deploy/nginx/team-relay.conf).

Real traffic through real processes: the official SDK over TLS (a throwaway certificate)
-> Debian's nginx, running the shipped template rendered with test values
-> the relay under gunicorn with production settings (HTTPS=true, X-Forwarded-For trusted)
-> the fake OpenAI upstream. Only the outer nginx.conf (pid file, temp paths, logs in a
temporary directory) is written here; the site file is the one that ships.

Skipped only when nginx is not installed (.ci/run installs it).
"""
from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path


import openai
import pytest
import requests

from audit_app.models import FileRecord, Outcome
from scripts.deploy.render import RenderError, render, render_file
from tests.conftest import ROOT, UPSTREAM_KEY, finished_calls, free_port, settle

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
SITE_TEMPLATE = ROOT / "scripts" / "deploy" / "nginx" / "team-relay.conf"
MAX_BODY = 540 * 1024 * 1024  # RELAY_MAX_BODY_BYTES's default, rendered into the site file

needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")


# --- nginx, started by the test -------------------------------------------------------------


def throwaway_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "relay.crt", directory / "relay.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=relay.test",
         "-addext", "subjectAltName=DNS:relay.test,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


class Nginx:
    """nginx on 127.0.0.1 in front of `gunicorn` (host:port), with the shipped site file."""

    def __init__(self, directory: Path, gunicorn: str, max_body: int = MAX_BODY, https_port: int | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.https_port = https_port or free_port()
        self.http_port = free_port(self.https_port)  # CI once got the same port for both
        self.cert, key = throwaway_certificate(self.dir)
        self.body_temp = self.dir / "client_body_temp"
        self.site = self.dir / "team-relay.conf"
        self.site.write_text(render_file(SITE_TEMPLATE, {
            "SERVER_NAME": "relay.test 127.0.0.1",
            "HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "HTTPS_LISTEN": f"127.0.0.1:{self.https_port}",
            "TLS_CERT": str(self.cert), "TLS_KEY": str(key),
            "ACME_ROOT": str(self.dir / "acme"),
            "GUNICORN": gunicorn,
            "MAX_BODY_BYTES": str(max_body),
        }))
        temp_paths = "\n".join(f"    {kind}_temp_path {self.dir / (kind + '_temp')};"
                               for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(f"""
{"user root root;" if os.geteuid() == 0 else ""}
daemon off;
worker_processes 1;
pid {self.dir / "nginx.pid"};
error_log {self.dir / "error.log"} info;
events {{ worker_connections 1024; }}
http {{
    access_log {self.dir / "access.log"};
{temp_paths}
    include {self.site};
}}
""")
        self.url = f"https://127.0.0.1:{self.https_port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Nginx":
        cmd = [NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(self.dir / "nginx.conf")]
        checked = subprocess.run([*cmd, "-t"], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.https_port), timeout=1).close()
                return self
            except OSError:
                assert self.proc.poll() is None, self.error_log()
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start: {self.error_log()}")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture
def start_nginx(tmp_path):
    started: list[Nginx] = []

    def start(gunicorn: str, **kwargs) -> Nginx:
        server = Nginx(tmp_path / f"nginx-{len(started)}", gunicorn, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def static_root(tmp_path_factory) -> Path:
    """`manage.py collectstatic`, as the install step runs it (about a second)."""
    root = tmp_path_factory.mktemp("staticfiles")
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"], cwd=ROOT,
                   env={**os.environ, "DJANGO_SETTINGS_MODULE": "relay_project.settings", "STATIC_ROOT": str(root)},
                   check=True)
    return root


@pytest.fixture
def behind_nginx(start_gunicorn, start_nginx, static_root) -> Nginx:
    """nginx -> the relay under gunicorn, configured as docs/operations.md says."""
    https_port = free_port()
    relay = start_gunicorn(HTTPS="true", RELAY_TRUST_X_FORWARDED_FOR="true", RELAY_MAX_BODY_BYTES=str(MAX_BODY),
                           STATIC_ROOT=str(static_root), CSRF_TRUSTED_ORIGINS=f"https://127.0.0.1:{https_port}")
    server = start_nginx(f"127.0.0.1:{relay.port}", https_port=https_port)
    server.relay = relay
    return server


@pytest.fixture
def sdk_via_nginx(behind_nginx, relay_key) -> openai.OpenAI:
    http_client = openai.DefaultHttpxClient(verify=behind_nginx.tls(), timeout=60)
    return openai.OpenAI(base_url=f"{behind_nginx.url}/v1", api_key=relay_key, max_retries=0,
                         http_client=http_client)


def read_events(response: requests.Response, started: float) -> list[tuple[float, bytes]]:
    """(seconds since `started`, event) for each SSE event, as it arrives."""
    buf, events = b"", []
    while chunk := response.raw.read1(65536):
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            events.append((time.monotonic() - started, event))
    return events


# --- the shipped file ---------------------------------------------------------------------------


def test_rendering_refuses_a_placeholder_left_without_a_value_or_a_value_without_one():
    with pytest.raises(RenderError, match="no value for GUNICORN"):
        render("server {{GUNICORN}};", {})
    with pytest.raises(RenderError, match="no placeholder GUNICRON"):
        render("server {{GUNICORN}};", {"GUNICORN": "x", "GUNICRON": "y"})
    assert render("server {{GUNICORN}};", {"GUNICORN": "127.0.0.1:8000"}) == "server 127.0.0.1:8000;"


# --- through nginx, end to end ----------------------------------------------------------------


@needs_nginx
def test_the_sdk_works_through_nginx_over_tls_and_every_call_is_recorded(sdk_via_nginx, behind_nginx, upstream):
    sdk = sdk_via_nginx
    assert sdk.responses.create(model="gpt-4o-mini", input="hi").output_text
    with sdk.responses.create(model="gpt-4o-mini", input="hi", stream=True) as stream:
        kinds = [event.type for event in stream]
    assert kinds[-1] == "response.completed"
    chunks = list(sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                              stream=True))
    assert chunks
    assert len(sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"]).data) == 2
    uploaded = sdk.files.create(file=("notes.jsonl", io.BytesIO(b'{"a": 1}\n')), purpose="batch")
    assert sdk.files.content(uploaded.id).read() == b'{"a": 1}\n'
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    assert sdk.batches.retrieve(batch.id).status == "validating"

    rows = finished_calls(8)
    settle()
    assert [r.outcome for r in rows] == [Outcome.OK] * 8
    assert {r.client_ip for r in rows} == {"127.0.0.1"}
    streamed = [r for r in rows if r.stream]
    assert len(streamed) == 2 and all(r.total_tokens for r in streamed)
    assert FileRecord.objects.get(file_id=uploaded.id).filename == "notes.jsonl"
    # The upstream key went upstream, and never back through nginx.
    assert all((r.header("authorization") or "").endswith(os.environ["OPENAI_API_KEY"])
               for r in upstream.requests)


@needs_nginx
def test_plain_http_is_redirected_to_https_and_the_relay_sees_https(behind_nginx, static_root):
    plain = requests.get(f"http://127.0.0.1:{behind_nginx.http_port}/v1/models", allow_redirects=False,
                         headers={"Host": "relay.test"}, timeout=10)
    assert plain.status_code == 301 and plain.headers["Location"] == "https://relay.test/v1/models"
    # HTTPS=true redirects any request that did not come over TLS; through nginx none is
    # redirected, because nginx says X-Forwarded-Proto: https.
    login = requests.get(f"{behind_nginx.url}/admin/login/", verify=str(behind_nginx.cert),
                         allow_redirects=False, timeout=10)
    assert login.status_code == 200
    assert login.headers["Strict-Transport-Security"].startswith("max-age=")
    # Static files come from whitenoise through nginx, under hashed names cached for good.
    hashed = json.loads((static_root / "staticfiles.json").read_text())["paths"]["admin/css/base.css"]
    assert hashed != "admin/css/base.css" and f"/static/{hashed}" in login.text
    static = requests.get(f"{behind_nginx.url}/static/{hashed}", verify=str(behind_nginx.cert), timeout=10)
    assert static.status_code == 200 and static.headers["Content-Type"].startswith("text/css")
    assert "immutable" in static.headers["Cache-Control"]


@needs_nginx
def test_an_admin_logs_in_through_nginx_with_secure_cookies(behind_nginx, django_user_model):
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    admin = django_user_model.objects.create_superuser("root")
    # Hashed as production hashes it: the test settings' fast hasher is not one gunicorn knows.
    admin.password = PBKDF2PasswordHasher().encode("a-long-admin-password", "nginxtestsalt")
    admin.save()
    with requests.Session() as browser:
        tls = str(behind_nginx.cert)  # per request: a session's verify loses to REQUESTS_CA_BUNDLE
        login_url = f"{behind_nginx.url}/admin/login/?next=/admin/"
        page = browser.get(login_url, timeout=10, verify=tls)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        answer = browser.post(login_url, timeout=10, verify=tls, allow_redirects=False, headers={"Referer": login_url},
                              data={"csrfmiddlewaretoken": token, "username": "root",
                                    "password": "a-long-admin-password", "next": "/admin/"})
        assert answer.status_code == 302, re.findall(r"errornote.*?</p>|errorlist.*?</ul>", answer.text, re.S)
        cookies = answer.headers["Set-Cookie"]
        assert "sessionid=" in cookies and "Secure" in cookies and "HttpOnly" in cookies
        index = browser.get(f"{behind_nginx.url}/admin/", timeout=10, verify=tls)
        assert index.status_code == 200 and "Site administration" in index.text


@needs_nginx
def test_sse_events_pass_through_nginx_as_upstream_sends_them(behind_nginx, relay_key, upstream):
    upstream.sse_delay_first, upstream.sse_delay_between, upstream.sse_event_count = 0.0, 0.8, 3
    started = time.monotonic()
    with requests.post(f"{behind_nginx.url}/v1/responses", verify=str(behind_nginx.cert), stream=True,
                       json={"model": "gpt-4o-mini", "input": "hi", "stream": True},
                       headers={"Authorization": f"Bearer {relay_key}"}, timeout=30) as response:
        assert response.status_code == 200
        events = read_events(response, started)
    times = [t for t, _ in events]
    assert events[-1][1].startswith(b"event: response.completed")
    # Upstream paces its events 0.8 s apart: a buffering proxy would deliver them all at the end.
    assert times[0] < 0.4, f"first event after {times[0]:.2f} s: nginx buffered the stream"
    assert times[-1] > 2.0
    gaps = [b - a for a, b in zip(times, times[1:]) if b - a > 0.4]
    assert len(gaps) >= 3, f"events arrived in bursts: {times}"


class Body:
    """A request body generated as it is sent, with a known length (so, Content-Length)."""

    def __init__(self, head: bytes, size: int, tail: bytes) -> None:
        self.head, self.size, self.tail = head, size, tail

    def __len__(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self):
        yield self.head
        block = b"x" * (1 << 20)
        for _ in range(self.size // len(block)):
            yield block
        yield b"x" * (self.size % len(block))
        yield self.tail


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@needs_nginx
def test_a_large_upload_streams_through_nginx_and_the_relay_in_bounded_memory(behind_nginx, relay_key, upstream):
    size = 200 * 1024 * 1024
    boundary = "relayboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    pids = {"nginx": behind_nginx.worker_pids(), "gunicorn": behind_nginx.relay.worker_pids()}
    assert pids["nginx"] and pids["gunicorn"]
    before = {name: {pid: rss_kib(pid) for pid in group} for name, group in pids.items()}
    peak = {name: dict(group) for name, group in before.items()}
    spooled: set[str] = set()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for name, group in pids.items():
                for pid in group:
                    peak[name][pid] = max(peak[name][pid], rss_kib(pid))
            # nginx unlinks a body's temporary file as soon as it opens it: look at its open files.
            for pid in pids["nginx"]:
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    try:
                        target = os.readlink(fd)
                    except OSError:
                        continue
                    if str(behind_nginx.body_temp) in target:
                        spooled.add(target)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        response = requests.post(f"{behind_nginx.url}/v1/files", data=Body(head, size, tail),
                                 verify=str(behind_nginx.cert), timeout=120,
                                 headers={"Authorization": f"Bearer {relay_key}",
                                          "Content-Type": f"multipart/form-data; boundary={boundary}"})
    finally:
        done.set()
        sampler.join()
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == size
    finished_calls(1)
    settle()  # the file is recorded as the call closes, a moment after the response
    assert FileRecord.objects.get(file_id=response.json()["id"]).bytes == size
    # Nothing held whole: not in nginx (no request buffering, no temporary file) ...
    assert not spooled, f"nginx spooled the body to disk: {spooled}"
    growth = {name: max(peak[name][pid] - before[name][pid] for pid in group) // 1024
              for name, group in pids.items()}
    # ... and not in memory: measured 3 MiB (nginx) and 8 MiB (gunicorn worker) of growth
    # for 200 MiB passing through.
    assert growth["nginx"] < 32 and growth["gunicorn"] < 64, f"RSS growth in MiB: {growth}"


@needs_nginx
def test_a_chunked_upload_without_content_length_streams_through(behind_nginx, relay_key, upstream):
    boundary = "chunked"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.bin\"\r\n"
               f"Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(8):
            yield b"y" * (1 << 20)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = requests.post(f"{behind_nginx.url}/v1/files", data=body(), verify=str(behind_nginx.cert), timeout=60,
                             headers={"Authorization": f"Bearer {relay_key}",
                                      "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == 8 << 20


@needs_nginx
def test_nginx_answers_in_openai_shape_when_the_relay_is_down(start_nginx):
    nginx = start_nginx(f"127.0.0.1:{free_port()}")  # nothing listens there
    response = requests.get(f"{nginx.url}/v1/models", verify=str(nginx.cert), timeout=10)
    assert response.status_code == 502 and response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "relay_unavailable"


@needs_nginx
def test_a_body_over_the_limit_gets_an_openai_shaped_413_before_it_is_sent(behind_nginx, relay_key, upstream):
    conn = http.client.HTTPSConnection("127.0.0.1", behind_nginx.https_port, context=behind_nginx.tls(), timeout=10)
    conn.putrequest("POST", "/v1/files")
    conn.putheader("Authorization", f"Bearer {relay_key}")
    conn.putheader("Content-Type", "multipart/form-data; boundary=b")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders()
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 413
    assert body["error"]["code"] == "request_too_large" and set(body["error"]) == {"message", "type", "param", "code"}
    assert not [r for r in upstream.requests if r.path.startswith("/v1/files")]


def call_from(nginx: Nginx, source: str, key: str, forwarded_for: str | None = None) -> int:
    """POST /v1/responses to nginx from the local address `source` (any 127.x.y.z is ours)."""
    conn = http.client.HTTPSConnection("127.0.0.1", nginx.https_port, context=nginx.tls(), timeout=10,
                                       source_address=(source, 0))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    conn.request("POST", "/v1/responses", body=json.dumps({"model": "gpt-4o-mini", "input": "hi"}), headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


@needs_nginx
def test_the_client_address_nginx_saw_is_the_one_recorded(behind_nginx, relay_key, upstream):
    # The relay itself is reached from 127.0.0.1 (nginx); the client comes from 127.0.0.2.
    assert call_from(behind_nginx, "127.0.0.2", relay_key) == 200
    assert finished_calls(1)[0].client_ip == "127.0.0.2"


@needs_nginx
def test_an_x_forwarded_for_sent_by_the_client_is_not_taken_as_its_address(behind_nginx, relay_key, upstream):
    # nginx appends what it saw: "203.0.113.9, 127.0.0.2". Only the last entry is nginx's word.
    assert call_from(behind_nginx, "127.0.0.2", relay_key, forwarded_for="203.0.113.9") == 200
    assert finished_calls(1)[0].client_ip == "127.0.0.2"


@needs_nginx
def test_metrics_are_refused_through_nginx_to_anyone_but_localhost(behind_nginx):
    # The relay sees every request come from nginx (127.0.0.1), which it lets scrape.
    def scrape(source: str) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", behind_nginx.https_port, context=behind_nginx.tls(),
                                           timeout=10, source_address=(source, 0))
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        return response.status, response.read()

    status, body = scrape("127.0.0.2")
    assert status == 403 and json.loads(body)["error"]["code"] == "forbidden"
    status, body = scrape("127.0.0.1")
    assert status == 200 and b"relay_poll_batches_lag_seconds" in body


# --- upgrades and keep-alive, seen from behind nginx ------------------------------------------


class RawBackend:
    """A stand-in for gunicorn that records what nginx sends: each connection's request
    headers, and for an Upgrade request a 101 followed by an echo of whatever comes next,
    as a WebSocket server's tunnel would carry frames."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        with conn:
            while True:
                line = reader.readline()
                if not line:
                    return
                target = line.decode().split()[1]
                headers = {}
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.requests.append((target, headers))
                if headers.get("upgrade"):
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    while data := conn.recv(65536):
                        conn.sendall(data)
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

    def close(self) -> None:
        self.sock.close()


def upgrade_through(nginx: Nginx, path: str) -> tuple[bytes, socket.socket]:
    raw = socket.create_connection(("127.0.0.1", nginx.https_port), timeout=10)
    conn = nginx.tls().wrap_socket(raw, server_hostname="127.0.0.1")
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    return head, conn


@needs_nginx
@pytest.mark.parametrize("path", ["/v1/realtime?model=gpt-realtime", "/v1/responses"])
def test_websocket_upgrades_reach_the_relay_on_realtime_and_responses(start_nginx, path):
    backend = RawBackend()
    try:
        nginx = start_nginx(f"127.0.0.1:{backend.port}")
        head, conn = upgrade_through(nginx, path)
        with conn:
            assert head.startswith(b"HTTP/1.1 101"), head
            conn.sendall(b"\x81\x05hello")
            assert conn.recv(100) == b"\x81\x05hello"  # a tunnel both ways, unbuffered
        target, headers = backend.requests[-1]
        assert target == path
        assert headers["upgrade"] == "websocket" and headers["connection"].lower() == "upgrade"
    finally:
        backend.close()


@needs_nginx
def test_ordinary_requests_reuse_one_keep_alive_connection_and_carry_no_upgrade(start_nginx):
    backend = RawBackend()
    try:
        nginx = start_nginx(f"127.0.0.1:{backend.port}")
        with requests.Session() as session:
            for path in ("/v1/models", "/v1/chat/completions", "/health"):
                assert session.get(f"{nginx.url}{path}", verify=str(nginx.cert), timeout=10,
                                   headers={"Upgrade": "websocket", "Connection": "Upgrade"}).status_code == 200
        head, conn = upgrade_through(nginx, "/v1/files")
        conn.close()
        assert head.startswith(b"HTTP/1.1 200"), head  # no upgrade outside realtime and responses
        assert [target for target, _ in backend.requests] == ["/v1/models", "/v1/chat/completions", "/health", "/v1/files"]
        for _, headers in backend.requests:
            assert "upgrade" not in headers and "connection" not in headers  # keep-alive, not "close"
            assert headers["x-forwarded-proto"] == "https"
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert headers["host"] in ("127.0.0.1", "relay.test")  # $host: the name, never a port the client made up
        assert backend.connections == 1, "nginx opened a new connection to gunicorn per request"
    finally:
        backend.close()


# --- a WebSocket session through nginx -------------------------------------------------------


@pytest.fixture
def ws_behind_nginx(start_gunicorn, start_nginx, static_root, fake_ws) -> Nginx:
    """nginx -> the relay under gunicorn -> the fake WebSocket upstream."""
    relay = start_gunicorn(HTTPS="true", RELAY_TRUST_X_FORWARDED_FOR="true", STATIC_ROOT=str(static_root),
                           OPENAI_WEBSOCKET_BASE_URL=fake_ws.base_url)
    server = start_nginx(f"127.0.0.1:{relay.port}")
    server.relay = relay
    return server


@needs_nginx
def test_a_realtime_session_through_nginx_is_relayed_and_audited(ws_behind_nginx, issue_key, fake_ws):
    from tests.test_websockets import session_rows, until

    key, plaintext = issue_key()
    client = openai.OpenAI(base_url=f"{ws_behind_nginx.url}/v1", api_key=plaintext, max_retries=0, timeout=30)
    with client.realtime.connect(model="gpt-realtime",
                                 # open_timeout: CI once took over the default 10 s on a loaded machine
                                 websocket_connection_options={"ssl": ws_behind_nginx.tls(), "open_timeout": 30}) as conn:
        assert until("session.created", conn)[-1].type == "session.created"
        conn.response.create()
        events = until("response.done", conn)
        assert events[-1].type == "response.done"
        assert any(getattr(e, "delta", None) == "Hello 1" for e in events)
    sessions, responses = session_rows(1, 1)
    assert (sessions[0].path, sessions[0].outcome, sessions[0].key_id) == ("/v1/realtime", "ok", key.id)
    # The address nginx saw (X-Forwarded-For, one trusted proxy), not nginx's own.
    assert sessions[0].client_ip == "127.0.0.1"
    assert responses[0].billing == "priced" and responses[0].cost > 0
    # The relay key stayed at the relay; upstream saw the team's key.
    sent = {k.lower(): v for k, v in fake_ws.connections[0].headers.items()}
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}" and plaintext not in str(sent)
