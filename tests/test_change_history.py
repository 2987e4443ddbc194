"""Changes to keys, limits, teams, prices and prune runs land in a read-only history, without secrets."""
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.urls import reverse

from audit_app.change_history import acting_as
from audit_app.models import AdminAction, ModelPrice
from proxy_app.models import RelayKey, Team, UserLimit

pytestmark = pytest.mark.django_db


def test_key_lifecycle_is_logged_without_secrets(django_user_model):
    owner = django_user_model.objects.create_user("carol")
    with acting_as("admin:root"):
        key, plaintext = RelayKey.issue(owner, name="laptop")
        key.allowed_models = ["gpt-4o-mini"]
        key.monthly_budget_usd = Decimal("25.00")
        key.save()
        key.revoke()
        key.touch()  # bookkeeping, not an admin change
    created, changed, revoked = AdminAction.objects.filter(object_type="proxy_app.RelayKey").order_by("at", "pk")
    assert (created.actor, created.action, created.object_id) == ("admin:root", "created", str(key.pk))
    assert changed.action == "changed"
    assert changed.changes["allowed_models"] == [[], ["gpt-4o-mini"]]
    assert changed.changes["monthly_budget_usd"] == [None, "25.00"]
    assert revoked.action == "revoked" and revoked.changes["revoked_at"][0] is None
    dumped = str(list(AdminAction.objects.values()))
    assert key.key_hash not in dumped and plaintext not in dumped and "key_hash" not in dumped


def test_limits_and_prices_are_logged(django_user_model):
    user = django_user_model.objects.create_user("dave")
    with acting_as("admin:root"):
        limit = UserLimit.objects.create(user=user, monthly_budget_usd=Decimal("100"))
        limit.monthly_budget_usd = Decimal("50")
        limit.save()
        price = ModelPrice.objects.create(model="house-model", input_per_1m=Decimal("1"))
        price.delete()
    actions = list(AdminAction.objects.order_by("at", "pk").values_list("object_type", "action"))
    assert actions == [("proxy_app.UserLimit", "created"), ("proxy_app.UserLimit", "changed"),
                       ("audit_app.ModelPrice", "created"), ("audit_app.ModelPrice", "deleted")]
    assert AdminAction.objects.get(action="changed").changes["monthly_budget_usd"] == ["100.00", "50"]


def test_a_team_budget_or_project_change_is_logged():
    from django.contrib.auth.models import Group

    with acting_as("admin:root"):
        team = Team.objects.create(group=Group.objects.create(name="research"))
        team.monthly_budget_usd = Decimal("300.00")
        team.openai_project_id = "proj_research"
        team.save()
    created, changed = AdminAction.objects.filter(object_type="proxy_app.Team").order_by("at", "pk")
    assert (created.action, changed.action, changed.actor) == ("created", "changed", "admin:root")
    assert changed.changes["monthly_budget_usd"] == [None, "300.00"]
    assert changed.changes["openai_project_id"] == ["", "proj_research"]


def test_admin_requests_act_as_the_admin(admin_client, django_user_model):
    owner = django_user_model.objects.create_user("erin")
    response = admin_client.post(reverse("admin:proxy_app_relaykey_add"), {
        "owner": owner.pk, "name": "ci", "allowed_families": "[]", "allowed_models": "[]"})
    assert response.status_code in (200, 302)
    action = AdminAction.objects.get(object_type="proxy_app.RelayKey")
    assert action.actor == "admin:admin" and action.action == "created"


def test_prune_runs_are_logged(capsys):
    call_command("prune_audit", "--older-than", "30", "--run-by", "ops")
    action = AdminAction.objects.get(action="pruned")
    assert action.object_type == "audit_app.PruneRun" and action.changes["deleted_calls"] == [None, 0]
