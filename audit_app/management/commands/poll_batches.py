from __future__ import annotations

from django.core.management.base import CommandError

from audit_app.batch_polling import PollError, due, ensure_known, poll
from audit_app.management.stoppable import StoppableCommand


class Command(StoppableCommand):
    help = (
        "Refresh every batch that is not finished from the OpenAI API, and count the results "
        "of finished ones (output and error files streamed line by line, each result counted "
        "exactly once, at batch prices), then exit. With --loop it keeps polling until "
        "SIGTERM/SIGINT, finishing the batches in hand first. Safe to run on several hosts "
        "against PostgreSQL (batches are claimed with FOR UPDATE SKIP LOCKED)."
    )

    def add_arguments(self, parser) -> None:
        self.add_loop_arguments(parser, default_interval=60.0)
        parser.add_argument("--batch", metavar="ID",
                            help="poll only this batch (recorded, unowned, if the relay never saw it)")
        parser.add_argument("--limit", type=int, metavar="N", help="poll at most N batches per pass")
        parser.add_argument("--concurrency", type=int, default=16, metavar="N",
                            help="batches polled at once (default 16): most of a poll is waiting on upstream")

    def handle(self, *args, loop: bool, interval: float, batch: str | None, limit: int | None,
               concurrency: int, **options) -> None:
        self.install_stop_handlers()
        if batch:
            try:
                ensure_known(batch)
            except PollError as exc:
                raise CommandError(f"batch {batch}: {exc}") from None

        def one_pass() -> None:
            pks = due(batch, limit)
            self.progress(f"polling {len(pks)} batch(es)")
            summary = poll(pks, max(1, concurrency), progress=self.progress,
                           should_stop=lambda: self.stopping)
            for message in summary.messages:
                self.stderr.write(f"  error: {message}")
            self.stdout.write(f"poll_batches: {summary.line()}")

        self.repeat(one_pass, loop=loop, interval=interval)
