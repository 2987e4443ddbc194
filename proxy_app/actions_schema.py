"""The OpenAPI 3.1 document a Custom GPT's Actions editor imports as it is.

Hand-written, not derived from OpenAI's 3 MB spec: the Actions editor takes
at most 30 operations and chokes on deep `$ref` graphs, so each operation
gets a small, permissive schema and the envelope (`/v1/proxy`) covers the rest.

The editor flags an object schema without `properties`, so every object here
names the fields a GPT most needs and says explicitly what else may come
(`additionalProperties`). The document validates as OpenAPI 3.1
(tests/test_actions_schema.py, with openapi-spec-validator).
"""
from __future__ import annotations

from typing import Any

from django.conf import settings

STRING = {"type": "string"}
# Any OpenAI object or list, as upstream answers it (only the fields most answers share).
RESULT = {"$ref": "#/components/schemas/Result"}
# The server's acceptance of an envelope path (proxy_app.envelope.check_path, then
# proxy_app.paths.parse), as one ECMA-262 pattern: /v1/ and segments without '?',
# '#', '\\' or control characters, no dot segments, no empty segment but a
# trailing one, no '://', and no percent-encoded '.', '/', '\\', '?', '#' or
# control character. ':' is allowed: fine-tuned model ids are made of it
# (/v1/models/ft:gpt-4o-mini:acme::abc123). tests/test_actions_schema.py checks
# that the pattern and the server agree on generated paths.
_SEGMENT = r"(?!\.\.?(?:/|$))[^/\x00-\x1f\x7f\\?#]+"
# Lookaheads scan with [\s\S], not ".", which stops at line terminators (and
# differently in ECMA-262 and Python).
ENVELOPE_PATH_PATTERN = (r"^(?![\s\S]*[\x00-\x1f\x7f])(?![\s\S]*://)"
                         r"(?![\s\S]*%(?:2[eEfF3]|5[cC]|3[fF]|[01][0-9a-fA-F]|7[fF]|[89a-fA-F][0-9a-fA-F]))"
                         rf"/v1/(?:{_SEGMENT}/)*(?:{_SEGMENT})?$")
# Scalars a query parameter may take (a list of them repeats the parameter).
_SCALAR = {"type": ["string", "number", "integer", "boolean"]}


def _op(op_id: str, summary: str, *, params: list[dict] | None = None,
        body: dict | None = None, required_body: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "responses": {
            "200": {"description": "OpenAI's response, passed through.",
                    "content": {"application/json": {"schema": RESULT}}},
            "default": {"description": "An error in OpenAI's shape.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        },
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": required_body,
                             "content": {"application/json": {"schema": body}}}
    return op


def _path_param(name: str, description: str) -> dict:
    # ':' for fine-tuned model ids; "." and ".." alone are dot segments, which the server refuses.
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": r"^(?!\.\.?$)[A-Za-z0-9_.:-]+$"}}


def _query(name: str, description: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _body(required: list[str], **props: dict) -> dict:
    return {"type": "object", "required": required, "additionalProperties": True, "properties": props}


LIST_PARAMS = [_query("limit", "How many to return (1-100).", {"type": "integer", "minimum": 1, "maximum": 100}),
               _query("after", "Cursor: the last id of the previous page.")]


def paths() -> dict[str, dict]:
    return {
        "/v1/responses": {"post": _op("createResponse", "Create a model response.",
                                      body=_body(["model", "input"], model=STRING,
                                                 input={"type": "string"}, instructions=STRING))},
        "/v1/responses/{response_id}": {
            "parameters": [_path_param("response_id", "The response id.")],
            "get": _op("getResponse", "Retrieve a model response."),
        },
        "/v1/chat/completions": {"post": _op(
            "createChatCompletion", "Create a chat completion.",
            body=_body(["model", "messages"], model=STRING,
                       messages={"type": "array", "items": {
                           "type": "object", "required": ["role", "content"], "additionalProperties": True,
                           "properties": {"role": {"type": "string",
                                                   "enum": ["developer", "system", "user", "assistant"]},
                                          "content": STRING}}}))},
        "/v1/embeddings": {"post": _op("createEmbedding", "Create embeddings.",
                                       body=_body(["model", "input"], model=STRING,
                                                  input={"type": "string"}))},
        "/v1/models": {"get": _op("listModels", "List the models available.")},
        "/v1/models/{model}": {"parameters": [_path_param("model", "The model id.")],
                               "get": _op("retrieveModel", "Describe a model.")},
        "/v1/files": {"get": _op("listFiles", "List files (metadata only).",
                                 params=[_query("purpose", "Only files with this purpose."), *LIST_PARAMS])},
        "/v1/files/{file_id}": {
            "parameters": [_path_param("file_id", "The file id.")],
            "get": _op("retrieveFile", "Describe a file (metadata only)."),
            "delete": _op("deleteFile", "Delete a file."),
        },
        "/v1/batches": {
            "get": _op("listBatches", "List batches.", params=LIST_PARAMS),
            "post": _op("createBatch", "Create a batch from an uploaded JSONL file.",
                        body=_body(["input_file_id", "endpoint", "completion_window"],
                                   input_file_id=STRING, endpoint=STRING,
                                   completion_window={"type": "string", "enum": ["24h"]})),
        },
        "/v1/batches/{batch_id}": {"parameters": [_path_param("batch_id", "The batch id.")],
                                   "get": _op("retrieveBatch", "Describe a batch.")},
        "/v1/batches/{batch_id}/cancel": {"parameters": [_path_param("batch_id", "The batch id.")],
                                          "post": _op("cancelBatch", "Cancel a batch.")},
        "/v1/vector_stores": {
            "get": _op("listVectorStores", "List vector stores.", params=LIST_PARAMS),
            "post": _op("createVectorStore", "Create a vector store.",
                        body=_body([], name=STRING, file_ids={"type": "array", "items": STRING})),
        },
        "/v1/vector_stores/{vector_store_id}": {
            "parameters": [_path_param("vector_store_id", "The vector store id.")],
            "get": _op("retrieveVectorStore", "Describe a vector store."),
        },
        "/v1/vector_stores/{vector_store_id}/search": {
            "parameters": [_path_param("vector_store_id", "The vector store id.")],
            "post": _op("searchVectorStore", "Search a vector store.", body=_body(["query"], query=STRING)),
        },
        "/v1/vector_stores/{vector_store_id}/files": {
            "parameters": [_path_param("vector_store_id", "The vector store id.")],
            "get": _op("listVectorStoreFiles", "List the files in a vector store.", params=LIST_PARAMS),
        },
        "/v1/proxy": {"post": _op(
            "proxyRequest",
            "Call any other OpenAI API path through the relay (no streaming).",
            body={
                "type": "object", "required": ["method", "path"], "additionalProperties": False,
                "properties": {
                    "method": {"type": "string", "enum": ["GET", "POST", "DELETE", "PUT", "PATCH"]},
                    "path": {"type": "string", "pattern": ENVELOPE_PATH_PATTERN,
                             "description": "A relative OpenAI API path, e.g. /v1/models or "
                                            "/v1/models/ft:gpt-4o-mini:acme::abc123; query parameters "
                                            "go in 'query'."},
                    "query": {"type": "object", "description": "Query parameters by name.",
                              "properties": {"limit": {"type": "integer"}, "after": STRING,
                                             "order": {"type": "string", "enum": ["asc", "desc"]}},
                              "additionalProperties": {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]}},
                    "body": {"type": "object", "description": "The JSON body, for POST, PUT and PATCH.",
                             "properties": {"model": STRING}, "additionalProperties": True},
                },
            })},
        "/v1/actions/ping": {"get": {
            "operationId": "ping", "summary": "Check that the relay is reachable.", "security": [],
            "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {
                "type": "object", "required": ["status"], "additionalProperties": False,
                "properties": {"status": {"type": "string", "enum": ["ok"]}}}}}}},
        }},
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Team Relay",
            "version": settings.VERSION,
            "description": "The team's OpenAI API, through the relay: every call is audited and "
                           "counted against your key's scope and budget.",
        },
        # Must be a public https address for Custom GPT Actions: proxy_app.checks warns otherwise.
        "servers": [{"url": settings.RELAY_PUBLIC_URL.rstrip("/")}],
        "paths": paths(),
        "components": {
            "securitySchemes": {"RelayKey": {"type": "http", "scheme": "bearer",
                                             "description": "Your personal relay key."}},
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"], "additionalProperties": True,
                    "properties": {"error": {
                        "type": "object", "required": ["message", "type"],
                        "additionalProperties": True,
                        "properties": {"message": STRING, "type": STRING,
                                       "param": {"type": ["string", "null"]},
                                       "code": {"type": ["string", "null"]}}}},
                },
                "Result": {
                    "type": "object", "additionalProperties": True,
                    "description": "An OpenAI object (its id and type in 'object') or a list of them in 'data'.",
                    "properties": {
                        "id": STRING, "object": STRING,
                        "data": {"type": "array", "items": {
                            "type": "object", "additionalProperties": True,
                            "properties": {"id": STRING, "object": STRING}}},
                        "has_more": {"type": "boolean"},
                    },
                },
            },
        },
        "security": [{"RelayKey": []}],
    }


def plugin_manifest() -> dict[str, Any]:
    return {
        "schema_version": "v1",
        "name_for_human": "Team Relay",
        "name_for_model": "team_relay",
        "description_for_human": "The team's OpenAI API, audited.",
        "description_for_model": "Call the OpenAI API through the team's relay. Use proxyRequest for "
                                 "paths without an operation of their own.",
        "auth": {"type": "user_http", "authorization_type": "bearer"},
        "api": {"type": "openapi", "url": f"{settings.RELAY_PUBLIC_URL.rstrip('/')}/openapi.json"},
        "logo_url": f"{settings.RELAY_PUBLIC_URL.rstrip('/')}/static/relay-logo.png",
        "contact_email": settings.RELAY_CONTACT_EMAIL,
        "legal_info_url": f"{settings.RELAY_PUBLIC_URL.rstrip('/')}/",
    }
