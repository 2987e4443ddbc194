"""Mail the 80% and 100% budget alerts that are due, once per threshold per key or user and month."""
from __future__ import annotations

from audit_app.budgets import THRESHOLDS, budget_lines, check_budget_alerts
from audit_app.management.stoppable import StoppableCommand


class Command(StoppableCommand):
    help = (
        "Check every key and user with a monthly budget against this month's spend (from the daily "
        f"rollups) and mail the owner and the admins when {' and '.join(f'{t}%' for t in THRESHOLDS)} "
        "of a budget is reached. Each alert goes once per threshold per month, however often this "
        "runs (run it every few minutes from a timer, or with --loop). Uses Django's email backend "
        "(the console by default; set EMAIL_BACKEND and EMAIL_HOST for SMTP)."
    )

    def add_arguments(self, parser) -> None:
        self.add_loop_arguments(parser, default_interval=300)

    def handle(self, *args, loop: bool, interval: float, **options) -> None:
        self.install_stop_handlers()
        totals = {"checked": 0, "sent": 0}

        def one_pass() -> None:
            lines = budget_lines()
            sent = check_budget_alerts()
            totals["checked"] += len(lines)
            totals["sent"] += len(sent)
            for alert in sent:
                self.progress(f"  sent: {alert}")

        passes = self.repeat(one_pass, loop=loop, interval=interval)
        stopped = " (stopped)" if self.stopping else ""
        self.stdout.write(f"budget alerts: {passes} pass(es), {totals['checked']} budgets checked, "
                          f"{totals['sent']} alert(s) sent{stopped}.")
