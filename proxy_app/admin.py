from __future__ import annotations

from django.contrib import admin, messages
from django.utils import timezone

from .models import RelayKey


@admin.register(RelayKey)
class RelayKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "owner", "created_at", "expires_at", "revoked_at", "last_used_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "expires_at", "created_at")
    search_fields = ("prefix", "name", "owner__username")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    fields = ("owner", "name", "expires_at", "prefix", "created_at", "last_used_at", "revoked_at")
    autocomplete_fields = ("owner",)
    actions = ["revoke_keys"]
    date_hierarchy = "created_at"

    def save_model(self, request, obj: RelayKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, plaintext = RelayKey.issue(obj.owner, name=obj.name, expires_at=obj.expires_at)
        obj.pk, obj.prefix, obj.key_hash, obj.created_at = key.pk, key.prefix, key.key_hash, key.created_at
        # The one and only time the plaintext exists outside the client.
        self.message_user(
            request,
            f"New relay key for {obj.owner}: {plaintext} — copy it now, it will not be shown again.",
            messages.WARNING,
        )

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).")

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # keys are revoked, not deleted: the audit trail points at them
