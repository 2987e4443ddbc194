"""One owner per call's audit row (proxy_app.call_audit.CallAudit): opened once, closed once."""
from audit_app.models import ApiCall, Outcome, UsageDaily
from audit_app.recorder import CallContext
from proxy_app.call_audit import CallAudit


def context(key) -> CallContext:
    return CallContext(method="GET", path="/v1/models", family="models", key=key, user=key.owner)


def test_a_finished_call_cannot_be_closed_again(issue_key):
    key, _ = issue_key()
    audit = CallAudit(context(key))
    audit.open()
    assert ApiCall.objects.get().outcome == Outcome.PENDING
    assert audit.finish(outcome=Outcome.OK, status=200, upstream_status=200) is True
    assert audit.reject(400, "too late") is False
    assert audit.fail(status=502, error="too late") is False
    row = ApiCall.objects.get()
    assert (row.outcome, row.status, row.error) == (Outcome.OK, 200, "")
    assert UsageDaily.objects.get().calls == 1


def test_a_refusal_before_the_row_is_opened_writes_one_finished_row(issue_key):
    key, _ = issue_key()
    audit = CallAudit(context(key))
    assert audit.reject(403, "blocked") is True
    assert audit.reject(403, "blocked again") is False
    row = ApiCall.objects.get()
    assert (row.outcome, row.status, row.error) == (Outcome.REJECTED, 403, "blocked")
    assert UsageDaily.objects.get().calls == 1


def test_a_refusal_after_the_row_is_opened_completes_that_row(issue_key):
    key, _ = issue_key()
    audit = CallAudit(context(key))
    audit.open()
    assert audit.reject(502, "upstream unreachable") is True
    row = ApiCall.objects.get()
    assert (row.outcome, row.status, row.error) == (Outcome.FAILED, 502, "upstream unreachable")
    assert audit.finish(outcome=Outcome.OK, status=200) is False
    assert ApiCall.objects.count() == 1


def test_a_failed_call_is_refused_below_500_and_failed_from_500(issue_key):
    key, _ = issue_key()
    refused, failed = CallAudit(context(key)), CallAudit(context(key))
    refused.open(), failed.open()
    refused.fail(status=413, error="too large")
    failed.fail(status=504, error="timeout")
    assert ApiCall.objects.get(pk=refused.call_id).outcome == Outcome.REJECTED
    assert ApiCall.objects.get(pk=failed.call_id).outcome == Outcome.FAILED
