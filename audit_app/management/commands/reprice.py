from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime, time
from datetime import timezone as dt_timezone
from typing import Callable

from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import Q

from audit_app import rollups
from audit_app.ledger import amending, call_mac
from audit_app.management.stoppable import StoppableCommand
from audit_app.models import ApiCall, Billing
from audit_app.recorder import priced_fields
from audit_app.usage import Usage

BATCH = 500  # rows per chain-head lock: sealers wait at most one batch


class Command(StoppableCommand):
    help = (
        "Re-cost calls made since DATE with the prices in effect when each call was made "
        "(after a price was corrected or added). Changed costs are also applied to the "
        "daily rollups. Nothing is ever re-priced silently: this is the only way, and each "
        "changed call already sealed gets an amendment entry in the audit ledger."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", required=True, metavar="YYYY-MM-DD",
                            help="first day (UTC) whose calls are re-priced")
        parser.add_argument("--dry-run", action="store_true", help="report, change nothing")

    def handle(self, *args, since: str, dry_run: bool, **options) -> None:
        try:
            day = datetime.strptime(since, "%Y-%m-%d").date()
        except ValueError as exc:
            raise CommandError("--since must be YYYY-MM-DD") from exc
        self.install_stop_handlers()
        start = datetime.combine(day, time.min, tzinfo=dt_timezone.utc)
        # Every call with usage, whatever it is billed by (tokens, seconds, characters, images).
        calls = ApiCall.objects.filter(started_at__gte=start).filter(
            Q(billing__in=(Billing.PRICED, Billing.UNPRICED)) | Q(total_tokens__isnull=False)
            | Q(unpriced=True) | Q(cost__isnull=False))
        checked = changed = 0
        last_id = 0
        while not self.stopping:
            # A sealed call whose cost changes gets an amendment entry in the ledger; the
            # rows are read under the chain-head lock so no sealer seals one meanwhile.
            with amending() if not dry_run else nullcontext(None) as amend:
                batch = list(calls.filter(pk__gt=last_id).order_by("pk")[:BATCH])
                with transaction.atomic():
                    for call in batch:
                        checked += 1
                        changed += self._reprice(call, amend)
            if not batch:
                break
            last_id = batch[-1].pk
            self.progress(f"  checked {checked} calls, {changed} changed")
        verb = "would change" if dry_run else "changed"
        stopped = " (stopped early)" if self.stopping else ""
        self.stdout.write(f"repriced since {day}: {checked} calls checked, {changed} {verb}{stopped}")

    def _reprice(self, call: ApiCall, amend: Callable[[ApiCall], int] | None) -> int:
        # Exactly what the live path priced: the stored usage, the model upstream
        # reported, the call's start time (recorder._complete).
        new = priced_fields(Usage.from_row(call), call.priced_model or call.model, call.started_at)
        cost, unpriced = new.get("cost"), new.get("unpriced", False)
        billing = new.get("billing", call.billing)
        if cost == call.cost and unpriced == call.unpriced and billing == call.billing \
                and new.get("tool_cost") == call.tool_cost:
            return 0
        if amend is not None:
            old_cost, old_unpriced = call.cost, call.unpriced
            call.cost, call.unpriced, call.price, call.billing = cost, unpriced, new.get("price"), billing
            old_tools, call.tool_cost = call.tool_cost, new.get("tool_cost")
            # A budget hold stands in for an unknown cost; once the cost is known it goes.
            old_held = call.budget_held if billing == Billing.PRICED else None
            if old_held is not None:
                call.budget_held = None
            call.row_mac = call_mac(call)
            if call.chain_seq is not None:
                call.chain_seq = amend(call)
            call.save(update_fields=["cost", "tool_cost", "unpriced", "price", "billing", "budget_held",
                                     "row_mac", "chain_seq"])
            if call.key_id is not None and call.user_id is not None:
                rollups.add(
                    started_at=call.started_at, user_id=call.user_id, key_id=call.key_id,
                    model=call.model, family=call.family, service_tier=call.service_tier, calls=0,
                    tool_cost=(call.tool_cost or 0) - (old_tools or 0), budget_held=-(old_held or 0),
                    cost=(cost or 0) - (old_cost or 0), unpriced=int(unpriced) - int(old_unpriced),
                )
        return 1
