"""Fault test of the online store (issue 14): Redis restarted (append-only file) while the speed
layer and the API run, with events posted before, during and after the restart.

Real components: a collector (child process), Kafka (the shared stack's, this module's own
topics), the speed layer's online query (Spark, in this process), ``attune serve api`` (child
process) and a Redis of this module's own (:mod:`tests.integration.private_redis`: the
configuration ``attune stack up`` gives the real one, stopped and started the way ``attune
stack down/up`` do), so restarting it disturbs nobody.

The collector keeps its consent state in the shared stack's Redis: it keeps acknowledging
events while the online store is down, which is the hard case for the speed layer (acknowledged
events in Kafka that cannot be applied yet). A collector sharing the restarted Redis would
answer 503 during the restart and its clients retry (``tests/integration/test_collector.py``).

After the restart the online store must hold every acknowledged event's effect exactly once:
each user's ``item_view`` counter equals the number of distinct events acknowledged for them,
and their ``applied`` set holds exactly those events' interaction ids, although every event
posted during the restart was posted twice (a client retry with the same ``event_id``). A
catalog item published while Redis is down reaches the catalog mirror once it is back (the
speed layer reads it from the topic during the outage, when the mirror write fails).
Meanwhile the API answers 200, or, while Redis is down, 503 naming Redis with a
``Retry-After`` (its designed answer: ``attune.api.app``, ``guarded``), never a 500.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from attune import stack
from attune.api.keys import create_read_key
from attune.api.process import start_api
from attune.collector.process import collector_process
from attune.config import AttuneConfig, free_port
from attune.online_store import OnlineStore, read_user_features
from attune.replay import publish_catalog, read_catalog
from attune.secrets import create_write_key
from tests.integration.poller import Poller
from tests.integration.private_redis import private_redis, with_private_redis
from tests.integration.speed_layer.helpers import (
    delete_prefix,
    delete_topics,
    pseudo,
    redis_client,
    speed_config,
    speed_layer_thread,
    wait_until,
    write_secret,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RUN = uuid.uuid4().hex[:8]
COLLECTOR_REDIS_DB = 14  # the collector's consent state, in the shared stack's Redis
USERS = [f"u{n}-{RUN}" for n in range(3)]
ITEMS = [f"i{n}" for n in range(15)]  # 5 per phase; each user views each item once
DOWN_S = 20.0  # how long Redis stays down while events keep coming (a large AOF loads slowly)
MOVIES = "movietweetings-mini/movies.csv"
REDIS_DOWN_ERROR = "Redis (the online store) is not reachable"
# published while Redis is down
OUTAGE_ID = f"new-{RUN}"
OUTAGE_ITEM = {"item_id": OUTAGE_ID, "title": "Outage", "year": 2026, "genres": ["Drama"]}


def event(user: str, item: str) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "type": "item_view",
        "user_id": user,
        "timestamp": datetime.now(UTC).isoformat(),
        "items": [{"item_id": item}],
    }


@pytest.fixture(scope="module")
def test_cfg(cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory) -> AttuneConfig:
    base = with_private_redis(
        speed_config(
            cfg,
            suffix=f"faults-redis-{RUN}",
            var_dir=tmp_path_factory.mktemp("faults-redis"),
            redis_db=0,
        )
    )
    # No model server here: the API falls back at once (REST needs no TensorFlow to start).
    model_server = base.api.model_server.model_copy(
        update={"protocol": "rest", "rest_url": f"http://127.0.0.1:{free_port()}"}
    )
    api = base.api.model_copy(update={"port": free_port(), "model_server": model_server})
    return AttuneConfig.model_validate(base.model_copy(update={"api": api}).model_dump())


def test_a_redis_restart_loses_no_event_and_counts_none_twice(
    cfg: AttuneConfig, test_cfg: AttuneConfig, spark: Any
) -> None:
    secret = write_secret(test_cfg)
    write_key = create_write_key(test_cfg, "it-faults")
    read_key = create_read_key(test_cfg, "faults")
    collector_cfg = test_cfg.model_copy(
        update={"redis": cfg.redis.model_copy(update={"db": COLLECTOR_REDIS_DB})}
    )
    stack.create_topics(test_cfg)
    # the speed layer mirrors the catalog into Redis, as it always has one in production
    publish_catalog(test_cfg, read_catalog(test_cfg.paths.data_dir.absolute() / MOVIES))
    acked: dict[str, set[str]] = {u: set() for u in USERS}  # user -> acknowledged event ids

    def post(url: str, events: list[dict[str, Any]]) -> None:
        r = httpx.post(
            f"{url}/v1/events", json=events, headers={"X-Write-Key": write_key}, timeout=30
        )
        assert r.status_code == 200, r.text
        for e in events:
            acked[e["user_id"]].add(e["event_id"])

    def phase(url: str, items: list[str]) -> list[dict[str, Any]]:
        events = [event(u, i) for i in items for u in USERS]
        for i in range(0, len(events), len(USERS)):  # one request per item, as a page would
            post(url, events[i : i + len(USERS)])
        return events

    store = OnlineStore.from_config(test_cfg)

    def counts(r: Any) -> dict[str, int]:
        return {
            u: read_user_features(r, pseudo(secret, u), store).counters.get("item_view", 0)
            for u in USERS
        }

    try:
        with (
            private_redis(test_cfg),
            collector_process(collector_cfg) as url,
            speed_layer_thread(test_cfg, spark, ("online",)),
        ):
            api = start_api(test_cfg)
            r = redis_client(test_cfg)
            try:
                with Poller(api.url, read_key, {"user_id": USERS[0], "k": 5}) as poller:
                    phase(url, ITEMS[:5])
                    # 5 views per user applied: the speed layer writes to this Redis
                    wait_until(lambda: counts(r) == dict.fromkeys(USERS, 5), 90, "phase 1")

                    stack.redis_down(test_cfg)  # SIGTERM: Redis flushes its append-only file
                    down = time.monotonic()
                    publish_catalog(test_cfg, [OUTAGE_ITEM])
                    during = phase(url, ITEMS[5:10])
                    post(url, during)  # a client retry of all of them: same event ids
                    time.sleep(max(0.0, DOWN_S - (time.monotonic() - down)))
                    stack.redis_up(test_cfg)
                    up = time.monotonic()

                    phase(url, ITEMS[10:])
                    # 15 distinct views per user (5 before, 5 during, 5 after the restart)
                    wait_until(lambda: counts(r) == dict.fromkeys(USERS, 15), 90, "every event")
                    applied_at = time.monotonic()
                    outage_item = wait_until(
                        lambda: r.hgetall(store.keys.item_meta(OUTAGE_ID)),
                        30,
                        "the catalog item published during the outage in the mirror",
                    )
                    api_back = wait_until(
                        lambda: next(
                            (a for a in poller.answers if a.at > up and a.status == 200), None
                        ),
                        30,
                        "a 200 from the API after the restart",
                    )
                    time.sleep(3.0)  # a few more micro-batches: nothing may count twice later
                print(
                    f"Redis down {up - down:.1f} s; every event applied "
                    f"{applied_at - up:.1f} s after it was back; API answering 200 again "
                    f"{max(0.0, api_back.at - up):.2f} s after it was back"
                )
                final = counts(r)
                applied = {
                    u: {
                        m.decode()
                        for m in r.zrange(store.keys.user_key(pseudo(secret, u), "applied"), 0, -1)
                    }
                    for u in USERS
                }
            finally:
                api.stop()
                r.close()
    finally:
        delete_topics(test_cfg)
        shared = redis_client(collector_cfg)
        delete_prefix(shared, store.prefix)
        shared.close()

    assert final == dict.fromkeys(USERS, 15)
    # the mirror's hash (OnlineStoreWriter.write_item_metadata): the title, the genres as a
    # JSON list, the year as a string
    assert outage_item == {b"title": b"Outage", b"genres": b'["Drama"]', b"year": b"2026"}
    # an item event's interaction id is "<event_id>#<position>" (docs/online_store.md)
    assert applied == {u: {f"{e}#0" for e in ids} for u, ids in acked.items()}
    assert all(len(ids) == 15 for ids in acked.values())

    answers = poller.answers
    assert [a for a in answers if a.status not in (200, 503)] == [], "no 500 (nor other)"
    unavailable = [a for a in answers if a.status == 503]
    print(f"API: {len(answers) - len(unavailable)} answers 200, {len(unavailable)} answers 503")
    assert unavailable, "no request reached the API while Redis was down"
    assert all(
        a.body["error"].startswith(REDIS_DOWN_ERROR) and a.retry_after for a in unavailable
    ), unavailable[:3]
    assert all(down - 1.0 < a.at < up + 30.0 for a in unavailable), "503 outside the restart"
    assert any(a.status == 200 and a.at < down for a in answers)
    assert answers[-1].status == 200
