"""Headers both ways: the allowlists against what OpenAI names, and each header through the relay.

tests/data/openai_header_names.json is the vendored list of header names
OpenAI's spec (extracted by tests/data/extract_header_names.py), docs and SDKs
use, plus the standard ones the relay chose to carry. The first tests make
every name a decision: forwarded, or withheld with a reason written down.
"""
import hashlib
import json
import os
from email.utils import formatdate
from pathlib import Path

import pytest
import requests

from audit_app.models import Outcome
from proxy_app import headers as rules
from tests.conftest import finished_call

NAMES = json.loads((Path(__file__).parent / "data" / "openai_header_names.json").read_text())
SOURCES = ("spec", "docs", "sdks", "standards", "conventions")


def named(direction: str) -> set[str]:
    return {name for source in SOURCES for name in NAMES[source][direction]}


def forwarded(name: str) -> bool:
    return name in rules.REQUEST_ALLOWED or name.startswith(rules.REQUEST_ALLOWED_PREFIXES)


def returned(name: str) -> bool:
    return name in rules.RESPONSE_ALLOWED or name.startswith(rules.RESPONSE_ALLOWED_PREFIXES)


# --- the allowlists, walked against the vendored names ----------------------------------


def test_the_vendored_list_holds_the_spec_names_and_is_lower_case():
    assert {"authorization", "content-type", "openai-beta"} <= set(NAMES["spec"]["request"])
    assert {"retry-after", "location", "transfer-encoding"} <= set(NAMES["spec"]["response"])
    for direction in ("request", "response"):
        assert all(name == name.lower().strip() for name in named(direction))


@pytest.mark.parametrize("direction, passes, withheld", [
    ("request", forwarded, rules.REQUEST_WITHHELD),
    ("response", returned, rules.RESPONSE_WITHHELD),
])
def test_every_header_openai_names_is_passed_on_or_withheld_for_a_written_reason(direction, passes, withheld):
    undecided = sorted(name for name in named(direction) if not passes(name) and name not in withheld)
    assert undecided == [], f"decide in proxy_app/headers.py: {undecided}"
    assert all(reason.strip() for reason in withheld.values())


@pytest.mark.parametrize("direction, allowed, prefixes, withheld", [
    ("request", rules.REQUEST_ALLOWED, rules.REQUEST_ALLOWED_PREFIXES, rules.REQUEST_WITHHELD),
    ("response", rules.RESPONSE_ALLOWED, rules.RESPONSE_ALLOWED_PREFIXES, rules.RESPONSE_WITHHELD),
])
def test_every_allowed_header_is_one_openai_or_a_standard_names(direction, allowed, prefixes, withheld):
    """Adding a name to an allowlist means recording where it comes from in the vendored list."""
    names = named(direction)
    assert sorted(allowed - names) == []
    for prefix in prefixes:
        assert any(name.startswith(prefix) for name in names), prefix
    assert sorted(set(withheld) - names) == []  # no stale reasons
    assert sorted(set(withheld) & allowed) == []


def test_the_issue_headers_are_allowed_in_their_direction():
    assert {"range", "if-range", "if-none-match", "if-modified-since", "traceparent", "tracestate"} \
        <= rules.REQUEST_ALLOWED
    assert {"location", "content-range", "accept-ranges", "etag", "last-modified", "deprecation", "sunset"} \
        <= rules.RESPONSE_ALLOWED


# --- through the relay --------------------------------------------------------------------

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


@pytest.fixture
def auth(relay_key):
    return {"Authorization": f"Bearer {relay_key}"}


@pytest.fixture
def stored_file(upstream):
    blob = os.urandom(10_000)
    return upstream.add_file(filename="clip.bin", purpose="assistants", content=blob)["id"], blob


def test_trace_context_continues_upstream(relay_url, auth, upstream):
    response = requests.post(f"{relay_url}/v1/responses", json={"model": "gpt-4o-mini", "input": "hi"},
                             headers={**auth, "traceparent": TRACEPARENT, "tracestate": TRACESTATE}, timeout=10)
    assert response.status_code == 200
    got = upstream.requests[-1]
    assert got.header("traceparent") == TRACEPARENT
    assert got.header("tracestate") == TRACESTATE


def test_range_and_conditional_headers_reach_upstream_on_a_read(relay_url, auth, upstream, stored_file):
    file_id, _ = stored_file
    sent = {"Range": "bytes=0-9", "If-Range": '"abc"', "If-None-Match": '"other"',
            "If-Modified-Since": "Tue, 14 Nov 2023 22:13:20 GMT"}
    requests.get(f"{relay_url}/v1/files/{file_id}/content", headers={**auth, **sent}, timeout=10)
    got = upstream.requests[-1]
    assert {name: got.header(name) for name in sent} == sent


def test_range_and_conditions_are_dropped_on_a_generating_call(relay_url, auth, upstream):
    """A generating call's response must arrive whole: its usage is read from it."""
    response = requests.post(
        f"{relay_url}/v1/responses", json={"model": "gpt-4o-mini", "input": "hi"},
        headers={**auth, "Range": "bytes=0-9", "If-Range": '"abc"', "If-None-Match": "*",
                 "If-Modified-Since": "Tue, 14 Nov 2023 22:13:20 GMT", "traceparent": TRACEPARENT}, timeout=10)
    assert response.status_code == 200 and response.json()["usage"]["output_tokens"] == 7
    got = upstream.requests[-1]
    for name in ("Range", "If-Range", "If-None-Match", "If-Modified-Since"):
        assert got.header(name) is None, name
    assert got.header("traceparent") == TRACEPARENT
    assert finished_call().output_tokens == 7


def test_a_ranged_file_download_returns_206_with_exactly_those_bytes(relay_url, auth, upstream, stored_file):
    file_id, blob = stored_file
    response = requests.get(f"{relay_url}/v1/files/{file_id}/content",
                            headers={**auth, "Range": "bytes=1000-1999"}, timeout=10)
    assert response.status_code == 206
    assert response.content == blob[1000:2000]
    assert response.headers["Content-Range"] == f"bytes 1000-1999/{len(blob)}"
    assert response.headers["Content-Length"] == "1000"
    assert response.headers["Accept-Ranges"] == "bytes"
    row = finished_call()
    assert (row.status, row.upstream_status, row.outcome, row.bytes_out) == (206, 206, Outcome.OK, 1000)


@pytest.mark.parametrize("wanted, first, last", [("bytes=-100", 9900, 9999), ("bytes=9990-", 9990, 9999),
                                                  ("bytes=0-0", 0, 0), ("bytes=9000-20000", 9000, 9999)])
def test_suffix_and_open_ranges_are_resolved_by_upstream(relay_url, auth, upstream, stored_file, wanted, first,
                                                         last):
    file_id, blob = stored_file
    response = requests.get(f"{relay_url}/v1/files/{file_id}/content", headers={**auth, "Range": wanted},
                            timeout=10)
    assert response.status_code == 206
    assert response.content == blob[first:last + 1]
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(blob)}"


def test_an_unsatisfiable_range_gets_416_with_the_length(relay_url, auth, upstream, stored_file):
    file_id, blob = stored_file
    response = requests.get(f"{relay_url}/v1/files/{file_id}/content",
                            headers={**auth, "Range": f"bytes={len(blob)}-"}, timeout=10)
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(blob)}"
    assert response.json()["error"]["code"] == "range_not_satisfiable"


def test_etag_and_last_modified_reach_the_client_and_revalidate_to_304(relay_url, auth, upstream, stored_file):
    file_id, blob = stored_file
    url = f"{relay_url}/v1/files/{file_id}/content"
    full = requests.get(url, headers=auth, timeout=10)
    assert full.status_code == 200 and full.content == blob
    etag, last_modified = full.headers["ETag"], full.headers["Last-Modified"]
    assert etag.startswith('"') and last_modified.endswith("GMT")

    by_tag = requests.get(url, headers={**auth, "If-None-Match": etag}, timeout=10)
    assert by_tag.status_code == 304 and by_tag.content == b""
    assert by_tag.headers["ETag"] == etag
    by_date = requests.get(url, headers={**auth, "If-Modified-Since": last_modified}, timeout=10)
    assert by_date.status_code == 304 and by_date.content == b""
    changed = requests.get(url, headers={**auth, "If-None-Match": '"stale"'}, timeout=10)
    assert changed.status_code == 200 and changed.content == blob


def test_if_range_resumes_only_the_same_version(relay_url, auth, upstream, stored_file):
    file_id, blob = stored_file
    url = f"{relay_url}/v1/files/{file_id}/content"
    etag = requests.get(url, headers=auth, timeout=10).headers["ETag"]
    same = requests.get(url, headers={**auth, "Range": "bytes=5000-", "If-Range": etag}, timeout=10)
    assert same.status_code == 206 and same.content == blob[5000:]
    other = requests.get(url, headers={**auth, "Range": "bytes=5000-", "If-Range": '"older"'}, timeout=10)
    assert other.status_code == 200 and other.content == blob


def test_deprecation_sunset_and_should_retry_reach_the_client(relay_url, auth, upstream):
    sunset = formatdate(1798761600, usegmt=True)
    upstream.extra_headers = {"Deprecation": "@1767225600", "Sunset": sunset, "x-should-retry": "false"}
    response = requests.get(f"{relay_url}/v1/models", headers=auth, timeout=10)
    assert response.headers["Deprecation"] == "@1767225600"
    assert response.headers["Sunset"] == sunset
    assert response.headers["x-should-retry"] == "false"


def test_a_relative_location_passes_unchanged(relay_url, auth, upstream):
    upstream.extra_headers = {"Location": "/v1/realtime/calls/rtc_0123456789abcdef"}
    response = requests.get(f"{relay_url}/v1/models", headers=auth, timeout=10, allow_redirects=False)
    assert response.headers["Location"] == "/v1/realtime/calls/rtc_0123456789abcdef"


def test_a_location_on_upstream_becomes_the_same_path_on_the_relay(relay_url, auth, upstream):
    """An absolute upstream URL would send the client to OpenAI, past the relay and its key."""
    upstream.extra_headers = {"Location": f"{upstream.base_url}/realtime/calls/rtc_1?x=1"}
    response = requests.get(f"{relay_url}/v1/models", headers=auth, timeout=10, allow_redirects=False)
    assert response.headers["Location"] == "/v1/realtime/calls/rtc_1?x=1"
    upstream.extra_headers = {"Location": "https://elsewhere.example/v1/x"}
    response = requests.get(f"{relay_url}/v1/models", headers=auth, timeout=10, allow_redirects=False)
    assert response.headers["Location"] == "https://elsewhere.example/v1/x"


def test_the_sdk_downloads_a_range_of_a_file(sdk, upstream, stored_file):
    file_id, blob = stored_file
    raw = sdk.files.with_raw_response.content(file_id, extra_headers={"Range": "bytes=10-19"})
    assert raw.http_response.status_code == 206
    assert raw.content == blob[10:20]
    assert raw.headers["content-range"] == f"bytes 10-19/{len(blob)}"


@pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")  # the SDK's notice, not the relay's
def test_the_sdk_resumes_a_video_download_with_a_range(sdk, upstream):
    """A video is the large download a client resumes: the bytes from the offset on, no more."""
    from tests.fake_openai import VIDEO_BYTES

    offset = VIDEO_BYTES - 300_000
    raw = sdk.videos.with_raw_response.download_content("video_abc", extra_headers={"Range": f"bytes={offset}-"})
    assert raw.http_response.status_code == 206
    assert raw.content == bytes(i % 256 for i in range(offset, VIDEO_BYTES))
    assert raw.headers["content-range"] == f"bytes {offset}-{VIDEO_BYTES - 1}/{VIDEO_BYTES}"
    assert raw.headers["content-type"] == "video/mp4"
    row = finished_call()
    assert (row.path, row.status, row.outcome, row.bytes_out) == (
        "/v1/videos/video_abc/content", 206, Outcome.OK, 300_000)


def test_ranges_and_304_through_gunicorn(gunicorn_relay, relay_key, upstream):
    """The production server: a 206 from a generated 5 MiB file, and a bodiless 304 on keep-alive."""
    size = 5 * 1024 * 1024 + 3
    url = f"{gunicorn_relay.url}/v1/files/big-{size}/content"
    auth = {"Authorization": f"Bearer {relay_key}"}
    with requests.Session() as session:
        part = session.get(url, headers={**auth, "Range": "bytes=4194000-4194999"}, timeout=30)
        assert part.status_code == 206
        assert part.content == bytes(i % 256 for i in range(4194000, 4195000))
        etag = part.headers["ETag"]
        again = session.get(url, headers={**auth, "If-None-Match": etag}, timeout=30)
        assert again.status_code == 304 and again.content == b""
        tail = session.get(url, headers={**auth, "Range": "bytes=-3"}, timeout=30)
        assert tail.status_code == 206 and tail.content == bytes(i % 256 for i in range(size - 3, size))
    direct = requests.get(f"{upstream.base_url}/files/big-{size}/content", headers={"Range": "bytes=0-65535"},
                          timeout=30)
    assert hashlib.sha256(direct.content).digest() == hashlib.sha256(bytes(range(256)) * 256).digest()
