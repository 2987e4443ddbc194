"""WSGI entry point: `gunicorn -c relay_project/gunicorn.conf.py relay_project.wsgi`.

A WebSocket upgrade is authenticated and checked by Django like any call; the
view leaves the session in the environ (proxy_app.websocket), and it runs here,
once Django has finished with the request (its middleware, signals and DB
connection are done), on the socket gunicorn handed over. Raising StopIteration
afterwards is how gunicorn's async workers are told the connection was taken
over: they write nothing more to it and close it.
"""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay_project.settings")

django_application = get_wsgi_application()

from proxy_app.checks import warn_at_startup  # noqa: E402  (needs the settings loaded)
from proxy_app.websocket import ENVIRON_KEY  # noqa: E402

# gunicorn runs no system checks: say here what `check --deploy` would (RELAY_PUBLIC_URL).
warn_at_startup()


def application(environ, start_response):
    response = django_application(environ, start_response)
    session = environ.pop(ENVIRON_KEY, None)
    if session is None:
        return response
    response.close()  # request_finished: Django's per-request cleanup
    session.run()
    raise StopIteration("WebSocket session ended")
