"""The usage dashboard: periods, figures from the daily rollups, the chart, links, access."""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Permission
from django.db.models import Sum
from django.urls import reverse

from audit_app.dashboard import (
    MAX_DAYS, PALETTE, Period, PeriodError, build_dashboard, parse_period,
)
from audit_app.dashboard import format_usd
from audit_app.models import ApiCall, Outcome, UsageDaily
from proxy_app.models import RelayKey

DASHBOARD = "/admin/dashboard/"
MARCH = {"period": "custom", "from": "2026-03-01", "to": "2026-03-31"}


# --- Periods ------------------------------------------------------------------

@pytest.mark.parametrize("params, today, expected", [
    ({}, date(2026, 11, 25), ("this-month", date(2026, 11, 1), date(2026, 11, 25))),
    ({"period": "this-month"}, date(2026, 11, 1), ("this-month", date(2026, 11, 1), date(2026, 11, 1))),
    ({"period": "last-month"}, date(2026, 3, 15), ("last-month", date(2026, 2, 1), date(2026, 2, 28))),
    ({"period": "last-month"}, date(2026, 1, 31), ("last-month", date(2025, 12, 1), date(2025, 12, 31))),
    ({"period": "7d"}, date(2026, 3, 3), ("7d", date(2026, 2, 25), date(2026, 3, 3))),
    ({"period": "30d"}, date(2026, 11, 25), ("30d", date(2026, 10, 27), date(2026, 11, 25))),
    ({"period": "custom", "from": "2026-02-10", "to": "2026-02-10"}, date(2026, 11, 25),
     ("custom", date(2026, 2, 10), date(2026, 2, 10))),
    # Dates alone mean a custom range.
    ({"from": "2025-12-30", "to": "2026-01-02"}, date(2026, 11, 25),
     ("custom", date(2025, 12, 30), date(2026, 1, 2))),
])
def test_periods(params, today, expected):
    p = parse_period(params, today)
    assert (p.preset, p.start, p.end) == expected
    assert p.day_count == len(p.days()) == (p.end - p.start).days + 1


@pytest.mark.parametrize("params, message", [
    ({"period": "fortnight"}, "Unknown period 'fortnight'"),
    ({"period": "custom", "from": "2026-01-01"}, "needs both a start and an end date"),
    ({"period": "custom", "from": "2026-13-01", "to": "2026-12-31"}, "start date '2026-13-01' is not a date"),
    ({"period": "custom", "from": "2026-01-01", "to": "tomorrow"}, "end date 'tomorrow' is not a date"),
    ({"period": "custom", "from": "20260101", "to": "2026-01-02"}, "is not a date"),
    ({"period": "custom", "from": "2026-02-01", "to": "2026-01-01"}, "is after the end date"),
    ({"period": "custom", "from": "2024-01-01", "to": "2026-01-01"}, f"at most {MAX_DAYS} days"),
    ({"period": "custom", "from": "9999-12-31", "to": "9999-12-31"}, "start date '9999-12-31' is not a date"),
    ({"period": "custom", "from": "0001-01-01", "to": "0001-01-02"}, "start date '0001-01-01' is not a date"),
])
def test_bad_periods_are_explained(params, message):
    with pytest.raises(PeriodError, match=re.escape(message)):
        parse_period(params, date(2026, 11, 25))


@pytest.mark.django_db
def test_bad_period_in_the_page_is_a_400_with_the_message_not_a_500(admin_client):
    r = admin_client.get(DASHBOARD, {"period": "custom", "from": "2026-02-30", "to": "2026-03-01"})
    assert r.status_code == 400
    body = r.content.decode()
    assert "The start date &#x27;2026-02-30&#x27; is not a date" in body
    assert 'class="errornote"' in body and "relay-chart" not in body
    # The picker is still there to correct it.
    assert 'name="from"' in body and 'value="2026-02-30"' in body


# --- Figures ------------------------------------------------------------------

@pytest.fixture
def usage(db, django_user_model):
    """Rollup rows for March 2026, plus rows just outside it that must not count."""
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    carol = django_user_model.objects.create_user("carol")
    ka, kb, kc = (RelayKey.issue(u)[0] for u in (alice, bob, carol))

    def row(day, user, key, model, calls, cost, unpriced=0, family="responses", **tokens):
        return UsageDaily.objects.create(
            date=day, user=user, key=key, model=model, family=family, calls=calls,
            input_tokens=tokens.get("i", calls * 100), cached_input_tokens=tokens.get("c", calls * 10),
            output_tokens=tokens.get("o", calls * 50), total_tokens=tokens.get("t", calls * 150),
            cost=Decimal(cost), unpriced_calls=unpriced,
        )

    row(date(2026, 3, 1), alice, ka, "gpt-4o", 10, "1.2500000000")
    row(date(2026, 3, 1), alice, ka, "gpt-4o-mini", 40, "0.0400000000")
    row(date(2026, 3, 1), bob, kb, "gpt-4o", 2, "0.5000000000")
    row(date(2026, 3, 1), bob, kb, "gpt-4o", 3, "0.2500000000", family="chat")
    row(date(2026, 3, 3), bob, kb, "o3", 5, "7.0000000000")
    # Unpriced: counted, never $0 of cost.
    row(date(2026, 3, 3), carol, kc, "mystery-model", 4, "0", unpriced=4)
    row(date(2026, 3, 31), carol, kc, "", 6, "0.0000004000", family="files")
    # Outside March.
    row(date(2026, 2, 28), alice, ka, "gpt-4o", 1000, "999")
    row(date(2026, 4, 1), bob, kb, "o3", 1000, "999")
    return {"alice": alice, "bob": bob, "carol": carol, "keys": (ka, kb, kc)}


def test_totals_are_the_sum_of_the_rollup_rows_in_the_period(usage):
    d = build_dashboard(parse_period(MARCH, date(2026, 11, 25)))
    expected = UsageDaily.objects.filter(date__range=(date(2026, 3, 1), date(2026, 3, 31))).aggregate(
        calls=Sum("calls"), input_tokens=Sum("input_tokens"), cached=Sum("cached_input_tokens"),
        output_tokens=Sum("output_tokens"), total_tokens=Sum("total_tokens"), unpriced=Sum("unpriced_calls"),
    )
    t = d.totals
    assert (t.calls, t.input_tokens, t.cached_input_tokens, t.output_tokens, t.total_tokens, t.unpriced_calls) == (
        expected["calls"], expected["input_tokens"], expected["cached"], expected["output_tokens"],
        expected["total_tokens"], expected["unpriced"],
    ) == (70, 7000, 700, 3500, 10500, 4)
    assert isinstance(t.cost, Decimal)
    assert t.cost == Decimal("9.0400004")


def test_spend_per_day_is_stacked_by_model_and_empty_days_are_drawn_empty(usage):
    d = build_dashboard(parse_period(MARCH, date(2026, 11, 25)))
    assert [day.day for day in d.days] == [date(2026, 3, 1) + timedelta(days=i) for i in range(31)]
    first, second, third, last = d.days[0], d.days[1], d.days[2], d.days[30]
    # Legend order is by spend in the period: o3, gpt-4o, gpt-4o-mini, then the no-model row.
    assert [item.label for item in d.legend] == ["o3", "gpt-4o", "gpt-4o-mini", "(no model)"]
    assert [(s.model, s.cost, s.calls) for s in first.segments] == [
        ("gpt-4o", Decimal("2.0"), 15), ("gpt-4o-mini", Decimal("0.04"), 40)]
    assert first.cost == Decimal("2.04") and first.calls == 55
    assert second.segments == [] and second.calls == 0 and second.cost == 0
    # The unpriced model draws nothing; its calls are counted for the day.
    assert [s.model for s in third.segments] == ["o3"] and third.calls == 9 and third.unpriced_calls == 4
    assert last.segments[0].model == "" and last.segments[0].color == PALETTE[3]
    colors = {item.label: item.color for item in d.legend}
    assert first.segments[0].color == colors["gpt-4o"]


def test_models_past_the_palette_share_one_other_segment(db, django_user_model):
    user = django_user_model.objects.create_user("dave")
    key, _ = RelayKey.issue(user)
    for i in range(len(PALETTE) + 2):
        UsageDaily.objects.create(date=date(2026, 3, 5), user=user, key=key, model=f"m{i:02}",
                                  family="responses", calls=1, cost=Decimal(100 - i))
    d = build_dashboard(Period("custom", date(2026, 3, 5), date(2026, 3, 5)))
    assert len(d.legend) == len(PALETTE) + 1 and d.legend[-1].label == "other models"
    segments = d.days[0].segments
    assert len(segments) == len(PALETTE) + 1
    assert segments[-1].label == "other models" and segments[-1].cost == Decimal(100 - 8 + 100 - 9)
    assert sum(s.cost for s in segments) == d.totals.cost


def test_top_users_and_models_are_ordered_by_cost(usage):
    d = build_dashboard(parse_period(MARCH, date(2026, 11, 25)))
    assert [(u.label, u.figures.cost) for u in d.top_users] == [
        ("bob", Decimal("7.75")), ("alice", Decimal("1.29")), ("carol", Decimal("0.0000004"))]
    assert d.top_users[2].figures.unpriced_calls == 4
    assert [(m.label, m.figures.calls) for m in d.top_models] == [
        ("o3", 5), ("gpt-4o", 15), ("gpt-4o-mini", 40), ("(no model)", 6), ("mystery-model", 4)]
    assert d.top_models[-1].figures.cost == 0 and d.top_models[-1].figures.unpriced_calls == 4
    # User × model, summed over days and families.
    assert [(b.label, b.model_label, b.figures.calls) for b in d.breakdown][:3] == [
        ("bob", "o3", 5), ("alice", "gpt-4o", 10), ("bob", "gpt-4o", 5)]
    assert d.breakdown_rows == len(d.breakdown) == 6


def test_a_long_breakdown_is_cut_with_a_pointer_to_the_changelist(usage, admin_client, monkeypatch):
    monkeypatch.setattr("audit_app.dashboard.BREAKDOWN_ROWS", 2)
    body = admin_client.get(DASHBOARD, MARCH).content.decode()
    rows = re.search(r'<table id="breakdown">.*?</table>', body, re.S).group(0)
    assert rows.count("<tr>") == 1 + 2
    assert "Showing the 2 largest of 6 rows" in body


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def test_links_carry_the_filters_of_the_figure(usage):
    d = build_dashboard(parse_period(MARCH, date(2026, 11, 25)))
    bob = usage["bob"]
    line = d.top_users[0]
    assert urlsplit(line.calls_url).path == reverse("admin:audit_app_apicall_changelist")
    assert _query(line.calls_url) == {
        "started_at__gte": "2026-03-01", "started_at__lt": "2026-04-01",
        "key__isnull": "False", "user__id__exact": str(bob.pk),
    }
    assert _query(line.unpriced_url)["unpriced__exact"] == "1"
    model_line = d.top_models[3]  # the calls with no model
    assert _query(model_line.calls_url)["model__exact"] == ""
    assert urlsplit(line.usage_url).path == reverse("admin:audit_app_usagedaily_changelist")
    assert _query(line.usage_url) == {
        "date__gte": "2026-03-01", "date__lt": "2026-04-01", "user__id__exact": str(bob.pk)}
    assert _query(d.days[2].segments[0].url) == {
        "date__gte": "2026-03-03", "date__lt": "2026-03-04", "model__exact": "o3"}
    assert _query(d.links["unpriced"]) == {**_query(d.links["calls"]), "unpriced__exact": "1"}


def _call(user, key, started_at, model, **fields):
    return ApiCall.objects.create(user=user, key=key, started_at=started_at, model=model, method="POST",
                                  path="/v1/responses", family="responses", outcome=Outcome.OK, **fields)


def test_linked_changelists_show_the_rows_behind_the_figure(usage, admin_client):
    alice, bob = usage["alice"], usage["bob"]
    ka, kb, _ = usage["keys"]
    t = datetime(2026, 3, 3, 12, tzinfo=dt_timezone.utc)
    _call(bob, kb, t, "o3", upstream_request_id="req_bob_march")
    _call(bob, kb, t, "mystery-model", unpriced=True, upstream_request_id="req_bob_unpriced")
    _call(alice, ka, t, "o3", upstream_request_id="req_alice_march")
    _call(bob, kb, datetime(2026, 4, 1, 0, 0, 1, tzinfo=dt_timezone.utc), "o3",
          upstream_request_id="req_bob_april")
    d = build_dashboard(parse_period(MARCH, date(2026, 11, 25)))
    bob_line = next(u for u in d.top_users if u.label == "bob")

    # Compare the changelists' querysets: the request id may not be a column.
    cl_bob = admin_client.get(bob_line.calls_url).context["cl"]
    assert {c.upstream_request_id for c in cl_bob.queryset} == {"req_bob_march", "req_bob_unpriced"}
    cl_unpriced = admin_client.get(bob_line.unpriced_url).context["cl"]
    assert {c.upstream_request_id for c in cl_unpriced.queryset} == {"req_bob_unpriced"}
    cl_all = admin_client.get(d.links["calls"]).context["cl"]
    assert {c.upstream_request_id for c in cl_all.queryset} == {
        "req_bob_march", "req_bob_unpriced", "req_alice_march"}

    r = admin_client.get(bob_line.usage_url)
    assert r.status_code == 200
    rows = r.context["cl"].queryset
    assert rows.count() == 3 and {row.user_id for row in rows} == {bob.pk}
    assert all(date(2026, 3, 1) <= row.date <= date(2026, 3, 31) for row in rows)


def test_call_links_cover_local_days_as_the_rollups_do(usage, admin_client, settings):
    settings.TIME_ZONE = "Europe/Paris"
    alice, (ka, _, _) = usage["alice"], usage["keys"]
    utc = dt_timezone.utc
    # 00:30 on 1 March and on 1 April in Paris (summer time starts on 29 March).
    _call(alice, ka, datetime(2026, 2, 28, 23, 30, tzinfo=utc), "o3", upstream_request_id="first_of_march")
    _call(alice, ka, datetime(2026, 3, 31, 22, 30, tzinfo=utc), "o3", upstream_request_id="first_of_april")
    url = build_dashboard(parse_period(MARCH, date(2026, 11, 25))).links["calls"]
    r = admin_client.get(url)
    assert r.status_code == 200
    assert [c.upstream_request_id for c in r.context["cl"].queryset] == ["first_of_march"]


# --- The page -----------------------------------------------------------------

def test_page_shows_totals_chart_and_tables(usage, admin_client):
    r = admin_client.get(DASHBOARD, MARCH)
    assert r.status_code == 200
    body = r.content.decode()
    assert '<div class="breadcrumbs">' in body and "Usage dashboard" in body
    svg = re.search(r"<svg class=\"relay-chart\".*?</svg>", body, re.S).group(0)
    # One hover column per day; one segment per (day, model) with spend, each with a tooltip.
    assert svg.count('class="day"') == 31
    assert svg.count('class="seg"') == 4
    assert "<title>01 Mar 2026 · gpt-4o: $2.00 (15 calls)</title>" in svg
    assert "<title>Mon 02 Mar 2026: no calls</title>" in svg
    assert "USD per day" in svg and "Day (UTC)" in svg
    assert re.search(r'id="total-cost">.*?\$9\.04<', body, re.S)
    assert re.search(r'id="total-calls">.*?>70<', body, re.S)
    assert re.search(r'id="total-unpriced">.*?>4<', body, re.S)
    assert '<span id="total-cached">700</span>' in body
    assert 'id="top-users"' in body and 'id="top-models"' in body and 'id="breakdown"' in body
    # A model whose every call was unpriced has an unknown cost, not $0.00.
    mystery = re.search(r'<tr>\s*<td class="name">\s*<a[^>]*>mystery-model</a>.*?</tr>', body, re.S).group(0)
    assert "unpriced</span>" in mystery and "$0.00" not in mystery
    # (Without the CSRF tokens: a random token can contain "cdn".)
    assets = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", body)
    assert "cdn" not in assets.lower() and "<script src=\"http" not in assets


def test_empty_period_renders_an_empty_chart(admin_client):
    r = admin_client.get(DASHBOARD, {"period": "7d"})
    assert r.status_code == 200
    body = r.content.decode()
    assert "No priced spend in this period" in body and body.count('class="day"') == 7
    assert re.search(r'id="total-cost">.*?\$0\.00<', body, re.S)


@pytest.mark.django_db
def test_anonymous_and_non_staff_users_are_sent_to_the_login(client, django_user_model):
    r = client.get(DASHBOARD)
    assert r.status_code == 302 and r["Location"].startswith("/admin/login/?next=/admin/dashboard/")
    django_user_model.objects.create_user("plain", password="pw-plain-123")
    client.force_login(django_user_model.objects.get(username="plain"))
    r = client.get(DASHBOARD)
    assert r.status_code == 302 and r["Location"].startswith("/admin/login/")


@pytest.mark.django_db
def test_staff_need_the_right_to_view_usage(client, django_user_model):
    staff = django_user_model.objects.create_user("staff", is_staff=True)
    client.force_login(staff)
    assert client.get(DASHBOARD).status_code == 403
    assert "usage-dashboard-link" not in client.get("/admin/").content.decode()
    staff.user_permissions.add(Permission.objects.get(codename="view_usagedaily"))
    client.force_login(django_user_model.objects.get(pk=staff.pk))
    assert client.get(DASHBOARD).status_code == 200


@pytest.mark.django_db
def test_admin_index_links_to_the_dashboard(admin_client):
    body = admin_client.get("/admin/").content.decode()
    assert re.search(r'<a href="/admin/dashboard/" id="usage-dashboard-link">\s*<strong>Usage dashboard',
                     body)
    assert body.index("usage-dashboard-link") < body.index('class="app-')  # above the app list


@pytest.mark.parametrize("value, text", [
    (None, "—"), (Decimal(0), "$0.00"), (Decimal("1234.565"), "$1,234.57"),
    (Decimal("0.02"), "$0.02"), (Decimal("0.505"), "$0.51"), (Decimal("0.00123456"), "$0.0012"), (Decimal("0.0000004"), "< $0.0001"),
])
def test_money_is_formatted_from_decimal(value, text):
    assert format_usd(value) == text


@pytest.mark.parametrize("peak, labels", [
    ("3.52", ["$0", "$1", "$2", "$3", "$4"]),
    ("11.3", ["$0", "$2.50", "$5.00", "$7.50", "$10.00", "$12.50"]),
    ("0.0021", ["$0", "$0.0005", "$0.0010", "$0.0015", "$0.0020", "$0.0025"]),
    ("0", ["$0", "$1"]),
])
def test_chart_axis_has_round_ticks_above_the_peak(peak, labels):
    from audit_app.dashboard import nice_ticks, tick_labels

    ticks = nice_ticks(Decimal(peak))
    assert tick_labels(ticks) == labels and ticks[-1] >= Decimal(peak)


def test_page_reads_the_rollups_never_the_raw_calls(usage, admin_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _call(usage["bob"], usage["keys"][1], datetime(2026, 3, 3, 12, tzinfo=dt_timezone.utc), "o3")
    with CaptureQueriesContext(connection) as ctx:
        assert admin_client.get(DASHBOARD, MARCH).status_code == 200
    sql = [q["sql"] for q in ctx.captured_queries]
    assert not [q for q in sql if ApiCall._meta.db_table in q]
    # Three GROUP BYs (day × model, user × model, key) and the filter bar's model and family choices.
    assert len([q for q in sql if UsageDaily._meta.db_table in q]) == 5
    # Session, user, the three GROUP BYs, usernames, the keys of the by-key table, the filter
    # bar's users, keys, models and families, the budgets (keys, limits and their two spend
    # sums): a fixed number, whatever the data.
    assert len(sql) <= 16, sql
def test_a_model_whose_billed_calls_all_have_unknown_cost_is_never_shown_as_free(usage):
    carol, kc = usage["carol"], usage["keys"][2]
    # Two refused calls of the model (free, counted in its rollup) and one whose usage was unreadable.
    UsageDaily.objects.create(date=date(2026, 3, 4), user=carol, key=kc, model="mystery-model",
                              family="chat", calls=3, cost=Decimal(0), unknown_calls=1)
    d = build_dashboard(parse_period(MARCH, date(2026, 11, 25)))
    mystery = [m.figures for m in d.top_models if m.label == "mystery-model"]
    assert [(f.calls, f.unpriced_calls, f.unknown_calls, f.cost_known) for f in mystery] == [(7, 4, 1, False)]
    assert [m.figures.cost_known for m in d.top_models if m.label == "o3"] == [True]
