"""Each request body is read once: what the policy parsed is what the observers use."""
import io
import json

import pytest

from proxy_app.inspection import Body, _json_object, spooled
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
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/images/generations", "/v1/audio/speech"])
def test_request_fields_of_a_spooled_body_are_what_the_policy_picked_out_on_its_way_in(raw, path):
    # A limited key's body too large to parse whole: spooled once by the policy, not scanned again.
    fields = RequestFields(parse(path), spooled(io.BytesIO(raw), "application/json", as_json=True))
    assert not fields.sniffing and fields.sniffer is None
    assert fields.audit_fields() == sniffed(raw, path)


def test_the_speech_input_of_a_spooled_body_is_counted_in_characters():
    raw = json.dumps({"model": "tts-1", "input": "é" * 5000, "voice": "alloy"}).encode()
    fields = RequestFields(parse("/v1/audio/speech"), spooled(io.BytesIO(raw), "application/json", as_json=True))
    assert fields.audit_fields()["usage_hint"].characters == 5000 == sniffed(raw, "/v1/audio/speech")[
        "usage_hint"].characters


def test_form_fields_of_a_spooled_multipart_body_are_read_once():
    boundary = "b0und"
    raw = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-image-1\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n3\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
           f"Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG" * 1000 + f"\r\n--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    fields = RequestFields(parse("/v1/images/edits"), spooled(io.BytesIO(raw), content_type, as_json=False))
    assert not fields.sniffing
    hint = fields.audit_fields()
    assert (hint["model"], hint["usage_hint"].images) == ("gpt-image-1", 3)
    by_bytes = RequestFields(parse("/v1/images/edits"), Body(content_type=content_type))
    by_bytes.on_request_chunk(raw)
    assert by_bytes.audit_fields() == hint


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
