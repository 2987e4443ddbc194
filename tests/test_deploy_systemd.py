"""The systemd units the relay ships (scripts/deploy/systemd/), rendered with test paths.

systemd itself is not running in the test environment, so the units are checked the ways
that do not need it: `systemd-analyze verify` on the rendered files (what an operator
runs), every ExecStart's command and arguments parsed by the relay's own commands, and the
long-running ExecStart lines run for real with the rendered environment file, then sent
systemd's stop signal, to show they exit cleanly within the unit's TimeoutStopSec.
"""
from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.core.management import get_commands, load_command_class

from scripts.backup_db import build_parser
from scripts.deploy.render import render_all
from tests.conftest import ROOT, UPSTREAM_KEY, database_url_for_subprocess, free_port

UNITS = ROOT / "scripts" / "deploy" / "systemd"
TEMPLATES = sorted(UNITS.glob("*.service")) + sorted(UNITS.glob("*.timer"))
LONG_RUNNING = ["team-relay.service", "team-relay-poller.service", "team-relay-sealer.service"]
TIMED = ["reconcile-calls", "sync-files", "prune-audit", "reconcile-usage", "verify-audit", "backup"]
# Commands the units run that another issue is still writing: the usage reconciliation.
NOT_YET_WRITTEN = {"reconcile_usage"}
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def parse_unit(text: str) -> dict[str, dict[str, str]]:
    """Sections and settings of a unit file (the last assignment of a setting wins)."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        name, _, value = line.partition("=")
        current[name.strip()] = value.strip()
    return sections


def parse_env_file(text: str) -> dict[str, str]:
    """An EnvironmentFile as systemd reads it: NAME=VALUE lines, comments and blanks ignored."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip().strip('"')
    return env


def seconds(value: str) -> float:
    units = {"s": 1, "sec": 1, "min": 60, "h": 3600}
    number, unit = re.fullmatch(r"(\d+)\s*([a-z]*)", value).groups()
    return int(number) * units.get(unit or "s", 1)


@pytest.fixture
def rendered(tmp_path) -> Path:
    """Every unit and the environment file, rendered as docs/operations.md says, with test paths."""
    out = tmp_path / "system"
    out.mkdir()
    env_file = out / "relay.env"
    values = {"APP_DIR": str(ROOT), "USER": "team-relay", "ENV_FILE": str(env_file),
              "SERVER_NAME": "relay.test", "DATABASE_URL": "sqlite:////var/lib/team-relay/db.sqlite3",
              "OPENAI_API_KEY": UPSTREAM_KEY, "SECRET_KEY": secrets.token_urlsafe(50),
              "AUDIT_CHAIN_KEY": secrets.token_urlsafe(50)}
    for template, text in render_all([*TEMPLATES, UNITS / "relay.env"], values).items():
        (out / template.name).write_text(text)
    return out


def unit(rendered: Path, name: str) -> dict[str, dict[str, str]]:
    return parse_unit((rendered / name).read_text())


def manage_py_args(exec_start: str, env: dict[str, str]) -> list[str]:
    argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], exec_start))
    assert argv[0].endswith("/.venv/bin/python") and argv[1] == "manage.py", exec_start
    return argv[2:]


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_every_unit_and_timer_passes_systemd_analyze_verify(rendered):
    files = sorted(str(p) for p in rendered.iterdir() if p.suffix in (".service", ".timer"))
    assert len(files) == 3 + 2 * len(TIMED)
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *files], capture_output=True, text=True)
    # verify exits 0 on settings it could not parse ("..., ignoring"): any output is a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_every_unit_runs_a_relay_command_with_arguments_the_command_accepts(rendered):
    env = parse_env_file((rendered / "relay.env").read_text())
    commands = get_commands()
    ran = set()
    for path in sorted(rendered.glob("team-relay-*.service")):
        exec_start = unit(rendered, path.name)["Service"]["ExecStart"]
        if " scripts/backup_db.py " in exec_start:
            argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], exec_start.replace("%S", "/var/lib")))
            assert argv[1:4] == ["scripts/backup_db.py", "backup", "/var/lib/team-relay/backups"]
            build_parser().parse_args(argv[2:])
            continue
        name, *args = manage_py_args(exec_start, env)
        ran.add(name)
        if name in NOT_YET_WRITTEN and name not in commands:
            continue
        command = load_command_class(commands[name], name)
        command.create_parser("manage.py", name).parse_args(args)  # exits on an unknown argument
    assert ran == {"poll_batches", "seal_audit", "reconcile_calls", "sync_files", "prune_audit", "reconcile_usage",
                   "verify_audit"}


def test_the_daemons_restart_on_failure_and_the_jobs_run_on_their_timers(rendered):
    for name in LONG_RUNNING:
        service = unit(rendered, name)["Service"]
        assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM", name
        assert unit(rendered, name)["Install"]["WantedBy"] == "multi-user.target"
    for job in TIMED:
        timer = unit(rendered, f"team-relay-{job}.timer")
        assert timer["Timer"]["Unit"] == f"team-relay-{job}.service" and timer["Timer"]["Persistent"] == "true"
        assert unit(rendered, f"team-relay-{job}.service")["Service"]["Type"] == "oneshot"
    # Every unit: the dedicated user, a read-only system, no privilege to gain.
    for path in rendered.glob("team-relay*.service"):
        service = unit(rendered, path.name)["Service"]
        assert service["User"] == "team-relay" and service["NoNewPrivileges"] == "yes"
        assert service["ProtectSystem"] == "strict" and service["PrivateTmp"] == "yes"
        assert service["CapabilityBoundingSet"] == "" and service["EnvironmentFile"] == str(rendered / "relay.env")


def test_the_environment_file_is_a_deployment_that_django_check_deploy_accepts(rendered):
    env = parse_env_file((rendered / "relay.env").read_text())
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
        env={"PATH": os.environ["PATH"], **env, "DJANGO_SETTINGS_MODULE": "relay_project.settings",
             "DATABASE_URL": "sqlite:///:memory:"},
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def stop_like_systemd(proc: subprocess.Popen, timeout_stop: float) -> tuple[int, float]:
    """KillMode=mixed, KillSignal=SIGTERM: TERM to the main process, then wait TimeoutStopSec."""
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = proc.wait(timeout_stop)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"still running {timeout_stop} s after SIGTERM: systemd would SIGKILL it")
    return code, time.monotonic() - started


@pytest.fixture
def run_exec_start(rendered):
    """Start units' ExecStart lines; whatever is still running after the test is killed."""
    started: list[subprocess.Popen] = []

    def run(name: str, **overrides: str) -> tuple[subprocess.Popen, dict[str, str], Path]:
        proc, service, log = start_exec_start(rendered, name, **overrides)
        started.append(proc)
        return proc, service, log

    yield run
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_exec_start(rendered: Path, name: str, **overrides: str) -> tuple[subprocess.Popen, dict[str, str], Path]:
    """The unit's ExecStart, in its WorkingDirectory, with its EnvironmentFile (and test overrides)."""
    service = unit(rendered, name)["Service"]
    env = parse_env_file((rendered / "relay.env").read_text())
    env = {"PATH": os.environ["PATH"], **env, "DATABASE_URL": database_url_for_subprocess(),
           "RELAY_AUDIT_SPOOL": str(rendered / "journal.jsonl"), **overrides}
    exec_start = service["ExecStart"].replace("%S", str(rendered / "state"))
    argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], exec_start))
    log = rendered / f"{name}.log"
    proc = subprocess.Popen(argv, cwd=service["WorkingDirectory"], env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc, service, log


@pytest.mark.parametrize("name, command", [
    ("team-relay-poller.service", "poll_batches"),
    ("team-relay-sealer.service", "seal_audit"),
])
def test_the_poller_and_the_sealer_stop_cleanly_on_systemds_sigterm(run_exec_start, transactional_db, upstream,
                                                                     name, command):
    proc, service, log = run_exec_start(name, OPENAI_BASE_URL=upstream.base_url)
    time.sleep(4)  # Django loaded and a first pass made (the sealer is quiet when it has nothing to seal)
    assert proc.poll() is None, log.read_text()
    code, took = stop_like_systemd(proc, seconds(service["TimeoutStopSec"]))
    output = log.read_text()
    assert code == 0, output  # 0: Restart=on-failure leaves a stopped unit stopped
    assert "SIGTERM: finishing the current step, then stopping" in output
    assert re.search(rf"^{command}: \d+ pass|^{command}: (batches: )?checked", output, re.M), output


def test_the_relay_unit_serves_and_drains_on_systemds_sigterm(rendered, run_exec_start, transactional_db, upstream):
    # The environment file as rendered (HTTPS=true, ALLOWED_HOSTS, ...), but a free port.
    port = free_port()
    proc, service, log = run_exec_start("team-relay.service", OPENAI_BASE_URL=upstream.base_url,
                                        GUNICORN_BIND=f"127.0.0.1:{port}", GUNICORN_WORKERS="1",
                                        STATIC_ROOT=str(rendered / "static"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2, allow_redirects=False)
            break
        except requests.RequestException:  # not listening yet, or a worker still importing
            time.sleep(0.2)
    else:
        raise AssertionError(log.read_text())
    # What the doc's install step and a Prometheus on the host do: plain HTTP on loopback.
    assert health.status_code == 200, health.text
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10, allow_redirects=False)
    assert metrics.status_code == 200 and b"relay_poll_batches_lag_seconds" in metrics.content
    # Anything else over plain HTTP is sent to HTTPS.
    assert requests.get(f"http://127.0.0.1:{port}/admin/", timeout=10, allow_redirects=False).status_code == 301
    # nginx keeps idle keep-alive connections open to gunicorn, and gunicorn's graceful stop
    # waits for them: with the file's GUNICORN_KEEPALIVE a stop takes seconds, not the 60 s drain.
    with requests.Session() as nginx_like:
        assert nginx_like.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        code, took = stop_like_systemd(proc, seconds(service["TimeoutStopSec"]))
    assert code == 0, log.read_text()
    assert took < 15, f"stopping took {took:.1f} s: an idle keep-alive connection held the drain"


def test_the_backup_unit_writes_a_backup_and_keeps_the_newest(run_exec_start, rendered, transactional_db):
    backups = rendered / "state" / "team-relay" / "backups"
    backups.mkdir(parents=True)  # systemd makes it: StateDirectory=team-relay team-relay/backups
    for old in ("relay-20200101T000000.000000Z.backup", "relay-20200102T000000.000000Z.backup"):
        (backups / old).write_bytes(b"old")
    proc, service, log = run_exec_start("team-relay-backup.service", RELAY_BACKUP_KEEP="2")
    assert proc.wait(60) == 0, log.read_text()
    kept = sorted(p.name for p in backups.iterdir())
    assert len(kept) == 2 and kept[0] == "relay-20200102T000000.000000Z.backup", kept
    assert (backups / kept[1]).stat().st_size > 10_000
    assert "StateDirectory=team-relay team-relay/backups" in (rendered / "team-relay-backup.service").read_text()


def test_the_install_steps_render_commands_work_as_written(tmp_path):
    """render.py's command line, as docs/operations.md runs it: secrets as bare names from the
    environment, the units into a directory, and a typo refused."""
    script = [sys.executable, str(ROOT / "scripts" / "deploy" / "render.py")]
    secrets_env = {**os.environ, "OPENAI_API_KEY": "sk-from-env", "SECRET_KEY": "s" * 50,
                   "AUDIT_CHAIN_KEY": "a" * 50, "DATABASE_URL": "sqlite:////var/lib/team-relay/db.sqlite3"}
    env_file = subprocess.run([*script, str(UNITS / "relay.env"), "SERVER_NAME=relay.example.com", "DATABASE_URL",
                               "OPENAI_API_KEY", "SECRET_KEY", "AUDIT_CHAIN_KEY"],
                              env=secrets_env, capture_output=True, text=True)
    assert env_file.returncode == 0, env_file.stderr
    assert parse_env_file(env_file.stdout)["OPENAI_API_KEY"] == "sk-from-env" and "{{" not in env_file.stdout

    units = subprocess.run([*script, "-o", str(tmp_path), *map(str, TEMPLATES), "APP_DIR=/opt/team-relay",
                            "USER=team-relay", "ENV_FILE=/etc/team-relay/relay.env"], capture_output=True, text=True)
    assert units.returncode == 0, units.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in TEMPLATES)
    assert "{{" not in "".join(p.read_text() for p in tmp_path.iterdir())

    typo = subprocess.run([*script, "-o", str(tmp_path), *map(str, TEMPLATES), "APP_DIR=/opt/team-relay",
                           "USR=team-relay", "ENV_FILE=/etc/team-relay/relay.env"], capture_output=True, text=True)
    assert typo.returncode == 2 and "no placeholder USR" in typo.stderr


def test_relay_run_uses_the_units_paths_and_user():
    script = (ROOT / "scripts" / "deploy" / "relay-run").read_text()
    assert subprocess.run(["sh", "-n", str(ROOT / "scripts" / "deploy" / "relay-run")]).returncode == 0
    assert "${RELAY_APP_DIR:-/opt/team-relay}" in script and "${RELAY_ENV_FILE:-/etc/team-relay/relay.env}" in script
    assert "${RELAY_USER:-team-relay}" in script and 'StateDirectory="team-relay team-relay/backups"' in script
