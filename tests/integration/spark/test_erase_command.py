"""``attune privacy erase``: the request is recorded pseudonymized and Redis forgets at once."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import pytest

from attune.config import AttuneConfig
from attune.online_store import OnlineStore
from attune.secrets import Pseudonymizer, pseudonym_key
from spark.erasure import cmd_erase
from spark.tables import Lake
from spark.views import ViewKeys
from tests.integration.spark.conftest import redis_client

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.integration


def test_erase_records_the_pseudonym_and_deletes_redis_keys_now(
    world: AttuneConfig, spark: SparkSession, capsys: pytest.CaptureFixture[str]
) -> None:
    pseudonym = Pseudonymizer(pseudonym_key(world))("zoe")
    store = OnlineStore.from_config(world)
    views = ViewKeys(store.prefix)
    client = redis_client(world)
    try:
        client.zadd(store.user_key(pseudonym, "recent"), {"i1": 1})
        client.hset(store.user_key(pseudonym, "counters"), "item_view", 1)
        client.zadd(views.user_recs(pseudonym), {"i2": 1.0})
        client.zadd(store.user_key("someone-else", "recent"), {"i1": 1})

        code = cmd_erase(world, argparse.Namespace(user=["zoe"], anonymous_id=None))

        assert code == 0
        # the three keys of zoe are gone, the other user's key is untouched
        assert client.exists(*store.user_keys(pseudonym), *views.user_keys(pseudonym)) == 0
        assert client.exists(store.user_key("someone-else", "recent")) == 1
    finally:
        client.delete(store.user_key("someone-else", "recent"))
        client.close()
    rows = spark.read.format("delta").load(Lake.from_config(world).erasure_requests).collect()
    assert [(r["pseudonym"], r["id_kind"]) for r in rows] == [(pseudonym, "user")]
    assert all("zoe" not in str(r) for r in rows)  # only the pseudonym is stored
    out = capsys.readouterr().out
    assert "3 Redis key(s) deleted now" in out and "zoe" not in out
    assert not spark.sparkContext._jsc.sc().isStopped()  # the caller's session is left running
