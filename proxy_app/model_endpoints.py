"""The POST endpoints whose body names a model, vendored from OpenAI's OpenAPI
spec (every operation whose request body has a `model` property).

A key with a model scope must name an allowed model on each of them: where
the field is optional upstream picks a default (dall-e-2 for images,
omni-moderation for moderations, the assistant's model for runs, the stored
prompt's for responses), and the relay cannot check a model it does not see.
The one exception is updating an assistant, where leaving `model` out
changes nothing.

/v1/fine_tuning is here for completeness; it is blocked by default.
"""
from __future__ import annotations

import re

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
_PATTERNS = [(re.compile(re.sub(r"\{[^}]+\}", _SEGMENT, path) + r"/?\Z", re.IGNORECASE), optional)
             for path, optional in _ENDPOINTS]


def model_field(path: str, method: str) -> str | None:
    """'required' or 'optional' when a POST to `path` names a model; None otherwise."""
    if method != "POST":
        return None
    for pattern, optional in _PATTERNS:
        if pattern.match(path):
            return "optional" if optional else "required"
    return None
