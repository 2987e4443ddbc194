"""A fake OpenAI WebSocket upstream on 127.0.0.1: the Realtime API and the
Responses API's WebSocket mode, enough of each for the relay's tests.

Built on `websockets`' threaded server (a real WebSocket peer, not the relay's
own library). Each connection is recorded: the handshake's path and headers,
every event received, and when the connection ended, so that tests can check
what reached upstream and how fast it was let go.

Turns are scripted by the text of the request: "close:<code>" makes upstream
close the session with that code after response.created, "drop" makes it drop
the TCP connection without a close frame, "hang" leaves the response open.
An `input_audio_buffer.commit` is answered with a finished input transcription
carrying token usage (500 audio tokens in, 20 out), as OpenAI bills it.
Usage of turn n (1-based, per connection): input 1000 + 10n tokens of which
100 cached, output 200 + n tokens.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Response
from websockets.sync.server import ServerConnection, serve


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    events: list[dict] = field(default_factory=list)
    closed_at: float | None = None
    close_code: int | None = None


def turn_usage(n: int, kind: str) -> dict:
    inp, out, cached = 1000 + 10 * n, 200 + n, 100
    if kind == "realtime":
        return {"total_tokens": inp + out, "input_tokens": inp, "output_tokens": out,
                "input_token_details": {"cached_tokens": cached, "text_tokens": inp, "audio_tokens": 0,
                                        "image_tokens": 0},
                "output_token_details": {"text_tokens": out, "audio_tokens": 0}}
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + out}


class FakeWsUpstream:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.connections: list[Recorded] = []
        self.accepted = 0
        self.audio_tokens = 0  # set by a test: report this many output audio tokens per realtime turn

    def start(self, port: int = 0) -> "FakeWsUpstream":
        self.server = serve(self._handle, "127.0.0.1", port, process_request=self._check,
                            process_response=self._headers,
                            compression=None, max_size=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def reset(self) -> None:
        self.connections.clear()
        self.audio_tokens = 0
        self.accepted = 0

    @property
    def base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    def _headers(self, connection: ServerConnection, request, response: Response) -> Response:
        self.accepted += 1
        response.headers["x-request-id"] = f"req_ws_fake_{self.accepted}"
        response.headers["set-cookie"] = "upstream=1"
        return response

    def _check(self, connection: ServerConnection, request) -> Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            body = json.dumps({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                         "param": None, "code": "invalid_api_key"}}).encode()
            return Response(401, "Unauthorized", Headers([("Content-Type", "application/json"),
                                                          ("Content-Length", str(len(body)))]), body)
        return None

    def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        record = Recorded(path=request.path, headers={k.lower(): v for k, v in request.headers.raw_items()})
        self.connections.append(record)
        url = urlsplit(request.path)
        kind = "realtime" if url.path.startswith("/v1/realtime") else "responses"
        model = parse_qs(url.query).get("model", ["gpt-realtime"])[0]
        session = {"type": "realtime", "model": model, "output_modalities": ["text"]}
        turn = 0
        try:
            if kind == "realtime":
                ws.send(json.dumps({"type": "session.created", "event_id": "event_1", "session": session}))
            for message in ws:
                event = json.loads(message)
                record.events.append(event)
                if event.get("type") == "session.update":
                    session.update({k: v for k, v in (event.get("session") or {}).items()})
                    ws.send(json.dumps({"type": "session.updated", "event_id": "event_2", "session": session}))
                elif event.get("type") == "input_audio_buffer.commit":
                    ws.send(json.dumps({
                        "type": "conversation.item.input_audio_transcription.completed", "event_id": "event_t",
                        "item_id": f"item_{len(record.events)}", "content_index": 0, "transcript": "hello",
                        "usage": {"type": "tokens", "input_tokens": 500, "output_tokens": 20, "total_tokens": 520,
                                  "input_token_details": {"audio_tokens": 500, "text_tokens": 0}}}))
                elif event.get("type") == "response.create":
                    turn += 1
                    if not self._respond(ws, kind, event, turn, session.get("model")):
                        return
        except Exception:
            pass
        finally:
            record.closed_at = time.monotonic()
            record.close_code = ws.close_code

    def _respond(self, ws: ServerConnection, kind: str, event: dict, turn: int, model: str) -> bool:
        rid = f"resp_{kind}_{turn}_{id(ws)}"
        script = ""
        if kind == "realtime":
            script = str((event.get("response") or {}).get("instructions") or "")
        else:
            model = event.get("model", "gpt-4o-mini")
            script = event.get("input") if isinstance(event.get("input"), str) else ""
        created = {"id": rid, "object": "realtime.response" if kind == "realtime" else "response",
                   "status": "in_progress"}
        if kind == "responses":
            created["model"] = model
        ws.send(json.dumps({"type": "response.created", "event_id": f"ev_{turn}a", "response": created,
                            "sequence_number": 0}))
        if script.startswith("close:"):
            ws.close(int(script.split(":")[1]), "upstream exploded")
            return False
        if script == "drop":  # FIN without a close frame (shutdown: the reader thread holds the socket)
            ws.socket.shutdown(socket.SHUT_RDWR)
            ws.socket.close()
            return False
        if script == "hang":
            return True
        if script.startswith("flood:"):  # that many 64 KiB deltas, as fast as the socket takes them
            delta = json.dumps({"type": "response.output_text.delta", "delta": "x" * 65536,
                                "response_id": rid, "sequence_number": 1})
            for _ in range(int(script.split(":")[1])):
                ws.send(delta)
        ws.send(json.dumps({"type": "response.output_text.delta", "delta": f"Hello {turn}",
                            "response_id": rid, "sequence_number": 1}))
        usage = turn_usage(turn, kind)
        if kind == "realtime" and self.audio_tokens:
            usage["output_token_details"]["audio_tokens"] = self.audio_tokens
            usage["output_tokens"] += self.audio_tokens
            usage["total_tokens"] += self.audio_tokens
        done = {**created, "status": "completed", "usage": usage,
                "output": [{"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": f"Hello {turn}"}]}]}
        ws.send(json.dumps({"type": "response.done" if kind == "realtime" else "response.completed",
                            "event_id": f"ev_{turn}b", "response": done, "sequence_number": 2}))
        return True


def main() -> None:
    """Run on its own (bench/ws_sessions.py): python -m tests.fake_ws_upstream --port N --key K."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    server = FakeWsUpstream(args.key).start(args.port)
    server.connections = _Forgetful()
    server.thread.join()


class _Forgetful(list):
    """A long run keeps no record of its connections."""

    def append(self, item) -> None:
        pass


if __name__ == "__main__":
    main()
