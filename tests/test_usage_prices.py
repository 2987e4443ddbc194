"""Prices over time: a change part-way through a month, `reprice`, `import_prices`.

Every call here is a real one through the relay, answered by the fake upstream
with its fixed usage: a Responses JSON answer is 12 input tokens (4 cached) and
7 output tokens. Shipped gpt-4o (USD per 1M): 2.50 in / 1.25 cached / 10.00 out,
so such a call costs (12 - 4) x 2.50 + 4 x 1.25 + 7 x 10.00 = 20 + 5 + 70 = 95 per 1M.
"""
import json
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone

from tests.conftest import finished_calls
from audit_app.models import ApiCall, ModelPrice, UsageDaily

SHIPPED_GPT_4O = Decimal("0.000095")


@pytest.fixture
def call(relay_url, relay_key):
    """One JSON Responses call through the relay; returns its finished row."""
    def call(model: str = "gpt-4o") -> ApiCall:
        before = ApiCall.objects.count()
        response = requests.post(f"{relay_url}/v1/responses", json={"model": model, "input": "hi"},
                                 headers={"Authorization": f"Bearer {relay_key}"}, timeout=30)
        assert response.status_code == 200
        finished_calls(before + 1)
        return ApiCall.objects.get(relay_request_id=response.headers["x-relay-request-id"])
    return call


def month_rollup(model: str, day) -> UsageDaily:
    """The month's totals for a model, summed in Python from the daily rows (exact Decimals)."""
    rows = UsageDaily.objects.filter(model=model, date__year=day.year, date__month=day.month)
    total = UsageDaily(calls=0, cost=Decimal(0), unpriced_calls=0)
    for row in rows:
        total.calls += row.calls
        total.cost += row.cost
        total.unpriced_calls += row.unpriced_calls
    return total


def utc_day(at: datetime) -> str:
    return at.astimezone(dt_timezone.utc).strftime("%Y-%m-%d")


def test_price_change_part_way_through_a_month(call, capsys):
    before = call()
    assert before.cost == SHIPPED_GPT_4O and before.price.effective_from.year == 2024

    # The price doubles from now on: a new row, effective from its date.
    change = ModelPrice.objects.create(model="gpt-4o", effective_from=timezone.now(), input_per_1m=Decimal("5"),
                                       cached_input_per_1m=Decimal("2.5"), output_per_1m=Decimal("20"))
    after = call()
    assert before.started_at < change.effective_from < after.started_at
    # 8 x 5.00 + 4 x 2.50 + 7 x 20.00 = 40 + 10 + 140 = 190 per 1M.
    assert after.cost == Decimal("0.00019") and after.price == change
    before.refresh_from_db()
    assert before.cost == SHIPPED_GPT_4O, "a price change never re-costs past calls"
    month = month_rollup("gpt-4o", timezone.localdate(after.started_at))
    assert (month.calls, month.cost) == (2, Decimal("0.000285"))  # 95 + 190 per 1M

    # Both calls already carry the price in effect when they were made: nothing to do.
    call_command("reprice", "--since", utc_day(before.started_at))
    assert "2 calls checked, 0 changed" in capsys.readouterr().out

    # A correction for the earlier period (from just before the first call) changes nothing
    # until reprice is asked, and then only the calls on or after --since.
    corrected = ModelPrice.objects.create(
        model="gpt-4o", effective_from=before.started_at - timedelta(seconds=1), input_per_1m=Decimal("3"),
        cached_input_per_1m=Decimal("1.5"), output_per_1m=Decimal("12"))
    before.refresh_from_db()
    assert before.cost == SHIPPED_GPT_4O
    call_command("reprice", "--since", utc_day(after.started_at + timedelta(days=1)))
    assert "0 calls checked" in capsys.readouterr().out
    call_command("reprice", "--since", utc_day(before.started_at), "--dry-run")
    assert "2 calls checked, 1 would change" in capsys.readouterr().out
    before.refresh_from_db()
    assert before.cost == SHIPPED_GPT_4O

    call_command("reprice", "--since", utc_day(before.started_at))
    assert "2 calls checked, 1 changed" in capsys.readouterr().out
    before.refresh_from_db()
    after.refresh_from_db()
    # 8 x 3.00 + 4 x 1.50 + 7 x 12.00 = 24 + 6 + 84 = 114 per 1M; the later call keeps 190.
    assert before.cost == Decimal("0.000114") and before.price == corrected
    assert after.cost == Decimal("0.00019") and after.price == change
    month = month_rollup("gpt-4o", timezone.localdate(after.started_at))
    assert (month.calls, month.cost) == (2, Decimal("0.000304"))  # 114 + 190 per 1M


def test_reprice_applies_a_price_to_calls_that_had_none(call, capsys):
    first = call("house-model")
    assert first.unpriced and first.cost is None
    ModelPrice.objects.create(model="house-model", effective_from=datetime(2024, 1, 1, tzinfo=dt_timezone.utc),
                              input_per_1m=Decimal("1"), output_per_1m=Decimal("2"),
                              cached_input_per_1m=Decimal("0.5"))
    first.refresh_from_db()
    assert first.unpriced, "prices never change past calls silently"
    call_command("reprice", "--since", utc_day(first.started_at))
    assert "1 changed" in capsys.readouterr().out
    first.refresh_from_db()
    # 8 uncached x 1.00 + 4 cached x 0.50 + 7 x 2.00 = 8 + 2 + 14 = 24 per 1M.
    assert first.cost == Decimal("0.000024") and not first.unpriced
    daily = UsageDaily.objects.get()
    assert daily.cost == Decimal("0.000024") and daily.unpriced_calls == 0 and daily.calls == 1


def test_import_prices_adds_a_model_and_changes_a_price_from_a_date(call, tmp_path, capsys):
    unknown = call("house-model-x")
    assert unknown.unpriced
    # LiteLLM's format: USD per token.
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({
        "house-model-x": {"input_cost_per_token": 4e-06, "output_cost_per_token": 1.6e-05,
                          "cache_read_input_token_cost": 1e-06,
                          "litellm_provider": "openai", "mode": "responses"},
        "gpt-4o-mini": {"input_cost_per_token": 3e-07, "cache_read_input_token_cost": 1.5e-07,
                        "output_cost_per_token": 1.2e-06, "litellm_provider": "openai", "mode": "chat"},
        "gpt-4o-mini/low/1024-x-1024": {"output_cost_per_image": 0.01},  # a variant: skipped
    }))
    today = utc_day(timezone.now())
    call_command("import_prices", str(prices), "--effective", today)
    assert f"prices: 2 new, 0 unchanged, 1 skipped, effective {today} 00:00 UTC" in capsys.readouterr().out
    new = ModelPrice.objects.get(model="house-model-x")
    assert (new.input_per_1m, new.output_per_1m, new.cached_input_per_1m) == (Decimal("4"), Decimal("16"), Decimal("1"))
    assert new.effective_from == datetime.fromisoformat(today).replace(tzinfo=dt_timezone.utc)

    priced = call("house-model-x")
    # 8 x 4.00 + 4 cached x 1.00 + 7 x 16.00 = 32 + 4 + 112 = 148 per 1M.
    assert priced.cost == Decimal("0.000148") and priced.price == new
    mini = call("gpt-4o-mini")
    # 8 x 0.30 + 4 x 0.15 + 7 x 1.20 = 2.4 + 0.6 + 8.4 = 11.4 per 1M (shipped would be 5.7).
    assert mini.cost == Decimal("0.0000114") and mini.price.effective_from == new.effective_from
    unknown.refresh_from_db()
    assert unknown.unpriced and unknown.cost is None

    call_command("import_prices", str(prices), "--effective", today)
    assert "prices: 0 new, 2 unchanged, 1 skipped" in capsys.readouterr().out


def test_a_price_change_applies_to_the_very_next_call_in_another_worker(start_gunicorn, issue_key, upstream,
                                                                        tmp_path, capsys):
    """The relay runs in gunicorn (another process, which has read and kept gpt-4o's
    price); the price changes here, by an admin's row and then by import_prices; the
    worker's very next call is priced at the new price each time."""
    relay = start_gunicorn()
    _, key = issue_key()

    def call() -> ApiCall:
        r = requests.post(f"{relay.url}/v1/responses", json={"model": "gpt-4o", "input": "hi"},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200, r.text
        finished_calls(ApiCall.objects.count())
        return ApiCall.objects.get(relay_request_id=r.headers["x-relay-request-id"])

    assert call().cost == SHIPPED_GPT_4O
    ModelPrice.objects.create(model="gpt-4o", effective_from=timezone.now() - timedelta(seconds=1),
                              input_per_1m=Decimal("3"), cached_input_per_1m=Decimal("1.5"),
                              output_per_1m=Decimal("12"))
    # 8 x 3.00 + 4 x 1.50 + 7 x 12.00 = 24 + 6 + 84 = 114 per 1M.
    assert call().cost == Decimal("0.000114")

    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4o": {"input_cost_per_token": 4e-06, "cache_read_input_token_cost": 2e-06,
                                             "output_cost_per_token": 1.6e-05}}))
    call_command("import_prices", str(prices))  # effective now
    assert "1 new" in capsys.readouterr().out
    # 8 x 4.00 + 4 x 2.00 + 7 x 16.00 = 32 + 8 + 112 = 152 per 1M.
    assert call().cost == Decimal("0.000152")
