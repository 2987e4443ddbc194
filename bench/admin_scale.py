"""Admin pages at scale: server time with N (default 1,000,000) ApiCall rows, on SQLite and PostgreSQL.

    .venv/bin/python bench/admin_scale.py                  # 1M calls, both databases
    .venv/bin/python bench/admin_scale.py --calls 100000 --databases sqlite
    .venv/bin/python bench/admin_scale.py --reuse          # measure again without re-seeding

For each database: a fresh one (SQLite: bench/results/relay_admin_bench.sqlite3;
PostgreSQL: the database `relay_admin_bench` on BENCH_POSTGRES_URL's server,
dropped and created), `migrate`, `seed_demo --calls N`, then each page is
requested with Django's test Client in a separate process (no network, so the
time is the server's: view, queries, template), one warm-up then the median of
--runs. The dashboard is measured when /admin/dashboard/ exists. Target: 500 ms.
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
DB = ScratchDatabase("relay_admin_bench")  # not bench/procs.py's relay_bench: benchmarks may run side by side
TARGET_MS = 500


def database_url(vendor: str) -> str:
    return DB.url(vendor)


def fresh_database(vendor: str) -> None:
    DB.fresh(vendor)


def manage(vendor: str, *args: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url(vendor), "DJANGO_SETTINGS_MODULE": "tests.settings",
           "DATABASE_POOL": "false"}
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, check=True, cwd=ROOT)


def seed(vendor: str, calls: int) -> float:
    fresh_database(vendor)
    manage(vendor, "migrate", "-v", "0")
    manage(vendor, "createcachetable")
    began = time.monotonic()
    manage(vendor, "seed_demo", "--calls", str(calls))
    return time.monotonic() - began


def measure(vendor: str, runs: int) -> dict[str, float | None]:
    # As served: with the PostgreSQL connection pool the production settings use.
    env = {**os.environ, "DATABASE_URL": database_url(vendor), "DJANGO_SETTINGS_MODULE": "tests.settings"}
    manage(vendor, "migrate", "-v", "0")  # a reused database may predate the code's latest migrations
    out = subprocess.run([sys.executable, __file__, "--measure", "--runs", str(runs)], env=env,
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"{vendor}: measuring failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the measuring process ------------------------------------------------------------


def pages() -> list[tuple[str, str]]:
    from django.contrib.auth import get_user_model

    from audit_app.models import ApiCall, BatchRecord
    from proxy_app.models import RelayKey

    newest = ApiCall.objects.order_by("-started_at").values("pk", "started_at", "relay_request_id").first()
    oldest_pk = ApiCall.objects.order_by("started_at").values_list("pk", flat=True).first()
    alice = get_user_model().objects.get(username="alice")
    day = newest["started_at"].date()
    week_ago = day.toordinal() - 7
    from datetime import date

    key_pk = RelayKey.objects.filter(owner=alice).values_list("pk", flat=True).first()
    batch_pk = (BatchRecord.objects.filter(request_failed__gt=0).order_by("-request_failed")
                .values_list("pk", flat=True).first() or BatchRecord.objects.values_list("pk", flat=True).first())

    return [
        ("calls: changelist", "/admin/audit_app/apicall/"),
        ("calls: filter by model", "/admin/audit_app/apicall/?model__exact=gpt-4o"),
        ("calls: filter by user", f"/admin/audit_app/apicall/?user__id__exact={alice.pk}"),
        ("calls: filter by outcome", "/admin/audit_app/apicall/?outcome__exact=upstream_error"),
        ("calls: last 7 days + family", f"/admin/audit_app/apicall/?started_at__gte={date.fromordinal(week_ago)}"
                                        "&family__exact=embeddings"),
        ("calls: unpriced, 30 days", f"/admin/audit_app/apicall/?unpriced__exact=1"
                                     f"&started_at__gte={date.fromordinal(day.toordinal() - 30)}"),
        ("calls: date hierarchy, a month", f"/admin/audit_app/apicall/?started_at__year={day.year}"
                                           f"&started_at__month={day.month}"),
        ("calls: date hierarchy, a day", f"/admin/audit_app/apicall/?started_at__year={day.year}"
                                         f"&started_at__month={day.month}&started_at__day={day.day}"),
        ("calls: search a request id", f"/admin/audit_app/apicall/?q={newest['relay_request_id']}"),
        ("calls: search a username", "/admin/audit_app/apicall/?q=alice"),
        ("call: change page (newest)", f"/admin/audit_app/apicall/{newest['pk']}/change/"),
        ("call: change page (oldest)", f"/admin/audit_app/apicall/{oldest_pk}/change/"),
        ("calls: CSV export, first bytes", "/admin/audit_app/apicall/export.csv"),
        ("usage (daily): changelist", "/admin/audit_app/usagedaily/"),
        ("batch results: changelist", "/admin/audit_app/batchresult/"),
        ("keys: changelist", "/admin/proxy_app/relaykey/"),
        ("dashboard", "/admin/dashboard/"),
        # The daily tools (issue 16): filters, totals, errors and latency, budgets.
        ("calls: totals from rollups (user, 30 d)", f"/admin/audit_app/apicall/?user__id__exact={alice.pk}"
                                                    f"&started_at__gte={date.fromordinal(day.toordinal() - 30)}"),
        ("calls: totals capped (5xx)", "/admin/audit_app/apicall/?status_class=5xx"),
        ("calls: errors only, 7 days", f"/admin/audit_app/apicall/?outcome_class=error"
                                       f"&started_at__gte={date.fromordinal(week_ago)}"),
        ("calls: slower than 5 s", "/admin/audit_app/apicall/?duration_ms__gte=5000"),
        ("dashboard: 30 d, user filter", f"/admin/dashboard/?period=30d&user__id__exact={alice.pk}"),
        ("dashboard: last month, model", "/admin/dashboard/?period=last-month&model__exact=gpt-4o-mini"),
        ("dashboard: key filter", f"/admin/dashboard/?period=30d&key__id__exact={key_pk}"),
        ("errors: this month", "/admin/errors/"),
        ("errors: 30 days", "/admin/errors/?period=30d"),
        ("errors: yesterday, model", "/admin/errors/?period=yesterday&model__exact=gpt-4o-mini"),
        ("usage (daily): with totals, model", "/admin/audit_app/usagedaily/?model__exact=gpt-4o-mini"),
        ("batches: with failures", "/admin/audit_app/batchrecord/?failures=yes"),
        ("batch: change page (failures)", f"/admin/audit_app/batchrecord/{batch_pk}/change/"),
        ("keys: changelist with spend", "/admin/proxy_app/relaykey/"),
    ]


def run_measure(runs: int) -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    admin, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(admin)
    results: dict[str, float | None] = {}
    for name, url in pages():
        times = []
        for i in range(runs + 1):
            began = time.perf_counter()
            response = client.get(url)
            if response.streaming:
                next(iter(response.streaming_content))  # time to the first bytes of the export
                response.close()
            elapsed = (time.perf_counter() - began) * 1000
            if response.status_code == 404 and name == "dashboard":
                break
            if response.status_code != 200:
                raise SystemExit(f"{name}: {url} answered {response.status_code}")
            if i:  # the first request warms caches and connections
                times.append(elapsed)
        results[name] = round(statistics.median(times), 1) if times else None
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=5, help="measured requests per page (median)")
    parser.add_argument("--reuse", action="store_true", help="measure the existing bench databases, no seeding")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.measure:
        run_measure(args.runs)
        return
    vendors = [v.strip() for v in args.databases.split(",") if v.strip()]
    table: dict[str, dict[str, float | None]] = {}
    for vendor in vendors:
        if not args.reuse:
            print(f"{vendor}: seeding {args.calls:,} calls …", flush=True)
            took = seed(vendor, args.calls)
            print(f"{vendor}: seeded in {took:.0f}s", flush=True)
        table[vendor] = measure(vendor, args.runs)
        print(f"{vendor}: {json.dumps(table[vendor])}", flush=True)
    names = list(next(iter(table.values())).keys())
    labels = {"sqlite": "SQLite ms", "postgresql": "PostgreSQL ms"}
    header = f"{'page':40} " + " ".join(f"{labels.get(v, v):>14}" for v in vendors) + f" {'target ms':>10}"
    print(f"\nAdmin server time, median of {args.runs} after a warm-up, {args.calls:,} calls")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name in names:
        cells = []
        for vendor in vendors:
            value = table[vendor].get(name)
            cells.append(f"{'n/a':>14}" if value is None else f"{value:>14.1f}")
            worst = max(worst, value or 0)
        print(f"{name:40} " + " ".join(cells) + f" {TARGET_MS:>10}")
    verdict = "all pages under target" if worst < TARGET_MS else "SOME PAGES OVER TARGET"
    print(f"slowest page: {worst:.1f} ms — {verdict}")
    DB.sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    (DB.sqlite_file.parent / "admin_scale.json").write_text(json.dumps({"calls": args.calls, "ms": table}, indent=2))
    write_doc(table, vendors, args.calls, args.runs)


def write_doc(table: dict[str, dict[str, float | None]], vendors: list[str], calls: int, runs: int) -> None:
    """The figures as a Markdown table, docs/admin-scale.md (linked from docs/admin.md)."""
    import platform

    names = list(next(iter(table.values())).keys())
    lines = [
        "# Admin pages at scale (bench/admin_scale.py)",
        "",
        f"Server time per page (Django test client, no network), median of {runs} requests after a "
        f"warm-up, on {calls:,} seeded calls (`seed_demo`). Target: every page under {TARGET_MS} ms. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, shared with other work while measured.",
        "",
        "| page | " + " | ".join(f"{v} ms" for v in vendors) + " |",
        "|---|" + "---:|" * len(vendors),
    ]
    for name in names:
        cells = ["n/a" if table[v].get(name) is None else f"{table[v][name]:.1f}" for v in vendors]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (ROOT / "docs" / "admin-scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
