"""No audit row is lost when the database refuses a write: it is journaled and replayed."""
import pytest
import requests
from django.core.management import call_command
from django.db import connection

from audit_app.ledger import seal, verify
from audit_app.models import ApiCall, Outcome, UsageDaily
from audit_app.recorder import CallContext, close_call, open_call
from audit_app.usage import Usage


@pytest.fixture
def journal(settings, tmp_path):
    settings.RELAY_AUDIT_SPOOL = str(tmp_path / "journal.jsonl")
    return tmp_path / "journal.jsonl"


class table_away:
    """The audit table (or another) is unreachable while inside (a real failure, not a mock)."""

    def __init__(self, model=ApiCall):
        self.model = model

    def __enter__(self):
        self.table = self.model._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {self.table} RENAME TO {self.table}_away")

    def __exit__(self, *exc):
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {self.table}_away RENAME TO {self.table}")


def test_a_refused_completion_is_journaled_and_replayed(transactional_db, issue_key, journal, shipped_prices):
    key, _ = issue_key()
    ctx = CallContext(method="POST", path="/v1/responses", family="responses", key=key, user=key.owner)
    call_id = open_call(ctx)
    with table_away():
        close_call(call_id, ctx, outcome=Outcome.OK, status=200, upstream_status=200, model="gpt-4o",
                   usage=Usage(input_tokens=1000, output_tokens=500, total_tokens=1500))
    assert journal.read_text().count("\n") == 1
    assert ApiCall.objects.get().outcome == Outcome.PENDING
    call_command("reconcile_calls")
    row = ApiCall.objects.get()
    assert row.outcome == Outcome.OK and row.total_tokens == 1500 and row.cost is not None
    assert UsageDaily.objects.get().calls == 1
    assert not journal.exists()
    assert seal().calls == 1 and verify(record=False).ok


def test_requests_during_an_outage_are_refused_and_still_audited(relay_url, relay_key, upstream, journal):
    with table_away():
        response = requests.get(f"{relay_url}/v1/models", headers={"Authorization": f"Bearer {relay_key}"},
                                timeout=10)
    assert response.status_code == 503 and upstream.requests == []
    assert not ApiCall.objects.exists()
    call_command("reconcile_calls")
    row = ApiCall.objects.get()
    assert (row.status, row.outcome, row.path) == (503, Outcome.REJECTED, "/v1/models")
    assert row.relay_request_id == response.headers["x-relay-request-id"]
    assert row.key_id is not None and UsageDaily.objects.get().calls == 1  # replayed into the rollups too
    assert seal().calls == 1 and verify(record=False).ok


def test_a_rejected_row_and_its_rollup_are_written_together_or_journaled(relay_url, relay_key, upstream, journal):
    with table_away(UsageDaily):
        response = requests.post(f"{relay_url}/v1/responses", data=b"{not json", timeout=10,
                                 headers={"Authorization": f"Bearer {relay_key}", "Content-Type": "application/json"})
    assert response.status_code == 400 and upstream.requests == []
    assert not ApiCall.objects.exists()  # the row went back with its rollup, into the journal
    assert journal.read_text().count("\n") == 1
    call_command("reconcile_calls")
    row = ApiCall.objects.get()
    assert (row.status, row.outcome) == (400, Outcome.REJECTED)
    assert UsageDaily.objects.get().calls == 1
    assert seal().calls == 1 and verify(record=False).ok
