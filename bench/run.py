"""The relay's benchmark: what it adds to every call, measured against the direct call in the same run.

Starts the fake upstream (bench/upstream.py, its own process) and the relay under
gunicorn with production settings (relay_project.settings, DEBUG off, gevent
workers), on SQLite and/or PostgreSQL (a fresh database `relay_bench` on
127.0.0.1:5432), and LiteLLM's proxy when it is installed (bench/.venv-litellm or
`litellm` on PATH), all with the same number of workers. Then measures:

  json      a small JSON call (POST /v1/chat/completions), direct vs relay (vs LiteLLM):
            p50/p90/p99 at concurrency 1, requests/s at concurrency 32
  sse       a streamed Response with paced events: added time to first event,
            added delay per event
  streams   500 streams held open at once: success rate, total RSS of the relay's
            processes (master + workers)
  transfer  512 MiB upload and download: MB/s direct vs relay, peak RSS growth of a worker

and prints one table, each figure next to its target. The load generator is an
asyncio client (bench/client.py: raw keep-alive sockets, requests encoded once)
in this process; it shares the machine's cores with the relay and the upstream.
Only 127.0.0.1 is contacted; every part is bounded in requests and seconds.

    ./scripts/bench                     # everything, SQLite and PostgreSQL
    ./scripts/bench --quick             # a smoke run in about a minute
    ./scripts/bench --db sqlite --only json,sse
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs, transfer  # noqa: E402
from bench.client import Connection, closed_loop, json_request, percentile, sequential  # noqa: E402

PARTS = ("json", "sse", "streams", "transfer")


@dataclass
class Sizes:
    latency_requests: int = 2000
    throughput_seconds: float = 10.0
    throughput_max: int = 50_000
    sse_streams: int = 40
    sse_events: int = 20
    sse_gap_ms: float = 20.0
    held_streams: int = 500
    held_events: int = 40
    held_gap_ms: float = 150.0
    transfer_mib: int = 512

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(latency_requests=300, throughput_seconds=3.0, sse_streams=10, sse_events=10,
                   held_streams=100, held_events=20, held_gap_ms=100.0, transfer_mib=64)


@dataclass
class Row:
    figure: str
    db: str
    direct: str = ""
    relay: str = ""
    litellm: str = ""
    delta: str = ""
    target: str = ""
    ok: bool | None = None  # None: no target


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        self.rows.append(Row(*args, **kwargs))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


# --- the parts ----------------------------------------------------------------------


def chat_request(base: str, key: str, stream: bool = False) -> bytes:
    return json_request("POST", f"{base}/v1/chat/completions",
                        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi"}],
                         **({"stream": True} if stream else {})},
                        {"Authorization": f"Bearer {key}"})


def measure_latency(targets: dict[str, tuple[str, str]], count: int, relay_pids: list[int]
                    ) -> tuple[dict[str, list[float]], float]:
    """Concurrency 1, one keep-alive connection each; the targets take turns in blocks so
    that drift in the machine's load hits all of them alike. Also returns the relay's CPU
    seconds per call (all its processes), a figure that other load on the machine barely moves."""
    out: dict[str, list[float]] = {name: [] for name in targets}
    block = max(50, count // 4)
    relay_cpu, relay_calls = 0.0, 0
    for _ in range(max(1, count // block)):
        for name, (base, key) in targets.items():
            cpu_before = procs.cpu_seconds(relay_pids)
            latencies, failures = asyncio.run(sequential(base, chat_request(base, key), block, warmup=20))
            if name == "relay":
                relay_cpu += procs.cpu_seconds(relay_pids) - cpu_before
                relay_calls += block + 20
            if failures:
                raise RuntimeError(f"{name}: {failures} failed requests at concurrency 1")
            out[name] += latencies
    return out, relay_cpu / max(1, relay_calls)


def measure_throughput(base: str, key: str, seconds: float, limit: int) -> tuple[float, int]:
    raw = chat_request(base, key)
    completed, statuses, errors, elapsed = asyncio.run(
        closed_loop(base, lambda i: raw, concurrency=32, total=limit, max_seconds=seconds, timeout=30))
    bad = len(errors) + sum(n for status, n in statuses.items() if status != 200)
    return completed / elapsed, bad


def json_part(report: Report, db: str, upstream, relay, key: str, litellm, sizes: Sizes,
              litellm_figures: dict) -> None:
    targets = {"direct": (upstream.url, procs.UPSTREAM_KEY), "relay": (relay.url, key)}
    if litellm is not None and not litellm_figures:
        targets["litellm"] = (litellm.url, procs.LITELLM_KEY)
    lat, cpu_per_call = measure_latency(targets, sizes.latency_requests, relay.pids())
    if "litellm" in lat:
        litellm_figures["lat"] = lat["litellm"]
    for p, target in ((50, 1.5), (90, None), (99, 5.0)):
        d, r = percentile(lat["direct"], p), percentile(lat["relay"], p)
        added = (r - d) * 1000
        lite = percentile(litellm_figures["lat"], p) if "lat" in litellm_figures else None
        report.add(f"JSON call c=1 p{p} (ms)", db, ms(d), ms(r), ms(lite) if lite is not None else "",
                   f"+{added:.2f} ms", f"added <= {target} ms" if target else "",
                   added <= target if target else None)
    report.add("Relay CPU per JSON call, c=1 (ms, all processes)", db, "", f"{cpu_per_call * 1000:.2f}", "", "",
               "none set (explains the rest)")
    rates = {"direct": measure_throughput(upstream.url, procs.UPSTREAM_KEY, sizes.throughput_seconds,
                                          sizes.throughput_max),
             "relay": measure_throughput(relay.url, key, sizes.throughput_seconds, sizes.throughput_max)}
    if litellm is not None and "rps" not in litellm_figures:
        litellm_figures["rps"] = measure_throughput(litellm.url, procs.LITELLM_KEY, sizes.throughput_seconds,
                                                    sizes.throughput_max)
    bad = rates["direct"][1] + rates["relay"][1]
    lite_rps = litellm_figures.get("rps", (None, 0))[0]
    report.add("JSON call c=32 (req/s)", db, f"{rates['direct'][0]:.0f}", f"{rates['relay'][0]:.0f}",
               f"{lite_rps:.0f}" if lite_rps else "",
               f"{rates['relay'][0] / rates['direct'][0]:.0%} of direct"
               + (f", {rates['relay'][0] / lite_rps:.1f}x LiteLLM" if lite_rps else ""),
               ">= 2x LiteLLM" if lite_rps else ">= 2x LiteLLM (not measured)",
               (rates["relay"][0] >= 2 * lite_rps and not bad) if lite_rps else None)
    if bad or litellm_figures.get("rps", (0, 0))[1]:
        report.notes.append(f"{db}: c=32 non-200 or failed: direct+relay {bad}, "
                            f"LiteLLM {litellm_figures.get('rps', (0, 0))[1]}")


def paced_stream(base: str, key: str, events: int, gap_ms: float) -> bytes:
    return json_request("POST", f"{base}/v1/responses",
                        {"model": "gpt-4o-mini", "input": "x", "stream": True,
                         "metadata": {"bench_events": str(events), "bench_gap_ms": str(gap_ms)}},
                        {"Authorization": f"Bearer {key}"})


async def _stream_offsets(base: str, key: str, count: int, events: int, gap_ms: float) -> list[list[float]]:
    """Each event's arrival, in seconds after its request was sent, for `count` sequential streams."""
    conn = Connection.for_url(base, timeout=60)
    raw = paced_stream(base, key, events, gap_ms)
    out = []
    for _ in range(count):
        r = await conn.request(raw, keep_body=False, sse=True)
        if r.error or r.status != 200 or r.events != events + 4:
            raise RuntimeError(f"stream from {base} failed: {r.status} {r.error} ({r.events} events)")
        out.append([t - r.started for t in r.event_times])
    await conn.close()
    return out


def sse_part(report: Report, db: str, upstream, relay, key: str, sizes: Sizes) -> None:
    offsets = {}
    for name, base, k in (("direct", upstream.url, procs.UPSTREAM_KEY), ("relay", relay.url, key)):
        asyncio.run(_stream_offsets(base, k, 2, sizes.sse_events, 0))  # warm-up
    # Alternate direct and relay streams in small blocks.
    offsets = {"direct": [], "relay": []}
    for _ in range(max(1, sizes.sse_streams // 5)):
        for name, base, k in (("direct", upstream.url, procs.UPSTREAM_KEY), ("relay", relay.url, key)):
            offsets[name] += asyncio.run(_stream_offsets(base, k, 5, sizes.sse_events, sizes.sse_gap_ms))
    first = {n: statistics.median(o[0] for o in v) for n, v in offsets.items()}
    added_first = (first["relay"] - first["direct"]) * 1000
    report.add("SSE time to first event (ms)", db, ms(first["direct"]), ms(first["relay"]), "",
               f"+{added_first:.2f} ms", "none set")
    # How much later than direct each later event arrives: per event index, the median
    # over streams, then the median over indexes.
    n = len(offsets["direct"][0])
    per_index = [statistics.median(o[i] for o in offsets["relay"]) - statistics.median(o[i] for o in offsets["direct"])
                 for i in range(1, n)]
    added_each = statistics.median(per_index) * 1000
    report.add(f"SSE added delay per event (ms; {sizes.sse_events} deltas {sizes.sse_gap_ms:.0f} ms apart)", db,
               "", "", "", f"+{added_each:.2f} ms", "none set")


async def _hold_streams(base: str, key: str, count: int, events: int, gap_ms: float, pids: list[int]
                        ) -> tuple[int, int, int, float]:
    """(successful streams, most open at once, peak total RSS KiB, seconds)."""
    raw = paced_stream(base, key, events, gap_ms)
    open_now = most_open = 0
    peak = procs.rss_kib(pids)

    async def one() -> bool:
        nonlocal open_now
        conn = Connection.for_url(base, timeout=120)
        open_now += 1
        try:
            r = await conn.request(raw, keep_body=False, sse=True)
        finally:
            open_now -= 1
            await conn.close()
        return not r.error and r.status == 200 and r.events == events + 4

    started = time.monotonic()
    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    while not all(t.done() for t in tasks):
        most_open = max(most_open, open_now)
        peak = max(peak, procs.rss_kib(pids))
        await asyncio.sleep(0.05)
    ok = sum(1 for t in tasks if t.result())
    return ok, most_open, peak, time.monotonic() - started


def streams_part(report: Report, db: str, relay, key: str, sizes: Sizes) -> None:
    pids = relay.pids()
    idle = procs.rss_kib(pids)
    ok, most_open, peak, seconds = asyncio.run(
        _hold_streams(relay.url, key, sizes.held_streams, sizes.held_events, sizes.held_gap_ms, pids))
    report.add(f"{sizes.held_streams} concurrent SSE streams delivered", db, "", f"{ok}/{sizes.held_streams}", "",
               f"{ok / sizes.held_streams:.1%}", "100%", ok == sizes.held_streams)
    report.add(f"Relay RSS, {len(pids)} processes, streams open (MiB)", db, "", f"{peak / 1024:.0f}", "",
               f"idle {idle / 1024:.0f}", "< 1024 MiB", peak / 1024 < 1024)


def transfer_part(report: Report, db: str, upstream, relay, key: str, sizes: Sizes) -> None:
    pids = procs.descendants(relay.proc.pid)
    for t in transfer.measure(upstream, relay, key, pids, sizes.transfer_mib * 1024 * 1024):
        label = f"{sizes.transfer_mib} MiB {t.direction}"
        if not t.ok:
            report.notes.append(f"{db}: {label} failed: {t.error}")
        report.add(f"{label} (MB/s)", db, f"{t.direct_mbps:.0f}", f"{t.relay_mbps:.0f}", "",
                   f"{t.ratio:.0%} of direct", ">= 70% of direct", t.ok and t.ratio >= transfer.RATIO_TARGET)
        report.add(f"{label}: worker peak RSS growth (MiB)", db, "", f"{t.growth_mib:.1f}", "", "",
                   "< 64 MiB", t.ok and t.growth_mib < transfer.GROWTH_TARGET_MIB)


# --- the run --------------------------------------------------------------------------


def table_text(report: Report, workers: int, litellm_state: str) -> str:
    headers = ["Figure", "DB", "Direct", "Relay", "LiteLLM*", "Relay vs direct", "Target", "Result"]
    rows = [[r.figure, r.db, r.direct, r.relay, r.litellm, r.delta, r.target,
             "" if r.ok is None else ("PASS" if r.ok else "MISS")] for r in report.rows]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(row) for row in rows)]
    out.append(f"\n* LiteLLM proxy {litellm_state}; it runs without a database (no audit trail), "
               f"same fake upstream, same worker count ({workers}).")
    out += [f"note: {note}" for note in report.notes]
    return "\n".join(out)


def write_figures(path: Path, text: str, argv: list[str], load_start, load_end) -> None:
    """The run's figures, written by the benchmark itself (docs/ is never edited by hand)."""
    path.write_text(
        "# Benchmark figures\n\n"
        f"Written by `./scripts/bench {' '.join(argv)}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n"
        f"Machine: {machine()}; load average at the start {load_start}, at the end {load_end}.\n"
        "How to read them, and what each part measures: [performance.md](performance.md).\n\n"
        + text + "\n")


def machine() -> str:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem = 0
    return (f"{os.cpu_count()} CPUs ({model}), {mem / 1024 / 1024:.0f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of: {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in about a minute")
    parser.add_argument("--workers", type=int, default=None,
                        help="gunicorn (and LiteLLM) workers; default: gunicorn.conf.py's, 2 x CPUs")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM even if installed")
    parser.add_argument("--max-minutes", type=float, default=30, help="abort the run after this long")
    parser.add_argument("--write-docs", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"),
                        metavar="PATH", help="where a full (not --quick) run writes its figures; '' to skip")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    sizes = Sizes.quick() if args.quick else Sizes()
    workers = args.workers or procs.default_workers()
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    skipped_note = ""
    if args.db == "both" and not procs.postgres_reachable():
        dbs.remove("postgres")
        skipped_note = f"PostgreSQL not reachable at {procs.PG_ADMIN_URL}: its rows were skipped"

    def too_long(*_):
        raise TimeoutError(f"benchmark exceeded --max-minutes {args.max_minutes}")

    signal.signal(signal.SIGALRM, too_long)
    signal.alarm(int(args.max_minutes * 60))

    load_start = procs.load_average()
    print(f"machine: {machine()}; load average at start: {load_start}")
    print(f"relay: gunicorn, {workers} gevent workers, relay_project.settings (DEBUG off); "
          f"parts: {', '.join(parts)}; {'quick sizes' if args.quick else 'full sizes'}", flush=True)
    report = Report()
    if skipped_note:
        report.notes.append(skipped_note)
    litellm_figures: dict = {}
    litellm_state = "not installed (pip install 'litellm[proxy]' into bench/.venv-litellm to compare)"
    if args.no_litellm:
        litellm_state = "skipped (--no-litellm)"
    elif procs.litellm_command() is not None:
        litellm_state = "measured once, shown in each database's rows"
    upstream = procs.start_upstream()
    started: list[procs.Process] = [upstream]
    try:
        for db in dbs:
            print(f"[{db}] preparing the database and starting the relay", flush=True)
            env = procs.relay_env(db, upstream, workers)
            key = procs.prepare_database(db, env)
            relay = procs.start_relay(f"relay-{db}", env)
            started.append(relay)
            procs.wait_workers(relay, workers)
            litellm = None
            if "json" in parts and not args.no_litellm and not litellm_figures and procs.litellm_command():
                print("[litellm] starting LiteLLM's proxy", flush=True)
                try:
                    litellm = procs.start_litellm(upstream, workers)
                    started.append(litellm)
                    lat, failures = asyncio.run(sequential(litellm.url, chat_request(litellm.url, procs.LITELLM_KEY), 5,
                                                            warmup=5))
                    if failures:
                        raise RuntimeError(f"{failures} of 10 warm-up calls failed")
                except Exception as exc:  # LiteLLM is a comparison, not the subject
                    litellm_state = f"failed to start: {exc}"[:300]
                    litellm = None
            # Every worker imports lazily on its first requests: warm them all up.
            asyncio.run(closed_loop(relay.url, lambda i: chat_request(relay.url, key), concurrency=workers * 4,
                                    total=workers * 50, max_seconds=30))
            if "json" in parts:
                print(f"[{db}] JSON latency and throughput", flush=True)
                json_part(report, db, upstream, relay, key, litellm, sizes, litellm_figures)
                if litellm is not None:
                    litellm.stop()
                    started.remove(litellm)
            if "sse" in parts:
                print(f"[{db}] SSE timing", flush=True)
                sse_part(report, db, upstream, relay, key, sizes)
            if "streams" in parts:
                print(f"[{db}] {sizes.held_streams} concurrent streams", flush=True)
                streams_part(report, db, relay, key, sizes)
            if "transfer" in parts:
                print(f"[{db}] {sizes.transfer_mib} MiB transfers", flush=True)
                transfer_part(report, db, upstream, relay, key, sizes)
            relay.stop()
            started.remove(relay)
    finally:
        signal.alarm(0)
        for proc in reversed(started):
            proc.stop()
    load_end = procs.load_average()
    print(f"\nload average at the end (1, 5, 15 min): {load_end}")
    text = table_text(report, workers, litellm_state)
    print(text)
    if args.write_docs and not args.quick:
        write_figures(Path(args.write_docs), text, sys.argv[1:], load_start, load_end)
        print(f"figures written to {args.write_docs}")
    misses = [f"{r.figure} [{r.db}]" for r in report.rows if r.ok is False]
    print(f"\n{sum(1 for r in report.rows if r.ok)} targets met, {len(misses)} missed"
          + (": " + "; ".join(misses) if misses else ""))


if __name__ == "__main__":
    main()
