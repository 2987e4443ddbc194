"""Which operations OpenAI bills: the one table the relay's accounting reads.

The rule: an operation that generates is billed once; reading is free. The
decision is made from the method and path alone, never from whether a
response body happens to carry `usage`: a retrieved Response, a stored chat
completion and a finished batch all echo the usage of the call that made
them, and counting that echo billed one real call 4.9 times over in the
measurement that opened issue 12.

Kinds (docs/accounting.md has the same table, for people):

- GENERATES: billed on this call, from the usage its response reports. A
  generating call whose usage the relay could not read is `unknown`, never $0.
- JOB: starts work billed later, once, on the job's record (a background
  Response, a video, a batch): the call itself is free, the job carries the cost.
  A Response is a job only when its body says `"background": true`.
- UNMETERED: billed by OpenAI in a way the relay cannot measure on the call
  (fine-tuning jobs, eval runs, containers, Assistants runs, ChatKit sessions):
  always `unknown`.
- FREE: everything else (retrievals, lists, deletes, cancels, file uploads
  and downloads, moderations, token counting, minting realtime secrets).
"""
from __future__ import annotations

import enum
import re

_ID = r"[^/]+"


class Kind(enum.Enum):
    GENERATES = "generates"
    JOB = "job"
    UNMETERED = "unmetered"
    FREE = "free"


# (method, path pattern, kind), first match wins. Anything not listed is FREE.
TABLE: tuple[tuple[str, re.Pattern[str], Kind], ...] = tuple(
    (method, re.compile(f"^{pattern}$"), kind) for method, pattern, kind in (
        ("POST", r"/v1/responses", Kind.GENERATES),  # a background one becomes a JOB (see kind_of)
        ("POST", r"/v1/responses/compact", Kind.GENERATES),
        ("POST", r"/v1/chat/completions", Kind.GENERATES),
        ("POST", r"/v1/completions", Kind.GENERATES),
        ("POST", r"/v1/embeddings", Kind.GENERATES),
        ("POST", r"/v1/images/(generations|edits|variations)", Kind.GENERATES),
        ("POST", r"/v1/audio/(speech|transcriptions|translations)", Kind.GENERATES),
        ("POST", r"/v1/videos", Kind.JOB),
        ("POST", rf"/v1/videos/{_ID}/remix", Kind.JOB),
        ("POST", r"/v1/videos/(edits|extensions)", Kind.JOB),
        ("POST", r"/v1/batches", Kind.JOB),
        # Assistants runs generate on upstream after the call, and the relay does not follow
        # them; a ChatKit session's workflow runs between the client and OpenAI.
        ("POST", r"/v1/threads/runs", Kind.UNMETERED),
        ("POST", rf"/v1/threads/{_ID}/runs", Kind.UNMETERED),
        ("POST", rf"/v1/threads/{_ID}/runs/{_ID}/submit_tool_outputs", Kind.UNMETERED),
        ("POST", r"/v1/chatkit/sessions", Kind.UNMETERED),
        ("POST", rf"/v1/realtime/calls/{_ID}/accept", Kind.UNMETERED),  # starts a billed SIP session
        ("POST", r"/v1/fine_tuning/jobs", Kind.UNMETERED),
        ("POST", r"/v1/fine_tuning/alpha/graders/run", Kind.UNMETERED),  # model graders bill tokens
        ("POST", rf"/v1/evals/{_ID}/runs", Kind.UNMETERED),
        ("POST", r"/v1/containers", Kind.UNMETERED),
    )
)


def kind_of(method: str, path: str) -> Kind:
    """The operation's kind from its method and decoded path alone."""
    method = method.upper()
    if method == "WS":
        # A WebSocket session's response row (websocket.py): one upstream response, which
        # generates. The session row itself is a GET and stays free.
        return Kind.GENERATES
    for m, pattern, kind in TABLE:
        if m == method and pattern.match(path):
            return kind
    return Kind.FREE


def generates(method: str, path: str) -> bool:
    """Whether the call itself is billed from the usage in its response."""
    return kind_of(method, path) is Kind.GENERATES


def billed_on_call(method: str, path: str) -> bool:
    """Whether OpenAI bills the call itself: from its usage, or unmeasurably (`unknown`)."""
    return kind_of(method, path) in (Kind.GENERATES, Kind.UNMETERED)
