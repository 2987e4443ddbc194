"""Reconciliation with OpenAI's Usage and Costs APIs, and teams with their OpenAI projects.

The relay's side comes from real calls through the relay (the SDK against the fake
upstream); OpenAI's side from a fake of the organization APIs with daily buckets,
group_by and cursor pagination.
"""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit_app.models import Match, ReconciledCost, ReconciledDay, ReconciledUsage, ReconcileRun, UsageDaily
from audit_app.reconciliation import reconcile
from proxy_app.models import RelayKey, Team
from tests.conftest import settle
from tests.fake_openai_admin import ADMIN_KEY, FakeOrgApi

PROJECT = "proj_research01"


@pytest.fixture
def org_api(settings):
    api = FakeOrgApi()
    settings.OPENAI_ADMIN_KEY = ADMIN_KEY
    settings.OPENAI_ADMIN_BASE_URL = api.base_url
    yield api
    api.stop()


@pytest.fixture
def team(db) -> Team:
    return Team.objects.create(group=Group.objects.create(name="research"), openai_project_id=PROJECT)


@pytest.fixture
def team_sdk(relay_url, django_user_model, team) -> openai.OpenAI:
    owner = django_user_model.objects.create_user("alice")
    owner.groups.add(team.group)
    key, plaintext = RelayKey.issue(owner)
    assert key.team == team  # issued into the owner's one team
    return openai.OpenAI(base_url=f"{relay_url}/v1", api_key=plaintext, max_retries=0)


def two_calls(sdk: openai.OpenAI) -> Decimal:
    """Two Responses calls: 12 input (4 cached) and 7 output tokens each, per the fake upstream."""
    for _ in range(2):
        sdk.responses.create(model="gpt-4o-mini", input="hi")
    settle()
    return UsageDaily.objects.get().cost


def openai_reports(api: FakeOrgApi, day, cost: Decimal, *, output_tokens: int = 14, project: str = PROJECT) -> None:
    api.usage.append({"endpoint": "completions", "day": day, "model": "gpt-4o-mini-2024-07-18",
                      "project_id": project, "num_model_requests": 2, "input_tokens": 24,
                      "input_cached_tokens": 8, "output_tokens": output_tokens})
    api.costs.append({"day": day, "project_id": project, "line_item": "gpt-4o-mini, input",
                      "value": float(cost)})


def test_a_teams_key_sends_its_project_id_upstream(team_sdk, upstream):
    team_sdk.responses.create(model="gpt-4o-mini", input="hi")
    assert upstream.requests[-1].header("OpenAI-Project") == PROJECT


def test_a_key_without_a_team_sends_the_relays_own_project(relay_url, sdk, upstream, settings):
    settings.OPENAI_PROJECT = "proj_default"
    sdk.responses.create(model="gpt-4o-mini", input="hi")
    assert upstream.requests[-1].header("OpenAI-Project") == "proj_default"


def test_a_project_scoped_team_key_sends_no_team_project(team_sdk, upstream, settings):
    # OpenAI refuses a project-scoped key with another project's id: the team's is not sent.
    settings.OPENAI_API_KEY = "sk-proj-FAKE-team-key"
    team_sdk.responses.create(model="gpt-4o-mini", input="hi")
    assert upstream.requests[-1].header("OpenAI-Project") is None


def test_the_client_cannot_choose_the_project(team_sdk, upstream):
    team_sdk.responses.create(model="gpt-4o-mini", input="hi", extra_headers={"OpenAI-Project": "proj_other"})
    assert upstream.requests[-1].header("OpenAI-Project") == PROJECT


def test_matching_figures_reconcile_per_project(team_sdk, org_api):
    cost = two_calls(team_sdk)
    today = timezone.now().date()
    openai_reports(org_api, today, cost)

    run, outcome = reconcile(today, today)

    assert run.ok and outcome.by_project
    day = ReconciledDay.objects.get(date=today)
    assert day.status == Match.MATCHED and day.by_project
    assert day.openai_cost == day.relay_cost == cost
    usage = ReconciledUsage.objects.get(day=day)
    # The snapshot OpenAI names folds into the family the client asked for.
    assert (usage.model, usage.project_id) == ("gpt-4o-mini", PROJECT)
    assert (usage.openai_input_tokens, usage.openai_cached_tokens, usage.openai_output_tokens) == (24, 8, 14)
    assert (usage.relay_input_tokens, usage.relay_cached_tokens, usage.relay_output_tokens) == (24, 8, 14)
    # Every request asked for daily buckets grouped the way the comparison needs, with the admin key.
    for path, query, auth in org_api.requests:
        assert auth == f"Bearer {ADMIN_KEY}" and query["bucket_width"] == ["1d"]
        assert set(query["group_by"]) in ({"model", "project_id"}, {"project_id", "line_item"}), path


def test_a_known_difference_on_one_day_and_model_is_reported(team_sdk, org_api):
    cost = two_calls(team_sdk)
    today = timezone.now().date()
    openai_reports(org_api, today, cost + Decimal("0.25"), output_tokens=14 + 100)

    reconcile(today, today)

    day = ReconciledDay.objects.get(date=today)
    assert day.status == Match.DIFFERS and "gpt-4o-mini" in day.summary
    usage = ReconciledUsage.objects.get(day=day)
    assert usage.status == Match.DIFFERS
    assert usage.openai_output_tokens - usage.relay_output_tokens == 100
    assert day.cost_difference == Decimal("0.25")
    items = ReconciledCost.objects.get(day=day).line_items
    assert {k: Decimal(v) for k, v in items.items()} == {"gpt-4o-mini, input": cost + Decimal("0.25")}


def test_spend_from_outside_the_relay_is_named_by_model_and_project(team_sdk, org_api):
    cost = two_calls(team_sdk)
    today = timezone.now().date()
    openai_reports(org_api, today, cost)
    org_api.usage.append({"endpoint": "completions", "day": today, "model": "gpt-4.1-2025-04-14",
                          "project_id": PROJECT, "num_model_requests": 1, "input_tokens": 1000,
                          "output_tokens": 50})
    org_api.costs.append({"day": today, "project_id": "proj_elsewhere", "line_item": "gpt-4.1, input",
                          "value": 0.5})

    run, outcome = reconcile(today, today)

    day = ReconciledDay.objects.get(date=today)
    assert day.status == Match.OUTSIDE
    outside = ReconciledUsage.objects.get(day=day, status=Match.OUTSIDE)
    assert (outside.model, outside.project_id, outside.openai_input_tokens, outside.relay_input_tokens) == (
        "gpt-4.1", PROJECT, 1000, 0)
    assert ReconciledCost.objects.get(day=day, project_id="proj_elsewhere").status == Match.OUTSIDE
    assert f"{today}: gpt-4.1 in {PROJECT} used outside the relay" in outcome.findings
    assert "gpt-4.1" in run.message


def test_without_projects_openai_is_summed_over_its_projects(relay_url, sdk, org_api):
    cost = two_calls(sdk)  # a key with no team, and no OPENAI_PROJECT
    today = timezone.now().date()
    openai_reports(org_api, today, cost / 2, project="proj_a")
    org_api.usage[-1].update(num_model_requests=1, input_tokens=12, input_cached_tokens=4, output_tokens=7)
    openai_reports(org_api, today, cost / 2, project="proj_b")
    org_api.usage[-1].update(num_model_requests=1, input_tokens=12, input_cached_tokens=4, output_tokens=7)

    run, outcome = reconcile(today, today)

    assert not outcome.by_project
    day = ReconciledDay.objects.get(date=today)
    assert day.status == Match.MATCHED and not day.by_project
    assert ReconciledUsage.objects.get(day=day).project_id == ""


def test_pages_are_followed_across_the_period(team_sdk, org_api):
    cost = two_calls(team_sdk)
    today = timezone.now().date()
    first = today - timedelta(days=4)
    openai_reports(org_api, today, cost)
    org_api.usage.append({"endpoint": "embeddings", "day": first, "model": "text-embedding-3-small",
                          "project_id": PROJECT, "num_model_requests": 1, "input_tokens": 30})

    reconcile(first, today)

    # 5 days at 2 buckets a page: 3 pages for each of 6 usage endpoints and the costs.
    assert len(org_api.requests) == 7 * 3
    assert ReconciledDay.objects.get(date=today).status == Match.MATCHED
    assert ReconciledDay.objects.get(date=first).status == Match.OUTSIDE
    assert ReconciledDay.objects.filter(date__gt=first, date__lt=today).count() == 0  # nothing either side


def test_rerunning_a_period_replaces_its_figures(team_sdk, org_api):
    cost = two_calls(team_sdk)
    today = timezone.now().date()
    openai_reports(org_api, today, cost, output_tokens=99)
    reconcile(today, today)
    assert ReconciledDay.objects.get(date=today).status == Match.DIFFERS

    org_api.usage.clear()
    org_api.costs.clear()
    openai_reports(org_api, today, cost)
    reconcile(today, today)

    assert ReconciledDay.objects.get(date=today).status == Match.MATCHED
    assert ReconciledUsage.objects.count() == 1


def test_a_failed_fetch_keeps_the_previous_figures_and_says_so(team_sdk, org_api, capsys):
    cost = two_calls(team_sdk)
    today = timezone.now().date()
    openai_reports(org_api, today, cost)
    reconcile(today, today)
    org_api.usage[0]["output_tokens"] = 500
    org_api.fail["/organization/costs"] = 500

    with pytest.raises(CommandError) as failure:
        call_command("reconcile_usage", "--since", today.isoformat(), "--until", today.isoformat())

    assert "previous figures kept" in str(failure.value) and "500" in str(failure.value)
    assert ADMIN_KEY not in str(failure.value)
    assert ReconciledDay.objects.get(date=today).status == Match.MATCHED  # untouched
    run = ReconcileRun.objects.order_by("-started_at").first()
    assert not run.ok and "failed, previous figures kept" in run.message


def test_the_admin_key_is_required_and_never_shown(team_sdk, org_api, settings, capsys):
    today = timezone.now().date()
    settings.OPENAI_ADMIN_KEY = "sk-admin-WRONG-000000"
    with pytest.raises(CommandError) as failure:
        call_command("reconcile_usage", "--since", today.isoformat(), "--until", today.isoformat())
    assert "401" in str(failure.value)
    assert "sk-admin" not in str(failure.value)  # OpenAI's message quotes the key: scrubbed
    settings.OPENAI_ADMIN_KEY = ""
    with pytest.raises(CommandError, match="OPENAI_ADMIN_KEY is not set"):
        call_command("reconcile_usage", "--since", today.isoformat(), "--until", today.isoformat())


def test_the_command_leaves_out_today_and_prints_a_summary(team_sdk, org_api, capsys):
    yesterday = timezone.now().date() - timedelta(days=1)
    openai_reports(org_api, yesterday, Decimal("0.5"))

    call_command("reconcile_usage", "--since", (yesterday - timedelta(days=1)).isoformat())

    out = capsys.readouterr().out
    assert f"..{yesterday}, 1 days (1 outside)" in out
    assert f"{yesterday}: gpt-4o-mini in {PROJECT} used outside the relay" in out
    assert ReconciledDay.objects.get().date == yesterday


def test_the_admin_shows_outside_spend_prominently(team_sdk, org_api, admin_client):
    two_calls(team_sdk)
    today = timezone.now().date()
    org_api.usage.append({"endpoint": "completions", "day": today, "model": "gpt-4.1", "project_id": PROJECT,
                          "num_model_requests": 1, "input_tokens": 10, "output_tokens": 1})
    reconcile(today, today)

    page = admin_client.get("/admin/audit_app/reconciledday/").content.decode()
    assert "used outside the relay" in page and "gpt-4.1" in page and PROJECT in page
    detail = admin_client.get(f"/admin/audit_app/reconciledday/{ReconciledDay.objects.get().pk}/change/")
    assert detail.status_code == 200 and "gpt-4.1" in detail.content.decode()


def test_usage_report_by_team(team_sdk, capsys):
    two_calls(team_sdk)
    call_command("usage_report", "--by", "team")
    assert "research" in capsys.readouterr().out


def test_a_team_budget_covers_all_of_its_keys(team_sdk, team, django_user_model, relay_url):
    bob = django_user_model.objects.create_user("bob")
    bob.groups.add(team.group)
    _, bob_key = RelayKey.issue(bob)
    two_calls(team_sdk)  # alice's key spends
    team.monthly_budget_usd = Decimal("0.000001")
    team.save()
    from django.core.cache import cache
    cache.clear()  # the spend cache holds 10 s

    bob_sdk = openai.OpenAI(base_url=f"{relay_url}/v1", api_key=bob_key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        bob_sdk.responses.create(model="gpt-4o-mini", input="hi")
    assert refused.value.code == "relay_budget_exceeded"
    assert "Team research has used its monthly budget" in refused.value.message


def test_the_team_admin_shows_the_teams_spend(team_sdk, team, admin_client):
    cost = two_calls(team_sdk)
    page = admin_client.get("/admin/proxy_app/team/").content.decode()
    assert PROJECT in page and f"{cost:.2f}" in page
    key = RelayKey.objects.get()
    form = admin_client.get(f"/admin/proxy_app/relaykey/{key.pk}/change/").content.decode()
    assert "research" in form  # shown, read-only once issued


def test_sync_files_reads_every_teams_project(team_sdk, upstream):
    import io

    from audit_app.models import FileRecord

    uploaded = team_sdk.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    assert upstream.file_projects[uploaded.id] == PROJECT
    settle()

    call_command("sync_files")

    # Listed in the team's project, not the default one: still there, not taken for deleted.
    assert FileRecord.objects.get(file_id=uploaded.id).deleted_at is None


def test_reconciliation_refuses_a_time_zone_whose_days_are_not_utc(team_sdk, org_api, settings):
    from django.core import checks

    settings.TIME_ZONE = "Pacific/Kiritimati"
    today = timezone.now().date()
    with pytest.raises(CommandError, match="TIME_ZONE is 'Pacific/Kiritimati'"):
        call_command("reconcile_usage", "--since", today.isoformat(), "--until", today.isoformat())
    assert "relay.W003" in [w.id for w in checks.run_checks()]


def test_a_keys_team_cannot_be_changed_once_issued(team_sdk, admin_client):
    key = RelayKey.objects.get()
    form = admin_client.get(f"/admin/proxy_app/relaykey/{key.pk}/change/").content.decode()
    assert 'name="team"' not in form and "research" in form


def test_the_dashboard_marks_a_day_that_differs_from_openai(team_sdk, org_api, admin_client):
    cost = two_calls(team_sdk)
    today = timezone.now().date()
    page = admin_client.get("/admin/dashboard/").content.decode()
    assert "recon-differs" not in page  # not reconciled yet: nothing to mark
    openai_reports(org_api, today, cost, output_tokens=99)
    reconcile(today, today)

    page = admin_client.get("/admin/dashboard/").content.decode()
    assert 'class="recon-differs"' in page and "differs from OpenAI (differs)" in page
    assert f"/admin/audit_app/reconciledday/?date={today.isoformat()}" in page
    listed = admin_client.get(f"/admin/audit_app/reconciledday/?date={today.isoformat()}")
    assert listed.status_code == 200 and "Differs" in listed.content.decode()
