"""Team Relay settings.

Everything an operator sets comes from the environment (or an optional `.env`
file beside manage.py) through django-environ; `.env.example` documents each
variable. Defaults are safe for production except where noted.
"""
from __future__ import annotations

import ipaddress
import multiprocessing
from decimal import Decimal
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VERSION = "0.1.0"

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (see .env.example).")
    SECRET_KEY = "insecure-development-only-key"
# Former SECRET_KEYs, still accepted for admin sessions and signed values while they roll
# over to the new key (docs/operations.md, "Rotating keys"); empty once they have.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- Upstream (OpenAI) -------------------------------------------------------
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="https://api.openai.com/v1").rstrip("/")
OPENAI_ORGANIZATION = env.str("OPENAI_ORGANIZATION", default="")
OPENAI_PROJECT = env.str("OPENAI_PROJECT", default="")
# An organization admin key, read only by `manage.py reconcile_usage` (OpenAI's Usage and
# Costs APIs): never sent on relayed calls, never logged or shown.
OPENAI_ADMIN_KEY = env.str("OPENAI_ADMIN_KEY", default="")
OPENAI_ADMIN_BASE_URL = env.str("OPENAI_ADMIN_BASE_URL", default=OPENAI_BASE_URL).rstrip("/")
# A day's dollars "match" OpenAI's within this many USD (per project).
RELAY_RECONCILE_TOLERANCE_USD = Decimal(env.str("RELAY_RECONCILE_TOLERANCE_USD", default="0.01"))
UPSTREAM_CONNECT_TIMEOUT = env.float("UPSTREAM_CONNECT_TIMEOUT", default=10.0)
# Between two bytes from upstream, not for the whole response: a long stream is fine.
UPSTREAM_READ_TIMEOUT = env.float("UPSTREAM_READ_TIMEOUT", default=600.0)
UPSTREAM_POOL_SIZE = env.int("UPSTREAM_POOL_SIZE", default=100)

# --- Relay policy ------------------------------------------------------------
# OpenAI accepts files up to 512 MB; leave room for the multipart envelope.
RELAY_MAX_BODY_BYTES = env.int("RELAY_MAX_BODY_BYTES", default=540 * 1024 * 1024)
RELAY_BLOCKED_PATH_PREFIXES = env.list(
    "RELAY_BLOCKED_PATH_PREFIXES",
    # Fine-tuning and evals spend without a model scope's say; /v1/organization and
    # /v1/projects are the admin-key APIs (users, service accounts, API keys, roles).
    default=["/v1/fine_tuning", "/v1/evals", "/v1/organization", "/v1/projects"],
)
# JSON bodies up to this size are checked (they must parse, as an object) before
# anything is forwarded; larger ones stream through and upstream judges them.
RELAY_INSPECT_MAX_BYTES = env.int("RELAY_INSPECT_MAX_BYTES", default=1024 * 1024)
# Chat request bodies up to this size are read to ask upstream for streamed
# usage; larger ones pass through untouched (their stream usage goes unrecorded).
RELAY_REWRITE_MAX_BYTES = env.int("RELAY_REWRITE_MAX_BYTES", default=1024 * 1024)
# Where staff reach the relay: the `servers` entry of /openapi.json for GPT Actions.
RELAY_PUBLIC_URL = env.str("RELAY_PUBLIC_URL", default="http://localhost:8000")
RELAY_CONTACT_EMAIL = env.str("RELAY_CONTACT_EMAIL", default="admin@example.com")
# Who may scrape /metrics: these addresses, or anyone with the bearer token.
RELAY_METRICS_ALLOWED_IPS = env.list("RELAY_METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])
RELAY_METRICS_TOKEN = env.str("RELAY_METRICS_TOKEN", default="")
# Key of the audit rows' MACs and the ledger chain; derived from SECRET_KEY when unset.
AUDIT_CHAIN_KEY = env.str("AUDIT_CHAIN_KEY", default="")
# Audit writes the database refused wait here until `reconcile_calls` replays them.
RELAY_AUDIT_SPOOL = env.str("RELAY_AUDIT_SPOOL", default=str(BASE_DIR / "var" / "audit-journal.jsonl"))
# Kept free next to the journal (a preallocated file given up when the disk fills),
# so that a full disk cannot lose audit writes: 64 MiB holds some 80,000 entries.
RELAY_AUDIT_SPOOL_RESERVE_BYTES = env.int("RELAY_AUDIT_SPOOL_RESERVE_BYTES", default=64 * 1024 * 1024)
# Usage scanning of responses (JSON and SSE). Turning it off loses usage and cost;
# it exists only as the baseline of bench/scan_overhead.py.
RELAY_SCAN_RESPONSES = env.bool("RELAY_SCAN_RESPONSES", default=True)
# Rows left pending this long are considered orphaned by `reconcile_calls`.
RELAY_PENDING_TIMEOUT_SECONDS = env.int("RELAY_PENDING_TIMEOUT_SECONDS", default=3600)
# Each worker remembers an authenticated key this long instead of querying it on
# every call (proxy_app/key_cache.py). A key revoked, or an owner disabled, from
# another process is refused within this many seconds; 0 turns the cache off.
RELAY_KEY_CACHE_SECONDS = env.float("RELAY_KEY_CACHE_SECONDS", default=5.0)

# --- WebSockets (Realtime, Responses WebSocket mode; docs/websockets.md) -------
# Where the relay opens upstream WebSockets; empty: OPENAI_BASE_URL with ws(s)://.
OPENAI_WEBSOCKET_BASE_URL = env.str("OPENAI_WEBSOCKET_BASE_URL", default="")
# A session with no message either way for this long is closed (1000, reason given).
RELAY_WS_IDLE_TIMEOUT_SECONDS = env.float("RELAY_WS_IDLE_TIMEOUT_SECONDS", default=300.0)
# One message, either way, at most this large (OpenAI accepts events up to 15 MiB).
RELAY_WS_MAX_MESSAGE_BYTES = env.int("RELAY_WS_MAX_MESSAGE_BYTES", default=16 * 1024 * 1024)
# After a close frame, how long the other side may take before its socket is dropped.
RELAY_WS_CLOSE_GRACE_SECONDS = env.float("RELAY_WS_CLOSE_GRACE_SECONDS", default=0.5)

# --- Django ------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "corsheaders",
    "axes",
    "proxy_app",
    "audit_app",
]

MIDDLEWARE = [
    # Errors first, so that nothing below can answer a /v1 client with HTML.
    "proxy_app.middleware.JsonErrorMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "audit_app.change_history.AdminActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: locks out repeated failed admin logins.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Admin login brute force: 5 failures for a username from an IP lock it for an hour.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=1.0)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

# Browser-based tools: origins allowed to call /v1 (and fetch the Actions schema).
# A CORS preflight is answered without a key; the real request still needs one.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/(v1/|openapi\.json$|\.well-known/)"
CORS_ALLOW_HEADERS = [
    "accept", "authorization", "content-type", "openai-beta", "idempotency-key", "x-relay-key",
    "x-stainless-arch", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
    "x-stainless-retry-count", "x-stainless-runtime", "x-stainless-runtime-version",
    "x-stainless-timeout", "x-stainless-helper-method",
]
CORS_EXPOSE_HEADERS = ["x-request-id", "openai-processing-ms", "retry-after",
                       "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests"]
CORS_PREFLIGHT_MAX_AGE = 3600

ROOT_URLCONF = "relay_project.urls"
WSGI_APPLICATION = "relay_project.wsgi.application"
# /v1/files and /v1/files/ are different upstream paths: never redirect.
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# PostgreSQL's default max_connections, less 10 for everything that is not a worker.
POSTGRES_DEFAULT_MAX_CONNECTIONS = 100


def default_pool_max() -> int:
    """Connections per worker process so that all of gunicorn's workers fit."""
    workers = env.int("GUNICORN_WORKERS", default=multiprocessing.cpu_count() * 2)
    return max(1, min(20, (POSTGRES_DEFAULT_MAX_CONNECTIONS - 10) // max(1, workers)))


def _database() -> dict:
    db = env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
    if db["ENGINE"] == "django.db.backends.sqlite3":
        # Django's backend, with each process reusing its connections instead of
        # opening one per request (relay_project/pooled_sqlite3/base.py).
        db["ENGINE"] = "relay_project.pooled_sqlite3"
        db["OPTIONS"] = {
            # WAL lets readers (the admin) run while workers write audit rows;
            # IMMEDIATE takes the write lock up front so that concurrent
            # writers wait on busy_timeout instead of failing with "locked".
            # Checkpoints (copying the WAL back into the database, with its fsyncs)
            # run inside whichever commit crosses the threshold: at SQLite's default
            # of 1,000 pages that was one call in 45, each ~5 ms slower. Every
            # 10,000 pages makes them ten times rarer; the WAL file is cut back to
            # 64 MiB after each.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                            f"PRAGMA wal_autocheckpoint={env.int('SQLITE_WAL_AUTOCHECKPOINT', default=10000)}; "
                            "PRAGMA journal_size_limit=67108864;",
            "transaction_mode": "IMMEDIATE",
            "timeout": env.float("SQLITE_TIMEOUT", default=30.0),
        }
    elif db["ENGINE"] == "django.db.backends.postgresql":
        # One pool per worker process: gevent workers serve many requests at
        # once, and a pool caps how many PostgreSQL connections that takes.
        #
        # Sized so that the default worker count fits PostgreSQL's default
        # max_connections (100) with 10 to spare for psql, migrations and the
        # management commands: 90 // workers per worker, at most 20. With 20 per
        # worker regardless, 16 cores (32 workers) would ask for 640.
        # A request holds a connection only while it talks to the database,
        # never while a body streams (proxy_app.pipeline), so a few go far.
        # During an outage a request waits at most DATABASE_POOL_TIMEOUT for a
        # connection (and a new connection DATABASE_CONNECT_TIMEOUT to open),
        # then gets a 503: clients used to wait 60 s.
        options = db.setdefault("OPTIONS", {})
        options.setdefault("connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=2))
        if env.bool("DATABASE_POOL", default=True):
            options["pool"] = {
                "min_size": 1,
                "max_size": env.int("DATABASE_POOL_MAX", default=default_pool_max()),
                "timeout": env.float("DATABASE_POOL_TIMEOUT", default=2.0),
            }
        db["CONN_MAX_AGE"] = 0
    return db


DATABASES = {"default": _database()}


def _cache() -> dict:
    """Rate-limit counters and cached spend, shared by every worker and host.

    Redis when REDIS_URL (or a redis:// CACHE_URL) is set; otherwise the
    database cache (`manage.py createcachetable`), which needs nothing more.
    """
    url = env.str("CACHE_URL", default="") or env.str("REDIS_URL", default="")
    if url.startswith(("redis://", "rediss://", "unix://")):
        return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
    if url:
        return env.cache_url_config(url)
    return {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "relay_cache"}


CACHES = {"default": _cache()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# collectstatic writes here and whitenoise serves from here (docs/operations.md).
STATIC_ROOT = env.path("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Behind a reverse proxy that terminates TLS.
USE_X_FORWARDED_HOST = env.bool("USE_X_FORWARDED_HOST", default=False)
# HTTPS=true is the production setting (TLS at the reverse proxy): secure cookies,
# HSTS and a redirect to https for everything but the health checks, which load
# balancers make over plain HTTP. Off by default so that the quick start works
# on http://localhost.
HTTPS = env.bool("HTTPS", default=False)
if HTTPS or env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if HTTPS:
    SECURE_SSL_REDIRECT = True
    # /metrics too: Prometheus scrapes gunicorn over loopback on the host (docs/operations.md).
    SECURE_REDIRECT_EXEMPT = [r"^health$", r"^v1/health$", r"^$", r"^metrics$"]
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# The audit's client IP: how many proxies in front of the relay append to
# X-Forwarded-For (nginx alone: 1), or the networks they live in. The client is
# read from the right of the header, past those proxies; 0 and no networks
# ignores the header. RELAY_TRUST_X_FORWARDED_FOR=true (the old switch) means 1.
RELAY_TRUST_X_FORWARDED_FOR = env.bool("RELAY_TRUST_X_FORWARDED_FOR", default=False)
RELAY_TRUSTED_PROXIES = env.int("RELAY_TRUSTED_PROXIES", default=1 if RELAY_TRUST_X_FORWARDED_FOR else 0)
RELAY_TRUSTED_PROXY_NETWORKS = env.list("RELAY_TRUSTED_PROXY_NETWORKS", default=[])
for _network in RELAY_TRUSTED_PROXY_NETWORKS:  # refused at start, not with a 500 per request
    try:
        ipaddress.ip_network(_network.strip(), strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"RELAY_TRUSTED_PROXY_NETWORKS: {_exc}") from None
# Failed authentications (401) answered per client address and minute before the
# relay answers 429 without looking the key up or writing an audit row.
RELAY_UNAUTHENTICATED_PER_MINUTE = env.int("RELAY_UNAUTHENTICATED_PER_MINUTE", default=30)
# Seconds a request body may go without sending a byte before it is refused (408).
RELAY_BODY_READ_TIMEOUT = env.float("RELAY_BODY_READ_TIMEOUT", default=30.0)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["proxy_app.auth.RelayKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["proxy_app.auth.HasRelayKey"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # The relay never parses bodies: they stream upstream untouched.
    "DEFAULT_PARSER_CLASSES": [],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "proxy_app.errors.FirstRendererNegotiation",
    "EXCEPTION_HANDLER": "proxy_app.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "relay_project.jsonlog.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler",
                    "formatter": "json" if env.str("LOG_FORMAT", default="plain") == "json" else "plain"},
        "access": {"class": "logging.StreamHandler", "formatter": "json"},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # One JSON line per call (RELAY_ACCESS_LOG=false turns it off).
        "relay.access": {"handlers": ["access"], "propagate": False,
                         "level": "INFO" if env.bool("RELAY_ACCESS_LOG", default=True) else "WARNING"},
        # Django logs 4xx responses as warnings with the full path; the audit
        # trail already records them.
        "django.request": {"level": "ERROR"},
        "urllib3": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
    },
}

# --- Email (budget alerts) -----------------------------------------------------
# The console backend by default: alerts are written to the log until an operator sets
# EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend and EMAIL_HOST & co.
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="relay@localhost")
# Who gets budget alerts besides the key's or user's owner; empty: every active
# superuser with an email address.
RELAY_ALERT_EMAILS = env.list("RELAY_ALERT_EMAILS", default=[])
