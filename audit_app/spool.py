"""A local journal for audit writes the database refused.

When the database fails after a call went upstream, its row must not be lost:
the write is appended here (one JSON line, a single O_APPEND write, so
workers and greenlets never interleave) and `reconcile_calls` replays it once
the database is back.

Guarantees (docs/accounting.md):

- Replay applies each journaled write exactly once, whatever is killed when.
  Every entry is idempotent against the database (a completion only finishes a
  row still pending or interrupted; an insert is skipped when a row with its
  relay request id exists), so re-reading a work file that a killed replay left
  behind applies nothing twice. Replays take an exclusive lock (flock, released
  by the kernel when a replayer dies), so two at once never interleave: the
  second reports the journal busy and does nothing.
- A full disk does not lose the journal: a reserve file of
  RELAY_AUDIT_SPOOL_RESERVE_BYTES (64 MiB by default: some 80,000 entries of the
  830 bytes a streamed chat completion's entry measured) is
  kept next to it; when a write fails with ENOSPC the reserve is given up and
  the write retried into the space it freed. `reconcile_calls` recreates the
  reserve once there is room again.
"""
from __future__ import annotations

import errno
import fcntl
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
_RESERVE_CHUNK = 1024 * 1024


class JournalBusy(Exception):
    """Another process is replaying the journal."""


class Disk:
    """The journal's storage calls, in one place: the seam a test uses to make a disk
    full (ENOSPC) without root; everything around it is the production path."""

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def reserve(self, target: Path, size: int) -> None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)  # real blocks, not a sparse file
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                zeros = b"\0" * _RESERVE_CHUNK
                for _ in range(0, size, _RESERVE_CHUNK):
                    self.write(fd, zeros)
            os.fsync(fd)
        finally:
            os.close(fd)


disk = Disk()


def path() -> Path:
    return Path(settings.RELAY_AUDIT_SPOOL)


def reserve_path() -> Path:
    p = path()
    return p.with_name(p.name + ".reserve")


def _work_path() -> Path:
    p = path()
    return p.with_suffix(p.suffix + ".replaying")


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


def ensure_reserve() -> bool:
    """Create the reserve file if it is missing; False if the disk has no room for it."""
    size = getattr(settings, "RELAY_AUDIT_SPOOL_RESERVE_BYTES", 64 * 1024 * 1024)
    target = reserve_path()
    if size <= 0 or (target.exists() and target.stat().st_size >= size):
        return True
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        disk.reserve(target, size)
        return True
    except OSError as exc:
        log.warning("audit: could not reserve %s bytes for the journal: %s", size, exc)
        target.unlink(missing_ok=True)
        return False


def _release_reserve() -> bool:
    try:
        reserve_path().unlink()
    except FileNotFoundError:
        return False
    log.error("audit: the journal's disk is full; its reserve was released to keep audit writes")
    return True


def append(entry: dict[str, Any]) -> bool:
    line = (json.dumps(entry, default=_default, separators=(",", ":")) + "\n").encode()
    for attempt in (1, 2):
        try:
            path().parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                written = disk.write(fd, line)
                if written != len(line):  # a partial line on a full disk: end it, the line is torn
                    disk.write(fd, b"\n")
                    raise OSError(errno.ENOSPC, "short write")
            finally:
                os.close(fd)
            return True
        except OSError as exc:
            if attempt == 1 and exc.errno == errno.ENOSPC and _release_reserve():
                continue
            log.exception("audit: could not journal a write either; it is lost")
            return False
    return False


def replay(apply: Callable[[dict[str, Any]], None]) -> tuple[int, int]:
    """Apply every journaled entry; entries that fail again stay journaled.

    `apply` must be idempotent (see the module docstring): a replay killed part-way
    leaves its work file, and the next replay applies it again from the start.
    Raises JournalBusy when another replay holds the lock.
    """
    source, work = path(), _work_path()
    if not source.exists() and not work.exists():
        return 0, 0
    source.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(source.with_name(source.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalBusy() from None
        applied = kept = 0
        # A work file left by a replay that died is finished first; then new entries.
        for _ in range(2):
            if not work.exists():
                if not source.exists():
                    break
                os.replace(source, work)  # new writes start a fresh journal meanwhile
            a, k = _replay_file(work, apply)
            applied, kept = applied + a, kept + k
        return applied, kept
    finally:
        os.close(lock_fd)  # releases the lock


def _replay_file(work: Path, apply: Callable[[dict[str, Any]], None]) -> tuple[int, int]:
    applied = kept = 0
    for raw in _lines(work):
        try:
            entry = json.loads(raw, object_hook=_hook)
        except ValueError:
            log.error("audit: skipped a torn journal line (%d bytes)", len(raw))
            continue
        try:
            apply(entry)
            applied += 1
        except Exception:  # noqa: BLE001 - keep it for the next run, whatever went wrong
            log.exception("audit: journaled write failed again; kept")
            append(entry)  # back into the live journal at once: memory stays bounded
            kept += 1
    work.unlink()
    return applied, kept


def _lines(p: Path) -> Iterator[str]:
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield line
