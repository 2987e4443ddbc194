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


def team_projects_allowed() -> bool:
    """A project-scoped key (sk-proj-…) is refused by OpenAI with any other project's id,
    so per-team project ids are only sent with a user or service-account key."""
    return not settings.OPENAI_API_KEY.startswith("sk-proj-")


def upstream_credentials(project: str = "") -> dict[str, str]:
    """What every request to upstream carries, relayed or the relay's own (polling, lookups).

    `project`: the caller's team's OpenAI project, which takes the place of OPENAI_PROJECT.
    """
    out = {
        # Upstream compression would hide usage from the observers, and the
        # client<->relay hop is where compression belongs anyway.
        "accept-encoding": "identity",
        "authorization": f"Bearer {settings.OPENAI_API_KEY}",
    }
    if settings.OPENAI_ORGANIZATION:
        out["openai-organization"] = settings.OPENAI_ORGANIZATION
    if project and team_projects_allowed():
        out["openai-project"] = project
    elif settings.OPENAI_PROJECT:
        out["openai-project"] = settings.OPENAI_PROJECT
    return out


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
    return session().get(url_for(suffix, query_string), headers=upstream_credentials(project),
                         timeout=timeouts(), stream=stream)
