"""Staff tools' view: the official openai SDK pointed at the relay, every call
behaving as if direct, and one complete audit row per call."""
import hashlib
import io

import openai
import pytest

from audit_app.models import ApiCall, Outcome
from tests.conftest import finished_call, finished_calls


def only_row(**expected) -> ApiCall:
    row = finished_call()
    assert row.outcome == Outcome.OK, row.error
    assert row.status == row.upstream_status == 200
    assert row.key_id is not None and row.user.username == "alice"
    assert row.finished_at is not None and row.finished_at >= row.started_at
    assert row.duration_ms is not None and row.duration_ms > 0
    assert row.upstream_request_id.startswith("req_")
    assert row.client_ip == "127.0.0.1"
    assert row.user_agent.startswith("OpenAI/Python")
    assert row.bytes_out > 0
    for field, value in expected.items():
        assert getattr(row, field) == value, field
    return row


def test_models(sdk):
    models = sdk.models.list()
    assert [m.id for m in models.data]
    assert sdk.models.retrieve(models.data[0].id).id == models.data[0].id
    rows = finished_calls(2)
    assert [(r.method, r.family, r.outcome) for r in rows] == [("GET", "models", "ok")] * 2


def test_responses_plain(sdk):
    response = sdk.responses.create(model="gpt-4o-mini", input="Say hi")
    assert response.output_text
    row = only_row(method="POST", path="/v1/responses", family="responses", model="gpt-4o-mini",
                   stream=False)
    assert row.input_tokens == response.usage.input_tokens
    assert row.output_tokens == response.usage.output_tokens
    assert row.bytes_in > 0


def test_responses_streamed(sdk):
    events = list(sdk.responses.create(model="gpt-4o-mini", input="Say hi", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    usage = events[-1].response.usage
    row = only_row(family="responses", model="gpt-4o-mini", stream=True)
    assert (row.input_tokens, row.output_tokens) == (usage.input_tokens, usage.output_tokens)


def test_chat_plain(sdk):
    completion = sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content
    row = only_row(path="/v1/chat/completions", family="chat", model="gpt-4o", stream=False)
    assert row.input_tokens == completion.usage.prompt_tokens


def test_chat_streamed(sdk):
    chunks = list(sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The client did not ask for usage, so it gets no usage chunk...
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    # ...but the audit row has it.
    row = only_row(family="chat", model="gpt-4o", stream=True)
    assert row.input_tokens and row.output_tokens and row.total_tokens


def test_embeddings(sdk):
    result = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    row = only_row(family="embeddings", model="text-embedding-3-small")
    assert row.input_tokens == result.usage.prompt_tokens and row.output_tokens == 0


def test_files_lifecycle(sdk, upstream):
    content = b'{"custom_id": "1"}\n' * 1000
    uploaded = sdk.files.create(file=("requests.jsonl", io.BytesIO(content)), purpose="batch")
    assert uploaded.bytes == len(content) and uploaded.filename == "requests.jsonl"
    assert hashlib.sha256(sdk.files.content(uploaded.id).read()).digest() == hashlib.sha256(content).digest()
    assert uploaded.id in [f.id for f in sdk.files.list(purpose="batch")]
    assert sdk.files.retrieve(uploaded.id).purpose == "batch"
    assert sdk.files.delete(uploaded.id).deleted is True
    rows = [(r.method, r.path, r.status, r.outcome) for r in finished_calls(5)]
    assert rows == [
        ("POST", "/v1/files", 200, "ok"),
        ("GET", f"/v1/files/{uploaded.id}/content", 200, "ok"),
        ("GET", "/v1/files", 200, "ok"),
        ("GET", f"/v1/files/{uploaded.id}", 200, "ok"),
        ("DELETE", f"/v1/files/{uploaded.id}", 200, "ok"),
    ]
    assert ApiCall.objects.filter(method="POST").get().bytes_in > len(content)


def test_sdk_sees_relay_errors_as_api_errors(relay_url):
    client = openai.OpenAI(base_url=f"{relay_url}/v1", api_key="tr-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as excinfo:
        client.models.list()
    assert excinfo.value.code == "invalid_api_key"


def test_upstream_key_never_reaches_the_client(sdk, upstream, relay_key):
    from tests.conftest import UPSTREAM_KEY

    raw = sdk.models.with_raw_response.list()
    assert UPSTREAM_KEY not in raw.http_response.text
    assert all(UPSTREAM_KEY not in v for v in raw.headers.values())
    finished_call()
    row_values = " ".join(str(v) for v in ApiCall.objects.values().get().values())
    assert UPSTREAM_KEY not in row_values and relay_key not in row_values
