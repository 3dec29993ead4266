"""The collector against the real thing: a running `attune serve collector`, Kafka and Redis.

Every test module gets its own topics (uuid suffix), Redis db, var dir (keys) and port, so it
never sees the demo's data. Expected Kafka bytes are written out by hand; the pseudonyms in
them are computed here with ``hmac`` from the key this test wrote, not by attune.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from attune.client import Tracker
from attune.collector.process import collector_process
from attune.config import AttuneConfig, free_port, isolated_config
from attune.events_cli import read_topic
from attune.ingest.consent import ConsentStore, cmd_migrate_keys
from attune.keys import Keys
from attune.secrets import create_write_key, ensure_admin_key
from tests.integration.speed_layer.helpers import delete_topics

pytestmark = pytest.mark.integration

REDIS_DB = 13  # this module's Redis db (the stack's default is 0)
RUN = uuid.uuid4().hex[:8]


class Env:
    def __init__(self, cfg: AttuneConfig, url: str, key: str, secret: bytes) -> None:
        self.cfg, self.url, self.key, self.secret = cfg, url, key, secret

    def pseudo(self, value: str) -> str:
        return hmac.new(self.secret, value.encode(), hashlib.sha256).hexdigest()[:32]

    def post(self, body: Any, key: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"X-Write-Key": key or self.key, **kwargs.pop("headers", {})}
        if not isinstance(body, dict | list):  # bytes, or an iterator of chunks
            return httpx.post(f"{self.url}/v1/events", content=body, headers=headers, **kwargs)
        return httpx.post(f"{self.url}/v1/events", json=body, headers=headers, **kwargs)

    def records(self, role: str) -> list[Any]:
        return list(read_topic(self.cfg, self.cfg.kafka.topic(role).name, timeout_s=30))


def _write_secret(cfg: AttuneConfig) -> bytes:
    path = cfg.paths.resolve(cfg.privacy.pseudonym_key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    path.write_bytes(secret)
    os.chmod(path, 0o600)
    return secret


@pytest.fixture(scope="module")
def env(cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from attune.stack import create_topics

    var = tmp_path_factory.mktemp("collector-var")
    test_cfg = isolated_config(
        cfg,
        suffix=f"test-collector-{RUN}",
        var_dir=var,
        redis_db=REDIS_DB,
        max_body_bytes=64 * 1024,
        max_batch_events=50,
        retry_after_s=2,
    )
    secret = _write_secret(test_cfg)
    key = create_write_key(test_cfg, "it-web")
    create_topics(test_cfg)
    _write_older_consent(test_cfg, secret)
    try:
        with collector_process(test_cfg) as url:
            yield Env(test_cfg, url, key, secret)
    finally:
        delete_topics(test_cfg)


def _write_older_consent(cfg: AttuneConfig, secret: bytes) -> None:
    """Consent as an older collector stored it (``consent:<subject>``), before this module's
    collector starts: dave's says no analytics; erin's too, but she has a newer state under the
    current name (analytics allowed)."""
    p = cfg.speed.online_store.key_prefix
    client = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=REDIS_DB)
    try:
        dave, erin = (
            hmac.new(secret, f"{name}-{RUN}".encode(), hashlib.sha256).hexdigest()[:32]
            for name in ("dave", "erin")
        )
        client.set(f"consent:{dave}", b'{"analytics":false}')
        client.set(f"consent:{erin}", b'{"analytics":false}')
        client.set(f"{p}:u:{{{erin}}}:consent", b'{"analytics":true}')
    finally:
        client.close()


def _event(event_id: str, user: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "item_view",
        "user_id": user,
        "timestamp": "2013-02-28T14:38:27Z",
        "items": [{"item_id": "0114369"}],
        **extra,
    }


def _admin(cfg: AttuneConfig) -> dict[str, str]:
    """/metrics needs an admin key (collector.metrics_requires_admin)."""
    return {"X-Admin-Key": ensure_admin_key(cfg, "it")}


def _utc_ms(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def test_event_lands_byte_for_byte(env: Env) -> None:
    eid = f"bytes-{RUN}"
    user = f"alice-{RUN}"
    before = datetime.now(UTC).replace(microsecond=0)
    r = env.post(
        {
            "event_id": eid,
            "type": "rating",
            "user_id": user,
            "timestamp": "2013-02-28T16:38:27.5+02:00",
            "items": [{"item_id": "0114369", "position": 1}],
            "rating": 9,
            "context": {"device": "tv"},
        }
    )
    after = datetime.now(UTC)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "dropped": 0, "rejected": []}
    (record,) = [x for x in env.records("events") if f'"event_id":"{eid}"'.encode() in x.value]
    uid = env.pseudo(user)
    received = orjson.loads(record.value)["received_at"]
    assert before <= _utc_ms(received) <= after
    # By hand: keys sorted, nulls left out, +02:00 moved to UTC, rating 9 -> 9.0, the default
    # consent of the config, schema_version 1, the source of the write key.
    expected = (
        '{"consent":{"analytics":true,"marketing":false,"personalization":true},'
        '"context":{"device":"tv"},'
        f'"event_id":"{eid}",'
        '"items":[{"item_id":"0114369","position":1}],"rating":9.0,'
        f'"received_at":"{received}","schema_version":1,"source":"it-web",'
        '"timestamp":"2013-02-28T14:38:27.500Z","type":"rating",'
        f'"user_id":"{uid}"}}'
    ).encode()
    assert record.value == expected
    assert record.key == uid.encode()
    assert user.encode() not in record.value


def test_invalid_events_are_dead_lettered_valid_ones_land(env: Env) -> None:
    ok1, ok2 = f"ok1-{RUN}", f"ok2-{RUN}"
    batch = [
        _event(ok1, f"dan-{RUN}"),
        _event(f"bad-type-{RUN}", f"bob-{RUN}", type="clik"),
        _event(ok2, f"dan-{RUN}"),
        _event(f"bad-rating-{RUN}", f"bob-{RUN}", type="rating"),
    ]
    r = env.post(batch)
    assert r.status_code == 207, r.text
    body = r.json()
    assert body["accepted"] == 2
    assert [(x["index"], x["errors"][0]["field"]) for x in body["rejected"]] == [
        (1, "type"),
        (3, "rating"),
    ]
    landed = {orjson.loads(x.value)["event_id"] for x in env.records("events")}
    assert {ok1, ok2} <= landed
    assert f"bad-type-{RUN}" not in landed
    dead = [orjson.loads(x.value) for x in env.records("dead_letter")]
    mine = {d["event_id"]: d for d in dead if d["event_id"].endswith(RUN)}
    assert set(mine) == {f"bad-type-{RUN}", f"bad-rating-{RUN}"}
    bad = mine[f"bad-type-{RUN}"]
    assert bad["source"] == "it-web" and bad["index"] == 1
    assert bad["errors"][0]["message"].startswith("unknown event type 'clik'")
    assert bad["payload"]["user_id"] == env.pseudo(f"bob-{RUN}")
    assert f"bob-{RUN}" not in str(dead)


def test_wrong_or_missing_key_is_401(env: Env) -> None:
    r = env.post(_event(f"k-{RUN}", "x"), key="wk_not-a-key")
    assert r.status_code == 401 and "unknown write key" in r.json()["error"]
    r = httpx.post(f"{env.url}/v1/events", json=_event(f"k-{RUN}", "x"))
    assert r.status_code == 401 and "missing write key" in r.json()["error"]


def test_size_limits_are_413(env: Env) -> None:
    # 64 KiB is this collector's max_body_bytes; 80,000 bytes is over it.
    r = env.post(b"[" + b" " * 80_000 + b"]")
    assert r.status_code == 413 and "80002 bytes" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is checked
        for _ in range(20):
            yield b" " * 5000

    r = env.post(chunks())
    assert r.status_code == 413
    r = env.post([_event(f"many-{i}", "x") for i in range(51)])
    assert r.status_code == 413 and "51 events" in r.json()["error"]
    r = env.post(b'{"event_id": "x",')
    assert r.status_code == 400 and "line 1 column 18" in r.json()["error"]


def test_consent_withdrawal_drops_later_behaviour(env: Env) -> None:
    user = f"carol-{RUN}"
    update = {
        "event_id": f"consent-{RUN}",
        "type": "consent_update",
        "user_id": user,
        "timestamp": "2024-05-01T12:00:00Z",
        "consent": {"analytics": False},
    }
    assert env.post(update).json() == {"accepted": 1, "dropped": 0, "rejected": []}
    r = env.post(_event(f"after-consent-{RUN}", user))
    assert r.status_code == 200 and r.json() == {"accepted": 0, "dropped": 1, "rejected": []}
    client = redis.Redis(host=env.cfg.redis.host, port=env.cfg.redis.port, db=REDIS_DB)
    key = f"{env.cfg.speed.online_store.key_prefix}:u:{{{env.pseudo(user)}}}:consent"
    try:
        assert client.get(key) == b'{"analytics":false}'
    finally:
        client.delete(key)
        client.close()
    landed = {orjson.loads(x.value)["event_id"] for x in env.records("events")}
    assert f"consent-{RUN}" in landed and f"after-consent-{RUN}" not in landed
    metrics = httpx.get(f"{env.url}/metrics", headers=_admin(env.cfg)).text
    assert (
        'attune_collector_events_total{outcome="dropped",source="it-web",type="item_view"} 1.0'
        in (metrics)
    )


def test_consent_an_older_version_stored_is_moved_when_the_collector_starts(env: Env) -> None:
    p = env.cfg.speed.online_store.key_prefix
    dave, erin = env.pseudo(f"dave-{RUN}"), env.pseudo(f"erin-{RUN}")
    # dave's old state (no analytics) still holds: his event is dropped
    r = env.post(_event(f"dave-1-{RUN}", f"dave-{RUN}"))
    assert r.json() == {"accepted": 0, "dropped": 1, "rejected": []}
    # erin's state under the current name is the newer one (analytics allowed): accepted
    r = env.post(_event(f"erin-1-{RUN}", f"erin-{RUN}"))
    assert r.json() == {"accepted": 1, "dropped": 0, "rejected": []}
    client = redis.Redis(host=env.cfg.redis.host, port=env.cfg.redis.port, db=REDIS_DB)
    try:
        assert client.get(f"{p}:u:{{{dave}}}:consent") == b'{"analytics":false}'
        assert client.get(f"{p}:u:{{{erin}}}:consent") == b'{"analytics":true}'
        assert client.exists(f"consent:{dave}", f"consent:{erin}") == 0
    finally:
        client.delete(f"{p}:u:{{{dave}}}:consent", f"{p}:u:{{{erin}}}:consent")
        client.close()


def test_migrate_keys_command_moves_older_consent_keys_once(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    p = env.cfg.speed.online_store.key_prefix
    a, b, c, d = (f"mig-{x}-{RUN}" for x in "abcd")
    client = redis.Redis(host=env.cfg.redis.host, port=env.cfg.redis.port, db=REDIS_DB)
    try:
        client.set(f"consent:{a}", b'{"marketing":false}')  # moved
        client.set(f"consent:{b}", b'{"analytics":false}', ex=3600)  # moved, with its TTL
        client.set(f"consent:{c}", b'{"analytics":false}')  # superseded by the newer state:
        client.set(f"{p}:u:{{{c}}}:consent", b'{"analytics":true}')
        client.hset(f"consent:{d}", "not", "ours")  # not a string: left alone
        client.zadd(f"{p}:popular", {"m1": 2})  # an aggregate of an earlier version

        assert cmd_migrate_keys(env.cfg, argparse.Namespace()) == 0
        out = capsys.readouterr().out
        assert "aggregates: 1 key(s) moved" in out
        assert client.zscore(f"{p}:{{agg}}:popular", "m1") == 2.0
        assert f"2 key(s) moved from consent:<subject> to {p}:u:{{<subject>}}:consent" in out
        assert "1 old key(s) deleted because the new one held newer state" in out
        assert "1 left alone" in out
        assert client.get(f"{p}:u:{{{a}}}:consent") == b'{"marketing":false}'
        assert client.get(f"{p}:u:{{{b}}}:consent") == b'{"analytics":false}'
        assert 3500 < client.ttl(f"{p}:u:{{{b}}}:consent") <= 3600
        assert client.get(f"{p}:u:{{{c}}}:consent") == b'{"analytics":true}'
        assert client.exists(f"consent:{a}", f"consent:{b}", f"consent:{c}") == 0
        assert client.hgetall(f"consent:{d}") == {b"not": b"ours"}

        # idempotent: nothing left to move, nothing changed
        assert cmd_migrate_keys(env.cfg, argparse.Namespace()) == 0
        out = capsys.readouterr().out
        assert "consent: 0 key(s) moved" in out and "0 old key(s) deleted" in out
        assert client.get(f"{p}:u:{{{a}}}:consent") == b'{"marketing":false}'
        assert client.get(f"{p}:u:{{{c}}}:consent") == b'{"analytics":true}'
    finally:
        client.delete(f"consent:{d}", *(f"{p}:u:{{{x}}}:consent" for x in (a, b, c)))
        client.delete(f"{p}:popular", f"{p}:{{agg}}:popular")
        client.close()


def test_a_consent_store_migrates_before_its_first_read(env: Env) -> None:
    """When Redis was down at start-up, the first read moves the older keys first."""
    p = env.cfg.speed.online_store.key_prefix
    lazy, late = f"lazy-{RUN}", f"late-{RUN}"

    async def run() -> None:
        client = aioredis.Redis(host=env.cfg.redis.host, port=env.cfg.redis.port, db=REDIS_DB)
        store = ConsentStore(client, Keys.from_config(env.cfg))
        try:
            await client.set(f"consent:{lazy}", b'{"personalization":false}')
            got = await store.read_many([lazy, f"nobody-{RUN}"])
            assert got == {lazy: {"personalization": False}}
            assert await client.get(f"{p}:u:{{{lazy}}}:consent") == b'{"personalization":false}'
            assert await client.exists(f"consent:{lazy}") == 0
            # once per process: what an older version writes after that is left to the command
            await client.set(f"consent:{late}", b'{"analytics":false}')
            assert await store.read_many([late]) == {}
        finally:
            await client.delete(f"{p}:u:{{{lazy}}}:consent", f"consent:{late}")
            await store.close()

    asyncio.run(run())


def test_health_schema_and_metrics(env: Env) -> None:
    ready = httpx.get(f"{env.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["kafka"]["reachable"] is True and ready.json()["redis"]["reachable"]
    assert httpx.get(f"{env.url}/healthz").json() == {"status": "ok"}
    schema = httpx.get(f"{env.url}/v1/schema").json()
    assert "consent_update" in schema["x-event-types"]
    metrics = httpx.get(f"{env.url}/metrics", headers=_admin(env.cfg)).text
    assert "attune_collector_request_seconds_bucket" in metrics
    assert "attune_collector_kafka_reachable 1.0" in metrics


def test_two_workers_share_the_port_and_the_metrics(env: Env) -> None:
    cfg = env.cfg.model_copy(
        update={
            "collector": env.cfg.collector.model_copy(update={"workers": 2, "port": free_port()})
        }
    )
    ids = [f"w2-{RUN}-{i}" for i in range(40)]
    with collector_process(cfg) as url:
        with httpx.Client(base_url=url, headers={"X-Write-Key": env.key}) as client:
            for i in range(0, 40, 4):  # 10 requests of 4 events
                r = client.post("/v1/events", json=[_event(x, f"w-{x}") for x in ids[i : i + 4]])
                assert r.status_code == 200 and r.json()["accepted"] == 4
        text = httpx.get(f"{url}/metrics", headers=_admin(cfg)).text
    # /metrics sums both worker processes: 10 requests, 40 events, whichever worker served them.
    assert 'attune_collector_requests_total{status="200"} 10.0' in text
    assert (
        'attune_collector_events_total{outcome="accepted",source="it-web",type="item_view"} 40.0'
        in text
    )
    landed = {orjson.loads(x.value)["event_id"] for x in env.records("events")}
    assert set(ids) <= landed


# ----------------------------------------------------------------------------------------
# Kafka down and back: a private broker this test may stop (never the shared one)


@pytest.fixture
def private_broker(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttuneConfig]:
    from attune import stack

    var = tmp_path_factory.mktemp("broker-var")
    shared_jars = env.cfg.paths.resolve("jars")
    base_jars = Path("var/jars").absolute()
    (var / "jars").symlink_to(base_jars if base_jars.is_dir() else shared_jars)
    port, controller = free_port(), free_port()
    cfg = env.cfg.model_copy(
        update={
            "paths": env.cfg.paths.model_copy(update={"var_dir": var}),
            "kafka": env.cfg.kafka.model_copy(
                update={
                    "bootstrap_servers": f"127.0.0.1:{port}",
                    "broker": env.cfg.kafka.broker.model_copy(
                        update={"port": port, "controller_port": controller, "heap": "512m"}
                    ),
                }
            ),
            "collector": env.cfg.collector.model_copy(
                update={"port": free_port(), "ack_timeout_s": 3.0, "retry_after_s": 1}
            ),
        }
    )
    (var / "secrets").mkdir()
    for name in ("pseudonym.key", "write_keys.yaml"):
        src = env.cfg.paths.resolve("secrets") / name
        (var / "secrets" / name).write_bytes(src.read_bytes())
        os.chmod(var / "secrets" / name, 0o600)
    stack.kafka_up(cfg)
    try:
        stack.create_topics(cfg)
        yield cfg
    finally:
        stack.kafka_down(cfg)


@pytest.mark.timeout(420)
def test_broker_down_503_then_client_retries_land_everything(
    env: Env, private_broker: AttuneConfig
) -> None:
    from attune import stack

    cfg = private_broker
    with collector_process(cfg) as url:
        tracker = Tracker(
            url, env.key, batch_size=10, flush_interval=0.1, max_retries=None, backoff_max=2.0
        )
        try:
            ids = [
                tracker.track("item_view", user_id=f"u{i}", items=[{"item_id": str(i)}])
                for i in range(30)
            ]
            assert tracker.flush(timeout=60)
            assert tracker.stats.accepted == 30

            stack.kafka_down(cfg)
            deadline = time.monotonic() + 30
            while True:  # the collector notices within about a second
                r = httpx.post(
                    f"{url}/v1/events",
                    json=_event(f"while-down-{RUN}", "x"),
                    headers={"X-Write-Key": env.key},
                    timeout=30,
                )
                if r.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert "nothing was stored" in r.json()["error"]

            ids += [
                tracker.track("item_view", user_id=f"v{i}", items=[{"item_id": str(i)}])
                for i in range(30)
            ]
            retry_deadline = time.monotonic() + 30
            while tracker.stats.retries == 0 and time.monotonic() < retry_deadline:
                time.sleep(0.2)
            assert tracker.stats.retries > 0  # the client saw the 503s and is retrying

            stack.kafka_up(cfg)
            assert tracker.flush(timeout=120), tracker.stats
        finally:
            tracker.close(timeout=10)
    assert tracker.stats.failed == 0
    assert tracker.stats.accepted == 60  # every event was acknowledged exactly once
    landed = {
        orjson.loads(x.value)["event_id"] for x in read_topic(cfg, cfg.kafka.topic("events").name)
    }
    missing = set(ids) - landed
    assert not missing, f"{len(missing)} acknowledged events are not in Kafka"
