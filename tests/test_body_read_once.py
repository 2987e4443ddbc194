"""Each request body is read once: what the policy parsed is what the observers use."""
import io
import json

import pytest

from proxy_app.inspection import Body, _json_object
from proxy_app.observers import ChatStreamUsage, RequestFields
from proxy_app.paths import parse
from relay_project.lib.sniff import JsonFieldSniffer


def inspected(raw: bytes) -> Body:
    document, duplicates = _json_object(raw)
    return Body(io.BytesIO(raw), len(raw), "application/json", held=True, raw=raw, document=document,
                duplicates=duplicates, fields=document, check_scope=True, reserve=True, size=len(raw))


def sniffed(raw: bytes, path: str) -> dict:
    fields = RequestFields(parse(path), Body(content_type="application/json"))
    fields.on_request_chunk(raw)
    return fields.audit_fields()


BODIES = [
    b'{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "dall-e-3", "n": 2, "size": "1024x1024", "quality": "hd", "prompt": "a cat"}',
    b'{"model": "' + b"m" * 600 + b'", "stream": false}',  # too long to keep: no model
    b'{"model": "a", "model": "b", "x": {"k": 1, "k": 2}}',  # duplicated keys: the reader's own way
    json.dumps({"model": "gpt-4o", "messages": [{"content": "x" * 40000}]}).encode(),
    b'{"model": "\\u00e9' + b"\\u00e9" * 80 + b'"}',  # near the limit only through its escapes
]


@pytest.mark.parametrize("raw", BODIES)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/images/generations", "/v1/audio/speech"])
def test_request_fields_from_the_parsed_body_are_what_sniffing_its_bytes_finds(raw, path):
    fields = RequestFields(parse(path), inspected(raw))
    assert not fields.sniffing  # nothing is scanned on the way up
    assert fields.audit_fields() == sniffed(raw, path)


@pytest.mark.parametrize("raw", BODIES)
def test_the_sniffer_takes_a_parsed_body_as_it_would_read_its_bytes(raw):
    document, duplicates = _json_object(raw)
    wanted = frozenset({"model", "stream", "n", "x"})
    fed, taken = JsonFieldSniffer(wanted), JsonFieldSniffer(wanted)
    fed.feed(raw)
    taken.take(document, raw, duplicates=duplicates)
    assert (taken.values, taken.seen, taken.is_object) == (fed.values, fed.seen, fed.is_object)


@pytest.mark.parametrize("raw", [
    b'{"model": "gpt-4o", "stream": true, "messages": []}',
    b'{"stream": true, "stream_options": {"include_usage": false}, "model": "m"}',
    b'{"stream": true, "stream_options": {"include_usage": true}}',
    b'{"stream": false}',
])
def test_include_usage_is_added_from_the_parsed_body_as_from_its_bytes(raw, settings):
    from_parsed, from_bytes = ChatStreamUsage(inspected(raw)), ChatStreamUsage()
    body = inspected(raw)
    from_parsed.body = body
    parsed_source, parsed_length = from_parsed.rewrite_request(body.source, body.length)
    read_source, read_length = from_bytes.rewrite_request(io.BytesIO(raw), len(raw))
    assert parsed_source.read() == read_source.read() and parsed_length == read_length
    assert (from_parsed.stripper is None) == (from_bytes.stripper is None)
    assert body.document == json.loads(raw)  # the policy's object is left as it read it


@pytest.mark.parametrize("raw", [b'{"model": "m", "stream": true}', b'{"stream": true, "stream_options": null}',
                                 b'{"stream": "yes"}'])
def test_the_streamed_splice_decides_from_the_parsed_body_as_from_its_bytes(raw, settings):
    settings.RELAY_REWRITE_MAX_BYTES = 4  # past it, the body is spliced as it streams
    body = inspected(raw)
    from_parsed, from_bytes = ChatStreamUsage(body), ChatStreamUsage()
    parsed, _ = from_parsed.rewrite_request(body.source, body.length)
    read, _ = from_bytes.rewrite_request(io.BytesIO(raw), len(raw))
    assert from_parsed.splice.sniffer is None  # not scanned again
    assert parsed.read() + parsed.read() == read.read() + read.read()
    assert from_parsed.splice.spliced == from_bytes.splice.spliced
