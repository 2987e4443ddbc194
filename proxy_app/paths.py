"""The /v1 path as the relay sees it: validated once, then used for policy,
the audit row and the upstream URL alike, so that none of them can disagree."""
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
