from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from proxy_app.models import RelayKey


class Command(BaseCommand):
    help = (
        "Issue a relay key for USERNAME (the user is created if missing). "
        "The key is printed once, alone on the last line; only its hash is stored."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to recognise the key by")
        parser.add_argument("--expires-days", type=int, default=None,
                            help="the key stops working after this many days")

    def handle(self, *args, username: str, name: str, expires_days: int | None, **options) -> None:
        if expires_days is not None and expires_days <= 0:
            raise CommandError("--expires-days must be a positive number of days")
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
            self.stdout.write(f"Created user {username}.")
        expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
        key, plaintext = RelayKey.issue(user, name=name, expires_at=expires_at)
        until = f", expires {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else ""
        self.stdout.write(f"Relay key {key.prefix}… for {username}{until}. It is shown only once:")
        self.stdout.write(plaintext)
