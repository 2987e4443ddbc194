"""The one owner of a call's audit row: opened once, closed once, telemetry once.

Every relayed call (and every WebSocket session) gets a `CallAudit` as the view
starts on it. Whatever way the call ends, exactly one of `finish`, `fail` or
`reject` writes its row and its telemetry line; any later close is a no-op that
returns False. So the view's exception handler simply asks the owner to reject:
when the pipeline already failed the call (or the response is being relayed and
will finish it), nothing is written twice.

Where things live, and why (the dependency direction of docs/module-map.md):

- `audit_app.recorder.CallContext` is what the audit row records about a call
  (who, what, when, its budget reservation). The relay fills it in; the
  recorder reads it, and replays it from the journal when the database was
  down. audit_app sits below proxy_app and may not import from it, so the
  context lives with the recorder.
- This owner lives in proxy_app because it also writes the relay's telemetry
  (proxy_app.telemetry: Prometheus counters and the access log line), which
  the audit trail knows nothing about. It calls the recorder's functions;
  nothing in audit_app calls back.
"""
from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError

from audit_app.models import Outcome
from audit_app.recorder import AUDIT_WRITE_FAILED, CallContext, close_call, open_call, record_rejected

from . import telemetry
from .errors import AuditUnavailable

log = logging.getLogger(__name__)


class CallAudit:
    """The audit row of one call: `open()`, then exactly one of `finish`, `fail`, `reject`.

    `reject` works with or without an open row: before `open()` it writes one
    finished row (a request the relay answered itself); after it, it completes
    the pending row. `finish` and `fail` complete the row `open()` inserted.
    """

    __slots__ = ("ctx", "call_id", "closed")

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.call_id: int | None = None
        self.closed = False

    def open(self) -> int:
        """Insert the pending row; refuse the call (503) when it cannot be written.

        No call goes upstream without its row: a DatabaseError here stops it.
        """
        try:
            self.call_id = self.ctx.call_id = open_call(self.ctx)
        except DatabaseError:
            AUDIT_WRITE_FAILED.send(sender=None)
            log.exception("audit: cannot open a row for %s %s; refusing to forward",
                          self.ctx.method, self.ctx.path)
            raise AuditUnavailable() from None
        return self.call_id

    def finish(self, *, outcome: str, status: int | None, bytes_in: int = 0, bytes_out: int = 0,
               telemetry_fields: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Complete the open row with what the call came to (recorder.close_call's fields)."""
        if self.closed:
            return False
        self.closed = True
        close_call(self.call_id, self.ctx, outcome=outcome, status=status, bytes_in=bytes_in,
                   bytes_out=bytes_out, **fields)
        telemetry.call_finished(self.ctx, status=status, outcome=outcome, bytes_in=bytes_in,
                                bytes_out=bytes_out, **(telemetry_fields or {}))
        return True

    def fail(self, *, status: int, error: str, bytes_in: int = 0, **fields: Any) -> bool:
        """The call broke after its row was opened: refused (4xx) or failed (5xx)."""
        outcome = Outcome.REJECTED if status < 500 else Outcome.FAILED
        return self.finish(outcome=outcome, status=status, bytes_in=bytes_in, error=error,
                           telemetry_fields={"error": error}, **fields)

    def reject(self, status: int, message: str, *, database: bool = True) -> bool:
        """The relay answered the call itself with an error.

        Without an open row: one finished row, never raising (a failing write goes
        to the journal; `database=False`, the database is known to be down, journals
        it without a second wait for a connection). With an open row: the row is
        completed as refused or failed.
        """
        if self.closed:
            return False
        if self.call_id is not None:
            return self.fail(status=status, error=message)
        self.closed = True
        record_rejected(self.ctx, status, message, database=database)
        telemetry.call_finished(self.ctx, status=status, outcome=Outcome.REJECTED, error=message)
        return True
