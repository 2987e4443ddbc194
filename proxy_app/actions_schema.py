"""The OpenAPI 3.1 document a Custom GPT's Actions editor imports as it is.

Hand-written, not derived from OpenAI's 3 MB spec: the Actions editor takes
at most 30 operations and chokes on deep `$ref` graphs, so each operation
gets a small, permissive schema and the envelope (`/v1/proxy`) covers the rest.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings

OBJECT = {"type": "object", "additionalProperties": True}


def _op(op_id: str, summary: str, *, params: list[dict] | None = None,
        body: dict | None = None, required_body: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "responses": {
            "200": {"description": "OpenAI's response, passed through.",
                    "content": {"application/json": {"schema": OBJECT}}},
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
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]+$"}}


def _query(name: str, description: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _body(required: list[str], **props: dict) -> dict:
    return {"type": "object", "required": required, "additionalProperties": True, "properties": props}


STRING = {"type": "string"}
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
                       messages={"type": "array", "items": OBJECT}))},
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
                    "path": {"type": "string", "pattern": "^/v1/[A-Za-z0-9_./-]+$",
                             "description": "A relative OpenAI API path, e.g. /v1/models."},
                    "query": {"type": "object", "additionalProperties": True},
                    "body": OBJECT,
                },
            })},
        "/v1/actions/ping": {"get": {
            "operationId": "ping", "summary": "Check that the relay is reachable.", "security": [],
            "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": OBJECT}}}},
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
        "servers": [{"url": settings.RELAY_PUBLIC_URL}],
        "paths": paths(),
        "components": {
            "securitySchemes": {"RelayKey": {"type": "http", "scheme": "bearer",
                                             "description": "Your personal relay key."}},
            "schemas": {"Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "object", "properties": {
                    "message": STRING, "type": STRING,
                    "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
            }},
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
