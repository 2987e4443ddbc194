"""Django's SQLite backend, with each process reusing its connections.

Django opens a SQLite connection for every request and closes it at the end
(and under gevent every request has its own). Opening one is not cheap: SQLite
reads and parses the whole schema on the first statement, and Django registers
its ~40 SQL functions and runs the init PRAGMAs. That was an eighth of the
relay's CPU per call. Here a closed connection goes back to an idle list of its
process and the next request takes it from there, already set up. Keeping them
open also means a request's close is never the last close of a WAL database,
which would checkpoint, sync and delete the WAL every time
(tests/test_sqlite_wal.py).

A connection is only kept when it is idle: any open transaction is rolled back
first, and one that cannot be, or that Django closes inside an atomic block,
is really closed.

Cursors also remember their placeholder conversions (below).
"""
from __future__ import annotations

import os
import sqlite3
from functools import lru_cache

from django.db.backends.sqlite3 import base

# Idle connections kept per process and database; more than this are closed.
MAX_IDLE = 64

# (pid, database) -> idle connections. The pid keeps a forked child from ever
# using its parent's connections.
_idle: dict[tuple[int, str], list[sqlite3.Connection]] = {}


# Statements longer than this (bulk inserts, long IN lists) are converted each
# time rather than kept.
_CACHED_QUERY_MAX = 8192


@lru_cache(maxsize=512)
def _qmark(query: str) -> str:
    return base.FORMAT_QMARK_REGEX.sub("?", query).replace("%%", "%")


class CursorWrapper(base.SQLiteCursorWrapper):
    """Django rewrites every statement's %s placeholders into SQLite's ? with a
    regular expression on each execute: 3% of the relay's CPU per call, for the
    same few statements over and over."""

    def convert_query(self, query: str, *, param_names=None) -> str:
        if param_names is None and len(query) <= _CACHED_QUERY_MAX:
            return _qmark(query)
        return super().convert_query(query, param_names=param_names)


class DatabaseWrapper(base.DatabaseWrapper):
    def create_cursor(self, name=None):
        return self.connection.cursor(factory=CursorWrapper)

    def _pool_key(self) -> tuple[int, str]:
        return os.getpid(), str(self.settings_dict["NAME"])

    def get_new_connection(self, conn_params: dict) -> sqlite3.Connection:
        if not self.is_in_memory_db():
            idle = _idle.get(self._pool_key())
            while idle:
                try:
                    conn = idle.pop()
                except IndexError:  # taken meanwhile by another thread
                    break
                try:
                    # Cheap (no I/O), and undoes a disable_constraint_checking left behind.
                    conn.execute("PRAGMA foreign_keys = ON")
                except sqlite3.Error:
                    conn.close()
                    continue
                return conn
        return super().get_new_connection(conn_params)

    def _close(self) -> None:
        conn = self.connection
        if conn is None or self.in_atomic_block or self.is_in_memory_db():
            return super()._close()
        try:
            if conn.in_transaction:
                conn.rollback()
        except sqlite3.Error:
            conn.close()
            return
        idle = _idle.setdefault(self._pool_key(), [])
        if len(idle) >= MAX_IDLE:
            conn.close()
        else:
            idle.append(conn)
