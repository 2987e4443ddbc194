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
        parser.add_argument("--loop", action="store_true", help="keep sealing until SIGTERM/SIGINT")
        parser.add_argument("--interval", type=float, default=5.0, metavar="SECONDS",
                            help="pause between passes with --loop (default 5)")

    def handle(self, *args, loop: bool, interval: float, **options) -> None:
        self.install_stop_handlers()
        passes = total = 0
        while True:
            result = seal()
            passes += 1
            total += result.sealed
            if result.sealed or not loop:
                self.progress(f"sealed {result.calls} calls and {result.records} record changes")
            for row in result.rejected:
                self.stderr.write(f"NOT sealed: {row} does not match its MAC (run verify_audit)")
            if not loop or self.stopping:
                break
            self.sleep(interval)
        self.stdout.write(f"seal_audit: {passes} pass(es), {total} entries sealed")
