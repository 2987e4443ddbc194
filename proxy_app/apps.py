from django.apps import AppConfig


class ProxyAppConfig(AppConfig):
    name = "proxy_app"
    verbose_name = "Relay keys"

    def ready(self) -> None:
        # Families plug their rules and observers into the pipeline when imported.
        from . import access, checks, file_observers, job_observers  # noqa: F401
        from audit_app.recorder import AUDIT_WRITE_FAILED

        from .telemetry import AUDIT_FAILURES

        AUDIT_WRITE_FAILED.connect(lambda **_: AUDIT_FAILURES.inc(), weak=False,
                                   dispatch_uid="relay-audit-failures")
