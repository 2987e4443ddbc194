"""The processes a benchmark needs: the fake upstream, the relay under gunicorn
(production settings), LiteLLM's proxy, and the databases behind the relay.

Everything listens on 127.0.0.1 only and is stopped by the process group it
was started in (never by name).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
UPSTREAM_KEY = "sk-bench-upstream-key"
PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
PG_DB = "relay_bench"
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
# LiteLLM refuses to start without a master key; with no database it is the only key.
LITELLM_KEY = "sk-bench-litellm-master-key-0123456789abcdef0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early; see {log}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {seconds:.0f} s; see {log}")


class Process:
    """A child process in its own session, its output in bench/results/."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.name, self.port = name, port
        self.log_path = RESULTS / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for_port(port, self.proc, name, self.log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """This process and every descendant (gunicorn's workers, uvicorn's)."""
        return [self.proc.pid, *descendants(self.proc.pid)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def status_kib(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/PID/status, in KiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pids: list[int]) -> int:
    return sum(status_kib(pid, "VmRSS") for pid in pids)


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of a process; False where not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --- upstream --------------------------------------------------------------------


def start_upstream() -> Process:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return Process("upstream", [PYTHON, "bench/upstream.py", "--port", str(port)], env, port)


# --- the relay -------------------------------------------------------------------


def relay_env(db: str, upstream: Process, workers: int, **extra: str) -> dict[str, str]:
    database_url = (f"sqlite:///{RESULTS / 'bench.sqlite3'}" if db == "sqlite"
                    else PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{PG_DB}")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "DATABASE_", "DJANGO_"))},
        "DJANGO_SETTINGS_MODULE": "relay_project.settings",
        "DATABASE_URL": database_url,
        "SECRET_KEY": "bench-only-secret-key-not-for-production-0123456789",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": f"{upstream.url}/v1",
        "GUNICORN_WORKERS": str(workers),
        "RELAY_AUDIT_SPOOL": str(RESULTS / f"journal-{db}.jsonl"),
        **extra,
    }


def postgres_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def prepare_database(db: str, env: dict[str, str]) -> str:
    """A fresh, migrated database with one relay key; returns the key."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if db == "sqlite":
        for path in RESULTS.glob("bench.sqlite3*"):
            path.unlink()
    else:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {PG_DB}")
    manage = [PYTHON, "manage.py"]
    for args in (["migrate", "--noinput", "-v", "0"], ["createcachetable"]):
        subprocess.run(manage + args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run(manage + ["create_relay_key", "bench", "--name", "bench"], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1].strip()


def start_relay(name: str, env: dict[str, str]) -> Process:
    port = free_port()
    env = {**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "PYTHONUNBUFFERED": "1"}
    return Process(name, [PYTHON, "-m", "gunicorn", "-c", "relay_project/gunicorn.conf.py",
                          "relay_project.wsgi"], env, port)


def wait_workers(relay: Process, workers: int, seconds: float = 30) -> list[int]:
    """gunicorn's worker pids, once all of them are up and have imported the app."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pids = descendants(relay.proc.pid)
        if len(pids) >= workers:
            return pids
        time.sleep(0.1)
    raise RuntimeError(f"{relay.name}: {workers} workers did not start")


# --- LiteLLM -----------------------------------------------------------------------


def litellm_command() -> list[str] | None:
    """How to start LiteLLM's proxy here, if it is installed (bench/.venv-litellm or on PATH)."""
    local = LITELLM_VENV / "bin" / "litellm"
    if local.exists():
        return [str(local)]
    found = shutil.which("litellm")
    if found:
        return [found]
    try:
        import litellm.proxy  # noqa: F401
    except Exception:
        return None
    return [PYTHON, "-m", "litellm"]


def start_litellm(upstream: Process, workers: int) -> Process | None:
    command = litellm_command()
    if command is None:
        return None
    RESULTS.mkdir(parents=True, exist_ok=True)
    config = RESULTS / "litellm.yaml"
    model_list = "".join(
        f"  - model_name: {name}\n    litellm_params:\n      model: openai/{name}\n"
        f"      api_base: {upstream.url}/v1\n      api_key: {UPSTREAM_KEY}\n"
        for name in ("gpt-4o-mini", "gpt-4o")
    )
    config.write_text(f"model_list:\n{model_list}litellm_settings:\n  telemetry: false\n"
                      f"  drop_params: true\ngeneral_settings:\n  master_key: {LITELLM_KEY}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "LITELLM_"))}
    env.update({"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "LITELLM_MODE": "PRODUCTION",
                "DISABLE_SCHEMA_UPDATE": "True", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "PYTHONUNBUFFERED": "1", "NO_DOCS": "True"})
    argv = command + ["--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                      "--num_workers", str(workers)]
    return Process("litellm", argv, env, port)


def default_workers() -> int:
    """gunicorn.conf.py's production default: two per CPU."""
    return (os.cpu_count() or 1) * 2


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return total / ticks


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"
