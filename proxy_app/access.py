"""Access control per key and per user: scopes, monthly budgets, rate limits.

Each check refuses before anything is forwarded. The relay view
(proxy_app.views.RelayView) lists them as DRF permissions and a throttle, in the
order they run: FamilyInScope and WithinBudget need only the caller;
ModelInScope and CostReserved judge the body the BodyReadable permission
inspected (proxy_app.inspection.Body); KeyRateLimit runs last, so only admitted
requests count. WebSocket sessions call the same functions for every event.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from decimal import Decimal

import requests
from django.core.cache import cache

from rest_framework.permissions import BasePermission
from rest_framework.throttling import BaseThrottle

from audit_app import budgets
from audit_app.recorder import CallContext

from audit_app import operations
from relay_project.lib import upstream
from .errors import PolicyDenied, RelayError
from .paths import ApiPath, family_hint

class BudgetExceeded(RelayError):
    status_code = 429
    error_type = "insufficient_quota"
    default_code = "relay_budget_exceeded"


class RateLimited(RelayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


# --- scopes -----------------------------------------------------------------


class FamilyInScope(BasePermission):
    """The key's allowed_families include the path's endpoint family (403)."""

    def has_permission(self, request, view) -> bool:
        check_family_scope(view.api_path, view.forwarded.method, view.ctx)
        return True


class ModelInScope(BasePermission):
    """The body's model (and a new batch's input file's models) are ones the key may use (400/403).

    Judges the body BodyReadable read (proxy_app.inspection.Body); a body the relay
    cannot read the way upstream will is refused for a key with a model scope.
    """

    def has_permission(self, request, view) -> bool:
        body = view.body
        if body.check_scope:
            check_model_scope(view.ctx, view.api_path, view.forwarded.method, body.fields,
                              takes_model=body.takes_model, unreadable=body.unreadable)
        return True


def check_family_scope(api_path: ApiPath, method: str, ctx: CallContext) -> None:
    allowed = ctx.key.allowed_families if ctx.key is not None else None
    if allowed and api_path.family not in allowed:
        raise PolicyDenied(
            f"Relay key {ctx.key.prefix}… may only call these endpoint families: "
            f"{', '.join(allowed)} (scope: allowed_families); this is '{api_path.family}'.",
            code="outside_key_scope",
        )


def has_model_scope(ctx: CallContext) -> bool:
    return ctx.key is not None and bool(ctx.key.allowed_models)


def check_model_scope(ctx: CallContext, api_path: ApiPath, method: str, fields: dict, *,
                      takes_model: str | None = None, unreadable: str | None = None) -> None:
    """The body's model, and for a new batch the models inside its input file.

    `takes_model` ('required', 'optional' or 'implicit', from proxy_app.paths.model_field)
    says the endpoint names a model, or generates on one it does not name; `unreadable`
    why the relay's reading of the body may differ from upstream's. Either way a scoped
    key is refused rather than forwarded on a guess.
    """
    if not has_model_scope(ctx):
        return
    if unreadable:
        _refuse_unread(ctx, f"the relay could not read this body as upstream will: {unreadable}")
    if takes_model == "implicit":
        _refuse_unread(ctx, f"{api_path.path} generates with a model the request does not name (a source "
                            "video's, a ChatKit workflow's), which the relay cannot check")
    model = fields.get("model", _MISSING)
    if model is _MISSING:
        if takes_model == "required":
            _refuse_unread(ctx, "this endpoint takes a model and the body names none "
                                "(upstream would pick its default)")
    elif not isinstance(model, str):
        _refuse_unread(ctx, f"its model is a {type(model).__name__}, not a string")
    else:
        _check_model(ctx, model)
    if api_path.path == "/v1/batches" and method == "POST":
        _check_batch_input(ctx, fields)


_MISSING = object()


def _refuse_unread(ctx: CallContext, why: str, param: str = "model") -> None:
    raise PolicyDenied(
        f"Relay key {ctx.key.prefix}… may only use these models: {', '.join(ctx.key.allowed_models)} "
        f"(scope: allowed_models), and {why}; nothing was forwarded.",
        code="outside_key_scope", param=param,
    )


def _check_model(ctx: CallContext, model: object, where: str = "") -> None:
    allowed = ctx.key.allowed_models
    if allowed and isinstance(model, str) and model not in allowed:
        raise PolicyDenied(
            f"Relay key {ctx.key.prefix}… may only use these models: {', '.join(allowed)} "
            f"(scope: allowed_models); {where}'{model[:200]}' is not one of them.",
            code="outside_key_scope", param="model",
        )


# A batch input line is held whole to parse it; OpenAI's own limit on a batch
# file is 200 MB, and a line holds one request body.
BATCH_LINE_MAX_BYTES = 32 * 1024 * 1024


def _check_batch_input(ctx: CallContext, values: dict) -> None:
    """A batch runs the models named in its input file: read them before it starts.

    The file is read as upstream reads JSONL: lines end at `\n` only (a bare
    `\r` is JSON whitespace inside a line, and splitting there let a denied
    model through), and every non-blank line must be a JSON object whose
    `body.model` is a string: a line the relay cannot read refuses the batch.
    """
    endpoint = values.get("endpoint")
    if isinstance(endpoint, str) and ctx.key.allowed_families:
        family = family_hint(endpoint)
        if family not in ctx.key.allowed_families:
            raise PolicyDenied(
                f"Relay key {ctx.key.prefix}… may only call these endpoint families: "
                f"{', '.join(ctx.key.allowed_families)} (scope: allowed_families); "
                f"this batch runs '{family}'.", code="outside_key_scope", param="endpoint",
            )
    file_id = values.get("input_file_id")
    if not isinstance(file_id, str) or not file_id or "/" in file_id or "?" in file_id or "#" in file_id:
        _refuse_unread(ctx, "the batch's input_file_id is missing or not a plain file id",
                       param="input_file_id")
    try:
        with upstream.get(f"/files/{file_id}/content", stream=True, project=ctx.key.openai_project) as resp:
            if resp.status_code != 200:
                raise PolicyDenied(
                    f"The relay could not read batch input file {file_id} to check its models "
                    f"against this key's scope (upstream said {resp.status_code}).",
                    code="outside_key_scope", param="input_file_id",
                )
            for number, line in enumerate(_jsonl_lines(resp.iter_content(64 * 1024)), start=1):
                if line is None:
                    _refuse_unread(ctx, f"line {number} of {file_id} is longer than "
                                        f"{BATCH_LINE_MAX_BYTES} bytes", param="input_file_id")
                if not line.strip():
                    continue
                try:
                    request = json.loads(line.decode("utf-8"))
                    model = request["body"]["model"]
                except (ValueError, RecursionError, TypeError, KeyError):
                    model = None
                if not isinstance(model, str):
                    _refuse_unread(ctx, f"line {number} of {file_id} is not a request with a string "
                                        "body.model", param="input_file_id")
                _check_model(ctx, model, where=f"line {number} of {file_id} uses ")
    except (OSError, requests.RequestException) as exc:
        raise PolicyDenied(f"The relay could not read batch input file {file_id}: {type(exc).__name__}.",
                           code="outside_key_scope", param="input_file_id") from None


def _jsonl_lines(chunks) -> Iterator[bytes | None]:
    """Lines split at `\n` only, each without it; None for a line over the limit."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) != -1:
            yield bytes(pending[start:end])
            start = end + 1
        del pending[:start]
        if len(pending) > BATCH_LINE_MAX_BYTES:
            yield None
            return
    if pending:
        yield bytes(pending)


# --- budgets ------------------------------------------------------------------
#
# Reservations, settlement and the bound: audit_app.budgets and docs/prices.md.


class WithinBudget(BasePermission):
    """Spend alone has not filled the key's, its owner's or its team's monthly budget (429).

    Before the body is read; whether this call fits beside the calls in progress is
    CostReserved's question.
    """

    def has_permission(self, request, view) -> bool:
        check_budgets(view.api_path, view.forwarded.method, view.ctx)
        return True


class CostReserved(BasePermission):
    """The call's estimated cost, from the body's fields, is reserved against every budget
    over it (403 when it cannot be priced or is unbounded work, 429 when it does not fit)."""

    def has_permission(self, request, view) -> bool:
        body = view.body
        if body.reserve:
            # A body the relay could not read as upstream will (not JSON nor a form, or a form
            # it reads differently) cannot be estimated: its fields would be guessed.
            unread = body.unreadable or (None if body.held else "the body is neither JSON nor a form")
            reserve_budget(view.ctx, view.api_path, view.forwarded.method, body.fields, body.size,
                           unreadable=unread)
        return True


def month_spend(*, key_id: int | None = None, user_id: int | None = None, team_id: int | None = None) -> Decimal:
    """USD counted against a key's, a user's or a team's budget this calendar month (priced
    cost plus the holds of calls whose cost is unknown), from the daily rollups."""
    return budgets.month_spend(f"k{key_id}" if key_id is not None else f"u{user_id}" if user_id is not None
                               else f"t{team_id}")


def forget_spend(ctx: CallContext) -> None:
    """A cost just landed (a WebSocket response): the next budget check of the caller's
    key, owner and team reads the rollups again, not a cached figure."""
    budgets.mark_spend_stale([owner for owner, _, _ in budgets.budget_of(ctx.key, ctx.user)])


def has_budget(ctx: CallContext) -> bool:
    """Whether any monthly budget applies to the caller: the key's, its owner's or its team's.

    The one test for "limited by a budget" (realtime secrets and calls, WebSocket
    sessions): a budget anywhere above the key makes it limited.
    """
    key = ctx.key
    if key is None:
        return False
    if key.monthly_budget_usd is not None:
        return True
    limit = getattr(ctx.user, "relay_limit", None)
    if limit is not None and limit.monthly_budget_usd is not None:
        return True
    team = key.team if key.team_id else None
    return team is not None and team.monthly_budget_usd is not None


def is_limited(ctx: CallContext) -> bool:
    """A key with a model scope or under any budget: what the relay cannot read is refused for it."""
    return has_model_scope(ctx) or has_budget(ctx)


def check_budgets(api_path: ApiPath, method: str, ctx: CallContext) -> None:
    """Before the body is read: refuse at once when spend alone fills a budget. Whether
    this call fits beside the calls in progress is decided by its reservation
    (reserve_budget), in the order calls reserve: counting other calls' reservations
    here would let a burst of calls refuse each other all at once."""
    for owner, budget, name in budgets.budget_of(ctx.key, ctx.user):
        spent = budgets.month_spend(owner)
        if spent >= budget:
            raise BudgetExceeded(_budget_message(ctx, owner, name, budget, spent, budgets.reserved(owner, time.time())))


def _budget_message(ctx: CallContext, owner: str, name: str, budget, spent, held) -> str:
    who = {"k": lambda: f"Relay key {ctx.key.prefix}…", "u": lambda: f"User {ctx.user.get_username()}",
           "t": lambda: f"Team {ctx.key.team}"}[owner[0]]()
    return (f"{who} has used its monthly budget of ${budget} (spent ${spent:.2f} this month, "
            f"${held:.2f} held by calls in progress; budget: {name}).")


def refuse_unbounded_work(ctx: CallContext, api_path: ApiPath, method: str, fields: dict) -> None:
    """Under a budget, no work whose cost the relay cannot hold until it ends: a batch, a
    remix, edit or extension of a video, or what OpenAI bills unmeasurably (containers,
    Assistants runs). Their cost is not bounded by anything in the create call, so jobs
    started one after another would each see the budget untouched and together overshoot
    it without bound. (A background Response and a new video are estimated from their
    request, and their job holds the reservation until billed.)"""
    if api_path.path == "/v1/videos":
        return
    if operations.kind_of(method, api_path.path) in (operations.Kind.JOB, operations.Kind.UNMETERED):
        raise PolicyDenied(
            f"This key has a monthly budget, and {api_path.path} is billed when it ends, after this "
            "call, at a cost the relay cannot estimate from the request, so it refuses it. Use a key "
            "without a budget for this work (docs/prices.md, Budgets).",
            code="relay_async_under_budget")


def reserve_budget(ctx: CallContext, api_path: ApiPath, method: str, fields: dict, body_bytes: int | None,
                   *, unreadable: str | None = None) -> None:
    """Once the body's fields are known: reserve the call's estimated cost against every
    budget over it, or refuse (403 when its cost could not be counted, 429 when it does
    not fit)."""
    if method == "POST" and budgets.applies(ctx.key, ctx.user):
        refuse_unbounded_work(ctx, api_path, method, fields)
    if method != "POST" or api_path.path not in budgets.GENERATING_PATHS \
            or not budgets.applies(ctx.key, ctx.user):
        return
    try:
        if unreadable:
            raise budgets.Unpriceable(f"the relay could not read the request as upstream will ({unreadable})")
        amount = budgets.estimate(fields.get("model"), fields, body_bytes or 0, api_path.path)
    except budgets.Unpriceable as exc:
        raise PolicyDenied(
            f"This key has a monthly budget, and {exc}, so the relay could not count this call "
            "against it. An admin can add a price (a fallback rate) for it in Model prices.",
            code="relay_unpriced_under_budget", param="model",
        ) from None
    reservation, refusal = budgets.reserve(ctx.key, ctx.user, amount, time.time())
    if reservation is None:
        raise BudgetExceeded(f"This call does not fit the {refusal}.")
    ctx.reservation = reservation


# --- rate limits -----------------------------------------------------------------


class KeyRateLimit(BaseThrottle):
    """The key's requests_per_minute (429 with Retry-After), last of the view's rules.

    Refuses by raising the relay's own RateLimited rather than returning False:
    DRF's Throttled would answer with its own message, and the client should read
    which limit it hit and when to retry, in OpenAI's shape.
    """

    def allow_request(self, request, view) -> bool:
        check_rate_limit(view.api_path, view.forwarded.method, view.ctx)
        return True


# The minute is counted in buckets of this many seconds; a request is admitted
# when the bucket it falls in and the 11 before it hold fewer than the limit.
BUCKET_SECONDS = 5
BUCKETS = 12


def check_rate_limit(api_path: ApiPath, method: str, ctx: CallContext) -> None:
    """Requests per minute per key, shared by every worker and host through
    Django's cache (atomic with Redis; close to it with the database cache).

    The count covers the last 55 to 60 seconds, in 5-second buckets: never more
    than a minute, so a client that keeps to its limit over any minute is never
    refused; never less than 55 seconds, so no 55 seconds hold more than the
    limit. A fixed per-minute window would let a key send its whole limit at
    0:59 and again at 1:00. Refused requests are not counted: this check runs
    after every other one (KeyRateLimit is the view's only throttle, and DRF runs
    throttles after every permission: path, scopes, budget, the body's model), so a
    request refused for any reason never spends the allowance.
    """
    key = ctx.key
    if key is None or not key.requests_per_minute:
        return
    limit = key.requests_per_minute
    now = time.time()
    bucket, into = divmod(now, BUCKET_SECONDS)
    bucket = int(bucket)
    names = [f"relay:rpm:{key.pk}:{b}" for b in range(bucket - BUCKETS + 1, bucket + 1)]
    current = _increment(names[-1])
    earlier = cache.get_many(names[:-1])
    counts = [earlier.get(name, 0) for name in names[:-1]]
    if sum(counts) + current <= limit:
        return
    try:
        cache.decr(names[-1])
    except ValueError:  # the bucket expired meanwhile: nothing left to undo
        pass
    retry = _seconds_until_admitted(limit, [*counts, current - 1], into)
    raise RateLimited(
        f"Relay key {key.prefix}… is limited to {limit} requests per minute "
        f"(limit: requests_per_minute). Retry in {retry}s.",
        headers={"Retry-After": str(retry)},
    )


def _increment(name: str) -> int:
    # Lives until the last bucket that counts it has passed, and a little more.
    timeout = (BUCKETS + 1) * BUCKET_SECONDS
    if cache.add(name, 1, timeout=timeout):
        return 1
    try:
        return cache.incr(name)
    except ValueError:  # expired between add and incr
        cache.add(name, 1, timeout=timeout)
        return 1


def _seconds_until_admitted(limit: int, counts: list[int], into: float) -> int:
    """When one more request would fit, if no other arrives meanwhile: once enough
    of the oldest buckets have left the count. `counts` runs oldest to current;
    with a limit of at least 1, the loop ends by the time they all have."""
    remaining, steps = sum(counts), 0
    while remaining + 1 > limit:
        remaining -= counts[steps]
        steps += 1
    return max(1, math.ceil(steps * BUCKET_SECONDS - into))
