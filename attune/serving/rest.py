"""TF Serving's REST API (port 8501 by default), as a small ASGI app served by uvicorn.

Routes, exactly as TF Serving parses them (case-insensitive, model names and labels
URL-decoded):

``GET  /v1/models/{name}[/versions/{v} | /labels/{l}]``            model status
``GET  /v1/models/{name}[/versions/{v} | /labels/{l}]/metadata``   signature definitions
``POST /v1/models/{name}[/versions/{v} | /labels/{l}]:predict``    row or columnar predict
``GET  /monitoring/prometheus/metrics`` and ``/metrics``            Prometheus metrics

Every error is ``{"error": "<message>"}`` with the HTTP status TF Serving maps the canonical code
to (404 for an unknown model or version, 400 for bad input or an unknown label or signature,
...). A path that matches no route under ``/v1/`` is a malformed request (400), as in TF Serving;
``:classify`` and ``:regress`` are recognised but not implemented here (501).

The request work (JSON decoding, the model call, JSON encoding) runs on a thread pool; the event
loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import orjson

from attune.serving.core import ServingCore
from attune.serving.errors import Code, ServingError, invalid_argument
from attune.serving.servable import Servable
from attune.serving.tensors import (
    SignatureInfo,
    decode_predict_request,
    encode_predict_response,
    error_body,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)"
)
STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?"
)
API_PATH = re.compile(r"(?i)/v1/.*")
METRICS_PATHS = ("/monitoring/prometheus/metrics", "/metrics")
MAX_INT64 = 2**63 - 1
JSON_HEADERS = [(b"content-type", b"application/json")]


def _version(text: str | None) -> int | None:
    if not text:
        return None
    value = int(text)
    if value > MAX_INT64:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return value


class RestApp:
    """The ASGI application of the REST API."""

    def __init__(self, core: ServingCore, executor: ThreadPoolExecutor) -> None:
        self.core = core
        self.executor = executor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        if method == "GET" and path in METRICS_PATHS:
            await self._send(
                send,
                200,
                self.core.metrics.render(),
                [(b"content-type", b"text/plain; version=0.0.4")],
            )
            return
        body = await _read_body(receive)
        if not API_PATH.fullmatch(path):
            await self._send(
                send,
                404,
                error_body(f"Not found: {method} {path} (the API is under /v1/models)"),
                JSON_HEADERS,
            )
            return
        loop = asyncio.get_running_loop()
        status, payload = await loop.run_in_executor(self.executor, self.handle, method, path, body)
        await self._send(send, status, payload, JSON_HEADERS)

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _send(
        send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # the request work, on a worker thread -------------------------------------------------
    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        started = time.perf_counter()
        kind, model, servable, signature = "status", "", None, ""
        resolved: list[Servable] = []
        try:
            if method == "POST" and (m := PREDICT_PATH.fullmatch(path)):
                kind, model = "predict", unquote(m.group(1))
                version, label = _version(m.group(2)), _label(m.group(3))
                verb = m.group(4).lower()
                if verb != "predict":
                    raise ServingError(
                        Code.UNIMPLEMENTED,
                        f"{verb} is not supported by this server; use :predict with the "
                        "model's signature",
                    )

                def signature_for(name: str) -> SignatureInfo:
                    # looked up after the body parsed, as TF Serving does
                    servable_ = self.core.resolve(model, version, label)
                    resolved.append(servable_)
                    return servable_.signature(name)

                request = decode_predict_request(body, signature_for)
                servable = resolved[0]
                prediction = self.core.predict(servable, request.signature_name, request.inputs)
                signature = prediction.signature
                payload = encode_predict_response(prediction.outputs, request.format)
            elif method == "GET" and (m := STATUS_PATH.fullmatch(path)):
                model = unquote(m.group(1) or "")
                version, label = _version(m.group(2)), _label(m.group(3))
                if not model:
                    raise invalid_argument("Missing model name in request.")
                if (m.group(4) or "").lower() == "metadata":
                    kind = "metadata"
                    servable = self.core.resolve(model, version, label)
                    payload = orjson.dumps(self.core.metadata_json(servable))
                else:
                    payload = orjson.dumps(self.core.status_json(model, version, label))
            else:
                raise invalid_argument(f"Malformed request: {method} {path}")
            status, code = 200, "OK"
        except ServingError as exc:
            status, code, payload = exc.http_status, exc.code.name, error_body(exc.message)
            servable = servable or (resolved[0] if resolved else None)
        except Exception as exc:
            log.exception("REST %s %s failed", method, path)
            status, code = 500, Code.INTERNAL.name
            payload = error_body(f"internal error: {type(exc).__name__}: {exc}")
        self.core.metrics.observe(
            "rest",
            kind,
            self.core.model_label(model),
            servable.version if servable is not None else None,
            signature,
            code,
            time.perf_counter() - started,
        )
        return status, payload


def _label(text: str | None) -> str | None:
    return unquote(text) if text else None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
