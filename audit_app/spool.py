"""A local journal for audit writes the database refused.

When the database fails after a call went upstream, its row must not be lost:
the write is appended here (one JSON line, a single O_APPEND write, so
workers and greenlets never interleave) and `reconcile_calls` replays it once
the database is back.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)


def path() -> Path:
    return Path(settings.RELAY_AUDIT_SPOOL)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    raise TypeError(type(value).__name__)


def _hook(obj: dict) -> Any:
    if "$dt" in obj:
        return datetime.fromisoformat(obj["$dt"])
    if "$dec" in obj:
        return Decimal(obj["$dec"])
    return obj


def append(entry: dict[str, Any]) -> bool:
    line = (json.dumps(entry, default=_default, separators=(",", ":")) + "\n").encode()
    try:
        path().parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return True
    except OSError:
        log.exception("audit: could not journal a write either; it is lost")
        return False


def replay(apply: Callable[[dict[str, Any]], None]) -> tuple[int, int]:
    """Apply every journaled entry; entries that fail again stay journaled."""
    source = path()
    if not source.exists():
        return 0, 0
    work = source.with_suffix(source.suffix + ".replaying")
    if not work.exists():
        os.replace(source, work)  # new writes start a fresh journal meanwhile
    applied, kept = 0, []
    for raw in _lines(work):
        try:
            apply(json.loads(raw, object_hook=_hook))
            applied += 1
        except Exception:  # noqa: BLE001 - keep it for the next run, whatever went wrong
            log.exception("audit: journaled write failed again; kept")
            kept.append(raw)
    for raw in kept:
        append(json.loads(raw, object_hook=_hook))
    work.unlink()
    return applied, len(kept)


def _lines(p: Path) -> Iterator[str]:
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield line
