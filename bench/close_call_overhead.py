"""What the errors-and-latency rollup costs on the relay's hot path: time of close_call
(complete the row, price it, add it to its rollups) with and without the CallStatsDaily write.

    .venv/bin/python bench/close_call_overhead.py --calls 2000 --databases sqlite,postgresql

A scratch database per vendor (bench/scratch_db.py, `relay_close_bench`), migrated; then
blocks of --block calls alternate between the two variants (so that machine noise hits
both alike) and the median per-call time of each is printed. "without" replaces the stats
upsert with nothing and, on PostgreSQL, the completing statement with the one before
issue 16 (UPDATE + usage upsert, no stats CTE).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.scratch_db import ScratchDatabase  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DB = ScratchDatabase("relay_close_bench")


def measure(calls: int, block: int) -> dict[str, float]:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection

    from audit_app import call_rows, latency, recorder, rollups
    from audit_app.models import Outcome
    from audit_app.usage import Usage
    from proxy_app.models import RelayKey

    user = get_user_model().objects.create_user("bench")
    key = RelayKey.issue(user)[0]
    real_upsert, real_complete = latency.upsert, call_rows.complete_with_rollup

    def old_complete(call_id, values, bucket, stats):
        row = call_rows._db_values(values)
        done = f"done AS ({call_rows._update_sql(connection.vendor, tuple(row), False)} RETURNING 1)"
        sql = f"WITH {done} " + rollups.UPSERT_SELECT.format(source="done")
        with connection.cursor() as cursor:
            cursor.execute(sql, [*row.values(), call_id, Outcome.PENDING, *bucket])
            return cursor.rowcount == 1

    variants = {
        "with stats": (real_upsert, real_complete),
        "without stats": (lambda values: None, old_complete),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    done = 0
    while done < calls:
        for name, (upsert, complete) in variants.items():
            latency.upsert, call_rows.complete_with_rollup = upsert, complete
            for _ in range(block):
                ctx = recorder.CallContext(method="POST", path="/v1/responses", family="responses",
                                           key=key, user=user)
                call_id = recorder.open_call(ctx)
                ctx.first_byte_at = time.monotonic()
                began = time.perf_counter()
                recorder.close_call(call_id, ctx, usage=Usage(input_tokens=12, output_tokens=7, total_tokens=19),
                                    response_model="gpt-4o-mini", outcome=Outcome.OK, status=200,
                                    upstream_status=200)
                times[name].append((time.perf_counter() - began) * 1000)
        done += 2 * block
    return {name: round(statistics.median(values), 4) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.calls, args.block)))
        return
    for vendor in [v.strip() for v in args.databases.split(",") if v.strip()]:
        DB.fresh(vendor)
        env = {**os.environ, "DATABASE_URL": DB.url(vendor), "DJANGO_SETTINGS_MODULE": "tests.settings",
               "DATABASE_POOL": "false"}
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v", "0"], env=env, check=True, cwd=ROOT)
        out = subprocess.run([sys.executable, __file__, "--measure", "--calls", str(args.calls), "--block",
                              str(args.block)], env=env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr[-3000:])
            raise SystemExit(f"{vendor}: measuring failed")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        extra = result["with stats"] - result["without stats"]
        print(f"{vendor}: close_call median {result['with stats']:.3f} ms with the stats rollup, "
              f"{result['without stats']:.3f} ms without ({extra:+.3f} ms per call)", flush=True)


if __name__ == "__main__":
    main()
