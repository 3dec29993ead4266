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
from tests.integration.spark.conftest import redis_client

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.integration


def test_erase_records_the_pseudonym_and_deletes_redis_keys_now(
    world: AttuneConfig, spark: SparkSession, capsys: pytest.CaptureFixture[str]
) -> None:
    pseudonym = Pseudonymizer(pseudonym_key(world))("zoe")
    store = OnlineStore.from_config(world)
    p = store.prefix
    client = redis_client(world)
    zoe = [  # written by hand: the names the speed layer, the batch views and the collector use
        f"{p}:u:{{{pseudonym}}}:recent",
        f"{p}:u:{{{pseudonym}}}:counters",
        f"{p}:u:{{{pseudonym}}}:recs",
        f"{p}:u:{{{pseudonym}}}:consent",
        f"consent:{pseudonym}",  # where an older collector kept consent, if not migrated yet
    ]
    other = [f"{p}:u:{{someone-else}}:recent", f"{p}:u:{{someone-else}}:consent"]
    try:
        client.zadd(zoe[0], {"i1": 1})
        client.hset(zoe[1], "item_view", 1)
        client.zadd(zoe[2], {"i2": 1.0})
        client.set(zoe[3], b'{"marketing":false}')
        client.set(zoe[4], b'{"analytics":false}')
        client.zadd(other[0], {"i1": 1})
        client.set(other[1], b'{"marketing":false}')

        code = cmd_erase(world, argparse.Namespace(user=["zoe"], anonymous_id=None))

        assert code == 0
        # the five keys of zoe are gone, consent included; the other user's keys are untouched
        assert client.exists(*zoe) == 0
        assert list(client.scan_iter(match=store.keys.user_glob(pseudonym))) == []
        assert client.exists(*other) == 2
        # the API keeps zoe's id away from the served models for privacy.erased_model_block
        marker = store.keys.erased(pseudonym)
        assert marker == f"{p}:erased:{{{pseudonym}}}"
        ttl = client.ttl(marker)
        assert 30 * 86_400 - 60 <= ttl <= 30 * 86_400  # the default, P30D
    finally:
        client.delete(*other, store.keys.erased(pseudonym))
        client.close()
    rows = spark.read.format("delta").load(Lake.from_config(world).erasure_requests).collect()
    assert [(r["pseudonym"], r["id_kind"]) for r in rows] == [(pseudonym, "user")]
    assert all("zoe" not in str(r) for r in rows)  # only the pseudonym is stored
    out = capsys.readouterr().out
    assert "5 Redis key(s) deleted now" in out and "zoe" not in out
    assert not spark.sparkContext._jsc.sc().isStopped()  # the caller's session is left running
