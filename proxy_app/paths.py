"""The /v1 path as the relay sees it: validated once, then used for policy,
the audit row and the upstream URL alike, so that none of them can disagree;
and which of those paths take a model."""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from .errors import RelayError

# What may stand in a path segment once percent-decoding is done.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")
# Characters left unescaped when the path is re-encoded for upstream.
_SAFE = "/:@!$&'()*+,;=-._~"


@dataclass(frozen=True)
class ApiPath:
    path: str  # decoded, e.g. "/v1/files/file-abc/content"
    family: str
    # Set when a segment holds an encoded slash: the suffix as it must go upstream.
    encoded_suffix: str | None = None

    @property
    def upstream_suffix(self) -> str:
        """The part after /v1, re-encoded: what goes after OPENAI_BASE_URL.

        An encoded slash (`%2F`) stays encoded: decoded and re-encoded it would
        become a real `/`, another path upstream than the one checked here.
        """
        if self.encoded_suffix is not None:
            return self.encoded_suffix
        return quote(self.path[3:], safe=_SAFE)

    def starts_with(self, prefix: str) -> bool:
        prefix = prefix.rstrip("/").lower()
        lowered = self.path.lower()
        return lowered == prefix or lowered.startswith(prefix + "/")


def raw_path(request) -> str | None:
    """The path as the client sent it, still percent-encoded, when the server kept it
    (gunicorn's RAW_URI); None otherwise."""
    raw = request.META.get("RAW_URI") or ""
    if not raw:
        return None
    if "://" in raw.split("?", 1)[0]:  # absolute-form request target
        raw = "/" + raw.split("://", 1)[1].partition("/")[2]
    return raw.split("?", 1)[0].split("#", 1)[0]


def parse(path: str, raw: str | None = None) -> ApiPath:
    """Reject paths that could mean something else upstream than they seem to here.

    Dot segments would be collapsed by the HTTP client after policy has looked
    at the path, so `/v1/models/../fine_tuning` must never get that far.
    """
    if not (path == "/v1" or path.startswith("/v1/")):
        raise RelayError("Only /v1 paths are relayed.", code="invalid_path", status=404)
    if _FORBIDDEN.search(path):
        raise RelayError("The path contains characters that are not allowed.", code="invalid_path")
    segments = path[4:].split("/") if len(path) > 4 else []
    if any(seg in (".", "..") for seg in segments) or "" in segments[:-1]:
        raise RelayError("The path contains empty or dot segments.", code="invalid_path")
    if len(path) > 4 and path.endswith("/"):
        # One spelling per endpoint: every rule here (scopes, budgets, what is billed) names
        # `/v1/videos`, and `/v1/videos/` went past all of them.
        path = path[:-1]
        raw = raw[:-1] if raw and raw.endswith("/") else raw
    encoded = None
    if raw and "%2f" in raw.lower():
        raw_segments = raw.split("/")
        try:
            decoded = [unquote(seg, errors="strict") for seg in raw_segments]
        except UnicodeDecodeError:
            raise RelayError("The path is not UTF-8 once percent-decoded.", code="invalid_path") from None
        if "/".join(decoded) != path or raw_segments[:2] != ["", "v1"]:
            raise RelayError("The path could not be read the same way twice.", code="invalid_path")
        encoded = "/" + "/".join(quote(seg, safe=_SAFE.replace("/", "")) for seg in decoded[2:])
        encoded = encoded if len(decoded) > 2 else ""
    return ApiPath(path=path, family=family_hint(path), encoded_suffix=encoded)


def family_hint(path: str) -> str:
    """The endpoint family (`responses`, `chat`, `files`, …): the first segment after /v1."""
    first = path[4:].split("/", 1)[0] if path.startswith("/v1/") else ""
    return (first or "root")[:32]


# --- endpoints that take a model ----------------------------------------------------
#
# The POST endpoints whose body names a model, vendored from OpenAI's OpenAPI
# spec (every operation whose request body has a `model` property).
#
# A key with a model scope must name an allowed model on each of them: where
# the field is optional upstream picks a default (dall-e-2 for images,
# omni-moderation for moderations, the assistant's model for runs, the stored
# prompt's for responses), and the relay cannot check a model it does not see.
# The one exception is updating an assistant, where leaving `model` out
# changes nothing.
#
# /v1/fine_tuning is here for completeness; it is blocked by default.


_SEGMENT = r"[^/]+"

# path (with {placeholders}), whether a scoped key may leave the model out
_ENDPOINTS: tuple[tuple[str, bool], ...] = (
    ("/v1/assistants", False),
    ("/v1/assistants/{assistant_id}", True),
    ("/v1/audio/speech", False),
    ("/v1/audio/transcriptions", False),
    ("/v1/audio/translations", False),
    ("/v1/chat/completions", False),
    ("/v1/completions", False),
    ("/v1/embeddings", False),
    ("/v1/fine_tuning/jobs", False),
    ("/v1/images/edits", False),
    ("/v1/images/generations", False),
    ("/v1/images/variations", False),
    ("/v1/moderations", False),
    ("/v1/realtime/calls/{call_id}/accept", False),
    ("/v1/responses", False),
    ("/v1/responses/input_tokens", False),
    ("/v1/responses/compact", False),
    ("/v1/threads/runs", False),
    ("/v1/threads/{thread_id}/runs", False),
    ("/v1/videos", False),
)


def _template(path: str) -> re.Pattern[str]:
    """A spec path template (`/v1/videos/{video_id}/remix`) as a pattern matching its paths."""
    return re.compile(re.sub(r"\{[^}]+\}", _SEGMENT, path) + r"/?\Z", re.IGNORECASE)


_PATTERNS = [(_template(path), optional) for path, optional in _ENDPOINTS]


# POST endpoints that generate with a model their request does not name: a remix, an
# edit or an extension runs on its source video's model, a ChatKit session on its
# workflow's, a run's tool outputs on the run's. A key with a model scope cannot use them:
# the relay cannot check the model.
_IMPLICIT = tuple(_template(path) for path in (
    "/v1/videos/{video_id}/remix", "/v1/videos/edits", "/v1/videos/extensions", "/v1/chatkit/sessions",
    "/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs",
))


def model_field(path: str, method: str) -> str | None:
    """'required' or 'optional' when a POST to `path` names a model, 'implicit' when it
    generates on a model it does not name; None otherwise."""
    if method != "POST":
        return None
    for pattern, optional in _PATTERNS:
        if pattern.match(path):
            return "optional" if optional else "required"
    if any(pattern.match(path) for pattern in _IMPLICIT):
        return "implicit"
    return None
