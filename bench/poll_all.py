"""How long one poller pass (`poll_batches`) takes over N (default 1,000) mixed open jobs:
a third batches, a third background Responses, a third video jobs.

    .venv/bin/python bench/poll_all.py                       # 1,000 jobs, SQLite and PostgreSQL
    .venv/bin/python bench/poll_all.py --jobs 90 --databases sqlite

For each database: a fresh one (bench/scratch_db.py), the fake upstream in a
process of its own holding the jobs, and the relay's records of them, owned
by one user and key. Two passes are timed, as `manage.py poll_batches` runs
them (batches, then background responses and videos; default concurrency 16):

1. refresh: every job is in progress upstream; each is fetched (nothing billed);
2. finish: every job has ended; batches' output files (--lines results) are
   streamed and counted, responses and videos are billed once.

The fake answers each request after --latency seconds (default 0.05). The
run checks that every job was billed exactly once, and writes its figures to
docs/poller-bench.md. Target: a pass under 30 s on both databases.
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
DB = ScratchDatabase("relay_poll_all_bench")
TARGET_S = 30.0
REPORT = ROOT / "docs" / "poller-bench.md"


def serve_fake(conn, latency: float) -> None:
    """The fake upstream in its own process, so it does not share the poller's GIL."""
    sys.path.insert(0, str(ROOT))
    from tests.fake_openai import FakeUpstream

    fake = FakeUpstream().start()
    fake.latency = latency
    conn.send(fake.base_url)
    while True:
        command, payload = conn.recv()
        if command == "add":
            batches, responses, videos = payload
            for obj in batches:
                fake.batches[obj["id"]] = obj
            for obj in responses:
                fake.responses[obj["id"]] = obj
            for obj in videos:
                fake.videos[obj["id"]] = obj
        elif command == "finish":
            lines = payload
            for batch_id in list(fake.batches):
                fake.advance_batch(
                    batch_id, "completed", completed=lines,
                    output_lines=[fake.make_batch_output_line(f"{batch_id}-{n}", "gpt-4o-mini", 900, 300, 100)
                                  for n in range(lines)])
            for rid in list(fake.responses):
                fake.advance_response(rid, "completed")
            for vid in list(fake.videos):
                fake.advance_video(vid, "completed")
        else:
            fake.stop()
            conn.send("stopped")
            return
        conn.send("ok")


def run_one(args: argparse.Namespace) -> str:
    import multiprocessing

    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Sum

    from audit_app.polling import due_batches, due_jobs, poll, poll_job
    from audit_app.batch_records import record_batch
    from audit_app.jobs import record_job
    from audit_app.models import AsyncJob, UsageDaily
    from proxy_app.models import RelayKey

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)  # as scripts/serve does: prices, budgets and limits use it
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
    n = args.jobs // 3
    batches = [{"id": f"batch_{i:06d}", "object": "batch", "endpoint": "/v1/chat/completions",
                "completion_window": "24h", "status": "in_progress", "input_file_id": f"file-in-{i}",
                "created_at": now, "in_progress_at": now,
                "request_counts": {"total": args.lines, "completed": 0, "failed": 0}} for i in range(n)]
    responses = [{"id": f"resp_{i:06d}", "object": "response", "model": "gpt-4o-mini", "background": True,
                  "status": "in_progress", "created_at": now, "output": [], "usage": None} for i in range(n)]
    videos = [{"id": f"video_{i:06d}", "object": "video", "model": "sora-2", "status": "in_progress",
               "progress": 50, "seconds": "4", "size": "720x1280", "created_at": now}
              for i in range(args.jobs - 2 * n)]
    tell("add", (batches, responses, videos))
    for obj in batches:
        record_batch(dict(obj, status="validating"), user=owner, key=key)
    for obj in responses + videos:
        record_job(dict(obj, status="queued"), user=owner, key=key)

    lines = []

    def timed_pass(name: str) -> None:
        began = time.monotonic()
        batch_pks, job_pks = due_batches(), due_jobs()
        summaries = [poll(batch_pks, args.concurrency),
                     poll(job_pks, args.concurrency, one=poll_job, what="jobs")]
        elapsed = time.monotonic() - began
        total = len(batch_pks) + len(job_pks)
        verdict = "PASS" if elapsed < TARGET_S else "MISS"
        line = (f"| {connection.vendor} | {name} | {len(batch_pks)} + {len(job_pks)} | {elapsed:.2f} s | "
                f"{total / elapsed:.1f}/s | {verdict} |")
        print(line, "  batches:", summaries[0].line(), " jobs:", summaries[1].line(), flush=True)
        lines.append(line)

    timed_pass("refresh")
    tell("finish", args.lines)
    timed_pass("finish")
    tell("stop")
    upstream.join(10)
    billed = AsyncJob.objects.filter(counted_at__isnull=False).count()
    assert billed == len(responses) + len(videos), f"{billed} jobs billed"
    # Each response 0.0000057, each 4-second sora-2 video 0.40, each batch result at batch prices.
    cost = UsageDaily.objects.aggregate(c=Sum("cost"))["c"]
    print(f"  billed {billed} jobs once each; rollup cost {cost}", flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="open jobs, a third of each kind (default 1000)")
    parser.add_argument("--lines", type=int, default=10, help="results per batch output file (default 10)")
    parser.add_argument("--latency", type=float, default=0.05, help="upstream seconds per answer (default 0.05)")
    parser.add_argument("--concurrency", type=int, default=16, help="as poll_batches --concurrency (default 16)")
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--run-one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print("@@" + run_one(args).replace("\n", "@@"))
        return
    header = (f"One poller pass over {args.jobs} mixed open jobs (batches + background responses and videos), "
              f"upstream latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}")
    print(header)
    rows = []
    for vendor in args.databases.split(","):
        DB.fresh(vendor)
        env = {**os.environ, "DATABASE_URL": DB.url(vendor), "DJANGO_SETTINGS_MODULE": "tests.settings",
               "DATABASE_POOL": "false"}
        out = subprocess.run([sys.executable, __file__, "--run-one", *sys.argv[1:]], env=env, check=True,
                             cwd=ROOT, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("@@"):
                rows += [r for r in line.split("@@") if r]
            else:
                print(line)
    REPORT.write_text(
        "# Poller benchmark (bench/poll_all.py)\n\n"
        f"{header}; written by the last run on {time.strftime('%Y-%m-%d', time.gmtime())}.\n"
        "Target: a pass under 30 s on both databases.\n\n"
        "| database | pass | batches + jobs | time | rate | target |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n")
    print(f"written to {REPORT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
