from django.apps import AppConfig


class AuditAppConfig(AppConfig):
    name = "audit_app"
    verbose_name = "Audit trail"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from .models import ModelPrice
        from .pricing import clear_cache

        from proxy_app.models import RelayKey, Team, UserLimit

        from .change_history import watch

        watch(RelayKey, UserLimit, Team, ModelPrice)
        post_save.connect(clear_cache, sender=ModelPrice, dispatch_uid="price-cache-save")
        post_delete.connect(clear_cache, sender=ModelPrice, dispatch_uid="price-cache-delete")
