"""Text that leaves the relay for a log, an audit row or the admin: made safe to
store and free of secrets. No Django imports: gunicorn's logger uses it too.
"""
from __future__ import annotations

import re

# Relay keys (tr-…), OpenAI keys (sk-…, sk-proj-…, sk-admin-…) and OpenAI's masked
# echo of one in a 401 ("sk-proj-****…abcd"): enough of each is left to tell
# which kind it was, none of it to tell which key.
_KEY_LIKE = re.compile(r"\b(tr|sk|rk|sess)-[A-Za-z0-9_\-*.]{6,}")
# Query parameters that carry a key when someone puts one in the URL.
KEY_PARAMS = frozenset({"api_key", "api-key", "apikey", "key", "access_token", "relay_key",
                        "x-relay-key", "authorization", "token"})
_KEY_PARAM = re.compile(
    r"((?:^|[?&;])(?:" + "|".join(re.escape(p) for p in sorted(KEY_PARAMS)) + r")=)[^&;\s\"]*",
    re.IGNORECASE)


def scrub_keys(text: str) -> str:
    """`text` with every key-like string replaced by its kind and `[redacted]`."""
    if "-" not in text and "=" not in text:
        return text
    return _KEY_PARAM.sub(r"\1[redacted]", _KEY_LIKE.sub(r"\1-[redacted]", text))


def storable(text: str) -> str:
    """`text` as PostgreSQL can store it: no NUL, no lone surrogate (each becomes '?').

    A NUL in a model name once left a row pending after a 200, and the journal
    replay then failed on it on every run.
    """
    if "\x00" in text:
        text = text.replace("\x00", "?")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text
