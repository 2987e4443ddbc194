#!/usr/bin/env python3
"""Back up the relay's database while it runs, and restore a backup into a fresh database.

    scripts/backup_db.py backup  DEST           # DATABASE_URL from the environment
    scripts/backup_db.py backup  DIRECTORY --keep 14   # relay-<UTC time>.backup, 14 newest kept
    scripts/backup_db.py restore SRC --database-url URL_OF_A_NEW_EMPTY_DATABASE

SQLite: an online copy through SQLite's backup API (Python's sqlite3.Connection.backup),
taken inside one read transaction, so it is a consistent snapshot that includes what is
still in the -wal file; relay workers keep writing meanwhile (WAL readers do not block
writers). Copying db.sqlite3 with cp is NOT a backup: it misses the WAL's committed pages
and can catch a checkpoint half-way. The copy is checked (PRAGMA integrity_check) before it
replaces DEST. Restore copies the file into place; the relay must be stopped.

PostgreSQL: pg_dump's custom format (one consistent snapshot, compressed, restorable table by
table) and pg_restore into an empty database, in one transaction, stopping at the first
error, without the source's owners and grants. The password, if the URL has one, goes to the
tools through PGPASSWORD, never on their command line.

After a restore, run `manage.py verify_audit` against the restored database: it walks the
ledger and proves that every sealed row came back unchanged (docs/operations.md, "Backup").
Standard library only (plus pg_dump/pg_restore for PostgreSQL); exit status 0 on success.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit


def parse(url: str) -> tuple[str, str | Path, str | None]:
    """('sqlite', path, None) or ('postgres', url without password, password)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///relative/db.sqlite3 and sqlite:////absolute/db.sqlite3, as django-environ reads them.
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path or path == ":memory:":
            raise SystemExit("backup_db: an in-memory SQLite database cannot be backed up")
        return "sqlite", Path(path), None
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        password = unquote(parts.password) if parts.password else None
        netloc = parts.hostname or ""
        if parts.username:
            netloc = f"{unquote(parts.username)}@{netloc}"
        if parts.port:
            netloc += f":{parts.port}"
        return "postgres", urlunsplit(("postgresql", netloc, parts.path, parts.query, "")), password
    raise SystemExit(f"backup_db: unsupported DATABASE_URL scheme {parts.scheme!r}")


def _pg_env(password: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    return env


BACKUP_GLOB = "relay-*.backup"


def backup(url: str, dest: Path, keep: int | None = None) -> Path:
    kind, where, password = parse(url)
    directory = dest if dest.is_dir() else None
    if directory is not None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        dest = directory / f"relay-{stamp}.backup"
    elif keep is not None:
        raise SystemExit("backup_db: --keep needs DEST to be a directory")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    started = time.monotonic()
    if kind == "sqlite":
        if not Path(where).exists():
            raise SystemExit(f"backup_db: no database at {where}")
        # A read-write connection (it writes nothing): a read-only one cannot open a WAL
        # database whose -shm file is missing.
        source = sqlite3.connect(where, timeout=30)
        target = sqlite3.connect(partial)
        try:
            # pages=-1: the whole database in one step, under one read transaction: a
            # consistent snapshot that writers do not restart (they would, step by step).
            source.backup(target, pages=-1)
            check = target.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise SystemExit(f"backup_db: the copy failed its integrity check: {check}")
        finally:
            target.close()
            source.close()
    else:
        subprocess.run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={partial}",
                        f"--dbname={where}"], env=_pg_env(password), check=True)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    partial.replace(dest)
    print(f"backup_db: backed up {kind} database to {dest} ({dest.stat().st_size} bytes) "
          f"in {time.monotonic() - started:.1f} s")
    if directory is not None and keep is not None:
        # Names sort by time; only after a good backup is written are old ones removed.
        for old in sorted(directory.glob(BACKUP_GLOB))[:-keep]:
            old.unlink()
            print(f"backup_db: removed {old} (keeping the {keep} newest)")
    return dest


def restore(src: Path, url: str) -> None:
    kind, where, password = parse(url)
    if not src.exists():
        raise SystemExit(f"backup_db: no backup at {src}")
    started = time.monotonic()
    if kind == "sqlite":
        target = Path(where)
        leftovers = [p for p in (target, Path(f"{target}-wal"), Path(f"{target}-shm")) if p.exists()]
        if leftovers:
            raise SystemExit(f"backup_db: {', '.join(map(str, leftovers))} exist; restore only into a new "
                             "database (move the old one aside first, with the relay stopped)")
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(src, partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        partial.replace(target)
    else:
        subprocess.run(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
                        f"--dbname={where}", str(src)], env=_pg_env(password), check=True)
    print(f"backup_db: restored {src} into the {kind} database in {time.monotonic() - started:.1f} s; "
          "now run `manage.py verify_audit` against it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backup_db.py", description=__doc__.split("\n\n")[0],
        epilog="DATABASE_URL is read from the environment unless --database-url is given.")
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("backup", help="write a consistent copy of the live database to DEST")
    b.add_argument("dest", type=Path, help="a file, or a directory for a new relay-<UTC time>.backup")
    b.add_argument("--keep", type=int, metavar="N",
                   help="with a directory: then delete all but the N newest relay-*.backup files")
    r = sub.add_parser("restore", help="restore SRC into a new, empty database")
    r.add_argument("src", type=Path)
    for p in (b, r):
        p.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                       help="the database (default: $DATABASE_URL)")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("set DATABASE_URL or pass --database-url")
    try:
        if args.action == "backup":
            if args.keep is not None and args.keep < 1:
                parser.error("--keep must be at least 1")
            backup(args.database_url, args.dest, args.keep)
        else:
            restore(args.src, args.database_url)
    except subprocess.CalledProcessError as exc:
        print(f"backup_db: {exc.cmd[0]} failed with status {exc.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
