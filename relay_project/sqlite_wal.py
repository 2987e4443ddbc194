"""Keep one SQLite connection open per process, so that closing a request's is cheap.

Django closes its SQLite connection at the end of every request (and under
gevent every request has its own). When the last connection to a WAL database
closes, SQLite checkpoints the WAL into the database file, syncs it and deletes
the WAL: at concurrency 1 that happened on every request and was a fifth of the
relay's time. An idle connection that has opened the database (and holds no
transaction, so it blocks no checkpoint) means no request's connection is ever
the last to close; checkpoints then happen as usual, every 1000 pages, in
whichever write crosses the mark.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

_lock = threading.Lock()
_anchors: dict[tuple[int, str], sqlite3.Connection] = {}


def keep_open(sender: Any, connection: Any, **kwargs: Any) -> None:
    """`connection_created` receiver: the first SQLite connection of a process opens the anchor."""
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict["NAME"])
    if name == ":memory:" or name.startswith("file:"):
        return
    key = (os.getpid(), name)
    if key in _anchors:
        return
    with _lock:
        if key not in _anchors:
            anchor = sqlite3.connect(name, check_same_thread=False)
            anchor.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the shared lock
            _anchors[key] = anchor
