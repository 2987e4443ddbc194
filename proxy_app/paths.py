"""The /v1 path as the relay sees it: validated once, then used for policy,
the audit row and the upstream URL alike, so that none of them can disagree."""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from .errors import RelayError

# What may stand in a path segment once percent-decoding is done.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")
# Characters left unescaped when the path is re-encoded for upstream.
_SAFE = "/:@!$&'()*+,;=-._~"


@dataclass(frozen=True)
class ApiPath:
    path: str  # decoded, e.g. "/v1/files/file-abc/content"
    family: str

    @property
    def upstream_suffix(self) -> str:
        """The part after /v1, re-encoded: what goes after OPENAI_BASE_URL."""
        return quote(self.path[3:], safe=_SAFE)

    def starts_with(self, prefix: str) -> bool:
        prefix = prefix.rstrip("/").lower()
        lowered = self.path.lower()
        return lowered == prefix or lowered.startswith(prefix + "/")


def parse(path: str) -> ApiPath:
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
    return ApiPath(path=path, family=family_hint(path))


def family_hint(path: str) -> str:
    """The endpoint family (`responses`, `chat`, `files`, …): the first segment after /v1."""
    first = path[4:].split("/", 1)[0] if path.startswith("/v1/") else ""
    return (first or "root")[:32]
