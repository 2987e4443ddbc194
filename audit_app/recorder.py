"""Opening and closing ApiCall rows: the audit half of the forwarding pipeline.

The row is committed before anything goes upstream (no call without its row)
and completed, priced and added to the daily rollups in one short
transaction when the response has been sent, whatever way it ended.
"""
from __future__ import annotations

import copy
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from django.db import DatabaseError, close_old_connections, connection, transaction
from django.dispatch import Signal
from django.utils import timezone

from relay_project.redact import scrub_keys, storable

from . import budgets, call_rows, latency, ledger, pricing, rollups, spool
from .models import ApiCall, Billing, Outcome
from .usage import Usage

log = logging.getLogger(__name__)
# Sent when an audit row cannot be written; the relay's metrics count these.
AUDIT_WRITE_FAILED = Signal()

_ERROR_MAX = ApiCall._meta.get_field("error").max_length
_UA_MAX = ApiCall._meta.get_field("user_agent").max_length


@dataclass
class CallContext:
    """What is known about a call before it goes upstream: what its audit row records.

    It lives here, with the recorder, rather than with the relay that fills it in:
    the recorder reads it for every row (and rebuilds it from the journal,
    `_ctx_from_state`), and the audit trail imports nothing from the relay but its
    keys (tests/test_module_map.py). The relay's owner of a call's row, which adds
    its telemetry, is proxy_app.call_audit.CallAudit.
    """

    method: str
    path: str
    family: str = ""
    key: Any = None
    user: Any = None
    client_ip: str | None = None
    user_agent: str = ""
    started_at: Any = field(default_factory=timezone.now)
    started_monotonic: float = field(default_factory=time.monotonic)
    # Returned to the client as x-relay-request-id, logged, and kept on the row.
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    forwarded_at: float | None = None
    upstream_ms: float | None = None
    # time.monotonic() when the response's first byte went to the client (pipeline.RelayedBody).
    first_byte_at: float | None = None
    # The budget reservation made before forwarding (audit_app.budgets), settled at close.
    reservation: Any = None
    # The audit row's id once it is open (proxy_app.call_audit.CallAudit.open).
    call_id: int | None = None


def _base_fields(ctx: CallContext) -> dict[str, Any]:
    return dict(
        started_at=ctx.started_at,
        method=storable(ctx.method[:10]),
        path=storable(ctx.path[:2048]),
        family=storable(ctx.family),
        key=ctx.key,
        user=ctx.user,
        client_ip=ctx.client_ip,
        user_agent=storable(ctx.user_agent[:_UA_MAX]),
        relay_request_id=ctx.request_id,
    )


def _finish_fields(ctx: CallContext) -> dict[str, Any]:
    fields = dict(
        finished_at=timezone.now(),
        duration_ms=round((time.monotonic() - ctx.started_monotonic) * 1000, 3),
    )
    if ctx.first_byte_at is not None:
        fields["ttfb_ms"] = round((ctx.first_byte_at - ctx.started_monotonic) * 1000, 3)
    return fields


def _stats(ctx: CallContext, fields: dict[str, Any]) -> list[Any]:
    """The finished call's values for its errors-and-latency row (audit_app.latency)."""
    return latency.stat_values(
        started_at=ctx.started_at, model=storable(fields.get("model", "") or ""), family=storable(ctx.family),
        user_id=ctx.user.pk if ctx.user is not None else None,
        key_id=ctx.key.pk if ctx.key is not None else None,
        outcome=fields.get("outcome", ""), status=fields.get("status"),
        duration_ms=fields.get("duration_ms"), ttfb_ms=fields.get("ttfb_ms"))


def open_call(ctx: CallContext) -> int:
    """Insert the pending row and return its id. A DatabaseError here must stop the call (503).

    The pending row carries its MAC too: reconcile_calls only finishes rows the relay
    opened, and verify_audit reports a pending row forged by SQL.
    """
    fields: dict[str, Any] = {"outcome": Outcome.PENDING}
    if ctx.reservation is not None:
        # The budget's hold, on the row too: if the worker dies, reconcile_calls keeps it
        # counted (a call of unknown cost) after the reservation itself has lapsed.
        fields["budget_held"] = ctx.reservation.amount
    return call_rows.insert({**_base_fields(ctx), **_with_mac(ctx, fields)})


def _with_mac(ctx: CallContext, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields plus the MAC of the whole finished row (see audit_app.ledger).

    Every text field is made storable (no NUL, no lone surrogate) and the error
    free of key-like strings here, before the MAC: whatever path a write takes
    (now, or replayed from the journal), the row holds what its MAC covers.
    """
    fields = {name: storable(value) if isinstance(value, str) else value for name, value in fields.items()}
    if fields.get("error"):
        fields["error"] = scrub_keys(fields["error"])[:_ERROR_MAX]
    values = {**_base_fields(ctx), **fields}
    for fk in ("key", "user", "price"):
        if fk in values:
            obj = values.pop(fk)
            values[f"{fk}_id"] = obj.pk if obj is not None else None
    return {**fields, "row_mac": ledger.call_mac(values)}


def record_rejected(ctx: CallContext, status: int, message: str, *, database: bool = True) -> None:
    """One finished row for a request the relay answered itself.

    Never raises: a failing audit write must not turn a clear 4xx into a 500;
    the row goes to the journal instead. `database=False` (the database is known
    to be down) journals it without trying.
    """
    fields = {**_finish_fields(ctx), "status": status, "outcome": Outcome.REJECTED,
              "error": message[:_ERROR_MAX], "billing": Billing.FREE}
    # Refused after its cost was reserved (the rate limit runs last): nothing was
    # forwarded, so nothing may stay held against the budget until the timeout.
    if ctx.reservation is not None:
        try:
            budgets.release(ctx.reservation)
        except Exception:  # database or cache down: the hold lapses with the pending-call timeout
            log.warning("audit: could not release the budget hold of a refused call", exc_info=True)
        ctx.reservation = None
    try:
        if not database:
            raise DatabaseError("the database is unavailable")
        _insert_finished(ctx, fields)
    except DatabaseError:
        AUDIT_WRITE_FAILED.send(sender=ApiCall)
        log.exception("audit: could not record a rejected %s %s; journaled", ctx.method, ctx.path)
        spool.append({"op": "insert", "ctx": _ctx_state(ctx), "fields": fields})


def _insert_finished(ctx: CallContext, fields: dict[str, Any], *, once: bool = False) -> None:
    """Insert a finished row and count it in the rollups, together or not at all.

    The rule: every finished call made with a key is in the rollups, rejected ones
    too, so rollup call counts equal raw call counts. `once` (a journal replay):
    nothing happens if the row is there already, written by a replay that died
    before it could forget the entry.
    """
    with transaction.atomic():
        if once and ApiCall.objects.filter(relay_request_id=ctx.request_id).exists():
            return
        call_rows.insert({**_base_fields(ctx), **_with_mac(ctx, fields)})
        if (bucket := _bucket(ctx, fields)) is not None:
            rollups.upsert(bucket)
        latency.upsert(_stats(ctx, fields))


def priced_fields(usage: Usage | None, model: str, at, *, batch: bool = False) -> dict[str, Any]:
    """Usage columns plus cost, price and the billing state, for a call, a batch result or a job.

    The one entry point to pricing: live calls, batch results, the poller and `reprice`
    all come through here with the usage as stored on the row (Usage.from_row), the
    most specific model name known (the snapshot upstream reported) and the time the
    work started, so re-pricing a row with unchanged prices reproduces its cost exactly.
    """
    if usage is None or usage.is_empty:
        return {}
    price = pricing.price_for(model, at)
    priced = pricing.price_usage(usage, price, batch=batch, at=at)
    cost = priced.cost
    return {**usage.as_fields(), "cost": cost, "tool_cost": priced.tool_cost if cost is not None else None,
            "unpriced": cost is None,
            "billing": Billing.PRICED if cost is not None else Billing.UNPRICED,
            "price": price if cost is not None else None}


def close_call(call_id: int, ctx: CallContext, *, usage: Usage | None = None,
               usage_hint: Usage | None = None, response_model: str = "", billed: bool | None = None,
               **fields: Any) -> None:
    """Complete the row, price it and add it to the rollups, in one transaction.

    `billed`: OpenAI bills this call (a generating operation that upstream accepted,
    see audit_app.operations; by default decided from the method, path and status).
    Without it the call is free whatever its body said; with it but without usage
    the call is `unknown`, never $0.

    Retries once on a fresh connection, because this runs after a long stream
    whose connection may have gone meanwhile. Never raises: if the database
    still refuses, the write goes to the journal that `reconcile_calls` replays.
    """
    if "error" in fields:
        fields["error"] = (fields["error"] or "")[:_ERROR_MAX]
    # Storable before anything reads them: a lone surrogate in a model name failed the
    # price lookup's query itself, which left the row pending.
    fields = {name: storable(value) if isinstance(value, str) else value for name, value in fields.items()}
    response_model = storable(response_model)
    fields.update(_finish_fields(ctx))
    if billed is None:
        billed = _billed_by_default(ctx, fields)
    if not billed:
        usage = usage_hint = None  # a read echoes the usage of the call that generated: not ours to count
    elif usage is not None or usage_hint is not None:
        usage = (usage or Usage()).merge(usage_hint)
    if billed and (usage is None or usage.is_empty) and fields.get("billing") not in (Billing.PRICED,
                                                                                      Billing.UNPRICED):
        # (A caller that priced the call from usage it read itself, a WebSocket response, keeps that.)
        fields["billing"] = Billing.UNKNOWN
    for attempt in (1, 2):
        try:
            _complete(call_id, ctx, dict(fields), usage, response_model)
            if ctx.reservation is not None:  # a budgeted call: settle it, then the 80%/100% alerts
                budgets.settle(ctx.reservation)
                budgets.check_after_call(ctx.key, ctx.user)
            return
        except DatabaseError:
            if attempt == 1:
                connection.close()
    AUDIT_WRITE_FAILED.send(sender=ApiCall)
    log.exception("audit: could not complete call %s; journaled", call_id)
    spool.append({"op": "complete", "call_id": call_id, "ctx": _ctx_state(ctx), "fields": fields,
                  "usage": asdict(usage) if usage is not None else None, "response_model": response_model})


def _billed_by_default(ctx: CallContext, fields: dict[str, Any]) -> bool:
    from audit_app.operations import billed_on_call

    status = fields.get("status") or 0
    return billed_on_call(ctx.method, ctx.path) and 200 <= status < 400 and fields.get("outcome") != Outcome.REJECTED


def _complete(call_id: int, ctx: CallContext, fields: dict[str, Any], usage: Usage | None,
              response_model: str) -> None:
    # Again here: journal entries written before the fields were made storable replay through this.
    fields = {name: storable(value) if isinstance(value, str) else value for name, value in fields.items()}
    response_model = storable(response_model or "")
    if usage is not None:
        # The model upstream reports is the most specific name (a dated snapshot).
        priced_as = (response_model or fields.get("model", ""))[:128]
        if ctx.family == "chat" and usage.web_search_calls is None and pricing.is_search_model(priced_as) \
                and usage.has_tokens:
            # Chat Completions' search models search the web on every request: one call's fee.
            usage.web_search_calls = 1
        fields.update(priced_fields(usage, priced_as, ctx.started_at))
        if fields.get("billing"):
            fields["priced_model"] = priced_as
    if not fields.get("model") and response_model:
        fields["model"] = response_model[:128]
    fields.setdefault("billing", Billing.FREE)
    if ctx.reservation is not None:
        # Its cost unknown, the budget keeps counting the most it was estimated at; else the
        # hold the pending row carried (open_call) goes.
        unknown_cost = fields["billing"] in (Billing.UNPRICED, Billing.UNKNOWN)
        fields["budget_held"] = ctx.reservation.amount if unknown_cost else None
    fields = _with_mac(ctx, fields)
    bucket = _bucket(ctx, fields)
    stats = _stats(ctx, fields)
    if bucket is not None and connection.vendor == "postgresql" \
            and call_rows.complete_with_rollup(call_id, fields, bucket, stats):
        return
    with transaction.atomic():
        if call_rows.update(call_id, fields, outcome=Outcome.PENDING):
            if bucket is not None:
                rollups.upsert(bucket)
            latency.upsert(stats)
            return
        # Rare: the call outlived RELAY_PENDING_TIMEOUT and reconcile_calls marked it
        # interrupted (and counted it in the rollups). While that row is not sealed, the
        # real outcome replaces it; a sealed row is in the ledger for good.
        interrupted = ApiCall.objects.filter(pk=call_id, outcome=Outcome.INTERRUPTED).first()
        if interrupted is not None and call_rows.update(
                call_id, {**fields, "error": fields.get("error", "")},  # clear reconcile's note, as the MAC has it
                outcome=Outcome.INTERRUPTED, unsealed=True):
            _move_out_of_interrupted(ctx, interrupted, bucket, stats)
            return
    _amend_sealed(call_id, ctx, fields, bucket, stats)


def _move_out_of_interrupted(ctx: CallContext, interrupted: ApiCall, bucket: list[Any] | None,
                             stats: list[Any]) -> None:
    """Take back what reconcile_calls added for the call (`interrupted`, the row as it
    left it: one call, of unknown cost with its hold if it generates, an interrupted
    outcome in the latency rollup) and add its real outcome."""
    if bucket is not None:
        rollups.add(started_at=ctx.started_at, user_id=ctx.user.pk, key_id=ctx.key.pk, model="",
                    family=storable(ctx.family), calls=-1,
                    unknown=-1 if interrupted.billing == Billing.UNKNOWN else 0,
                    budget_held=-(interrupted.budget_held or 0))
        rollups.upsert(bucket)
    latency.upsert(latency.stat_values(
        started_at=ctx.started_at, model="", family=storable(ctx.family), user_id=stats[3], key_id=stats[4],
        outcome=Outcome.INTERRUPTED, status=None, duration_ms=None, ttfb_ms=None, calls=-1))
    latency.upsert(stats)


def _amend_sealed(call_id: int, ctx: CallContext, fields: dict[str, Any], bucket: list[Any] | None,
                  stats: list[Any]) -> None:
    """A call that finished after reconcile_calls marked it interrupted and seal_audit
    sealed it: its real outcome and usage replace the sealed row through an amendment
    entry in the ledger (as reprice does), so verify_audit still passes and the usage
    is not lost. Only an interrupted row changes: replaying the same completion again
    finds it finished and does nothing."""
    with ledger.amending() as amend:  # the chain head is locked: no sealer runs meanwhile
        row = ApiCall.objects.filter(pk=call_id, outcome=Outcome.INTERRUPTED).first()
        if row is None:
            log.warning("audit: call %s finished (%s) but its row is neither pending nor interrupted; "
                        "left as it is", call_id, fields.get("outcome"))
            return
        interrupted = copy.copy(row)
        values = {**fields, "error": fields.get("error", "")}  # clear reconcile's note, as the MAC has it
        for name, value in values.items():
            setattr(row, name, value)
        if row.chain_seq is not None:
            row.chain_seq = amend(row)
        row.save(update_fields=[*(name for name in values if name != "price"),
                                *(["price"] if "price" in values else []), "chain_seq"])
        _move_out_of_interrupted(ctx, interrupted, bucket, stats)
    log.warning("audit: call %s finished (%s, status %s) after it was sealed as interrupted; "
                "amended in the ledger", call_id, fields.get("outcome"), fields.get("status"))


def _bucket(ctx: CallContext, fields: dict[str, Any]) -> list[Any] | None:
    """The finished call's values for its rollup bucket; None when it has none."""
    if ctx.key is None or ctx.user is None:
        return None  # rejected before authentication: nobody's usage
    values = {k: v for k, v in fields.items() if k in _ROLLUP_FIELDS}
    # Storable here too: a rejected call's bucket is built from the context (a NUL in a
    # path's first segment once journaled a rollup write that failed on every replay).
    return rollups.bucket_values(started_at=ctx.started_at, user_id=ctx.user.pk, key_id=ctx.key.pk,
                                 model=storable(values.pop("model", "") or ""), family=storable(ctx.family),
                                 calls=1, service_tier=values.pop("service_tier", None),
                                 unpriced=1 if values.pop("unpriced", False) else 0,
                                 unknown=1 if values.pop("billing", "") == Billing.UNKNOWN else 0, **values)


# --- the journal of writes the database refused --------------------------------------

_CTX_FIELDS = ("method", "path", "family", "client_ip", "user_agent", "started_at", "request_id")


def _ctx_state(ctx: CallContext) -> dict[str, Any]:
    state = {name: getattr(ctx, name) for name in _CTX_FIELDS}
    state["key_id"] = ctx.key.pk if ctx.key is not None else None
    state["user_id"] = ctx.user.pk if ctx.user is not None else None
    if ctx.reservation is not None:  # what an unknown cost keeps held (_complete)
        state["reserved"] = str(ctx.reservation.amount)
    return state


def _ctx_from_state(state: dict[str, Any]) -> CallContext:
    from django.contrib.auth import get_user_model

    from proxy_app.models import RelayKey

    ctx = CallContext(**{name: state[name] for name in _CTX_FIELDS})
    # Only the primary keys matter from here on.
    ctx.key = RelayKey(pk=state["key_id"]) if state["key_id"] is not None else None
    ctx.user = get_user_model()(pk=state["user_id"]) if state["user_id"] is not None else None
    if state.get("reserved"):  # its amount only; the reservation itself lapses with the pending timeout
        ctx.reservation = budgets.Reservation(amount=Decimal(state["reserved"]))
    return ctx


def replay_journal() -> tuple[int, int]:
    """Write what the database refused earlier. Returns (applied, still failing).

    Each entry is idempotent: a completion only finishes a row still pending (or
    interrupted), an insert only writes a row not there yet. Raises spool.JournalBusy
    when another replay is running.
    """

    def apply(entry: dict[str, Any]) -> None:
        ctx = _ctx_from_state(entry["ctx"])
        if entry["op"] == "insert":
            _insert_finished(ctx, entry["fields"], once=True)
        else:
            usage = Usage(**entry["usage"]) if entry.get("usage") else None
            _complete(entry["call_id"], ctx, entry["fields"], usage, entry.get("response_model", ""))

    return spool.replay(apply)


_ROLLUP_FIELDS = frozenset({"model", "unpriced", "billing", "cost", "budget_held", "tool_cost", *Usage.STORED})


def release_connection() -> None:
    """Give the DB connection back while a long response streams.

    Under gevent each in-flight request holds its own connection; 500 open
    streams must not mean 500 PostgreSQL connections.
    """
    close_old_connections()
    if connection.connection is not None and not connection.in_atomic_block:
        connection.close()
