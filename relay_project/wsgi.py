"""WSGI entry point: `gunicorn -c relay_project/gunicorn.conf.py relay_project.wsgi`."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relay_project.settings")

application = get_wsgi_application()

# gunicorn runs no system checks: say here what `check --deploy` would (RELAY_PUBLIC_URL).
from proxy_app.checks import warn_at_startup  # noqa: E402

warn_at_startup()
