"""The collector's HTTP layer with fakes for Kafka and Redis (the real ones: integration tests)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from attune.collector.app import create_app
from attune.config import AttuneConfig, CollectorConfig, PathsConfig
from attune.ingest.producer import KafkaUnavailable
from attune.secrets import create_write_key, ensure_admin_key, pseudonym_key

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class FakeSink:
    """Stands in for KafkaSink: remembers records, or fails like an unreachable broker."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []
        self.fail: str | None = None
        self.ready = True
        self.reachable = True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        if self.fail:
            raise KafkaUnavailable(self.fail)
        self.records.extend(records)

    def health(self) -> dict[str, Any]:
        return {"reachable": self.reachable}


class FakeConsent:
    """Stands in for ConsentStore: a dict, counting round trips."""

    def __init__(self) -> None:
        self.state: dict[str, dict[str, bool]] = {}
        self.reads: list[list[str]] = []

    async def migrate(self) -> None:
        pass

    async def read_many(self, subjects: Sequence[str]) -> dict[str, dict[str, bool]]:
        self.reads.append(list(subjects))
        return {s: dict(self.state[s]) for s in subjects if s in self.state}

    async def write_many(self, states: Mapping[str, Mapping[str, bool]]) -> None:
        for s, st in states.items():
            self.state.setdefault(s, {}).update(st)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TestClient, FakeSink, FakeConsent, str, bytes]]:
    cfg = AttuneConfig(
        paths=PathsConfig(var_dir=tmp_path / "var"),
        collector=CollectorConfig(max_batch_events=5, max_body_bytes=2048, retry_after_s=7),
    )
    key = create_write_key(cfg, "web")
    secret = pseudonym_key(cfg)
    sink, consent = FakeSink(), FakeConsent()
    app = create_app(cfg, clock=lambda: NOW, sink=sink, consent=consent)  # type: ignore[arg-type]
    with TestClient(app) as client:
        yield client, sink, consent, key, secret


def _admin(client: TestClient) -> dict[str, str]:
    """Headers with an admin key: /metrics and /openapi.json need one."""
    return {"X-Admin-Key": ensure_admin_key(client.app.state.collector.cfg, "tests")}  # type: ignore[attr-defined]


def _pseudo(secret: bytes, value: str) -> str:
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()[:32]


def _ev(event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "item_view",
        "user_id": "alice",
        "timestamp": "2024-05-01T11:00:00Z",
        "items": [{"item_id": "i1"}],
        **extra,
    }


def test_accepts_and_produces_with_bearer_or_header(setup: Any) -> None:
    client, sink, consent, key, secret = setup
    r = client.post("/v1/events", json=_ev("a"), headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    assert r.json() == {"accepted": 1, "dropped": 0, "rejected": []}
    r = client.post(
        "/v1/events", json={"batch": [_ev("b"), _ev("c")]}, headers={"X-Write-Key": key}
    )
    assert r.status_code == 200 and r.json()["accepted"] == 2
    topics = [t for t, _, _ in sink.records]
    assert topics == ["attune.events"] * 3
    assert sink.records[0][1] == _pseudo(secret, "alice").encode()
    stored = orjson.loads(sink.records[0][2])
    assert stored["received_at"] == "2024-05-01T12:00:00.000Z"
    assert stored["source"] == "web" and stored["user_id"] == _pseudo(secret, "alice")
    # One consent read per request, for the one subject of each batch.
    assert consent.reads == [[_pseudo(secret, "alice")]] * 2


def test_missing_and_unknown_key_are_401(setup: Any) -> None:
    client, sink, *_ = setup
    r = client.post("/v1/events", json=_ev("a"))
    assert r.status_code == 401
    assert "missing write key" in r.json()["error"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/events", json=_ev("a"), headers={"X-Write-Key": "wk_nope"})
    assert r.status_code == 401 and "unknown write key" in r.json()["error"]
    assert sink.records == []


def test_key_created_after_start_is_picked_up(setup: Any, tmp_path: Path) -> None:
    client, *_ = setup
    cfg = AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var"))
    import time

    time.sleep(1.1)  # the keys file is re-read at most once a second
    new_key = create_write_key(cfg, "ios")
    r = client.post("/v1/events", json=_ev("a"), headers={"X-Write-Key": new_key})
    assert r.status_code == 200


def test_body_over_limit_is_413_by_header_and_by_stream(setup: Any) -> None:
    client, sink, _, key, _ = setup
    big = b"[" + b" " * 3000 + b"]"
    r = client.post("/v1/events", content=big, headers={"X-Write-Key": key})
    assert r.status_code == 413 and "2048 bytes" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for _ in range(3):
            yield b" " * 1000

    r = client.post("/v1/events", content=chunks(), headers={"X-Write-Key": key})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]
    assert sink.records == []


def test_too_many_events_is_413_and_bad_json_400(setup: Any) -> None:
    client, _, _, key, _ = setup
    r = client.post(
        "/v1/events", json=[_ev(str(i)) for i in range(6)], headers={"X-Write-Key": key}
    )
    assert r.status_code == 413 and "6 events" in r.json()["error"]
    r = client.post("/v1/events", content=b'{"event_id": ', headers={"X-Write-Key": key})
    assert r.status_code == 400 and "line 1 column 14" in r.json()["error"]


def test_partial_batch_is_207_and_dead_letters_the_rest(setup: Any) -> None:
    client, sink, _, key, secret = setup
    batch = [_ev("good"), _ev("bad", type="rating"), {"event_id": "worse", "user_id": "bob"}]
    r = client.post("/v1/events", json=batch, headers={"X-Write-Key": key})
    assert r.status_code == 207
    body = r.json()
    assert body["accepted"] == 1
    assert [(x["index"], x["event_id"]) for x in body["rejected"]] == [(1, "bad"), (2, "worse")]
    assert body["rejected"][0]["errors"][0]["field"] == "rating"
    dead = [orjson.loads(v) for t, k, v in sink.records if t == "attune.events.dead-letter"]
    assert [d["event_id"] for d in dead] == ["bad", "worse"]
    assert dead[1]["payload"]["user_id"] == _pseudo(secret, "bob")
    assert all(k == b"web" for t, k, _ in sink.records if t == "attune.events.dead-letter")


def test_all_rejected_is_400(setup: Any) -> None:
    client, sink, _, key, _ = setup
    r = client.post("/v1/events", json=[_ev("x", type="clik")], headers={"X-Write-Key": key})
    assert r.status_code == 400
    assert r.json()["accepted"] == 0 and len(r.json()["rejected"]) == 1
    assert [t for t, _, _ in sink.records] == ["attune.events.dead-letter"]


def test_kafka_unavailable_is_503_with_retry_after(setup: Any) -> None:
    client, sink, _, key, _ = setup
    sink.fail = "Kafka at 127.0.0.1:9092 is not reachable"
    r = client.post("/v1/events", json=_ev("a"), headers={"X-Write-Key": key})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert "not reachable" in r.json()["error"] and r.json()["retry_after_s"] == 7


def test_consent_withdrawal_drops_and_is_counted(setup: Any) -> None:
    client, sink, consent, key, secret = setup
    update = _ev("c1", type="consent_update", consent={"analytics": False})
    del update["items"]
    r = client.post("/v1/events", json=update, headers={"X-Write-Key": key})
    assert r.json() == {"accepted": 1, "dropped": 0, "rejected": []}
    assert consent.state == {_pseudo(secret, "alice"): {"analytics": False}}
    r = client.post("/v1/events", json=_ev("v1"), headers={"X-Write-Key": key})
    assert r.status_code == 200 and r.json() == {"accepted": 0, "dropped": 1, "rejected": []}
    assert [orjson.loads(v)["event_id"] for _, _, v in sink.records] == ["c1"]
    metrics = client.get("/metrics", headers=_admin(client)).text
    assert (
        'attune_collector_events_total{outcome="dropped",source="web",type="item_view"} 1.0'
        in metrics
    )


def test_schema_health_and_metrics(setup: Any) -> None:
    client, _, _, key, _ = setup
    assert "rating" in client.get("/v1/schema").json()["x-event-types"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/v1/events", json=[_ev("a"), _ev("b")], headers={"X-Write-Key": key})
    client.post("/v1/events", json=_ev("c"), headers={"X-Write-Key": "wrong"})
    text = client.get("/metrics", headers=_admin(client)).text
    assert (
        'attune_collector_events_total{outcome="accepted",source="web",type="item_view"} 2.0'
        in text
    )
    assert 'attune_collector_requests_total{status="401"} 1.0' in text
    assert "attune_collector_request_seconds_count 2.0" in text


def test_not_ready_when_kafka_unreachable(setup: Any) -> None:
    client, sink, *_ = setup
    sink.ready = False
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False


def test_redis_down_is_503_too(setup: Any) -> None:
    client, sink, consent, key, _ = setup

    async def broken(subjects: Any) -> Any:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379")

    consent.read_many = broken
    r = client.post("/v1/events", json=_ev("a"), headers={"X-Write-Key": key})
    assert r.status_code == 503 and r.headers["retry-after"] == "7"
    assert "Redis (consent state) is not reachable" in r.json()["error"]
    assert sink.records == []


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
        ("9999-12-31T00:00:00Z", "9999-12-31T00:00:00.000Z"),
        (0, "1970-01-01T00:00:00.000Z"),  # epoch 0, in milliseconds
    ],
)
def test_implausible_event_time_is_400_and_never_reaches_the_events_topic(
    setup: Any, sent: Any, shown: str
) -> None:
    client, sink, _, key, _ = setup
    r = client.post("/v1/events", json=_ev("t", timestamp=sent), headers={"X-Write-Key": key})
    assert r.status_code == 400
    # NOW is 2024-05-01T12:00Z: the default window ends one day later
    assert r.json()["rejected"][0]["errors"] == [
        {
            "field": "timestamp",
            "message": f"{shown} is outside the accepted window 2000-01-01T00:00:00.000Z to "
            "2024-05-02T12:00:00.000Z (from collector.event_times.earliest to "
            "collector.event_times.max_ahead after the server received it): send the time the "
            "event happened, with its zone",
        }
    ]
    assert [t for t, _, _ in sink.records] == ["attune.events.dead-letter"]


def test_every_accepted_time_is_written_so_that_it_parses_back(setup: Any) -> None:
    from attune.events import StoredEvent

    client, sink, _, key, _ = setup
    times = ["2000-01-01T00:00:00Z", "2024-05-01T14:00:00.5+02:00", 1_714_564_800_000]
    batch = [_ev(str(i), timestamp=t) for i, t in enumerate(times)]
    r = client.post("/v1/events", json=batch, headers={"X-Write-Key": key})
    assert r.status_code == 200
    written = [orjson.loads(v)["timestamp"] for _, _, v in sink.records]
    # +02:00 is two hours ahead of UTC; 1,714,564,800,000 ms is 2024-05-01T12:00:00Z
    assert written == [
        "2000-01-01T00:00:00.000Z",
        "2024-05-01T12:00:00.500Z",
        "2024-05-01T12:00:00.000Z",
    ]
    for _, _, value in sink.records:
        StoredEvent.model_validate_json(value)


def test_loose_types_are_refused_naming_the_field(setup: Any) -> None:
    client, sink, _, key, _ = setup
    update = {**_ev("c1", type="consent_update", consent={"analytics": "yes"})}
    del update["items"]
    r = client.post("/v1/events", json=update, headers={"X-Write-Key": key})
    assert r.status_code == 400
    assert r.json()["rejected"][0]["errors"] == [
        {"field": "consent.analytics", "message": "Input should be a valid boolean, got a string"}
    ]
    r = client.post(
        "/v1/events",
        json=_ev("q", items=[{"item_id": "i1", "quantity": "2"}]),
        headers={"X-Write-Key": key},
    )
    assert r.status_code == 400
    assert r.json()["rejected"][0]["errors"][0]["field"] == "items.0.quantity"
    assert [t for t, _, _ in sink.records] == ["attune.events.dead-letter"] * 2


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/schema", "/metrics"])
def test_every_endpoint_has_the_body_limit(setup: Any, path: str) -> None:
    client, *_ = setup
    r = client.request("GET", path, content=b"x" * 3000)
    assert r.status_code == 413
    assert r.json() == {
        "error": "body of 3000 bytes is over the limit of 2048 bytes (collector.max_body_bytes): "
        "send smaller batches"
    }


def test_openapi_declares_the_body_and_every_answer(setup: Any) -> None:
    client, *_ = setup
    doc = client.get("/openapi.json", headers=_admin(client)).json()
    schemas = doc["components"]["schemas"]
    post = doc["paths"]["/v1/events"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    # one event, an array of events (at most max_batch_events = 5), or {"batch": [...]}
    event = {"$ref": "#/components/schemas/Event"}
    assert body["oneOf"][0] == event
    assert body["oneOf"][1] == {"type": "array", "items": event, "minItems": 1, "maxItems": 5}
    assert body["oneOf"][2]["required"] == ["batch"]
    assert "timestamp" in schemas["Event"]["required"]
    assert schemas["ConsentFlags"]["properties"]["analytics"]["anyOf"][0] == {"type": "boolean"}
    for status in ("400", "401", "413", "500", "503"):
        answer = post["responses"][status]["content"]["application/json"]["schema"]
        refs = [answer] if "$ref" in answer else answer["anyOf"]
        for r in refs:  # every schema an answer points at is in the document
            assert r["$ref"].removeprefix("#/components/schemas/") in schemas
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "413" in op["responses"], f"{method} {path} does not declare 413"
