"""The admin as a team admin's daily tool: errors and latency rollups, the errors view,
dashboard filters and the per-key table, totals on filtered lists, batch failures,
budgets and their alerts, presets, and links and sorting that respect permissions."""
from __future__ import annotations

import io
import re
from datetime import datetime, time as dtime, timedelta
from decimal import Decimal

import pytest
import requests
from django.contrib.auth.models import Group, Permission
from django.core import mail
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone

from audit_app import jobs, latency, rollups
from audit_app.budgets import check_after_call, check_budget_alerts
from audit_app.latency import Histogram, bucket_of
from audit_app.models import (ApiCall, BatchRecord, BatchResult, Billing, BudgetAlert, CallStatsDaily, Outcome,
                              UsageDaily)
from audit_app.models.stats import DURATION_COLUMNS, LATENCY_EDGES_MS, TTFB_COLUMNS
from proxy_app.models import RelayKey, Team, UserLimit
from tests.conftest import finished_calls, settle

CALLS = "/admin/audit_app/apicall/"
ERRORS = "/admin/errors/"
DASHBOARD = "/admin/dashboard/"


# --- the rollups, written as calls finish --------------------------------------------------


def _stats_rows() -> dict[tuple, dict]:
    fields = ("calls", "ttfb_calls", *DURATION_COLUMNS, *TTFB_COLUMNS)
    return {(r.date, r.model, r.family, r.user_id, r.key_id, r.outcome, r.status_class):
            {f: getattr(r, f) for f in fields} for r in CallStatsDaily.objects.all()}


def test_every_finished_call_lands_in_its_stats_row_with_its_duration_and_first_byte(relay_url, issue_key, upstream):
    _, key = issue_key()
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "gpt-4o-mini", "input": "hi"}
    assert requests.post(f"{relay_url}/v1/responses", json=body, headers=auth).status_code == 200
    with requests.post(f"{relay_url}/v1/responses", json={**body, "stream": True}, headers=auth, stream=True) as r:
        assert r.status_code == 200 and b"response.completed" in r.content
    upstream.inject("/v1/responses", status=500, body={"error": {"message": "boom", "type": "server_error",
                                                                  "param": None, "code": None}})
    assert requests.post(f"{relay_url}/v1/responses", json=body, headers=auth).status_code == 500
    assert requests.post(f"{relay_url}/v1/responses", json=body,
                         headers={"Authorization": "Bearer tr-not-a-key"}).status_code == 401
    rows = finished_calls(4)
    settle()
    assert len(rows) == 4
    forwarded = [r for r in rows if r.status in (200, 500)]
    assert len(forwarded) == 3
    for row in forwarded:
        assert row.ttfb_ms is not None and 0 < row.ttfb_ms <= row.duration_ms
    refused = next(r for r in rows if r.status == 401)
    assert refused.ttfb_ms is None  # the relay answered itself: no upstream first byte

    written = _stats_rows()
    # Written as the calls finished, they equal the rows rebuilt from the raw calls.
    latency.rebuild()
    assert written == _stats_rows()
    by_outcome = {}
    for (day, model, family, user_id, key_id, outcome, status_class), counts in written.items():
        by_outcome[(outcome, status_class)] = by_outcome.get((outcome, status_class), 0) + counts["calls"]
    assert by_outcome == {("ok", 2): 2, ("upstream_error", 5): 1, ("rejected", 4): 1}
    # The call refused before authentication belongs to nobody: key and user 0.
    assert any(k[3] == 0 and k[4] == 0 and k[5] == "rejected" for k in written)


def test_histogram_buckets_and_percentiles_follow_the_documented_edges():
    assert LATENCY_EDGES_MS[:4] == (50, 100, 200, 300) and LATENCY_EDGES_MS[-1] == 300000
    assert (bucket_of(0), bucket_of(49.9), bucket_of(50), bucket_of(299_999), bucket_of(300_000)) == (0, 0, 1, 18, 19)
    h = Histogram.empty()
    counts = [0] * len(h.counts)
    counts[bucket_of(120)] = 50   # 100-200 ms
    counts[bucket_of(400)] = 45   # 300-500 ms
    counts[bucket_of(2500)] = 5   # 2-3 s
    h.add(counts)
    # p50: rank 50 of 100, the last of the 50 calls in 100-200 ms: 100 + 100 x 50/50.
    assert h.percentile(50) == 200.0
    # p95: rank 95, the 45th of 45 in 300-500 ms: 300 + 200 x 45/45.
    assert h.percentile(95) == 500.0
    # p96: rank 96, the first of 5 in 2-3 s: 2000 + 1000 x 1/5.
    assert h.percentile(96) == 2200.0
    assert h.bucket_floor(95) == 300
    assert Histogram.empty().percentile(50) is None


# --- the errors and latency view ----------------------------------------------------------


@pytest.fixture
def calls(db, django_user_model):
    """Calls of yesterday and today, with outcomes, statuses and durations known by hand."""
    alice, bob = django_user_model.objects.create_user("alice"), django_user_model.objects.create_user("bob")
    ka, kb = RelayKey.issue(alice, name="laptop")[0], RelayKey.issue(bob, name="ci")[0]
    today = timezone.localdate()

    def at(days_ago: int, hour: int = 12) -> datetime:
        return timezone.make_aware(datetime.combine(today - timedelta(days=days_ago), dtime(hour)))

    rows = [  # user, key, days ago, model, status, outcome, duration, ttfb, cost (None: unpriced)
        (alice, ka, 1, "gpt-4o", 200, Outcome.OK, 120, 80, "0.50"),
        (alice, ka, 1, "gpt-4o", 200, Outcome.OK, 180, 90, "0.50"),
        (alice, ka, 1, "gpt-4o", 500, Outcome.UPSTREAM_ERROR, 2500, 2400, None),
        (bob, kb, 1, "gpt-4o-mini", 200, Outcome.OK, 400, 30, "0.01"),
        (bob, kb, 1, "gpt-4o-mini", 429, Outcome.REJECTED, 5, None, None),
        (bob, kb, 0, "o3", 200, Outcome.OK, 9000, 700, "2.00"),
        (alice, ka, 0, "mystery-model", 200, Outcome.OK, 300, 250, None),
    ]
    for user, key, days_ago, model, status, outcome, duration, ttfb, cost in rows:
        billing = (Billing.PRICED if cost else Billing.UNPRICED if outcome == Outcome.OK else Billing.FREE)
        ApiCall.objects.create(
            user=user, key=key, started_at=at(days_ago), finished_at=at(days_ago), method="POST",
            path="/v1/responses", family="responses", model=model, status=status, upstream_status=status,
            outcome=outcome, duration_ms=duration, ttfb_ms=ttfb, input_tokens=1000, output_tokens=200,
            total_tokens=1200, cost=Decimal(cost) if cost else None,
            unpriced=billing == Billing.UNPRICED, billing=billing)
    rollups.rebuild()
    latency.rebuild()
    return {"alice": alice, "bob": bob, "ka": ka, "kb": kb, "today": today}


def _links(html: str, table_id: str) -> list[str]:
    table = re.search(rf'<table id="{table_id}".*?</table>', html, re.S).group(0)
    return [a.replace("&amp;", "&") for a in re.findall(r'href="([^"]+)"', table)]


def test_errors_view_counts_outcomes_status_classes_and_error_rate_per_day_and_model(admin_client, calls):
    page = admin_client.get(ERRORS, {"period": "yesterday"})
    assert page.status_code == 200
    report = page.context["report"]
    t = report.total
    assert t.calls == 5 and t.errors == 2  # one upstream 500, one rejected 429
    assert t.error_rate == Decimal("40.0")
    assert t.statuses == {2: 3, 5: 1, 4: 1}
    gpt4o = next(m for m in report.models if m.label == "gpt-4o")
    assert (gpt4o.calls, gpt4o.errors, gpt4o.error_rate) == (3, 1, Decimal("33.3"))
    # Durations 120, 180 ms (100-200 bucket) and 2500 ms (2-3 s): p50 is rank 1.5 of 3,
    # 1.5 of 2 into 100-200 ms = 175 ms; p95 is rank 2.85, 0.85 into 2-3 s = 2850 ms.
    assert gpt4o.p50 == 175.0 and gpt4o.p95 == 2850.0
    html = page.content.decode()
    assert "40.0%" in html


def test_each_errors_figure_links_to_exactly_the_calls_behind_it(admin_client, calls):
    page = admin_client.get(ERRORS, {"period": "yesterday"})
    t = page.context["report"].total
    for url, expected in [
        (t.errors_url, {("gpt-4o", 500), ("gpt-4o-mini", 429)}),
        (t.status_cells[3].url, {("gpt-4o", 500)}),  # 5xx
        (t.status_cells[2].url, {("gpt-4o-mini", 429)}),  # 4xx
        (t.slow_url, {("gpt-4o", 500)}),  # at least the p95 bucket's floor (2 s)
    ]:
        listing = admin_client.get(url)
        assert listing.status_code == 200, url
        got = {(c.model, c.status) for c in listing.context["cl"].result_list}
        assert got == expected, url


def test_errors_view_reads_rollups_never_raw_calls(admin_client, calls):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        assert admin_client.get(ERRORS, {"period": "30d"}).status_code == 200
    assert not [q for q in ctx.captured_queries if ApiCall._meta.db_table in q["sql"]]


# --- dashboard filters and the per-key table ------------------------------------------------


def test_dashboard_filters_by_user_key_model_and_family_and_links_keep_them(admin_client, calls):
    ka = calls["ka"]
    page = admin_client.get(DASHBOARD, {"period": "7d", "key__id__exact": ka.pk})
    d = page.context["dashboard"]
    assert d.totals.calls == 4 and d.totals.cost == Decimal("1.00")  # alice's: 2 x 0.50 priced
    assert d.totals.unpriced_calls == 1
    assert [line.label for line in d.by_key] == [str(ka)]
    assert f"key__id__exact={ka.pk}" in d.links["calls"]
    page = admin_client.get(DASHBOARD, {"period": "7d", "model__exact": "o3", "family__exact": "responses"})
    assert page.context["dashboard"].totals.calls == 1
    page = admin_client.get(DASHBOARD, {"period": "7d", "user__id__exact": calls["bob"].pk})
    assert page.context["dashboard"].totals.cost == Decimal("2.01")
    assert admin_client.get(DASHBOARD, {"user__id__exact": "x"}).status_code == 400


def test_dashboard_has_a_per_key_breakdown_sorted_by_cost(admin_client, calls):
    page = admin_client.get(DASHBOARD, {"period": "7d"})
    by_key = page.context["dashboard"].by_key
    assert [(line.label, line.figures.calls, line.figures.cost) for line in by_key] == [
        (str(calls["kb"]), 3, Decimal("2.01")), (str(calls["ka"]), 4, Decimal("1.00"))]


@pytest.mark.parametrize("preset, days_back, length", [("today", 0, 1), ("yesterday", 1, 1)])
def test_today_and_yesterday_presets_cover_one_day(admin_client, calls, preset, days_back, length):
    period = admin_client.get(DASHBOARD, {"period": preset}).context["period"]
    assert period.start == calls["today"] - timedelta(days=days_back) and period.day_count == length
    listing = admin_client.get(CALLS).content.decode()
    assert ">Yesterday</a>" in listing and ">Today</a>" in listing


# --- totals on filtered lists -----------------------------------------------------------


def test_calls_list_totals_are_exact_from_rollups_when_they_answer_the_filter(admin_client, calls):
    yesterday = calls["today"] - timedelta(days=1)
    page = admin_client.get(CALLS, {"user__id__exact": calls["alice"].pk, "started_at__gte": yesterday.isoformat(),
                                    "started_at__lt": calls["today"].isoformat()})
    totals = page.context["totals"]
    assert (totals.calls, totals.total_tokens, totals.cost, totals.cost_unknown) == (3, 3600, Decimal("1.00"), 0)
    assert totals.exact and "rollups" in totals.note
    assert 'id="list-totals"' in page.content.decode()


def test_unfiltered_calls_list_totals_come_from_the_rollups(admin_client, calls):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        totals = admin_client.get(CALLS).context["totals"]
    assert (totals.calls, totals.cost, totals.cost_unknown) == (7, Decimal("3.01"), 1)  # 0.50 + 0.50 + 0.01 + 2.00; mystery-model unpriced
    assert "rollups" in totals.note
    assert not [q for q in ctx.captured_queries if "SUM(" in q["sql"] and "audit_app_apicall" in q["sql"]]


def test_calls_list_totals_over_other_filters_sum_the_listed_rows(admin_client, calls):
    page = admin_client.get(CALLS, {"status_class": "2xx"})
    totals = page.context["totals"]
    # Five 200s: 0.50 + 0.50 + 0.01 + 2.00 priced, one unpriced (mystery-model).
    assert (totals.calls, totals.cost, totals.cost_unknown) == (5, Decimal("3.01"), 1)
    assert totals.note == "exact"


def test_calls_list_totals_past_the_cap_say_so(admin_client, calls, monkeypatch):
    from audit_app.admin_toolkit import CappedPaginator

    monkeypatch.setattr(CappedPaginator, "cap", 3)
    totals = admin_client.get(CALLS, {"status_class": "2xx"}).context["totals"]
    assert totals.calls == 3 and totals.note == "over the first 3 rows of this list"


def _slow_calls(admin_client, threshold: str):
    page = admin_client.get(CALLS, {"duration_ms__gte": threshold})
    return [c.pk for c in page.context["cl"].result_list], page.context["totals"]


def test_slow_calls_are_listed_and_summed_alike_whether_few_or_many_are_that_slow(admin_client, calls, monkeypatch):
    import audit_app.admin_toolkit

    few = _slow_calls(admin_client, "300")  # at most COUNT_CAP match: listed from the duration index
    monkeypatch.setattr(audit_app.admin_toolkit, "COUNT_CAP", 2)
    many = _slow_calls(admin_client, "300")  # more than that: listed by date, as without the index
    expected = list(ApiCall.objects.filter(duration_ms__gte=300).order_by("-started_at", "-pk")
                    .values_list("pk", flat=True))
    assert len(expected) == 4 and few[0] == many[0] == expected
    for totals in (few[1], many[1]):
        # 2500 ms (a 500: free), 400 ms ($0.01), 9000 ms ($2.00), 300 ms (unpriced).
        assert (totals.calls, totals.total_tokens, totals.cost, totals.cost_unknown) == (4, 4800, Decimal("2.01"), 1)
        assert totals.exact and totals.note == "exact"


@pytest.mark.parametrize("params, index", [
    ({"status_class": "5xx"}, "apicall_5xx_started"),
    ({"status_class": "4xx"}, "apicall_4xx_started"),
    ({"duration_ms__gte": "5000"}, "apicall_duration"),
])
def test_error_and_slow_call_lists_are_counted_from_their_own_index(admin_client, calls, params, index):
    """The errors view's status-class and p95 links at a million calls (docs/admin-scale.md): the
    capped count reads the partial or duration index, never the whole table. A partial index
    serves SQLite only when the query has its condition's terms as they are (status >= 500)."""
    from django.db import connection

    cl = admin_client.get(CALLS, params).context["cl"]
    counted = cl.queryset.order_by().values("pk")[:10_001]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # seven rows: let the plan show what a big table gets
            cursor.execute("SET LOCAL enable_seqscan = off")
    assert index in counted.explain()


def test_daily_usage_list_totals_are_exact(admin_client, calls):
    totals = admin_client.get("/admin/audit_app/usagedaily/", {"model__exact": "gpt-4o"}).context["totals"]
    assert (totals.calls, totals.cost, totals.cost_unknown, totals.exact) == (3, Decimal("1.00"), 0, True)


# --- list columns: the billing state, never $0 for an unknown cost -----------------------------


def test_calls_list_shows_billing_state_and_the_columns_that_matter(admin_client, calls):
    html = admin_client.get(CALLS).content.decode()
    headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', html)
    assert headers == ["started", "user_link", "model_short", "status_outcome", "tokens", "cost_usd",
                       "duration", "ttfb", "family_short", "key_short"]
    assert "unpriced</span>" in html and "$0.000000" not in html
    assert "500 upstream error" in html and "2.50 s" in html


# --- batch failures at a glance ----------------------------------------------------------


@pytest.fixture
def batches(db, django_user_model):
    owner = django_user_model.objects.create_user("carol")
    good = BatchRecord.objects.create(batch_id="batch_good", status="completed", request_total=2,
                                      request_completed=2, request_failed=0, created_by=owner)
    bad = BatchRecord.objects.create(batch_id="batch_bad", status="completed", request_total=3,
                                     request_completed=1, request_failed=2, created_by=owner)
    BatchResult.objects.create(batch=bad, custom_id="ok-1", status_code=200)
    BatchResult.objects.create(batch=bad, custom_id="req-2", status_code=400, from_error_file=True,
                               error_code="context_length_exceeded", error_message="too many tokens")
    BatchResult.objects.create(batch=bad, custom_id="req-3", status_code=400, from_error_file=True,
                               error_code="invalid_request_error", error_message="max_tokens is too large")
    return good, bad


def test_batches_filter_with_failures_and_batch_page_lists_its_first_errors(admin_client, batches):
    good, bad = batches
    page = admin_client.get("/admin/audit_app/batchrecord/", {"failures": "yes"})
    assert [b.batch_id for b in page.context["cl"].result_list] == ["batch_bad"]
    page = admin_client.get(f"/admin/audit_app/batchrecord/{bad.pk}/change/").content.decode()
    assert "2 of 3 requests failed" in page
    assert "context_length_exceeded" in page and "max_tokens is too large" in page
    errors = admin_client.get("/admin/audit_app/batchresult/", {"batch__id__exact": bad.pk, "errors": "yes"})
    assert sorted(r.custom_id for r in errors.context["cl"].result_list) == ["req-2", "req-3"]


# --- budgets and alerts -----------------------------------------------------------------


def _spend(user, key, cost: str) -> None:
    rollups.add(started_at=timezone.now(), user_id=user.pk, key_id=key.pk, model="gpt-4o", family="responses",
                cost=Decimal(cost))


def test_budget_alerts_go_once_at_80_and_once_at_100_percent(db, django_user_model, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.RELAY_ALERT_EMAILS = ["admins@example.com"]
    dana = django_user_model.objects.create_user("dana", email="dana@example.com")
    key = RelayKey.issue(dana, name="notebook")[0]
    key.monthly_budget_usd = Decimal("10.00")
    key.save()
    _spend(dana, key, "7.99")
    assert check_budget_alerts(key_id=key.pk) == [] and not mail.outbox
    _spend(dana, key, "0.01")  # exactly 80%
    assert [a.threshold for a in check_budget_alerts(key_id=key.pk)] == [80]
    assert check_budget_alerts(key_id=key.pk) == []  # not again this month
    _spend(dana, key, "1.50")
    assert check_budget_alerts() == []  # 95%: still only the one
    _spend(dana, key, "0.50")  # 100%
    assert [a.threshold for a in check_budget_alerts(key_id=key.pk)] == [100]
    out = io.StringIO()
    call_command("send_budget_alerts", stdout=out)
    assert "0 alert(s) sent" in out.getvalue()
    assert len(mail.outbox) == 2
    assert [m.to for m in mail.outbox] == [["dana@example.com", "admins@example.com"]] * 2
    assert "80%" in mail.outbox[0].subject and "whole" in mail.outbox[1].subject
    assert "$8.00 of $10.00 (80%)" in mail.outbox[0].body
    assert BudgetAlert.objects.count() == 2


def test_a_team_budget_counts_its_keys_spend_and_the_holds_of_their_running_jobs(
        admin_client, django_user_model, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.RELAY_ALERT_EMAILS = ["admins@example.com"]
    research = Team.objects.create(group=Group.objects.create(name="research"), monthly_budget_usd=Decimal("10.00"))
    ida = django_user_model.objects.create_user("ida", email="ida@example.com")
    ida.groups.add(research.group)
    k1, k2 = RelayKey.issue(ida)[0], RelayKey.issue(ida)[0]
    assert k1.team == k2.team == research
    _spend(ida, k1, "3.00")
    _spend(ida, k2, "3.00")
    assert check_budget_alerts(team_id=research.pk) == []  # 60%
    # A background response still running holds $2.00 of the team's budget, as refusals count it.
    jobs.record_job({"object": "response", "id": "resp_running", "status": "in_progress", "model": "gpt-4o"},
                    user=ida, key=k2, budget_hold=Decimal("2.00"))
    (alert,) = check_budget_alerts(team_id=research.pk)  # 6.00 spent + 2.00 held = 80%
    assert (alert.kind, alert.threshold, alert.spend) == ("team", 80, Decimal("8.00"))
    assert mail.outbox[0].to == ["admins@example.com"]  # a team has no owner of its own
    assert mail.outbox[0].subject == "[Team Relay] Team research has used 80% of its monthly budget"
    assert "Spent: $8.00 of $10.00 (80%)" in mail.outbox[0].body and "$2.00 is held" in mail.outbox[0].body
    (line,) = admin_client.get(DASHBOARD).context["budgets"]
    assert (line.kind, line.label, line.spend, line.held, line.percent) == (
        "team", "research", Decimal("6.00"), Decimal("2.00"), 80)
    # Filtered by a key or a user, the budgets over those calls stay, their team's among them.
    other = Team.objects.create(group=Group.objects.create(name="ops"), monthly_budget_usd=Decimal("5.00"))
    assert [b.label for b in admin_client.get(DASHBOARD, {"key__id__exact": k1.pk}).context["budgets"]] == ["research"]
    assert [b.label for b in admin_client.get(DASHBOARD, {"user__id__exact": ida.pk}).context["budgets"]] == ["research"]
    assert {b.label for b in admin_client.get(DASHBOARD).context["budgets"]} == {"research", str(other)}
    alerts = admin_client.get("/admin/audit_app/budgetalert/").content.decode()
    assert f'/admin/proxy_app/team/{research.pk}/change/' in alerts
    # The teams', keys' and limits' lists count the held amount as the budget does.
    teams = admin_client.get("/admin/proxy_app/team/").content.decode()
    assert "$6.00 + $2.00 held of $10.00 (80%)" in teams
    keys = admin_client.get("/admin/proxy_app/relaykey/", {"owner__id__exact": ida.pk}).content.decode()
    assert "$3.00 + $2.00 held" in keys and "$3.00 <span" in keys  # k2 holds the job; k1 holds nothing
    # A call of a team key that settles checks the team's budget too.
    cache.delete(f"relay:budget-check:t{research.pk}:{timezone.localdate():%Y%m}")  # the cache may be shared
    _spend(ida, k1, "2.00")
    assert [(a.kind, a.threshold) for a in check_after_call(k1, ida)] == [("team", 100)]


def test_sent_budget_alerts_are_listed_read_only_in_the_admin(admin_client, django_user_model, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    fay = django_user_model.objects.create_user("fay", email="fay@example.com")
    key = RelayKey.issue(fay, name="gpu")[0]
    key.monthly_budget_usd = Decimal("1.00")
    key.save()
    _spend(fay, key, "1.00")
    check_budget_alerts(key_id=key.pk)
    page = admin_client.get("/admin/audit_app/budgetalert/").content.decode()
    assert "tr-" in page and "fay@example.com" in page and "$1.00" in page
    assert admin_client.get("/admin/audit_app/budgetalert/add/").status_code == 403


def test_user_budget_alert_reads_the_users_spend_over_all_keys(db, django_user_model, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.RELAY_ALERT_EMAILS = []
    django_user_model.objects.create_superuser("root", "root@example.com", "x")
    erin = django_user_model.objects.create_user("erin", email="erin@example.com")
    k1, k2 = RelayKey.issue(erin)[0], RelayKey.issue(erin)[0]
    UserLimit.objects.create(user=erin, monthly_budget_usd=Decimal("5.00"))
    _spend(erin, k1, "2.50")
    _spend(erin, k2, "2.50")
    assert [(a.kind, a.threshold) for a in check_budget_alerts(user_id=erin.pk)] == [("user", 80), ("user", 100)]
    assert mail.outbox[0].to == ["erin@example.com", "root@example.com"]


def test_keys_list_shows_owner_last_use_and_spend_against_budget(admin_client, calls):
    key = calls["kb"]
    key.monthly_budget_usd = Decimal("2.50")
    key.save()
    UsageDaily.objects.filter(key=key).exclude(date__gte=calls["today"].replace(day=1)).delete()
    html = admin_client.get("/admin/proxy_app/relaykey/").content.decode()
    spent = sum(UsageDaily.objects.filter(key=key, date__gte=calls["today"].replace(day=1))
                .values_list("cost", flat=True), Decimal(0))
    percent = int(spent / Decimal("2.50") * 100)
    assert f"${spent.quantize(Decimal('0.01'))} of $2.50 ({percent}%)" in html
    assert "column-last_used_at" in html and "column-owner_link" in html


# --- permissions and sorting ----------------------------------------------------------------


def test_staff_with_limited_rights_get_no_link_they_cannot_open(client, calls, django_user_model):
    clerk = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_apicall"),
                               Permission.objects.get(codename="view_usagedaily"))
    client.force_login(clerk)
    for url in (CALLS, DASHBOARD + "?period=7d", ERRORS + "?period=7d", "/admin/"):
        page = client.get(url)
        assert page.status_code == 200, url
        hrefs = {h.replace("&amp;", "&") for h in re.findall(r'href="(/admin/[^"]*)"', page.content.decode())}
        for href in hrefs:
            path = href.split("?")[0]
            if path.endswith("/logout/") or path.startswith("/admin/password_change"):
                continue
            assert client.get(href).status_code == 200, (url, href)
        assert "/admin/proxy_app/relaykey/" not in page.content.decode(), url
        assert "/admin/auth/user/" not in page.content.decode(), url


def test_sorting_by_an_unindexed_column_from_the_url_is_ignored(admin_client, calls):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # Column 6 is the duration: not indexed, so ?o=6 keeps the indexed default order.
    with CaptureQueriesContext(connection) as ctx:
        page = admin_client.get(CALLS, {"o": "6"})
    assert page.status_code == 200
    listed = [q["sql"] for q in ctx.captured_queries if "audit_app_apicall" in q["sql"]
              and "ORDER BY" in q["sql"] and "ORDER BY 1" not in q["sql"]]  # not the date span's seeks
    assert listed and all("duration_ms" not in s.split("ORDER BY")[-1] for s in listed)
    assert all(re.search(r'"started_at" DESC', s.split("ORDER BY")[-1]) for s in listed), listed
    # The indexed column still sorts both ways.
    page = admin_client.get(CALLS, {"o": "0"})
    starts = [c.started_at for c in page.context["cl"].result_list]
    assert starts == sorted(starts)


def test_dashboard_presets_keep_the_filters_and_clearing_keeps_the_period(admin_client, calls):
    bob = calls["bob"].pk
    html = admin_client.get(DASHBOARD, {"period": "30d", "user__id__exact": bob}).content.decode()
    presets = re.search(r'<nav class="presets".*?</nav>', html, re.S).group(0).replace("&amp;", "&")
    for key in ("today", "yesterday", "this-month", "last-month", "7d", "30d"):
        assert f'href="?period={key}&user__id__exact={bob}"' in presets, key
    assert 'id="clear-filters"' in html and 'href="?period=30d" id="clear-filters"' in html
    errors = admin_client.get(ERRORS, {"period": "30d", "user__id__exact": bob}).context["report"]
    assert errors.total.calls == 3  # bob's three calls, the 429 included


def test_check_after_call_alerts_a_budgeted_key_at_most_once_a_minute_and_skips_the_rest(
        db, django_user_model, settings):
    from django.core.cache import cache

    from audit_app.budgets import check_after_call

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    gus = django_user_model.objects.create_user("gus", email="gus@example.com")
    budgeted, free = RelayKey.issue(gus)[0], RelayKey.issue(gus)[0]
    gate = f"relay:budget-check:k{budgeted.pk}:{timezone.localdate():%Y%m}"
    cache.delete(gate)  # only this test's key: the cache may be shared
    budgeted.monthly_budget_usd = Decimal("1.00")
    budgeted.save()
    _spend(gus, budgeted, "0.50")
    assert check_after_call(budgeted, gus) == []  # 50%: checked, nothing due
    _spend(gus, budgeted, "0.50")
    assert check_after_call(budgeted, gus) == []  # 100%, but checked less than a minute ago
    cache.delete(gate)  # a minute later
    assert [a.threshold for a in check_after_call(budgeted, gus)] == [80, 100]
    assert check_after_call(free, gus) == [] and len(mail.outbox) == 2
