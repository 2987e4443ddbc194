"""A scratch database per benchmark, on SQLite (a file under bench/results/) or on the local
PostgreSQL server (BENCH_POSTGRES_URL), dropped and created afresh for each run."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PG_SERVER = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


@dataclass(frozen=True)
class ScratchDatabase:
    name: str  # different per benchmark, so that benchmarks may run side by side

    @property
    def sqlite_file(self) -> Path:
        return RESULTS / f"{self.name}.sqlite3"

    def url(self, vendor: str) -> str:
        if vendor == "sqlite":
            return f"sqlite:///{self.sqlite_file}"
        return PG_SERVER.rsplit("/", 1)[0] + f"/{self.name}"

    def fresh(self, vendor: str) -> None:
        if vendor == "sqlite":
            RESULTS.mkdir(parents=True, exist_ok=True)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.sqlite_file}{suffix}").unlink(missing_ok=True)
            return
        import psycopg

        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {self.name}")
