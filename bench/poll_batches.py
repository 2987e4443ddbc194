"""How long one `poll_batches` pass takes over N (default 1,000) open batches.

    .venv/bin/python bench/poll_batches.py                    # 1,000 batches, SQLite and PostgreSQL
    .venv/bin/python bench/poll_batches.py --batches 200 --databases sqlite

For each database: a fresh one (SQLite: bench/results/poll_batches.sqlite3;
PostgreSQL: `relay_poll_bench` on BENCH_POSTGRES_URL's server), the fake
upstream on 127.0.0.1 holding N batches, and the relay's records of them.
Two passes are timed, as `manage.py poll_batches` runs them (same code,
default concurrency 16):

1. refresh: every batch is in progress upstream; each is fetched and updated;
2. finish: every batch has completed with an output file of --lines results
   (and one error line); each is fetched, its files streamed and its results
   counted at batch prices.

The fake upstream answers each request after --latency seconds (default
0.05, a fast day for api.openai.com), so the figures show what the
concurrency buys. Target: a pass under 30 s.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.scratch_db import ScratchDatabase  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DB = ScratchDatabase("relay_poll_bench")
TARGET_S = 30.0


def database_url(vendor: str) -> str:
    return DB.url(vendor)


def fresh_database(vendor: str) -> None:
    DB.fresh(vendor)


def serve_fake(conn, latency: float) -> None:
    """The fake upstream in a process of its own, as OpenAI is: it must not share the
    poller's interpreter (and GIL). Commands arrive over a pipe."""
    sys.path.insert(0, str(ROOT))
    from tests.fake_openai import FakeUpstream

    fake = FakeUpstream().start()
    fake.latency = latency
    conn.send(fake.base_url)
    while True:
        command, payload = conn.recv()
        if command == "add":
            for obj in payload:
                fake.batches[obj["id"]] = obj
        elif command == "complete":
            ids, lines = payload
            for batch_id in ids:
                fake.advance_batch(
                    batch_id, "completed", completed=lines, failed=1,
                    output_lines=[fake.make_batch_output_line(f"{batch_id}-{n}", "gpt-4o-mini", 900, 300, 100)
                                  for n in range(lines)],
                    error_lines=[fake.make_batch_error_line(f"{batch_id}-err")])
        else:
            fake.stop()
            conn.send("stopped")
            return
        conn.send("ok")


def run_one(args: argparse.Namespace) -> None:
    """In a process of its own, with DATABASE_URL pointing at the fresh database."""
    import multiprocessing

    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from audit_app.batch_polling import due, poll
    from audit_app.batch_records import record_batch
    from audit_app.models import BatchResult
    from proxy_app.models import RelayKey

    call_command("migrate", verbosity=0)
    ours, theirs = multiprocessing.Pipe()
    upstream = multiprocessing.get_context("spawn").Process(target=serve_fake, args=(theirs, args.latency))
    upstream.start()
    settings.OPENAI_BASE_URL = ours.recv()

    def tell(command: str, payload=None) -> None:
        ours.send((command, payload))
        ours.recv()

    owner = get_user_model().objects.create(username="bench")
    key, _ = RelayKey.issue(owner, name="bench")
    now = int(time.time())
    objs = [{"id": f"batch_{i:06d}", "object": "batch", "endpoint": "/v1/chat/completions",
             "completion_window": "24h", "status": "in_progress", "input_file_id": f"file-in-{i}",
             "created_at": now, "in_progress_at": now,
             "request_counts": {"total": args.lines + 1, "completed": 0, "failed": 0}}
            for i in range(args.batches)]
    tell("add", objs)
    for obj in objs:
        record_batch(dict(obj, status="validating"), user=owner, key=key)

    def timed_pass(name: str) -> None:
        pks = due()
        began = time.monotonic()
        summary = poll(pks, args.concurrency)
        elapsed = time.monotonic() - began
        verdict = "PASS" if elapsed < TARGET_S else "MISS"
        print(f"  {connection.vendor:<10} {name:<8} {len(pks):>6} batches  {elapsed:7.2f} s  "
              f"{len(pks) / elapsed:7.1f} batches/s  target < {TARGET_S:.0f} s  {verdict}   [{summary.line()}]",
              flush=True)

    timed_pass("refresh")
    tell("complete", ([obj["id"] for obj in objs], args.lines))
    timed_pass("finish")
    tell("stop")
    upstream.join(10)
    expected = args.batches * (args.lines + 1)
    stored = BatchResult.objects.count()
    assert stored == expected, f"{stored} results stored, {expected} expected"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=10, help="results per batch output file (default 10)")
    parser.add_argument("--latency", type=float, default=0.05, help="upstream seconds per answer (default 0.05)")
    parser.add_argument("--concurrency", type=int, default=16, help="as poll_batches --concurrency (default 16)")
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--run-one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        return run_one(args)
    print(f"poll_batches: one pass over {args.batches} open batches, upstream latency {args.latency * 1000:.0f} ms, "
          f"concurrency {args.concurrency}")
    for vendor in args.databases.split(","):
        fresh_database(vendor)
        env = {**os.environ, "DATABASE_URL": database_url(vendor), "DJANGO_SETTINGS_MODULE": "tests.settings",
               "DATABASE_POOL": "false"}
        subprocess.run([sys.executable, __file__, "--run-one", *sys.argv[1:]], env=env, check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
