"""What the two HTTP services (the collector and the personalization API) share.

:class:`BodyLimit`
    An ASGI middleware that refuses a request body over a configured size with **413**, on every
    endpoint, before the application sees any of it: at once when ``Content-Length`` says so,
    else while the body streams in (chunked transfer), stopping after ``limit + 1`` bytes instead
    of reading the rest. Bodies within the limit are handed to the application unchanged.

:func:`install_openapi`
    The services parse their bodies themselves (one parse, their own error messages), so FastAPI
    cannot see the request models. Each route declares its body and its answers with
    :func:`json_body` and :func:`responses`, which point at ``#/components/schemas/<Model>``;
    :func:`install_openapi` adds those models' JSON Schemas (derived from the pydantic models,
    never restated) to the document, so a schema-driven client or fuzzer can build the bodies.

Everything here is plain ASGI and pydantic (no FastAPI import), so it is part of the core.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

import orjson
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COMPONENTS = "#/components/schemas/"


# ----------------------------------------------------------------------------------------
# Body size


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 ``{"error": ...}`` (see the module).

    ``key`` names the configuration key of the limit and ``fix`` tells the client what to do;
    both go into the message. ``on_refused(path, status)`` is called for every refusal (the
    services count them in their request metrics).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        key: str,
        fix: str,
        on_refused: Callable[[str, int], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.key = key
        self.fix = fix
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            length = int(declared) if declared.isascii() and declared.isdigit() else None
            if length is None:
                await self._refuse(
                    scope,
                    send,
                    400,
                    f"invalid Content-Length header {declared!r}: send the body's size in bytes",
                )
                return
            if length > limit:
                await self._refuse(
                    scope,
                    send,
                    413,
                    f"body of {length} bytes is over the limit of {limit} bytes ({self.key}): "
                    f"{self.fix}",
                )
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(
                    scope,
                    send,
                    413,
                    f"body is over the limit of {limit} bytes ({self.key}): {self.fix}",
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send, status: int, message: str) -> None:
        if self.on_refused is not None:
            self.on_refused(str(scope.get("path", "")), status)
        body = orjson.dumps({"error": message})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                # No "Connection: close": closing with unread bytes in the socket makes the
                # kernel reset the connection, and the client may then see the reset instead
                # of this answer. The server discards what the client still sends; the
                # application never sees it.
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


# ----------------------------------------------------------------------------------------
# OpenAPI


class FieldError(BaseModel):
    """One reason a request or an event was refused."""

    field: str = Field(description="Dotted path of the field, e.g. items.0.item_id.")
    message: str = Field(description="What is wrong and what to send instead.")


class ErrorBody(BaseModel):
    """Every error answer: ``error`` says what went wrong and how to fix it."""

    error: str
    errors: list[FieldError] | None = Field(
        None, description="With 422: one entry per invalid field."
    )
    retry_after_s: int | None = Field(
        None, description="With 429 and 503: seconds to wait (also in Retry-After)."
    )
    applied: bool | None = Field(
        None, description="With a 503 of POST /v1/feedback: the feedback is applied already."
    )


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body is not valid JSON (or not the expected JSON value).",
    401: "Missing or unknown key.",
    403: "The key is valid but its scope does not allow this endpoint (write, read and admin "
    "keys each open their own endpoints).",
    404: "Unknown resource.",
    413: "The body is over the configured size limit.",
    422: "A field is invalid; `errors` names each one.",
    429: "Over the key's rate limit; retry after Retry-After seconds.",
    500: "Internal error; the service log has the details.",
    503: "A backing service (Kafka, Redis) is unreachable; retry after Retry-After seconds.",
}


def ref(model: type[BaseModel] | str) -> dict[str, str]:
    """``{"$ref": "#/components/schemas/<Model>"}``."""
    return {"$ref": COMPONENTS + (model if isinstance(model, str) else model.__name__)}


def json_body(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    """A route's ``openapi_extra`` declaring its (required) JSON request body."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": dict(schema)}},
        }
    }


def responses(
    statuses: Iterable[int], overrides: Mapping[int, Mapping[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses``: each status with :class:`ErrorBody` (or the schema given in
    ``overrides``, as ``{"description": ..., "schema": ...}``).

    Every status gets a description: the override's, else the generic one of
    :data:`ERROR_DESCRIPTIONS`. A status with neither is refused (``ValueError``) when the app
    is built, instead of FastAPI filling in the bare HTTP reason phrase ("Forbidden").
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        given = (overrides or {}).get(status, {})
        description = given.get("description") or ERROR_DESCRIPTIONS.get(status)
        if not description:
            raise ValueError(
                f"HTTP {status} has no description: add one to attune.web.ERROR_DESCRIPTIONS, "
                "or pass it in the route's overrides"
            )
        out[status] = {
            "description": description,
            "content": {"application/json": {"schema": given.get("schema", ref(ErrorBody))}},
        }
    return out


def add_components(document: dict[str, Any], models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """Add the JSON Schemas of ``models`` (and of the models they use) to ``document``'s
    ``components.schemas``, referenced as ``#/components/schemas/<Model>``."""
    pairs = [(m, "validation") for m in (ErrorBody, FieldError, *models)]
    _, defs = models_json_schema(pairs, ref_template=COMPONENTS + "{model}")  # type: ignore[arg-type]
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(defs.get("$defs", {}))
    return document


def install_openapi(app: Any, models: Iterable[type[BaseModel]]) -> None:
    """Make ``app.openapi()`` (a FastAPI app) return its document with ``models`` added."""
    default = app.openapi
    wanted = list(models)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_components(default(), wanted)
        document: dict[str, Any] = app.openapi_schema
        return document

    app.openapi = openapi
