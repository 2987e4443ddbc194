"""The admin in a real browser: headless Chromium logs in, reads the dashboard, exports calls as CSV.

Debian's chromium and chromium-driver (`.ci/run` installs them); selenium is
pointed at both binaries, so Selenium Manager never runs and nothing is
fetched from the network. The screenshot lands in test-artifacts/dashboard.png.
"""
from __future__ import annotations

import csv
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, time as dtime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from audit_app import rollups
from audit_app.models import ApiCall, Outcome
from proxy_app.models import RelayKey

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "browser-test-pw-1"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed "
                                "(apt-get install chromium chromium-driver; .ci/run does it)")


@pytest.fixture
def browser() -> Iterator[tuple[object, Path]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="relay-chromium-") as tmp:
        downloads = Path(tmp) / "downloads"
        downloads.mkdir()
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900",
                     f"--user-data-dir={Path(tmp) / 'profile'}"):
            options.add_argument(flag)
        options.add_experimental_option("prefs", {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        })
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        try:
            driver.set_page_load_timeout(20)
            driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                   {"behavior": "allow", "downloadPath": str(downloads)})
            yield driver, downloads
        finally:
            driver.quit()


def _calls(django_user_model) -> dict[str, object]:
    """Seven finished calls over the last week, and the rollups built from them."""
    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", PASSWORD)
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    ka, kb = RelayKey.issue(alice)[0], RelayKey.issue(bob)[0]
    today = timezone.localdate()

    def at(days_ago: int) -> datetime:
        return timezone.make_aware(datetime.combine(today - timedelta(days=days_ago), dtime(12)))

    rows = [  # (user, key, days ago, model, cost or None when unpriced, request id)
        (alice, ka, 1, "gpt-4o", "0.50", "req_a1"), (alice, ka, 1, "gpt-4o", "0.50", "req_a2"),
        (alice, ka, 1, "gpt-4o", "0.50", "req_a3"), (bob, kb, 1, "gpt-4o-mini", "0.01", "req_b1"),
        (bob, kb, 1, "gpt-4o-mini", "0.01", "req_b2"), (bob, kb, 3, "o3", "2.00", "req_b3"),
        (alice, ka, 3, "mystery-model", None, "req_a4"),
    ]
    for user, key, days_ago, model, cost, request_id in rows:
        ApiCall.objects.create(
            user=user, key=key, started_at=at(days_ago), finished_at=at(days_ago), method="POST",
            path="/v1/responses", family="responses", model=model, status=200, upstream_status=200,
            outcome=Outcome.OK, input_tokens=1000, cached_input_tokens=100, output_tokens=200,
            total_tokens=1200, cost=Decimal(cost) if cost else None, unpriced=cost is None,
            upstream_request_id=request_id,
        )
    rollups.rebuild()
    return {"boss": boss, "bob": bob}


def _wait_for_download(folder: Path, timeout: float = 15.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.iterdir() if p.suffix == ".csv"]
        if done and not any(p.suffix == ".crdownload" for p in folder.iterdir()):
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no CSV downloaded in {timeout} s: {list(folder.iterdir())}")


def test_admin_login_dashboard_and_csv_export(live_server, browser, django_user_model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver, downloads = browser
    _calls(django_user_model)
    wait = WebDriverWait(driver, 10)

    # Log in through the real admin login form.
    driver.get(f"{live_server.url}/admin/")
    assert "/admin/login/" in driver.current_url
    _submit_login(driver, "boss", PASSWORD)

    # From the admin index to the dashboard, then the "Last 7 days" period.
    wait.until(EC.element_to_be_clickable((By.ID, "usage-dashboard-link"))).click()
    wait.until(EC.url_contains("/admin/dashboard/"))
    driver.find_element(By.LINK_TEXT, "Last 7 days").click()
    wait.until(EC.url_contains("period=7d"))

    chart = driver.find_element(By.CSS_SELECTOR, "svg.relay-chart")
    assert chart.is_displayed() and chart.size["width"] > 600
    # 7 days drawn, 3 segments with spend: two models yesterday, one three days ago.
    assert len(chart.find_elements(By.CSS_SELECTOR, "rect.day")) == 7
    segments = chart.find_elements(By.CSS_SELECTOR, "rect.seg")
    assert len(segments) == 3
    assert sorted(s.get_attribute("fill") for s in segments) == sorted({"#4e79a7", "#f28e2b", "#59a14f"})
    assert driver.find_element(By.CSS_SELECTOR, "#total-cost .card-value").text == "$3.52"
    assert driver.find_element(By.CSS_SELECTOR, "#total-calls .card-value").text == "7"
    assert driver.find_element(By.CSS_SELECTOR, "#total-unpriced .card-value").text == "1"
    assert driver.find_element(By.CSS_SELECTOR, "#total-tokens .card-value").text == "8,400"
    assert [r.text.split("\n")[0] for r in driver.find_elements(By.CSS_SELECTOR, "#top-users td.name")] == [
        "bob", "alice"]

    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 40, 3000))
    assert driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000

    # Bob's calls in the period, from his row of the top users, then exported as CSV.
    bob_row = driver.find_element(By.XPATH, "//table[@id='top-users']//tr[td/a[text()='bob']]")
    bob_row.find_element(By.CSS_SELECTOR, "td.n a").click()
    wait.until(EC.url_contains("/admin/audit_app/apicall/"))
    assert "user__id__exact=" in driver.current_url
    wait.until(EC.element_to_be_clickable((By.ID, "export-csv"))).click()
    exported = _wait_for_download(downloads)
    with exported.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["upstream_request_id"] for r in rows) == ["req_b1", "req_b2", "req_b3"]
    assert {r["user"] for r in rows} == {"bob"}
    assert sorted(Decimal(r["cost_usd"]) for r in rows) == [Decimal("0.01"), Decimal("0.01"), Decimal("2")]


# --- the daily tools at 1440 x 1000, on seed_demo data ------------------------------------

DESKTOP = (1440, 1000)


def _submit_login(driver, username: str, password: str) -> None:
    """Fill in and send the admin login form on the current page, then wait for the
    logged-in page: a get() issued while the login POST is still in flight raced it and
    landed on the admin index instead of the page asked for."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "#login-form input[type=submit]").click()
    WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.ID, "user-tools")))


def _login(driver, live_server, username: str, password: str) -> None:
    driver.get(f"{live_server.url}/admin/login/")
    _submit_login(driver, username, password)


def _no_horizontal_scroll(driver) -> None:
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= DESKTOP[0], f"page is {width}px wide: a horizontal scroll at {DESKTOP[0]}px"
    # Nor inside: Django's changelist puts its table in a box that scrolls on its own.
    inner = driver.execute_script(
        "return [...document.querySelectorAll('.results')].map(e => [e.scrollWidth, e.clientWidth])")
    assert all(scroll <= client for scroll, client in inner), f"{driver.current_url} scrolls sideways: {inner}"


def _shot(driver, name: str, full: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    if full:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(DESKTOP[0], min(int(height) + 40, 3200))
    assert driver.save_screenshot(str(ARTIFACTS / name))
    driver.set_window_size(*DESKTOP)


@pytest.fixture
def demo_data(transactional_db, shipped_prices, django_user_model):
    import io

    from django.core.management import call_command

    from audit_app.models import BatchRecord
    from proxy_app.models import UserLimit

    call_command("seed_demo", "--calls", "3000", "--days", "40", "--seed", "16", "--batches", "10",
                 "--no-analyze", stdout=io.StringIO())
    django_user_model.objects.create_superuser("boss", "boss@example.com", PASSWORD)
    UserLimit.objects.create(user=django_user_model.objects.get(username="alice"), monthly_budget_usd=Decimal("3.00"))
    assert BatchRecord.objects.filter(request_failed__gt=0).exists()


def test_daily_tools_at_1440px(live_server, browser, demo_data, django_user_model):
    from django.contrib.auth.models import Permission
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from audit_app.models import ApiCall, BatchRecord

    driver, _ = browser
    driver.set_window_size(*DESKTOP)
    wait = WebDriverWait(driver, 10)
    _login(driver, live_server, "boss", PASSWORD)
    wait.until(EC.presence_of_element_located((By.ID, "errors-dashboard-link")))

    # 1. Every list shows its important columns without a horizontal scroll.
    lists = {
        "apicall": ("column-model_short", "column-status_outcome", "column-cost_usd", "column-duration"),
        "batchrecord": ("column-status", "column-failed_link", "column-cost_usd", "column-owner_link"),
        "filerecord": ("column-short_file_id", "column-purpose", "column-owner_link"),
        "batchresult": ("column-custom_id", "column-error_code", "column-short_error", "column-cost_usd"),
    }
    for model, columns in lists.items():
        driver.get(f"{live_server.url}/admin/audit_app/{model}/")
        _shot(driver, f"list-{model}.png")
        for column in columns:
            cell = driver.find_element(By.CSS_SELECTOR, f"#result_list th.{column}")
            assert cell.is_displayed() and cell.rect["x"] + cell.rect["width"] <= DESKTOP[0], (model, column)
        _no_horizontal_scroll(driver)  # so every column is in view
    driver.get(f"{live_server.url}/admin/proxy_app/relaykey/")
    assert driver.find_element(By.CSS_SELECTOR, "#result_list th.column-month_spend").is_displayed()
    assert "of $50.00" in driver.find_element(By.ID, "result_list").text  # the scoped key's budget
    _no_horizontal_scroll(driver)

    # 4 and 7. The calls list with the "Yesterday" preset: totals over the filtered list.
    driver.get(f"{live_server.url}/admin/audit_app/apicall/?key__isnull=False")
    driver.find_element(By.LINK_TEXT, "Yesterday").click()
    wait.until(EC.url_contains("started_at__gte="))
    totals = driver.find_element(By.ID, "list-totals").text
    assert "calls" in totals and "exact, from the daily usage rollups" in totals
    _no_horizontal_scroll(driver)
    _shot(driver, "admin-calls.png")

    # 2. The errors and latency view; a figure leads to the calls behind it.
    driver.get(f"{live_server.url}/admin/")
    driver.find_element(By.ID, "errors-dashboard-link").click()
    wait.until(EC.url_contains("/admin/errors/"))
    driver.find_element(By.LINK_TEXT, "Last 30 days").click()
    wait.until(EC.url_contains("period=30d"))
    rate = driver.find_element(By.CSS_SELECTOR, "#err-rate .card-value").text
    assert rate.endswith("%") and rate != "0.0%"
    assert "ms" in driver.find_element(By.CSS_SELECTOR, "#err-duration .card-value").text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#errors-by-day tbody tr")) == 30
    _no_horizontal_scroll(driver)
    _shot(driver, "admin-errors.png", full=True)
    driver.find_element(By.CSS_SELECTOR, "#err-rate").click()
    wait.until(EC.url_contains("outcome_class=error"))
    outcomes = {c.text.split(" ", 1)[-1] for c in driver.find_elements(By.CSS_SELECTOR, "td.field-status_outcome")}
    assert outcomes and outcomes <= {"upstream error", "rejected", "failed", "interrupted"}

    # 3 and 6. Dashboard filters (user, then model), the per-key table and the budgets.
    driver.get(f"{live_server.url}/admin/dashboard/?period=30d")
    Select(driver.find_element(By.ID, "filter-user")).select_by_visible_text("alice")
    driver.find_element(By.ID, "apply-filters").click()
    wait.until(EC.url_contains("user__id__exact="))
    keys = driver.find_elements(By.CSS_SELECTOR, "#by-key tbody tr")
    assert keys and all(r.find_elements(By.TAG_NAME, "td")[1].text == "alice" for r in keys)
    budgets = driver.find_element(By.ID, "budgets").text
    assert "user alice" in budgets and "$3.00" in budgets
    Select(driver.find_element(By.ID, "filter-model")).select_by_visible_text("gpt-4o-mini")
    driver.find_element(By.ID, "apply-filters").click()
    wait.until(EC.url_contains("model__exact=gpt-4o-mini"))
    assert driver.find_element(By.ID, "clear-filters").is_displayed()
    _no_horizontal_scroll(driver)
    _shot(driver, "admin-dashboard-filters.png", full=True)
    driver.find_element(By.ID, "total-calls").click()
    wait.until(EC.url_contains("/admin/audit_app/apicall/"))
    assert {c.text for c in driver.find_elements(By.CSS_SELECTOR, "td.field-user_link")} == {"alice"}

    # 5. Batches with failures: the filter, then a batch's page with its first errors.
    driver.get(f"{live_server.url}/admin/audit_app/batchrecord/")
    driver.find_element(By.LINK_TEXT, "with failures").click()
    wait.until(EC.url_contains("failures=yes"))
    from django.db.models import Q

    failing = BatchRecord.objects.filter(Q(request_failed__gt=0) | Q(status__in=["failed", "expired"])).count()
    rows = driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert 0 < len(rows) == failing <= BatchRecord.objects.count()
    batch = BatchRecord.objects.filter(request_failed__gt=0).order_by("-request_failed").first()
    driver.get(f"{live_server.url}/admin/audit_app/batchrecord/{batch.pk}/change/")
    table = driver.find_element(By.CSS_SELECTOR, "table.batch-failures")
    assert f"{batch.request_failed} of {batch.request_total} requests failed" in driver.page_source
    assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == min(batch.request_failed, 5)
    _shot(driver, "admin-batch-failures.png", full=True)

    # 8. Staff who may view calls but not keys or users get no link to those pages.
    clerk = django_user_model.objects.create_user("clerk", password=PASSWORD, is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_apicall"))
    driver.delete_all_cookies()
    _login(driver, live_server, "clerk", PASSWORD)
    driver.get(f"{live_server.url}/admin/audit_app/apicall/")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#result_list tbody tr")))
    hrefs = [a.get_attribute("href") or "" for a in driver.find_elements(By.CSS_SELECTOR, "#result_list a")]
    assert hrefs and not [h for h in hrefs if "/relaykey/" in h or "/auth/user/" in h], (driver.current_url, driver.title)
    assert ApiCall.objects.exists()
    # Sorting by an unindexed column from the URL keeps the indexed order.
    driver.get(f"{live_server.url}/admin/audit_app/apicall/?o=6")
    sorted_heads = driver.find_elements(By.CSS_SELECTOR, "#result_list th.sorted")
    assert [h.get_attribute("class").split("column-")[1].split()[0] for h in sorted_heads] == ["started"]
    assert not driver.find_elements(By.CSS_SELECTOR, "#result_list th.column-duration a")  # not offered either
