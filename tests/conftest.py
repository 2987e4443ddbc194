"""Fixtures: a real fake-OpenAI server, the relay on a real socket, keys, SDK clients."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from tests.fake_openai import FakeUpstream
from tests.fake_ws_upstream import FakeWsUpstream

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = os.environ["OPENAI_API_KEY"]  # set by tests.settings


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_ws_server() -> Iterator[FakeWsUpstream]:
    server = FakeWsUpstream(UPSTREAM_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def fake_ws(fake_ws_server: FakeWsUpstream) -> FakeWsUpstream:
    """The fake WebSocket upstream, reset (the relay is pointed at it by each test's server)."""
    fake_ws_server.reset()
    return fake_ws_server


@pytest.fixture
def upstream(fake_upstream_server: FakeUpstream, settings) -> FakeUpstream:
    """The fake upstream, reset, with the relay pointed at it."""
    fake_upstream_server.reset()
    settings.OPENAI_BASE_URL = fake_upstream_server.base_url
    return fake_upstream_server


@pytest.fixture
def shipped_prices(db) -> None:
    """The prices the data migration ships: already there in a test that rolls back; a
    transactional test (live server, gunicorn) flushed them with the tables, so they are
    loaded again."""
    from datetime import datetime, timezone

    from audit_app.models import ModelPrice
    from audit_app.pricing import SHIPPED_PRICES, load_map, priced_models
    from audit_app.pricing import clear_cache

    if not ModelPrice.objects.exists():
        # What the data migration loads, in one statement: row by row (with the admin log's
        # signals) it cost each test a second or two on PostgreSQL.
        since = datetime(2024, 1, 1, tzinfo=timezone.utc)
        ModelPrice.objects.bulk_create(
            ModelPrice(model=name, effective_from=since, source="shipped", **fields)
            for name, fields in priced_models(load_map(SHIPPED_PRICES)) if fields is not None)
        clear_cache()  # bulk_create sends no post_save


@pytest.fixture
def empty_cache(db) -> None:
    """Django's cache, emptied: rate-limit counters and cached spend from an earlier test
    must not count (the database cache's table is not flushed with the others)."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def cache_url(request) -> str:
    """CACHE_URL for a gunicorn relay, from `parametrize(..., indirect=True)`: "" for the
    database cache, or a Redis database, emptied first (skipped without Redis)."""
    url = request.param
    if url:
        redis = pytest.importorskip("redis")
        try:
            redis.Redis.from_url(url).flushdb()
        except redis.ConnectionError:
            pytest.skip("no Redis")
    return url


def settle(timeout: float = 10.0) -> None:
    """Wait until the server has completed every audit row it opened.

    The server finishes a row a moment after the client has read the last byte;
    flushing the test database under it would deadlock on PostgreSQL.
    """
    from audit_app.models import ApiCall, Outcome

    deadline = time.monotonic() + timeout
    while ApiCall.objects.filter(outcome=Outcome.PENDING).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture
def relay_url(live_server, upstream, shipped_prices) -> Iterator[str]:
    """Base URL of the relay on a real socket (Django's threaded live server)."""
    yield live_server.url
    settle()


@pytest.fixture
def user(db, django_user_model):
    return django_user_model.objects.create_user("alice", password="not-used-here")


@pytest.fixture
def issue_key(db, django_user_model):
    from proxy_app.models import RelayKey

    def issue(username: str = "alice", **kwargs) -> tuple[RelayKey, str]:
        owner, _ = django_user_model.objects.get_or_create(username=username)
        return RelayKey.issue(owner, **kwargs)

    return issue


@pytest.fixture
def relay_key(issue_key) -> str:
    return issue_key()[1]


@pytest.fixture
def sdk(relay_url: str, relay_key: str) -> openai.OpenAI:
    """The official SDK, pointed at the relay with a relay key, as staff tools are."""
    return openai.OpenAI(base_url=f"{relay_url}/v1", api_key=relay_key, max_retries=0, timeout=30)


def free_port(*taken: int) -> int:
    """A port nothing listens on now, and not one of `taken` (picked but not bound yet:
    the kernel may hand the same free port out twice)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


def database_url_for_subprocess() -> str:
    """The test database, as a DATABASE_URL another process can open."""
    from django.db import connection

    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    return f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


class GunicornRelay:
    """The relay under real gunicorn (gevent workers), as in production."""

    def __init__(self, upstream_url: str, workers: int = 1, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "relay_project.settings",
            "DATABASE_URL": database_url_for_subprocess(),
            "OPENAI_BASE_URL": upstream_url,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "SECRET_KEY": "test-only-secret-key",
            "ALLOWED_HOSTS": "*",
            "DEBUG": "false",
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_ACCESSLOG": "",
            "GUNICORN_LOGLEVEL": "warning",
            **env,
        }
        self.log_path = ROOT / "test-artifacts" / f"gunicorn-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GunicornRelay":
        self.log_path.parent.mkdir(exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "relay_project/gunicorn.conf.py",
             "relay_project.wsgi"],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60  # generous: CI machines are shared and slow to fork
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # a worker still importing the app
                time.sleep(0.1)
        self.stop()  # never leave a server behind
        raise RuntimeError("gunicorn did not start in 60 s")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # quick shutdown: tests need no graceful drain
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_gunicorn(transactional_db, upstream, shipped_prices):
    """Start the relay under gunicorn with extra environment settings; stopped after the test."""
    started: list[GunicornRelay] = []

    def start(**env: str) -> GunicornRelay:
        relay = GunicornRelay(upstream.base_url, **env).start()
        started.append(relay)
        return relay

    yield start
    settle()
    for relay in started:
        relay.stop()


@pytest.fixture
def gunicorn_relay(start_gunicorn) -> GunicornRelay:
    return start_gunicorn()


def finished_calls(count: int = 1, timeout: float = 10.0) -> list:
    """The audit rows, once `count` of them are finished.

    A row is completed when the server closes the response, a moment after
    the client has read the last byte, so tests wait for it.
    """
    from audit_app.models import ApiCall, Outcome

    deadline = time.monotonic() + timeout
    while True:
        rows = list(ApiCall.objects.order_by("started_at", "id"))
        done = [r for r in rows if r.outcome != Outcome.PENDING]
        if len(done) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def finished_call():
    """The only audit row, once it is finished."""
    rows = finished_calls(1)
    assert len(rows) == 1, rows
    return rows[0]
