from __future__ import annotations

from audit_app.batch_polling import due, poll
from audit_app.management.stoppable import StoppableCommand


class Command(StoppableCommand):
    help = (
        "Refresh every batch that is not finished from the OpenAI API, and count the results "
        "of finished ones (streamed line by line, each counted exactly once), then exit. "
        "With --loop it keeps polling until SIGTERM/SIGINT. Safe to run on several hosts "
        "against PostgreSQL (batches are claimed with FOR UPDATE SKIP LOCKED)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--loop", action="store_true", help="keep polling until stopped")
        parser.add_argument("--interval", type=float, default=60.0, metavar="SECONDS",
                            help="pause between passes with --loop (default 60)")
        parser.add_argument("--batch", metavar="ID", help="poll only this batch")
        parser.add_argument("--limit", type=int, metavar="N", help="poll at most N batches per pass")
        parser.add_argument("--concurrency", type=int, default=8, metavar="N",
                            help="batches polled at once (default 8)")

    def handle(self, *args, loop: bool, interval: float, batch: str | None, limit: int | None,
               concurrency: int, **options) -> None:
        self.install_stop_handlers()
        passes = 0
        while True:
            pks = due(batch, limit)
            self.progress(f"polling {len(pks)} batch(es)")
            summary = poll(pks, max(1, concurrency), progress=self.progress)
            passes += 1
            for message in summary.messages:
                self.stderr.write(f"  error: {message}")
            self.stdout.write(f"poll_batches: {summary.line()}")
            if not loop or self.stopping:
                break
            self.sleep(interval)
