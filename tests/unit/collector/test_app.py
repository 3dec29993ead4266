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
from attune.secrets import create_write_key, pseudonym_key

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
    metrics = client.get("/metrics").text
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
    text = client.get("/metrics").text
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
