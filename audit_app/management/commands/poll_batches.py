from __future__ import annotations

from django.core.management.base import CommandError

from audit_app.polling import PollError, due_batches, due_jobs, ensure_known, poll, poll_job
from audit_app.management.stoppable import StoppableCommand
from audit_app.models import AsyncJob


class Command(StoppableCommand):
    help = (
        "The one poller for asynchronous work. Refresh every batch that is not finished from the "
        "OpenAI API and count the results of finished ones (output and error files streamed line "
        "by line, each result counted exactly once, at batch prices); then refresh every background "
        "Response and video job not billed yet, billing each once when it is first seen finished. "
        "Then exit; with --loop it keeps polling until SIGTERM/SIGINT, finishing the jobs in hand "
        "first. Safe to run on several hosts against PostgreSQL (work is leased with "
        "FOR UPDATE SKIP LOCKED). --batch ID / --job ID poll one, taking over the lease of a "
        "poller that died."
    )

    def add_arguments(self, parser) -> None:
        self.add_loop_arguments(parser, default_interval=60.0)
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--batch", metavar="ID",
                            help="poll only this batch (recorded, unowned, if the relay never saw it)")
        target.add_argument("--job", metavar="ID",
                            help="poll only this background response (resp_...) or video (video_...)")
        parser.add_argument("--only", choices=("batches", "jobs"),
                            help="poll only batches, or only background responses and videos")
        parser.add_argument("--limit", type=int, metavar="N", help="poll at most N of each kind per pass")
        parser.add_argument("--concurrency", type=int, default=16, metavar="N",
                            help="batches or jobs polled at once (default 16): most of a poll is waiting on upstream")

    def handle(self, *args, loop: bool, interval: float, batch: str | None, job: str | None,
               only: str | None, limit: int | None, concurrency: int, **options) -> None:
        self.install_stop_handlers()
        if batch:
            try:
                ensure_known(batch)
            except PollError as exc:
                raise CommandError(f"batch {batch}: {exc}") from None
        if job and not AsyncJob.objects.filter(job_id=job).exists():
            raise CommandError(f"job {job}: the relay has no record of it (only jobs created through it are billed)")
        do_batches = not job and only != "jobs"
        do_jobs = not batch and only != "batches"
        # One named by the operator is taken whatever its lease: its poller may have died.
        force = bool(batch or job)

        def one_pass() -> None:
            for enabled, what, pks, one in (
                    (do_batches, "batch(es)", lambda: due_batches(batch, limit), None),
                    (do_jobs, "job(s)", lambda: due_jobs(job, limit), poll_job)):
                if not enabled:
                    continue
                todo = pks()
                self.progress(f"polling {len(todo)} {what}")
                summary = poll(todo, max(1, concurrency), progress=self.progress,
                               should_stop=lambda: self.stopping, force=force,
                               **({"one": one, "what": what} if one else {}))
                for message in summary.messages:
                    self.stderr.write(f"  error: {message}")
                self.stdout.write(f"poll_batches: {what.replace('(s)', 's').replace('(es)', 'es')}: {summary.line()}")

        self.repeat(one_pass, loop=loop, interval=interval)
