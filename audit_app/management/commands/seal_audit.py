from __future__ import annotations

from audit_app.ledger import seal
from audit_app.management.stoppable import StoppableCommand


class Command(StoppableCommand):
    help = (
        "Seal finished calls and changed file, batch and prune records into the tamper-evident "
        "ledger. A row or record whose MAC does not match (changed by SQL) is reported, never "
        "sealed. Safe to run on several hosts at once (they take turns on the chain head). "
        "Run it with --loop under systemd, or from cron."
    )

    def add_arguments(self, parser) -> None:
        self.add_loop_arguments(parser, default_interval=5.0)

    def handle(self, *args, loop: bool, interval: float, **options) -> None:
        self.install_stop_handlers()
        total = 0

        def one_pass() -> None:
            nonlocal total
            result = seal()
            total += result.sealed
            if result.sealed or not loop:
                self.progress(f"sealed {result.calls} calls and {result.records} record changes")
            for row in result.rejected:
                self.stderr.write(f"NOT sealed: {row} does not match its MAC (run verify_audit)")

        passes = self.repeat(one_pass, loop=loop, interval=interval)
        self.stdout.write(f"seal_audit: {passes} pass(es), {total} entries sealed")
