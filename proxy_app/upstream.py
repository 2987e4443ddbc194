"""The one HTTP client to OpenAI, shared by every request in a worker process."""
from __future__ import annotations

import http.cookiejar
import os
import threading

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

# urllib3 sends request bodies in blocks of this size; its 16 KiB default
# means 32,000 socket writes for a 500 MB upload.
_SEND_BLOCK = 256 * 1024

_lock = threading.Lock()
_session: requests.Session | None = None
_session_pid: int | None = None


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        kwargs["blocksize"] = _SEND_BLOCK
        super().init_poolmanager(*args, **kwargs)


def session() -> requests.Session:
    """A keep-alive session per process (recreated after fork, never shared across one)."""
    global _session, _session_pid
    pid = os.getpid()
    if _session is None or _session_pid != pid:
        with _lock:
            if _session is None or _session_pid != pid:
                s = requests.Session()
                # Proxy settings and .netrc from the environment must not redirect
                # or re-authenticate the team's key.
                s.trust_env = False
                size = settings.UPSTREAM_POOL_SIZE
                adapter = _Adapter(pool_connections=4, pool_maxsize=size, max_retries=0)
                s.mount("http://", adapter)
                s.mount("https://", adapter)
                s.headers.clear()
                # A shared jar would replay one caller's upstream cookies for everyone.
                s.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
                _session, _session_pid = s, pid
    return _session


def url_for(suffix: str, query_string: str) -> str:
    url = settings.OPENAI_BASE_URL + suffix
    return f"{url}?{query_string}" if query_string else url


def timeouts() -> tuple[float, float]:
    return settings.UPSTREAM_CONNECT_TIMEOUT, settings.UPSTREAM_READ_TIMEOUT


def get(suffix: str, query_string: str = "", *, stream: bool = False, project: str = "") -> requests.Response:
    """The relay's own GET to upstream (a file's purpose, a batch's state, the file list),
    with the team's credentials and nothing of any client's request.

    `project`: the OpenAI project the object lives in (its creator's team's), since
    OpenAI scopes files and batches by project.
    """
    from .headers import upstream_credentials

    return session().get(url_for(suffix, query_string), headers=upstream_credentials(project),
                         timeout=timeouts(), stream=stream)
