"""The admin: every model renders, audit rows are read-only, keys are shown once,
exports stream with the changelist's filters, and big-table pages never count
or scan the whole table."""
from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.db import connection
from django.db.models import Count, Sum
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit_app.admin_toolkit import CappedPaginator
from audit_app.ledger import seal
from audit_app.models import (AdminAction, ApiCall, BatchRecord, BatchResult, ChainState, FileRecord,
                              LedgerEntry, ModelPrice, PruneRun, UploadRecord, UsageDaily)
from proxy_app.models import RelayKey, UserLimit, hash_key
from tests.conftest import UPSTREAM_KEY

pytestmark = pytest.mark.django_db

AUDIT_MODELS = (ApiCall, FileRecord, UploadRecord, BatchRecord, BatchResult, UsageDaily, AdminAction,
                ChainState, LedgerEntry, PruneRun)


def url(model, view: str = "changelist", *args) -> str:
    meta = model._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_{view}", args=args)


@pytest.fixture
def demo(django_user_model):
    call_command("seed_demo", "--calls", "400", "--seed", "7", "--files", "8", "--batches", "3",
                 "--no-analyze", stdout=io.StringIO())
    seal()
    PruneRun.objects.create(run_by="ops", older_than_days=90, cutoff=timezone.now(), deleted_calls=0)
    UserLimit.objects.create(user=django_user_model.objects.get(username="alice"),
                             monthly_budget_usd=Decimal("100.00"))


def export_rows(response) -> list[dict[str, str]]:
    assert response.streaming
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def test_every_model_has_a_working_changelist_and_change_page(admin_client, demo):
    for model in (*AUDIT_MODELS, ModelPrice, RelayKey, UserLimit):
        assert model in admin.site._registry, model
        obj = model.objects.first()
        assert obj is not None, model
        assert admin_client.get(url(model)).status_code == 200, model
        page = admin_client.get(url(model, "change", obj.pk))
        assert page.status_code == 200, model
        content = page.content.decode() + admin_client.get(url(model)).content.decode()
        # The secrets' values, not just their names: a field shown under another label still leaks.
        secrets = [v for v in (getattr(obj, "row_mac", ""), getattr(obj, "key_hash", "")) if v]
        secrets += [UPSTREAM_KEY, *RelayKey.objects.values_list("key_hash", flat=True)]
        assert not [secret for secret in secrets if secret in content], model


def test_audit_rows_are_read_only_for_superusers(admin_client, demo):
    for model in AUDIT_MODELS:
        obj = model.objects.first()
        before = {f.attname: getattr(obj, f.attname) for f in model._meta.concrete_fields}
        assert admin_client.get(url(model, "add")).status_code == 403, model
        first_text_field = next(f.name for f in model._meta.concrete_fields
                                if f.get_internal_type() == "CharField")
        response = admin_client.post(url(model, "change", obj.pk), {first_text_field: "tampered"})
        assert response.status_code == 403, model
        assert admin_client.post(url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403, model
        obj.refresh_from_db()
        assert {f.attname: getattr(obj, f.attname) for f in model._meta.concrete_fields} == before
        page = admin_client.get(url(model, "change", obj.pk)).content.decode()
        assert "name=\"_save\"" not in page, model


def test_a_new_key_is_shown_once_and_only_its_hash_is_stored(admin_client, django_user_model):
    owner = django_user_model.objects.create_user("zoe")
    response = admin_client.post(url(RelayKey, "add"), {
        "owner": owner.pk, "name": "laptop", "allowed_families": "responses, embeddings",
        "allowed_models": "gpt-4o-mini", "monthly_budget_usd": "25.00", "requests_per_minute": "60",
    })
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    plaintext = re.search(r'id="new-relay-key"[^>]*>(tr-[A-Za-z0-9_-]+)<', response.content.decode()).group(1)
    key = RelayKey.objects.get(owner=owner)
    assert key.key_hash == hash_key(plaintext) and RelayKey.lookup(plaintext) == key
    assert key.allowed_families == ["responses", "embeddings"] and key.allowed_models == ["gpt-4o-mini"]
    assert key.monthly_budget_usd == Decimal("25.00") and key.requests_per_minute == 60
    assert key.key_hash not in response.content.decode()
    # Never again: not on the key's page, the list, or in a message waiting in the session.
    for later in (admin_client.get(url(RelayKey, "change", key.pk)), admin_client.get(url(RelayKey))):
        assert later.status_code == 200
        assert plaintext not in later.content.decode() and key.key_hash not in later.content.decode()
    assert plaintext not in str(dict(admin_client.session))


def test_a_key_gets_expiry_and_limits_and_keeps_its_owner(admin_client, django_user_model):
    owner, other = django_user_model.objects.create_user("yan"), django_user_model.objects.create_user("xia")
    key, _ = RelayKey.issue(owner, name="ci")
    response = admin_client.post(url(RelayKey, "change", key.pk), {
        "owner": other.pk, "name": "ci", "expires_at_0": "2031-01-31", "expires_at_1": "12:00:00",
        "allowed_families": '["responses"]', "allowed_models": "", "monthly_budget_usd": "10",
        "requests_per_minute": "5",
    })
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.owner == owner  # read-only once issued
    assert key.expires_at.year == 2031 and key.allowed_families == ["responses"] and key.allowed_models == []
    assert key.requests_per_minute == 5
    bad = admin_client.post(url(RelayKey, "change", key.pk), {"name": "ci", "allowed_families": "resp onses;",
                                                              "allowed_models": ""})
    assert bad.status_code == 200 and b"Not a valid name" in bad.content


def test_revoke_action_revokes_and_is_logged(admin_client, django_user_model):
    owner = django_user_model.objects.create_user("wim")
    keys = [RelayKey.issue(owner, name=n)[0] for n in ("a", "b")]
    response = admin_client.post(url(RelayKey), {"action": "revoke_keys",
                                                 "_selected_action": [k.pk for k in keys]})
    assert response.status_code == 302
    assert all(RelayKey.objects.get(pk=k.pk).revoked_at is not None for k in keys)
    assert AdminAction.objects.filter(action="revoked", object_type="proxy_app.RelayKey").count() == 2
    assert admin_client.get(url(RelayKey, "delete", keys[0].pk)).status_code == 403


def test_changing_a_price_saves_a_new_row(admin_client):
    old = ModelPrice.objects.get(model="gpt-4o-mini")
    form = {f: ("" if getattr(old, f) is None else str(getattr(old, f))) for f in (
        "input_per_1m", "cached_input_per_1m", "output_per_1m", "batch_input_per_1m", "batch_output_per_1m",
        "image_input_per_1m", "per_image", "per_second", "per_character")}
    form.update(model="gpt-4o-mini", source=old.source, output_per_1m="0.5000000000",
                effective_from_0=old.effective_from.strftime("%Y-%m-%d"),
                effective_from_1=old.effective_from.strftime("%H:%M:%S"))
    response = admin_client.post(url(ModelPrice, "change", old.pk), form)
    assert response.status_code == 302
    rows = list(ModelPrice.objects.filter(model="gpt-4o-mini").order_by("effective_from"))
    assert len(rows) == 2 and rows[0].pk == old.pk
    assert rows[0].output_per_1m == old.output_per_1m and rows[1].output_per_1m == Decimal("0.5")
    assert rows[1].effective_from > old.effective_from


def test_seed_demo_rollups_equal_the_calls(demo):
    calls = ApiCall.objects.filter(key__isnull=False)
    assert ApiCall.objects.count() == 400
    assert calls.aggregate(s=Sum("cost"))["s"] == UsageDaily.objects.aggregate(s=Sum("cost"))["s"] > 0
    assert calls.count() == UsageDaily.objects.aggregate(s=Sum("calls"))["s"]
    assert calls.filter(unpriced=True).count() == UsageDaily.objects.aggregate(s=Sum("unpriced_calls"))["s"] > 0
    assert ApiCall.objects.filter(cost__isnull=False, cost=0).count() == 0  # unknown is NULL, never 0
    per_model = dict(calls.values_list("model").annotate(n=Count("id")))
    assert per_model == dict(UsageDaily.objects.values_list("model").annotate(n=Sum("calls")))
    assert ApiCall.objects.filter(row_mac="").count() == 0  # the sealer accepted them all
    assert LedgerEntry.objects.filter(kind="call").count() == 400
    for batch in BatchRecord.objects.filter(results_counted_at__isnull=False):
        assert batch.cost == batch.results.aggregate(s=Sum("cost"))["s"]
    assert FileRecord.objects.filter(purpose="batch").count() >= 3 and BatchResult.objects.exists()


def _apicall_queries(ctx) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries if "audit_app_apicall" in q["sql"]]


def test_calls_changelist_never_counts_or_scans_the_whole_table(admin_client, demo, monkeypatch):
    monkeypatch.setattr(CappedPaginator, "cap", 150)
    with CaptureQueriesContext(connection) as ctx:
        page = admin_client.get(url(ApiCall))
    assert page.status_code == 200
    assert "more than 150 api calls" in page.content.decode()
    sqls = _apicall_queries(ctx)
    counts = [s for s in sqls if "COUNT(" in s.upper()]
    # The paginator's count (cap + 1 rows) and the list's totals (the first cap rows).
    assert counts and all("LIMIT 151" in s or "LIMIT 150" in s for s in counts)
    assert not any("DISTINCT" in s.upper() for s in sqls)  # no date-hierarchy or filter scans
    # Under the cap the count is exact, and the date hierarchy drills down without DISTINCT.
    day = ApiCall.objects.order_by("-started_at").first().started_at
    query = f"?started_at__year={day.year}&started_at__month={day.month}&started_at__day={day.day}"
    with CaptureQueriesContext(connection) as ctx:
        page = admin_client.get(url(ApiCall) + query)
    start = timezone.make_aware(timezone.datetime(day.year, day.month, day.day))
    expected = ApiCall.objects.filter(started_at__gte=start, started_at__lt=start + timezone.timedelta(days=1))
    assert page.context["cl"].result_count == expected.count() and not page.context["cl"].paginator.capped
    assert not any("DISTINCT" in s.upper() for s in _apicall_queries(ctx))


def test_every_call_lookup_by_key_or_user_has_an_index_and_none_is_kept_twice(db):
    # Lookups by key and user (their changelists, PROTECT checks on delete) use the
    # composite indexes; a single-column copy would only cost every call a write.
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, ApiCall._meta.db_table)
    indexes = [c["columns"] for c in constraints.values() if c["index"] and not c["primary_key"]]
    for column in ("key_id", "user_id"):
        assert [column, "started_at"] in indexes
        assert [column] not in indexes


def test_capped_paginator_counts_with_a_limit():
    paginator = CappedPaginator(list(range(25)), 10)
    assert (paginator.count, paginator.capped, paginator.num_pages) == (25, False, 3)
    small = type("Small", (CappedPaginator,), {"cap": 20})(list(range(25)), 10)
    assert (small.count, small.capped, small.num_pages) == (20, True, 2)


def test_filters_and_search(admin_client, demo, django_user_model):
    alice = django_user_model.objects.get(username="alice")
    key = RelayKey.objects.filter(owner=alice).first()
    call = ApiCall.objects.exclude(upstream_request_id="").order_by("?").first()
    since = (timezone.localdate() - timezone.timedelta(days=7)).isoformat()
    cases = {
        f"user__id__exact={alice.pk}": ApiCall.objects.filter(user=alice),
        f"key__id__exact={key.pk}": ApiCall.objects.filter(key=key),
        "model__exact=gpt-4o-mini&outcome__exact=ok": ApiCall.objects.filter(model="gpt-4o-mini", outcome="ok"),
        "family__exact=embeddings": ApiCall.objects.filter(family="embeddings"),
        f"started_at__gte={since}": ApiCall.objects.filter(
            started_at__gte=timezone.make_aware(timezone.datetime.fromisoformat(since))),
        f"q={call.upstream_request_id}": ApiCall.objects.filter(pk=call.pk),
        f"q={call.relay_request_id}": ApiCall.objects.filter(pk=call.pk),
        "q=alice": ApiCall.objects.filter(user=alice),
        f"q={key.prefix}": ApiCall.objects.filter(key__prefix=key.prefix),
    }
    for query, expected in cases.items():
        page = admin_client.get(f"{url(ApiCall)}?{query}")
        assert page.status_code == 200, query
        assert page.context["cl"].result_count == expected.count(), query
    assert admin_client.get(f"{url(ApiCall)}?user__id__exact=nope").status_code == 302  # ?e=1, not a 500
    assert admin_client.get(f"{url(ApiCall)}?started_at__gte=yesterday").status_code == 302


def test_csv_export_streams_the_filtered_changelist(admin_client, demo):
    changelist = admin_client.get(f"{url(ApiCall)}?model__exact=gpt-4o-mini&outcome__exact=ok")
    export_href = re.search(r'href="([^"]+)"[^>]*id="export-csv"', changelist.content.decode()).group(1)
    assert export_href.startswith(reverse("admin:audit_app_apicall_export"))
    response = admin_client.get(export_href.replace("&amp;", "&"))
    assert response["Content-Type"].startswith("text/csv")
    rows = export_rows(response)
    expected = ApiCall.objects.filter(model="gpt-4o-mini", outcome="ok")
    assert len(rows) == expected.count() > 0
    assert {r["model"] for r in rows} == {"gpt-4o-mini"}
    assert [int(r["id"]) for r in rows] == list(expected.order_by("-started_at", "-pk").values_list("pk", flat=True))
    newest = expected.order_by("-started_at").first()
    assert Decimal(rows[0]["cost_usd"]) == newest.cost
    assert "row_mac" not in rows[0] and newest.row_mac not in str(rows)
    # Search applies too; and every other exportable changelist streams.
    assert len(export_rows(admin_client.get(reverse("admin:audit_app_apicall_export") + "?q=alice"))) == \
        ApiCall.objects.filter(user__username="alice").count()
    batch = BatchRecord.objects.filter(results__isnull=False).first()
    results = export_rows(admin_client.get(reverse("admin:audit_app_batchresult_export")
                                           + f"?batch__id__exact={batch.pk}"))
    assert len(results) == batch.results.count() and {r["batch_id"] for r in results} == {batch.batch_id}
    assert len(export_rows(admin_client.get(reverse("admin:audit_app_filerecord_export")))) == FileRecord.objects.count()
    assert len(export_rows(admin_client.get(reverse("admin:audit_app_batchrecord_export")))) == BatchRecord.objects.count()


def test_csv_export_needs_a_staff_login(client, demo):
    response = client.get(reverse("admin:audit_app_apicall_export"))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_related_records_link_to_each_other(admin_client, demo):
    batch = BatchRecord.objects.filter(output_file__isnull=False).first()
    page = admin_client.get(url(BatchRecord, "change", batch.pk)).content.decode()
    results_url = f"{url(BatchResult)}?batch__id__exact={batch.pk}"
    assert results_url in page
    assert url(FileRecord, "change", FileRecord.objects.get(file_id=batch.input_file_id).pk) in page
    assert url(FileRecord, "change", FileRecord.objects.get(file_id=batch.output_file_id).pk) in page
    results = admin_client.get(results_url)
    assert results.context["cl"].result_count == batch.results.count()
    result_page = admin_client.get(url(BatchResult, "change", batch.results.first().pk)).content.decode()
    assert url(BatchRecord, "change", batch.pk) in result_page
    input_file = FileRecord.objects.get(file_id=batch.input_file_id)
    file_page = admin_client.get(url(FileRecord, "change", input_file.pk)).content.decode()
    batches_url = f"{url(BatchRecord)}?input_file__exact={input_file.file_id}"
    assert batches_url in file_page
    assert admin_client.get(batches_url).context["cl"].result_count == 1
    call = ApiCall.objects.filter(key__isnull=False).first()
    call_page = admin_client.get(url(ApiCall, "change", call.pk)).content.decode()
    assert url(RelayKey, "change", call.key_id) in call_page
    key_page = admin_client.get(url(RelayKey, "change", call.key_id)).content.decode()
    assert reverse("admin:auth_user_change", args=[call.user_id]) in key_page
    assert f"{url(ApiCall)}?key__id__exact={call.key_id}" in key_page


@pytest.mark.parametrize("query", [
    "started_at__lt=0000-01-01", "started_at__gte=2025-02-30", "started_at__lt=9999-12-31T23:59:59",
    "started_at__gte=not-a-date",
])
def test_impossible_dates_in_a_filter_are_not_a_500(admin_client, query):
    for changelist in ("/admin/audit_app/apicall/", "/admin/audit_app/usagedaily/"):
        url = f"{changelist}?{query.replace('started_at', 'date') if 'usagedaily' in changelist else query}"
        response = admin_client.get(url)
        assert response.status_code in (200, 302), (url, response.status_code)
