"""WebSocket sessions held at once through the relay, and what each costs in memory.

Starts the fake WebSocket upstream (tests/fake_ws_upstream.py, its own process)
and the relay under gunicorn with production settings (gevent workers, SQLite
in bench/results/), then:

  sessions  opens N Realtime sessions at once (`/v1/realtime?model=gpt-realtime`),
            runs one text turn on each, holds them all open and measures the
            relay's RSS (master + workers) against the idle relay: memory per
            session. Then a second turn on every session, to show they all still
            work, and the audit rows they left (one per session, one per response).
  slow      one session whose client stops reading while upstream floods it
            with 64 KiB deltas: the relay's RSS growth, which backpressure keeps
            to a few socket buffers instead of the whole flood.

Prints a table and writes it to docs/websockets-bench.md. Only 127.0.0.1 is
contacted; every wait is bounded.

    .venv/bin/python bench/ws_sessions.py --sessions 200
    .venv/bin/python bench/ws_sessions.py --sessions 20 --workers 1   # a small run
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs  # noqa: E402

DOC = procs.ROOT / "docs" / "websockets-bench.md"


def start_ws_upstream() -> procs.Process:
    port = procs.free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return procs.Process("ws-upstream", [procs.PYTHON, "-m", "tests.fake_ws_upstream", "--port", str(port),
                                         "--key", procs.UPSTREAM_KEY], env, port)


async def _turn(ws) -> bool:
    await ws.send(json.dumps({"type": "response.create"}))
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if event["type"] == "response.done":
            return True
        if event["type"] == "error":
            return False


async def hold_sessions(url: str, key: str, count: int, pids: list[int]) -> dict:
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {key}"}
    sockets: list = []

    async def open_one() -> None:
        ws = await connect(f"{url}/v1/realtime?model=gpt-realtime", additional_headers=headers,
                           open_timeout=60, ping_interval=None, compression=None)
        await asyncio.wait_for(ws.recv(), 60)  # session.created
        if await _turn(ws):
            sockets.append(ws)
        else:
            await ws.close()

    started = time.monotonic()
    # Opened in waves of 50: the machine's two cores, not the relay, limit how fast.
    for first in range(0, count, 50):
        await asyncio.gather(*(open_one() for _ in range(min(50, count - first))), return_exceptions=True)
    opened = time.monotonic() - started
    await asyncio.sleep(1)
    rss_open = procs.rss_kib(pids)
    second = await asyncio.gather(*(_turn(ws) for ws in sockets), return_exceptions=True)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {"open": len(sockets), "open_seconds": opened, "rss_open_kib": rss_open,
            "second_turn_ok": sum(1 for ok in second if ok is True)}


async def slow_reader(url: str, key: str, pids: list[int], deltas: int) -> dict:
    from websockets.asyncio.client import connect

    before = procs.rss_kib(pids)
    ws = await connect(f"{url}/v1/realtime?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {key}"},
                       open_timeout=60, ping_interval=None, compression=None, max_size=None,
                       max_queue=1)
    await ws.recv()
    await ws.send(json.dumps({"type": "response.create", "response": {"instructions": f"flood:{deltas}"}}))
    peak = before
    for _ in range(10):  # the client reads nothing for 5 s
        await asyncio.sleep(0.5)
        peak = max(peak, procs.rss_kib(pids))
    received = 0
    try:
        while received < deltas:
            await asyncio.wait_for(ws.recv(), 30)
            received += 1
    except Exception:
        pass
    await ws.close()
    return {"flood_mib": deltas * 64 / 1024, "growth_kib": peak - before, "received": received}


def audit_rows(db_path: Path) -> tuple[int, int]:
    with sqlite3.connect(db_path) as conn:
        sessions = conn.execute("SELECT count(*) FROM audit_app_apicall WHERE path = '/v1/realtime' "
                                "AND ws_session_id IS NULL AND outcome != 'pending'").fetchone()[0]
        responses = conn.execute("SELECT count(*) FROM audit_app_apicall WHERE ws_session_id IS NOT NULL "
                                 "AND billing = 'priced'").fetchone()[0]
    return sessions, responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--flood-deltas", type=int, default=800, help="64 KiB deltas sent to the slow reader")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {DOC.relative_to(procs.ROOT)}")
    args = parser.parse_args()

    upstream = start_ws_upstream()
    relay = None
    try:
        env = procs.relay_env("sqlite", upstream, args.workers, GUNICORN_ACCESSLOG="",
                              RELAY_ACCESS_LOG="false",
                              OPENAI_WEBSOCKET_BASE_URL=f"ws://127.0.0.1:{upstream.port}/v1",
                              GUNICORN_WORKER_CONNECTIONS=str(max(1000, args.sessions * 2)))
        key = procs.prepare_database("sqlite", env)
        relay = procs.start_relay("relay-ws", env)
        procs.wait_workers(relay, args.workers)
        time.sleep(2)
        pids = relay.pids()
        url = f"ws://127.0.0.1:{relay.port}"
        # One session first, so every worker has imported what a session needs.
        asyncio.run(hold_sessions(url, key, args.workers * 2, pids))
        idle = procs.rss_kib(pids)
        held = asyncio.run(hold_sessions(url, key, args.sessions, pids))
        slow = asyncio.run(slow_reader(url, key, pids, args.flood_deltas))
        time.sleep(2)
        sessions, responses = audit_rows(procs.RESULTS / "bench.sqlite3")
    finally:
        if relay is not None:
            relay.stop()
        upstream.stop()

    per_session = (held["rss_open_kib"] - idle) / max(1, held["open"])
    rows = [
        ("Sessions open at once", f"{held['open']} of {args.sessions}", f"opened in {held['open_seconds']:.1f} s"),
        ("Relay RSS, idle (master + workers)", f"{idle / 1024:.1f} MiB", f"{args.workers} gevent workers"),
        ("Relay RSS, sessions open", f"{held['rss_open_kib'] / 1024:.1f} MiB", ""),
        ("Memory per open session", f"{per_session:.0f} KiB", "(RSS open - RSS idle) / sessions"),
        ("Second turn on every session", f"{held['second_turn_ok']} of {held['open']} ok", ""),
        ("Slow reader: flood sent by upstream", f"{slow['flood_mib']:.0f} MiB",
         f"client read nothing for 5 s, then {slow['received']} deltas"),
        ("Slow reader: relay RSS growth", f"{slow['growth_kib'] / 1024:.1f} MiB", "bounded by socket buffers"),
        ("Audit rows (all runs)", f"{sessions} sessions, {responses} priced responses", ""),
    ]
    table = ["| Figure | Value | Note |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    header = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
              f"{os.cpu_count()} CPUs (shared), load {procs.load_average()}; SQLite; "
              f"`bench/ws_sessions.py --sessions {args.sessions} --workers {args.workers}`.")
    text = "\n".join([header, "", *table])
    print(text)
    if not args.no_write:
        DOC.write_text("# WebSocket sessions benchmark\n\nWritten by `bench/ws_sessions.py`; see "
                       "[websockets.md](websockets.md).\n\n" + text + "\n")


if __name__ == "__main__":
    main()
