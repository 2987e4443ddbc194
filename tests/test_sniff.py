"""The incremental body sniffers: right answers whatever the chunking."""
import json

import pytest

from relay_project.lib.sniff import JsonFieldSniffer, MultipartFieldSniffer, boundary_of
from proxy_app.sse import ChatUsageStripper, SseUsageScanner

WANTED = frozenset({"model", "stream", "input"})
CONTAINERS = frozenset({"usage", "stream_options"})
DOCS = [
    {"messages": [{"role": "user", "content": 'tricky "model": "evil" \\ }{'}], "model": "gpt-4o",
     "stream": True, "stream_options": {"include_usage": True}},
    {"input": "x" * 5000, "model": "gpt-4o-mini", "stream": False, "n": 2,
     "usage": {"a": [1, 2, {"b": "}"}]}},
    {"stream": None, "nested": {"model": "not-top-level", "usage": {}}, "model": "mod\u00e8le"},
    {"data": [{"embedding": "QUJD" * 5000}], "model": "text-embedding-3-small",
     "usage": {"prompt_tokens": 5, "total_tokens": 5}},
]


def feed_in(sniffer, raw: bytes, size: int):
    for i in range(0, len(raw), size):
        sniffer.feed(raw[i:i + size])
    return sniffer


# 0: every byte through the state machine; the default: small bodies parsed whole.
SMALL = pytest.mark.parametrize("small", [0, 64 * 1024], ids=["scanned", "parsed-whole"])


@SMALL
@pytest.mark.parametrize("doc", DOCS)
@pytest.mark.parametrize("size", [1, 2, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_json_sniffer_finds_top_level_fields(doc, size, indent, small):
    raw = json.dumps(doc, indent=indent).encode()
    sniffer = feed_in(JsonFieldSniffer(WANTED, CONTAINERS, {"input": 10_000}, small=small), raw, size)
    assert sniffer.values == {k: v for k, v in doc.items() if k in WANTED | CONTAINERS}


@SMALL
def test_json_sniffer_drops_values_over_their_limit(small):
    raw = json.dumps({"input": "y" * 2000, "model": "m", "usage": {"k": "z" * 3000}}).encode()
    sniffer = feed_in(JsonFieldSniffer(WANTED, CONTAINERS, {"usage": 1000}, small=small), raw, 100)
    assert sniffer.values == {"model": "m"}


@SMALL
def test_json_sniffer_ignores_non_objects(small):
    sniffer = feed_in(JsonFieldSniffer(WANTED, small=small), b'["model", "gpt-4o"]', 3)
    assert sniffer.is_object is False and sniffer.values == {}


@pytest.mark.parametrize("small", [16, 1000])
def test_json_sniffer_scans_a_body_that_outgrows_or_fails_the_whole_parse(small):
    # Past `small` bytes, or cut off before its end, a body is scanned from its first byte.
    raw = json.dumps({"model": "gpt-4o", "input": "x" * 100, "usage": {"total_tokens": 3}}).encode()
    sniffer = feed_in(JsonFieldSniffer(WANTED, CONTAINERS, small=small), raw[:-20], 7)
    assert sniffer.values == {"model": "gpt-4o", "input": "x" * 100}


@pytest.mark.parametrize("size", [1, 5, 100, 4096])
def test_multipart_sniffer_finds_form_fields(size):
    b = "----relay123"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n{'z' * 5000}\r\n"
        f'--{b}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--{b}--\r\n'
    ).encode()
    sniffer = feed_in(MultipartFieldSniffer(b, frozenset({"model", "purpose"})), body, size)
    assert sniffer.values == {"purpose": "batch", "model": "whisper-1"}


def test_boundary_of():
    assert boundary_of('multipart/form-data; boundary="abc def"') == "abc def"
    assert boundary_of("multipart/form-data; boundary=xyz") == "xyz"
    assert boundary_of("application/json") is None


RESPONSES_STREAM = (
    b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"usage"}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","response":{"model":"gpt-4o-2024-08-06",'
    b'"usage":{"input_tokens":10,"output_tokens":5,"total_tokens":15}}}\n\n'
)


@pytest.mark.parametrize("size", [1, 3, 17, 1 << 16])
def test_sse_scanner_finds_usage_in_any_chunking(size):
    scanner = feed_in(SseUsageScanner(), RESPONSES_STREAM, size)
    assert scanner.usage == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    assert scanner.model == "gpt-4o-2024-08-06"


def chat_stream(include_usage: bool) -> bytes:
    def chunk(choices, usage=...):
        obj = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": choices}
        if include_usage:
            obj["usage"] = None if usage is ... else usage
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    out = chunk([{"index": 0, "delta": {"content": "hi"}}])
    out += chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if include_usage:
        out += chunk([], {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    return out + b"data: [DONE]\n\n"


@pytest.mark.parametrize("size", [1, 10, 1 << 16])
def test_stripper_gives_the_client_the_stream_it_asked_for(size):
    stripper = ChatUsageStripper()
    raw = chat_stream(include_usage=True)
    out = b"".join(stripper.transform(raw[i:i + size]) for i in range(0, len(raw), size))
    out += stripper.flush()
    assert out == chat_stream(include_usage=False)
    assert stripper.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


@SMALL
@pytest.mark.parametrize("raw, expected", [
    # The first duplicate fits, the second is too long: upstream reads the second, so
    # nothing is kept (`seen` tells a scoped key's check that a model was there).
    (b'{"model": "forbidden", "model": "' + b"x" * 600 + b'"}', {}),
    # Escapes count as written: 100 characters in 600 raw bytes are over a 512-byte limit.
    (b'{"model": "' + b"\\u0041" * 100 + b'", "stream": true}', {"stream": True}),
    # A lone surrogate and nesting deeper than json.loads recurses.
    (b'{"model": "\\ud800", "n": 1}', {"model": "\ud800"}),
    (b'{"deep": ' + b"[" * 5000 + b"]" * 5000 + b', "model": "gpt-4o"}', {"model": "gpt-4o"}),
], ids=["duplicate-key", "escaped-length", "lone-surrogate", "deep-nesting"])
def test_json_sniffer_agrees_with_the_scanner_on_awkward_bodies(raw, expected, small):
    sniffer = feed_in(JsonFieldSniffer(WANTED, CONTAINERS, small=small), raw, 1000)
    assert sniffer.values == expected
    assert sniffer.values == expected  # reading twice gives the same
    assert "model" in sniffer.seen
