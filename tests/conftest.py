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

from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = os.environ["OPENAI_API_KEY"]  # set by tests.settings


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(fake_upstream_server: FakeUpstream, settings) -> FakeUpstream:
    """The fake upstream, reset, with the relay pointed at it."""
    fake_upstream_server.reset()
    settings.OPENAI_BASE_URL = fake_upstream_server.base_url
    return fake_upstream_server


@pytest.fixture
def relay_url(live_server, upstream) -> str:
    """Base URL of the relay on a real socket (Django's threaded live server)."""
    return live_server.url


@pytest.fixture
def user(transactional_db, django_user_model):
    return django_user_model.objects.create_user("alice", password="not-used-here")


@pytest.fixture
def issue_key(transactional_db, django_user_model):
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not start in 30 s")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def gunicorn_relay(transactional_db, upstream) -> Iterator[GunicornRelay]:
    relay = GunicornRelay(upstream.base_url).start()
    yield relay
    relay.stop()
