"""What usage scanning costs a stream: 10,000 SSE events through the relay, scanning on vs off.

Two relays under gunicorn (production settings, same database, same worker count)
differ only in RELAY_SCAN_RESPONSES. Both relay the same streamed Response from the
fake upstream (10,000 text deltas sent as fast as it can, then the completed event
with usage) in alternating runs; the figure is the median time to read the whole
stream, and the overhead of scanning is the median over back-to-back pairs of
on / off - 1. Target: under 5%.
The relays' CPU time per stream is printed beside it (what scanning costs the
relay's own work, as opposed to the client's wait); both scatter with other load.

    .venv/bin/python bench/scan_overhead.py [--events 10000] [--runs 25] [--db sqlite|postgres]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs  # noqa: E402
from bench.client import Connection, json_request  # noqa: E402

TARGET = 0.05


async def stream_once(base: str, key: str, events: int) -> float:
    raw = json_request("POST", f"{base}/v1/responses",
                       {"model": "gpt-4o-mini", "input": "x", "stream": True,
                        "metadata": {"bench_events": str(events), "bench_gap_ms": "0"}},
                       {"Authorization": f"Bearer {key}"})
    conn = Connection.for_url(base, timeout=120)
    r = await conn.request(raw, keep_body=False, sse=True)
    await conn.close()
    if r.error or r.status != 200 or r.events != events + 4:
        raise RuntimeError(f"stream through {base} failed: {r.status} {r.error} ({r.events} events)")
    return r.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=25, help="timed runs per setting, alternating")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers per relay (default 1)")
    args = parser.parse_args()
    upstream = procs.start_upstream()
    relays: dict[str, procs.Process] = {}
    try:
        env = procs.relay_env(args.db, upstream, args.workers)
        key = procs.prepare_database(args.db, env)
        for setting in ("on", "off"):
            relays[setting] = procs.start_relay(
                f"relay-scan-{setting}", {**env, "RELAY_SCAN_RESPONSES": "true" if setting == "on" else "false"})
            procs.wait_workers(relays[setting], args.workers)
        times: dict[str, list[float]] = {"on": [], "off": []}
        cpu: dict[str, list[float]] = {"on": [], "off": []}
        pids = {setting: relay.pids() for setting, relay in relays.items()}
        for setting, relay in relays.items():  # warm-up: imports, connections
            asyncio.run(stream_once(relay.url, key, min(args.events, 1000)))
        for run in range(args.runs):
            order = ("on", "off") if run % 2 == 0 else ("off", "on")
            for setting in order:
                before = procs.cpu_seconds(pids[setting])
                times[setting].append(asyncio.run(stream_once(relays[setting].url, key, args.events)))
                cpu[setting].append(procs.cpu_seconds(pids[setting]) - before)
        direct = [asyncio.run(stream_once(upstream.url, procs.UPSTREAM_KEY, args.events))
                  for _ in range(3)]
    finally:
        for relay in relays.values():
            relay.stop()
        upstream.stop()
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    # Each run's on/off pair ran back to back: the median of the pairs' ratios cancels
    # the slow drift of other load on the machine better than a ratio of medians.
    overhead = statistics.median(a / b for a, b in zip(times["on"], times["off"])) - 1
    print(f"{args.events} SSE events per stream, relay on {args.db}, {args.workers} gevent worker(s), "
          f"{args.runs} alternating runs each")
    print(f"  scanning on : median {on * 1000:8.1f} ms  runs " + " ".join(f"{t * 1000:.0f}" for t in times["on"]))
    print(f"  scanning off: median {off * 1000:8.1f} ms  runs " + " ".join(f"{t * 1000:.0f}" for t in times["off"]))
    print(f"  direct      : median {statistics.median(direct) * 1000:8.1f} ms (no relay, for scale)")
    # Summed over all runs: the kernel counts CPU time in 10 ms ticks.
    cpu_on, cpu_off = sum(cpu["on"]) / args.runs, sum(cpu["off"]) / args.runs
    print(f"  relay CPU per stream (mean of {args.runs}): on {cpu_on * 1000:.1f} ms, off {cpu_off * 1000:.1f} ms "
          f"({(cpu_on - cpu_off) / cpu_off:+.1%} of the relay's own work)")
    print(f"  overhead of scanning: {overhead:+.1%} of the time to stream, median of paired runs (target < 5%: "
          f"{'PASS' if overhead < TARGET else 'MISS'})")
    sys.exit(0 if overhead < TARGET else 1)


if __name__ == "__main__":
    main()
