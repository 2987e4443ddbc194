"""The tests' fake OpenAI server, with streams paced per request, for the benchmarks.

`python bench/upstream.py --port N` serves everything tests/fake_openai.py
serves. A streamed `POST /v1/responses` whose body carries
`"metadata": {"bench_events": "N", "bench_gap_ms": "G"}` streams N text deltas,
G ms apart (plus the usual created/in_progress/done/completed events), so that
one upstream process serves quick streams, slow held-open streams and long ones
at once. Only the standard library and tests/fake_openai.py.
"""
from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_openai import FakeUpstream, _event, _Handler, _message, now, usage_responses  # noqa: E402


class BenchHandler(_Handler):
    def route(self, req, path, upload, drop):  # type: ignore[override]
        if self.command == "POST" and path == "/v1/responses":
            body = req.json() if req.body else {}
            meta = body.get("metadata") if isinstance(body, dict) else None
            if body.get("stream") and isinstance(meta, dict) and "bench_events" in meta:
                return self.paced_stream(body, int(meta["bench_events"]), float(meta.get("bench_gap_ms", 0)) / 1000)
        return super().route(req, path, upload, drop)

    def paced_stream(self, body: dict, n: int, gap: float) -> None:
        model = body.get("model", "gpt-4o-mini")
        base = {"id": "resp_bench", "object": "response", "created_at": now(), "model": model,
                "status": "in_progress", "output": [], "usage": None}
        events = [_event("response.created", {"response": base}, 0),
                  _event("response.in_progress", {"response": base}, 1)]
        events += [_event("response.output_text.delta", {"item_id": "msg_1", "output_index": 0,
                                                          "content_index": 0, "delta": f"w{i} "}, 2 + i)
                   for i in range(n)]
        done = {**base, "status": "completed", "output": [_message("bench")], "usage": usage_responses(n + 2)}
        events.append(_event("response.output_text.done", {"item_id": "msg_1", "output_index": 0,
                                                           "content_index": 0, "text": "bench"}, n + 2))
        events.append(_event("response.completed", {"response": done}, n + 3))
        self.send_response(200)
        self._common_headers()
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            for i, event in enumerate(events):
                # Deltas are paced; the bookkeeping events around them are not.
                if gap and 2 <= i < 2 + n and i > 2:
                    time.sleep(gap)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True


def serve(host: str, port: int) -> FakeUpstream:
    fake = FakeUpstream(host, port)
    handler = type("Handler", (BenchHandler,), {"fake": fake})
    fake.server.RequestHandlerClass = handler
    # The tests' server keeps every request it saw; a benchmark sends millions.
    fake.requests = _Discard()
    return fake


class _Discard(list):
    def append(self, item) -> None:  # noqa: D401 - a list that keeps nothing
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OpenAI API (paced streams) until killed.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    fake = serve(args.host, args.port)
    print(fake.base_url, flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    main()
