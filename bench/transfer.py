"""512 MiB through the relay under gunicorn: upload and download, direct vs relay.

Prints MB/s both ways and the peak RSS growth of the relay's workers during each
transfer (the kernel's peak-RSS mark, reset just before, with 20 ms sampling as a
cross-check). Targets: growth < 64 MiB, relay throughput >= 70% of direct.

    ./scripts/bench --only transfer            # part of the benchmark
    .venv/bin/python bench/transfer.py         # alone (SQLite; --db postgres, --mib N)
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs  # noqa: E402
from bench.client import Connection, encode_request  # noqa: E402

PIECE = 1024 * 1024
BOUNDARY = "benchboundary7d1f3a"
GROWTH_TARGET_MIB = 64
RATIO_TARGET = 0.70


@dataclass
class Transfer:
    direction: str  # "upload" | "download"
    size: int
    direct_mbps: float
    relay_mbps: float
    growth_mib: float  # worst worker: peak RSS during the transfer minus RSS before it
    ok: bool
    error: str = ""

    @property
    def ratio(self) -> float:
        return self.relay_mbps / self.direct_mbps if self.direct_mbps else 0.0


def _multipart(size: int) -> tuple[bytes, bytes, int]:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head, tail, len(head) + size + len(tail)


def _pieces(head: bytes, size: int, tail: bytes):
    block = bytes(range(256)) * (PIECE // 256)
    yield head
    sent = 0
    while sent < size:
        n = min(PIECE, size - sent)
        yield block if n == PIECE else block[:n]
        sent += n
    yield tail


async def _upload(base: str, auth: str, size: int) -> tuple[float, bool, str]:
    head, tail, total = _multipart(size)
    raw = encode_request("POST", f"{base}/v1/files", {
        "Authorization": f"Bearer {auth}", "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }, length=total)
    conn = Connection.for_url(base, timeout=600)
    started = time.monotonic()
    r = await conn.request(raw, body=_pieces(head, size, tail))
    elapsed = time.monotonic() - started
    await conn.close()
    ok = not r.error and r.status == 200 and f'"bytes": {size}'.encode() in r.body
    return elapsed, ok, r.error or (f"status {r.status}: {r.body[:200]!r}" if not ok else "")


async def _download(base: str, auth: str, size: int) -> tuple[float, bool, str]:
    raw = encode_request("GET", f"{base}/v1/files/big-{size}/content", {"Authorization": f"Bearer {auth}"})
    conn = Connection.for_url(base, timeout=600)
    started = time.monotonic()
    r = await conn.request(raw, keep_body=False)
    elapsed = time.monotonic() - started
    await conn.close()
    ok = not r.error and r.status == 200 and r.bytes_in == size
    return elapsed, ok, r.error or (f"status {r.status}, {r.bytes_in} bytes" if not ok else "")


async def _watched(coro, worker_pids: list[int]) -> tuple[tuple[float, bool, str], float]:
    """Run a transfer while watching the workers' memory: (its result, worst growth in MiB)."""
    before = {pid: procs.status_kib(pid, "VmRSS") for pid in worker_pids}
    marks = {pid: procs.reset_peak(pid) for pid in worker_pids}
    sampled = dict(before)
    task = asyncio.ensure_future(coro)
    while not task.done():
        for pid in worker_pids:
            sampled[pid] = max(sampled[pid], procs.status_kib(pid, "VmRSS"))
        await asyncio.sleep(0.02)
    growth = 0.0
    for pid in worker_pids:
        peak = sampled[pid]
        if marks[pid]:
            peak = max(peak, procs.status_kib(pid, "VmHWM"))
        growth = max(growth, (peak - before[pid]) / 1024)
    return task.result(), growth


async def _warm_up(base: str, key: str, count: int) -> None:
    await asyncio.gather(*(fn(base, key, PIECE) for fn in (_upload, _download) for _ in range(count)))


def measure(upstream: procs.Process, relay: procs.Process, relay_key: str, worker_pids: list[int],
            size: int) -> list[Transfer]:
    results = []
    for direction, fn in (("upload", _upload), ("download", _download)):
        direct_s, direct_ok, direct_err = asyncio.run(fn(upstream.url, procs.UPSTREAM_KEY, size))
        (relay_s, relay_ok, relay_err), growth = asyncio.run(
            _watched(fn(relay.url, relay_key, size), worker_pids))
        results.append(Transfer(direction, size, size / direct_s / 1e6, size / relay_s / 1e6, growth,
                                direct_ok and relay_ok, direct_err or relay_err))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--mib", type=int, default=512, help="size of each transfer in MiB (default 512)")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: 2 x CPUs)")
    args = parser.parse_args()
    workers = args.workers or procs.default_workers()
    upstream = procs.start_upstream()
    relay = None
    try:
        env = procs.relay_env(args.db, upstream, workers)
        key = procs.prepare_database(args.db, env)
        relay = procs.start_relay(f"relay-{args.db}", env)
        pids = procs.wait_workers(relay, workers)
        # Workers import the app lazily on their first requests: warm every one up with
        # small transfers first, so that the growth measured is the transfer's.
        asyncio.run(_warm_up(relay.url, key, workers * 4))
        results = measure(upstream, relay, key, pids, args.mib * 1024 * 1024)
    finally:
        if relay:
            relay.stop()
        upstream.stop()
    print(f"{args.mib} MiB transfers, relay on {args.db}, {workers} gevent workers")
    failed = False
    for t in results:
        growth_ok = t.growth_mib < GROWTH_TARGET_MIB
        ratio_ok = t.ratio >= RATIO_TARGET
        failed |= not (t.ok and growth_ok and ratio_ok)
        print(f"  {t.direction:8} direct {t.direct_mbps:7.1f} MB/s  relay {t.relay_mbps:7.1f} MB/s "
              f"({t.ratio:.0%} of direct; target >= 70%: {'PASS' if ratio_ok else 'MISS'})  "
              f"worker peak growth {t.growth_mib:.1f} MiB (target < 64 MiB: {'PASS' if growth_ok else 'MISS'})"
              + ("" if t.ok else f"  FAILED: {t.error}"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
