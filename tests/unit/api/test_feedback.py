"""``POST /v1/feedback`` with fakes for Redis, Kafka and the consent store: what it applies at
once, and which event it sends through the collector's path (the real services: integration
tests)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.requests import Request

from attune.api.app import FEEDBACK_NAMESPACE, Api, ApiError
from attune.config import AttuneConfig, PathsConfig
from attune.ingest.producer import KafkaUnavailable

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
NOW_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z: 19844 days * 86,400,000 + 12 h


class FakeSink:
    """Stands in for KafkaSink: remembers records, or fails like an unreachable broker."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []
        self.fail: str | None = None

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        if self.fail:
            raise KafkaUnavailable(self.fail)
        self.records.extend(records)

    def health(self) -> dict[str, Any]:
        return {"reachable": not self.fail}


class FakeConsent:
    """Stands in for ConsentStore: nobody has a stored state (the default consent applies)."""

    async def read_many(self, subjects: Sequence[str]) -> dict[str, dict[str, bool]]:
        return {}


class FakeStore:
    """Stands in for ApiStore: remembers the feedback written to Redis."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, list[str], int, bool]] = []

    async def write_feedback(
        self, subject: str, action: str, items: Iterable[str], event_ms: int, undo: bool
    ) -> None:
        self.writes.append((subject, action, list(items), event_ms, undo))


@pytest.fixture
def api(tmp_path: Path) -> tuple[Api, FakeSink, FakeStore]:
    cfg = AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var"))
    sink, store = FakeSink(), FakeStore()
    api = Api(cfg, sink=sink, clock=NOW.timestamp)  # type: ignore[arg-type]
    api.store = store  # type: ignore[assignment]
    api.sender.consent = FakeConsent()  # type: ignore[assignment]
    return api, sink, store


def post(api: Api, body: Mapping[str, Any]) -> dict[str, Any]:
    data = orjson.dumps(body)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": data, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/feedback", "headers": []}
    response = asyncio.run(api.feedback(Request(scope, receive)))
    assert response.status_code == 200
    return dict(orjson.loads(response.body))


def sent(sink: FakeSink) -> list[dict[str, Any]]:
    return [orjson.loads(value) for _topic, _key, value in sink.records]


def test_undo_is_sent_as_an_undo_feedback_event(api: tuple[Api, FakeSink, FakeStore]) -> None:
    app, sink, store = api
    subject = app.pseudonymize("u-42")
    body = {"user_id": "u-42", "action": "not_interested", "items": ["m1", "m2", "m1"]}
    assert post(app, body) == {
        "applied": True,
        "action": "not_interested",
        "undo": False,
        "items": ["m1", "m2"],
        "logged": True,
    }
    assert post(app, {**body, "undo": True}) == {
        "applied": True,
        "action": "not_interested",
        "undo": True,
        "items": ["m1", "m2"],
        "logged": True,
    }
    # Redis first, at once: the same items and time, once as feedback, once as its undo.
    assert store.writes == [
        (subject, "not_interested", ["m1", "m2"], NOW_MS, False),
        (subject, "not_interested", ["m1", "m2"], NOW_MS, True),
    ]
    dismissal, undo = sent(sink)
    assert dismissal["type"] == "not_interested" and "reason" not in dismissal
    # The undo: its own type, naming the undone action, same items, time and (pseudonymized)
    # user, keyed by the user like every event.
    assert undo["type"] == "undo_feedback" and undo["reason"] == "not_interested"
    assert undo["items"] == [{"item_id": "m1"}, {"item_id": "m2"}]
    assert undo["timestamp"] == dismissal["timestamp"] == "2024-05-01T12:00:00.000Z"
    assert undo["user_id"] == subject and undo["source"] == app.cfg.api.source
    assert [key for _topic, key, _value in sink.records] == [subject.encode()] * 2
    # Derived ids: uuid5 of "<subject>:<action>:<ms>:<items>", the undo's action being
    # "undo:not_interested", so the two differ.
    items = "['m1', 'm2']"
    assert dismissal["event_id"] == str(
        uuid.uuid5(FEEDBACK_NAMESPACE, f"{subject}:not_interested:{NOW_MS}:{items}")
    )
    assert undo["event_id"] == str(
        uuid.uuid5(FEEDBACK_NAMESPACE, f"{subject}:undo:not_interested:{NOW_MS}:{items}")
    )
    assert undo["event_id"] != dismissal["event_id"]


def test_a_retried_undo_has_the_same_event_id(api: tuple[Api, FakeSink, FakeStore]) -> None:
    app, sink, _ = api
    body = {
        "anonymous_id": "v-1",
        "action": "dismiss",
        "items": ["m3"],
        "undo": True,
        "timestamp": "2024-05-01T12:00:01.250Z",
        "recommendation_id": "recs:control:1",
    }
    post(app, body)
    post(app, body)
    first, again = sent(sink)
    assert first == {**again, "received_at": first["received_at"]}  # Kafka drops the repeat
    assert first["type"] == "undo_feedback" and first["reason"] == "dismiss"
    assert first["anonymous_id"] == app.pseudonymize("v-1") and "user_id" not in first
    assert first["timestamp"] == "2024-05-01T12:00:01.250Z"
    assert first["recommendation_id"] == "recs:control:1"
    # A client's own event id is kept.
    post(app, {**body, "event_id": "undo-7"})
    assert sent(sink)[2]["event_id"] == "undo-7"


def test_undo_when_kafka_is_down(api: tuple[Api, FakeSink, FakeStore]) -> None:
    app, sink, store = api
    sink.fail = "no broker"
    body = {"user_id": "u-42", "action": "dismiss", "items": ["m1"], "undo": True}
    with pytest.raises(ApiError) as info:
        post(app, body)
    # Applied in Redis all the same; the client retries (same id, see above).
    assert info.value.status == 503 and info.value.body["applied"] is True
    assert info.value.headers["Retry-After"] == str(app.cfg.collector.retry_after_s)
    assert len(store.writes) == 1 and store.writes[0][4] is True
