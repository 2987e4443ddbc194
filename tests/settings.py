"""Settings for the test suite: production settings with test credentials.

DATABASE_URL still comes from the environment, so the same suite runs on
SQLite (default) and PostgreSQL (`.ci/run`).
"""
import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
# A recognisable fake: tests assert it reaches upstream and never anything else.
os.environ.setdefault("OPENAI_API_KEY", "sk-upstream-SECRET-0123456789")
os.environ.setdefault("ALLOWED_HOSTS", "*")
# Each test process journals refused audit writes to a file of its own, never the relay's.
os.environ.setdefault("RELAY_AUDIT_SPOOL", f"{tempfile.gettempdir()}/relay-test-journal-{os.getpid()}.jsonl")

# A small journal reserve: the tests make disks full through a seam, not by size.
os.environ.setdefault("RELAY_AUDIT_SPOOL_RESERVE_BYTES", str(64 * 1024))

from relay_project.settings import *  # noqa: E402,F401,F403

STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# A test database per pytest process, so that parallel runs never share one.
_db = DATABASES["default"]  # noqa: F405
if _db["ENGINE"].endswith("sqlite3"):
    _db["TEST"] = {"NAME": str(BASE_DIR / f".test-db-{os.getpid()}.sqlite3")}  # noqa: F405
else:
    _db["TEST"] = {"NAME": f"test_relay_{os.getpid()}"}
