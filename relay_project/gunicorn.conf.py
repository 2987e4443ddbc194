"""Production gunicorn settings. Every value can be overridden from the environment.

Worker class: gevent. A relay spends nearly all its time waiting on OpenAI,
and a streamed response can stay open for minutes. Sync workers would hold a
whole process per open stream, and gthread a whole OS thread; a gevent worker
holds a greenlet (a few KB), so a handful of processes keep thousands of
streams open while each chunk is still written to the socket as it arrives.
requests, psycopg 3 and the socket calls all cooperate with gevent once it has
patched the standard library, which the gevent worker does before loading the
application.
"""
import glob
import multiprocessing
import os
import shutil
import tempfile

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
# Concurrent requests per gevent worker.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# gevent workers heartbeat from the event loop, so this only fires on a stuck
# worker, not on a long stream.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "60"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))
# Big uploads and many SDK headers are normal; keep gunicorn's other limits.
limit_request_field_size = 16384
# An empty GUNICORN_ACCESSLOG turns the access log off.
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
errorlog = "-"
# The access log's request line, query and referrer with key-like strings scrubbed.
logger_class = "relay_project.gunicorn_logging.ScrubbingLogger"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# Trust X-Forwarded-* only from the reverse proxy in front.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# Malformed HTTP is answered by gunicorn itself; make that answer JSON too.
from relay_project import gunicorn_errors  # noqa: E402

gunicorn_errors.install()

# Prometheus metrics from every worker: each writes its own files to this
# directory, and /metrics merges them. Set before the workers import anything.
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="relay-metrics-")


def on_starting(server):
    for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(stale)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    # Everything loaded so far (Django, the app, their modules: ~65,000 objects)
    # lives as long as the worker. Left in the collector's oldest generation, each
    # full collection walks all of it: a pause of about 20 ms for whichever call is
    # running. Frozen, full collections only walk what requests have left behind.
    import gc
    import signal

    def stop_gracefully(sig, frame):
        # WebSocket sessions are closed (1012) and audited at once rather than left
        # to the master's SIGKILL at the end of the graceful timeout (proxy_app.websocket).
        worker.handle_exit(sig, frame)
        import gevent

        from proxy_app.websocket import stop_all_sessions

        gevent.spawn(stop_all_sessions)

    if worker_class == "gevent":
        signal.signal(signal.SIGTERM, stop_gracefully)

    gc.collect()  # startup's own garbage goes first, not into the frozen set
    gc.freeze()
