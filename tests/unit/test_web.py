"""The ASGI body limit shared by the collector and the API, against a bare ASGI app."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from attune.web import BodyLimit


class Recorder:
    """A bare ASGI app that reads the whole body and answers 200 with its length."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def run(
    app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, bytes, int]:
    """(status, response body, how many chunks the app side read) of one request."""
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers or []}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), read


def test_a_streamed_body_is_cut_off_after_the_limit_not_read_to_its_end() -> None:
    inner = Recorder()
    refused: list[tuple[str, int]] = []
    app = BodyLimit(
        inner, max_bytes=2500, key="x.max", fix="send less", on_refused=lambda *a: refused.append(a)
    )
    # ten chunks of 1000 bytes: the third one makes 3000 > 2500, the other seven are never read
    status, body, read = run(app, [b"a" * 1000] * 10)
    assert (status, read) == (413, 3)
    assert orjson.loads(body) == {
        "error": "body is over the limit of 2500 bytes (x.max): send less"
    }
    assert inner.bodies == [] and refused == [("/x", 413)]


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    inner = Recorder()
    app = BodyLimit(inner, max_bytes=2500, key="x.max", fix="send less")
    status, body, read = run(app, [b"a"], [(b"content-length", b"9000")])
    assert (status, read) == (413, 0)
    assert orjson.loads(body)["error"].startswith("body of 9000 bytes is over the limit of 2500")
    status, body, read = run(app, [b"a"], [(b"content-length", b"-1")])
    assert (status, read) == (400, 0) and b"invalid Content-Length" in body


def test_a_body_within_the_limit_reaches_the_app_whole() -> None:
    inner = Recorder()
    app = BodyLimit(inner, max_bytes=2500, key="x.max", fix="send less")
    # 2500 bytes exactly, in three chunks: the limit is inclusive
    status, body, _ = run(app, [b"a" * 1000, b"b" * 1000, b"c" * 500])
    assert (status, body) == (200, b"2500")
    assert inner.bodies == [b"a" * 1000 + b"b" * 1000 + b"c" * 500]
