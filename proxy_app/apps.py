from django.apps import AppConfig


class ProxyAppConfig(AppConfig):
    name = "proxy_app"
    verbose_name = "Relay keys"

    def ready(self) -> None:
        # System checks register themselves; the audit trail's failures feed the relay's metrics.
        # (The request policy is listed on proxy_app.views.RelayView, not registered on import.)
        from . import checks  # noqa: F401
        from audit_app.recorder import AUDIT_WRITE_FAILED

        from .telemetry import AUDIT_FAILURES

        AUDIT_WRITE_FAILED.connect(lambda **_: AUDIT_FAILURES.inc(), weak=False,
                                   dispatch_uid="relay-audit-failures")
