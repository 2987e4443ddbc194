"""IncludeUsageSplice: `stream_options` appended to a streamed body only where upstream will
read it as the relay means, whatever the chunk boundaries; every other byte is the client's."""
from __future__ import annotations

import io
import json

import pytest

from proxy_app.observers import IncludeUsageSplice

ADDED = {"include_usage": True}


def through(raw: bytes, piece: int, length: int | None = None) -> tuple[bytes, IncludeUsageSplice]:
    splice = IncludeUsageSplice(io.BytesIO(raw), length)
    out = bytearray()
    while chunk := splice.read(piece):
        out += chunk
    return bytes(out), splice


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("raw", [
    b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"}"}]}',
    b'{"stream": true, "n": {"deep": {"er": {}}}}\r\n\t \n',
    b'  {"messages":[],"stream":true,"note":"a \\" quote and a } brace"}',
])
def test_a_streamed_body_without_options_gets_them_before_its_last_brace(raw, piece):
    out, splice = through(raw, piece)
    assert splice.spliced
    assert json.loads(out) == {**json.loads(raw), "stream_options": ADDED}
    end = raw.rstrip().rindex(b"}")
    assert out.startswith(raw[:end]) and out.endswith(raw[end:]), "only the option is new"


@pytest.mark.parametrize("piece", [1, 5, 1 << 20])
@pytest.mark.parametrize("raw", [
    b'{"stream":true,"stream_options":{"include_usage":false}}',  # the client decided: no duplicate key
    b'{"stream_options":null,"stream":true}',
    # Options too large for the sniffer to keep are still the client's: never a second key.
    b'{"stream":true,"stream_options":{"include_usage":false,"pad":"' + b"p" * 70_000 + b'"}}',
    b'{"stream":true,"x":"' + b"y" * 20_000 + b'","stream_options":{"include_usage":false}}',
    b'{"stream":false,"model":"gpt-4o"}',  # not streamed: the option would be a 400
    b'{"model":"gpt-4o"}',
    b'[{"stream":true}]',  # not an object
    b'{"stream":true,"cut":"short',  # never ends: upstream will say what is wrong
    b'{"stream":true} trailing',
    b'',
])
def test_a_body_that_must_not_change_goes_through_byte_for_byte(raw, piece):
    out, splice = through(raw, piece)
    assert out == raw and not splice.spliced


def test_a_known_length_is_read_no_further():
    raw = b'{"stream":true}'
    out, splice = through(raw + b"GARBAGE", 4, length=len(raw))
    assert splice.spliced and json.loads(out) == {"stream": True, "stream_options": ADDED}


def test_what_it_holds_back_stays_small_whatever_the_body():
    raw = b'{"stream":true,"x":"' + b"a" * 5_000_000 + b'"}' + b" " * 200_000
    splice = IncludeUsageSplice(io.BytesIO(raw), None)
    total = 0
    while chunk := splice.read(256 * 1024):
        total += len(chunk)
        assert len(splice.held) <= 64 * 1024 + 256 * 1024
    # Blanks past the 64 KiB it looks at: the brace is sent on, and the body goes up unchanged.
    assert total == len(raw) and not splice.spliced
