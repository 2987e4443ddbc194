"""Prometheus metrics across workers, and one JSON log line per call with its request id."""
import json
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import UPSTREAM_KEY, finished_calls


def scrape(url: str, **headers) -> dict[str, float]:
    response = requests.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = sample.name + json.dumps(sample.labels, sort_keys=True) if sample.labels else sample.name
            values[key] = values.get(key, 0) + sample.value
    return values


def total(values: dict[str, float], name: str, **labels) -> float:
    out = 0.0
    for key, value in values.items():
        if key == name or key.startswith(name + "{"):
            sample_labels = json.loads(key[len(name):]) if key != name else {}
            if all(sample_labels.get(k) == v for k, v in labels.items()):
                out += value
    return out


def test_metrics_add_up_across_workers(start_gunicorn, relay_key, upstream):
    relay = start_gunicorn(GUNICORN_WORKERS="3")
    headers = {"Authorization": f"Bearer {relay_key}"}
    for i in range(30):
        # A fresh connection each time, so that the calls spread over the workers.
        requests.post(f"{relay.url}/v1/responses", json={"model": "gpt-4o-mini", "input": str(i)},
                      headers=headers, timeout=30)
    for _ in range(4):
        requests.get(f"{relay.url}/v1/models", timeout=10)  # rejected: no key
    finished_calls(34)
    # The counters move just after each row is completed, so the last call may still be counting.
    deadline = time.monotonic() + 10
    while True:
        values = scrape(relay.url)
        answered = total(values, "relay_requests_total")
        if answered >= 34 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert total(values, "relay_requests_total", family="responses", status="200", outcome="ok") == 30
    assert total(values, "relay_requests_total", outcome="rejected", status="401") == 4
    assert total(values, "relay_upstream_latency_seconds_count") == 30
    assert total(values, "relay_overhead_seconds_count") == 30
    assert total(values, "relay_bytes_in_total") > 0 and total(values, "relay_bytes_out_total") > 0
    assert total(values, "relay_open_streams") == 0
    assert "relay_poll_batches_lag_seconds" in values
    assert total(values, "relay_audit_write_failures_total") == 0


def test_metrics_are_protected(start_gunicorn, upstream):
    relay = start_gunicorn(RELAY_METRICS_ALLOWED_IPS="10.9.9.9", RELAY_METRICS_TOKEN="scrape-token-123")
    assert requests.get(f"{relay.url}/metrics", timeout=10).status_code == 403
    wrong = requests.get(f"{relay.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 403
    assert scrape(relay.url, Authorization="Bearer scrape-token-123")


def test_one_json_log_line_per_call_with_its_request_id(start_gunicorn, relay_key, upstream):
    relay = start_gunicorn(GUNICORN_LOGLEVEL="info")
    response = requests.post(f"{relay.url}/v1/responses", json={"model": "gpt-4o-mini", "input": "hi"},
                             headers={"Authorization": f"Bearer {relay_key}"}, timeout=30)
    rejected = requests.get(f"{relay.url}/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {relay_key}"},
                            timeout=10)
    request_id = response.headers["x-relay-request-id"]
    assert response.headers["x-request-id"].startswith("req_")  # upstream's, next to ours
    rows = finished_calls(2)
    assert {r.relay_request_id for r in rows} == {request_id, rejected.headers["x-relay-request-id"]}
    def events() -> list[dict]:
        return [json.loads(line) for line in relay.log().splitlines() if line.startswith('{"event": "relay.call"')]

    # The line is written just after the row is completed: wait for both.
    deadline = time.monotonic() + 10
    while len(events()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    by_id = {e["request_id"]: e for e in events()}
    assert set(by_id) == {request_id, rejected.headers["x-relay-request-id"]}
    ok, refused = by_id[request_id], by_id[rejected.headers["x-relay-request-id"]]
    log = relay.log()
    assert (ok["status"], ok["outcome"], ok["model"], ok["family"]) == (200, "ok", "gpt-4o-mini", "responses")
    assert ok["key"] and len(ok["key"]) == 10 and ok["user"] == "alice"
    assert (refused["status"], refused["outcome"]) == (403, "rejected")
    assert UPSTREAM_KEY not in log and relay_key not in log
