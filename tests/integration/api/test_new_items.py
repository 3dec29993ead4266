"""New items reach users at once, end to end: an item published to the catalog topic after the
models were trained gets a vector from its content (the speed layer asks the model server's
``item_embeddings`` signature and writes it to Redis), and the API recommends it to a user
whose history matches its genres, not to one whose history does not.

The models are trained on a small synthetic catalog with a clear genre structure (15 horror
and 15 comedy movies; half the users rate only horror movies, half only comedies), so which
new item fits which user is known by construction; the unit tests
(``tests/unit/models/test_models_new_items.py``) check the content path itself. Everything
else is real: Kafka topics, the speed layer (Spark, in this process), ``attune serve models``
(a child process, gRPC and REST), ``attune serve api`` (a child process) and a collector.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import redis

from attune.api.keys import create_read_key
from attune.api.process import start_api
from attune.collector.process import collector_process
from attune.config import AttuneConfig, free_port
from attune.online_store import OnlineStore, wait_for_item
from attune.replay import publish_catalog
from attune.secrets import create_write_key
from attune.serving.process import start_model_server
from attune.stack import create_topics
from attune.supervisor import Child
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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

RUN = uuid.uuid4().hex[:8]
REDIS_DB = 6  # 7-15 belong to other modules; the key prefix is this run's own anyway
WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
NUMBERS = WORDS.split()
NEW_HORROR = f"new-horror-{RUN}"
NEW_COMEDY = f"new-comedy-{RUN}"


def catalog() -> list[dict[str, Any]]:
    """15 horror and 15 comedy movies; their titles share words across genres ("Movie" and a
    number word), so genre is the content that tells them apart."""
    return [
        {
            "item_id": f"{genre[0].lower()}{n}",
            "title": f"Movie {word.title()} ({2000 + n})",
            "year": 2000 + n,
            "genres": [genre],
        }
        for genre in ("Horror", "Comedy")
        for n, word in enumerate(NUMBERS)
    ]


def training_files(folder: Path, secret: bytes) -> tuple[Path, Path]:
    """Ratings of 60 users (pseudonymized, as gold holds them): even users rate 8 horror
    movies 9, odd users 8 comedies; and the catalog as an items file."""
    rng = np.random.default_rng(5)
    picks = [rng.permutation(15)[:8] for _ in range(60)]
    rows = []
    t = 1_700_000_000
    # round by round, so the gate's temporal holdout (the latest ratings) has every user
    for round_ in range(8):
        for u in range(60):
            t += 60
            prefix = "h" if u % 2 == 0 else "c"
            rows.append((pseudo(secret, f"train-{u}"), f"{prefix}{picks[u][round_]}", 9, t))
    ratings = folder / "ratings.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(
        ratings, index=False
    )
    items = folder / "items.csv"
    pd.DataFrame(
        [
            {"item_id": m["item_id"], "title": m["title"], "genres": "|".join(m["genres"])}
            for m in catalog()
        ]
    ).to_csv(items, index=False)
    return ratings, items


def train(cfg: AttuneConfig, secret: bytes, folder: Path) -> dict[str, int]:
    from models.data import load_csv
    from models.train import run_training

    mc = cfg.models
    small = cfg.model_copy(
        update={
            "models": mc.model_copy(
                update={
                    "prior_half_life_days": 7.0,
                    "retrieval": mc.retrieval.model_copy(
                        update={
                            "epochs": 30,
                            "embedding_dim": 16,
                            "batch_size": 32,
                            "id_dropout": 0.5,
                            "query_hidden": 0,
                            # the fans are new users: the query is their sequence
                            "features": ["sequence", "content", "prior"],
                        }
                    ),
                    "ranking": mc.ranking.model_copy(
                        update={"epochs": 2, "embedding_dim": 8, "deep_layers": [16]}
                    ),
                }
            )
        }
    )
    ratings, items = training_files(folder, secret)
    result = run_training(small, load_csv(ratings, items), progress=False, say=lambda m: None)
    assert all(d.promoted for d in result.decisions), result.decisions
    return result.versions


@dataclass
class Env:
    cfg: AttuneConfig
    collector: str
    write_key: str
    read_key: str
    secret: bytes
    store: OnlineStore
    redis: redis.Redis
    api: Child

    def history(self, user: str, items: list[str]) -> None:
        """Item views of ``items`` (oldest first), waited for until the last is in Redis."""
        events = [
            {
                "event_id": uuid.uuid4().hex,
                "type": "item_view",
                "user_id": user,
                "timestamp": datetime.now(UTC).isoformat(),
                "items": [{"item_id": item}],
            }
            for item in items
        ]
        r = httpx.post(
            f"{self.collector}/v1/events",
            json=events,
            headers={"X-Write-Key": self.write_key},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert wait_for_item(
            self.redis, pseudo(self.secret, user), items[-1], self.store, timeout_s=90
        ), f"{items[-1]} of {user} did not reach Redis"

    def recommend(self, user: str, k: int = 10) -> dict[str, Any]:
        r = httpx.post(
            f"{self.api.url}/v1/recommendations",
            json={"user_id": user, "k": k},
            headers={"Authorization": f"Bearer {self.read_key}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def env(cfg: AttuneConfig, spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = speed_config(
        cfg,
        suffix=f"test-new-items-{RUN}",
        var_dir=tmp_path_factory.mktemp("new-items-var"),
        redis_db=REDIS_DB,
    )
    api = base.api
    test_api = api.model_copy(
        update={
            "port": free_port(),
            "catalog_refresh_s": 1.0,
            "candidates": api.candidates.model_copy(
                # one new item per request: the best by content, so the two fans differ
                update={"new_items": 1, "new_slots": 1, "new_items_refresh_s": 0.5}
            ),
            "model_server": api.model_server.model_copy(
                update={"timeout_ms": 5000.0}  # a shared 2-core machine: no spurious fallbacks
            ),
        }
    )
    serving = base.serving.model_copy(
        update={"rest_port": free_port(), "grpc_port": free_port(), "poll_interval_s": 0.5}
    )
    test_cfg = AttuneConfig.model_validate(
        base.model_copy(update={"api": test_api, "serving": serving}).model_dump()
    )
    secret = write_secret(test_cfg)
    write_key = create_write_key(test_cfg, "it-new-items")
    read_key = create_read_key(test_cfg, "it")
    create_topics(test_cfg)
    publish_catalog(test_cfg, catalog())
    versions = train(test_cfg, secret, tmp_path_factory.mktemp("new-items-data"))
    assert versions == {"retrieval": 1, "ranking": 1}
    r = redis_client(test_cfg)
    store = OnlineStore.from_config(test_cfg)
    models: Child | None = None
    try:
        models = start_model_server(test_cfg)
        with collector_process(test_cfg) as url, speed_layer_thread(test_cfg, spark, ("online",)):
            wait_until(lambda: r.exists(store.keys.item_meta("h0")), 60, "the catalog mirror")
            child = start_api(test_cfg)
            try:
                yield Env(test_cfg, url, write_key, read_key, secret, store, r, child)
            finally:
                child.stop()
    finally:
        if models is not None:
            models.stop()
        delete_prefix(r, store.prefix)
        r.close()
        delete_topics(test_cfg)


def test_an_item_added_after_training_is_recommended_to_users_of_its_genre(env: Env) -> None:
    keys = env.store.keys
    # the trained catalog's items are known to the model: none of them is "new"
    wait_until(
        lambda: env.redis.hget(keys.new_items_meta, "version") == b"1",
        60,
        "the speed layer to check the catalog against model version 1",
    )
    assert env.redis.zcard(keys.new_items) == 0

    # users whose histories are horror movies / comedies, the first items of each genre
    horror_fan, comedy_fan = f"hfan-{RUN}", f"cfan-{RUN}"
    env.history(horror_fan, ["h0", "h1", "h2", "h3"])
    env.history(comedy_fan, ["c0", "c1", "c2", "c3"])

    # two items published after training, through the catalog topic only
    publish_catalog(
        env.cfg,
        [
            {
                "item_id": NEW_HORROR,
                "title": "Movie Sixteen (2015)",
                "year": 2015,
                "genres": ["Horror"],
            },
            {
                "item_id": NEW_COMEDY,
                "title": "Movie Sixteen (2015)",
                "year": 2015,
                "genres": ["Comedy"],
            },
        ],
    )
    # the speed layer writes their vectors: 16 dimensions + the popularity coordinate
    wait_until(
        lambda: env.redis.zcard(keys.new_items) == 2,
        60,
        "vectors of the two new items in Redis",
    )
    vec = env.redis.get(keys.item_vector(NEW_HORROR))
    assert vec is not None and len(vec) == 17 * 4  # float32

    def new_item_of(user: str) -> list[tuple[str, str]]:
        body = env.recommend(user)
        return [
            (i["item_id"], i["reason"]) for i in body["items"] if i["item_id"].startswith("new-")
        ]

    # the API re-reads the vectors every 0.5 s; each fan gets the new item of their genre
    got = wait_until(lambda: new_item_of(horror_fan), 30, "a new item for the horror fan")
    assert got == [(NEW_HORROR, "new, and like Movie Four (2003), which you viewed")]
    assert new_item_of(comedy_fan) == [
        (NEW_COMEDY, "new, and like Movie Four (2003), which you viewed")
    ]


def test_the_model_server_serves_item_embeddings_over_rest_and_grpc(env: Env) -> None:
    """The signatures new items use, through both TF Serving protocols, as the speed layer
    (REST) and the API (gRPC by default) call them."""
    import asyncio

    from attune.api.model_client import GrpcModelClient, RestModelClient

    cfg = env.cfg
    content = {
        "item_ids": np.array(["h0", "never-seen"], dtype=object),
        "genres": np.array([["Horror", ""], ["Comedy", "Unknown genre"]], dtype=object),
        "title": np.array(["Movie One (2000)", "Something Else"], dtype=object),
        "year": np.array([2000, 0], dtype=np.int64),
    }

    async def both() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        rest = RestModelClient(f"http://127.0.0.1:{cfg.serving.rest_port}")
        grpc = GrpcModelClient(f"127.0.0.1:{cfg.serving.grpc_port}")
        try:
            sig = "item_embeddings"
            return (
                await rest.predict("retrieval", content, signature=sig, timeout_s=30.0),
                await grpc.predict("retrieval", content, signature=sig, timeout_s=30.0),
            )
        finally:
            await rest.close()
            await grpc.close()

    by_rest, by_grpc = asyncio.run(both())
    assert [bool(k) for k in by_rest["known"]] == [True, False]
    assert [bool(k) for k in by_grpc["known"]] == [True, False]
    assert np.asarray(by_rest["embeddings"]).shape == (2, 17)
    np.testing.assert_allclose(
        np.asarray(by_rest["embeddings"], dtype=np.float32), by_grpc["embeddings"], atol=1e-5
    )
