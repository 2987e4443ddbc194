"""The journal replay applies each journaled write exactly once, whatever is killed when,
and a full disk does not lose a journaled write."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from django.core.management import call_command
from django.db.models import Sum

from audit_app import spool
from audit_app.models import ApiCall, Billing, Outcome, UsageDaily
from audit_app.recorder import CallContext, _ctx_state, open_call
from tests.conftest import ROOT, database_url_for_subprocess
from tests.test_journal import table_away

INSERTS, COMPLETES = 3000, 1000


@pytest.fixture
def journal(settings, tmp_path):
    settings.RELAY_AUDIT_SPOOL = str(tmp_path / "journal.jsonl")
    return tmp_path / "journal.jsonl"


def fill_journal(key) -> None:
    """INSERTS refused rows and COMPLETES completions of opened calls, as the relay journals them."""
    for i in range(INSERTS):
        ctx = CallContext(method="GET", path="/v1/models", family="models", key=key, user=key.owner)
        spool.append({"op": "insert", "ctx": _ctx_state(ctx), "fields": {
            "finished_at": ctx.started_at, "duration_ms": 1.0, "status": 503, "outcome": Outcome.REJECTED,
            "error": "audit unavailable", "billing": Billing.FREE}})
    for i in range(COMPLETES):
        ctx = CallContext(method="POST", path="/v1/files", family="files", key=key, user=key.owner)
        call_id = open_call(ctx)
        spool.append({"op": "complete", "call_id": call_id, "ctx": _ctx_state(ctx), "usage": None,
                      "response_model": "", "fields": {"finished_at": ctx.started_at, "duration_ms": 1.0,
                                                       "status": 200, "outcome": Outcome.OK, "billing": Billing.FREE}})


def reconcile_process(journal) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "relay_project.settings",
           "DATABASE_URL": database_url_for_subprocess(), "SECRET_KEY": "test-only-secret-key",
           "RELAY_AUDIT_SPOOL": str(journal), "RELAY_AUDIT_SPOOL_RESERVE_BYTES": "65536"}
    return subprocess.Popen([sys.executable, "manage.py", "reconcile_calls"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_each_write_applied_once() -> None:
    assert ApiCall.objects.filter(outcome=Outcome.REJECTED).count() == INSERTS
    assert ApiCall.objects.filter(outcome=Outcome.OK).count() == COMPLETES
    assert not ApiCall.objects.filter(outcome=Outcome.PENDING).exists()
    assert UsageDaily.objects.aggregate(n=Sum("calls"))["n"] == INSERTS + COMPLETES


def test_a_replay_killed_half_way_then_run_again_applies_each_write_once(transactional_db, issue_key, journal):
    key, _ = issue_key()
    fill_journal(key)
    replay = reconcile_process(journal)
    deadline = time.monotonic() + 60
    while ApiCall.objects.filter(outcome=Outcome.REJECTED).count() < 200:
        assert replay.poll() is None and time.monotonic() < deadline, "the replay ended before it could be killed"
        time.sleep(0.01)
    replay.send_signal(signal.SIGKILL)
    replay.wait()
    assert journal.with_suffix(".jsonl.replaying").exists(), "killed part-way: its work file is left"
    assert ApiCall.objects.filter(outcome=Outcome.REJECTED).count() < INSERTS
    # The next run finishes the leftover work file even though no new entry arrived.
    assert not journal.exists()
    call_command("reconcile_calls")
    assert_each_write_applied_once()
    assert not journal.with_suffix(".jsonl.replaying").exists()


def test_two_replays_at_once_apply_each_write_once(transactional_db, issue_key, journal):
    key, _ = issue_key()
    fill_journal(key)
    replays = [reconcile_process(journal) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in replays]
    assert [p.returncode for p in replays] == [0, 0], outputs
    assert_each_write_applied_once()


def test_a_full_disk_gives_up_the_reserve_and_keeps_the_journaled_write(
        relay_url, relay_key, upstream, journal, monkeypatch):
    assert spool.ensure_reserve() and spool.reserve_path().exists()
    real_write = spool.Disk.write

    def full_until_reserve_released(self, fd, data):
        if spool.reserve_path().exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, fd, data)

    monkeypatch.setattr(spool.Disk, "write", full_until_reserve_released)
    # The database refuses the row's completion (its disk is full too): the journal must keep it.
    with table_away(UsageDaily):
        response = requests.post(f"{relay_url}/v1/responses", json={"model": "gpt-4o-mini", "input": "hi"},
                                 headers={"Authorization": f"Bearer {relay_key}"}, timeout=10)
        assert response.status_code == 200
        deadline = time.monotonic() + 10
        while not journal.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert not spool.reserve_path().exists(), "the reserve was given up"
    monkeypatch.undo()
    call_command("reconcile_calls")
    row = ApiCall.objects.get()
    assert (row.outcome, row.billing, row.total_tokens) == (Outcome.OK, Billing.PRICED, 19)
    assert spool.reserve_path().exists(), "reconcile_calls recreates the reserve"
