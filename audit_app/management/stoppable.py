"""Shared behaviour of the long-running management commands: a clean stop on
SIGTERM/SIGINT (finish the unit of work in hand, then exit) and progress lines."""
from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType

from django.core.management.base import BaseCommand


class StoppableCommand(BaseCommand):
    stopping = False

    def install_stop_handlers(self) -> None:
        def request_stop(signum: int, frame: FrameType | None) -> None:
            if self.stopping:  # a second signal: stop now
                raise KeyboardInterrupt
            self.stopping = True
            self.stderr.write(f"{signal.Signals(signum).name}: finishing the current step, then stopping")

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early when asked to stop."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, deadline - time.monotonic()))

    def progress(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()

    @staticmethod
    def add_loop_arguments(parser, default_interval: float) -> None:
        parser.add_argument("--loop", action="store_true", help="keep going until SIGTERM/SIGINT")
        parser.add_argument("--interval", type=float, default=default_interval, metavar="SECONDS",
                            help=f"pause between passes with --loop (default {default_interval:g})")

    def repeat(self, one_pass: Callable[[], None], *, loop: bool, interval: float) -> int:
        """Run one pass, or with --loop one every `interval` seconds until asked to stop.
        Returns the number of passes."""
        passes = 0
        while True:
            one_pass()
            passes += 1
            if not loop or self.stopping:
                return passes
            self.sleep(interval)
