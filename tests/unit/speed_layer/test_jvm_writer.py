"""The JVM writer's settings: the Python side's scripts and key layout, and what it refuses."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from attune.config import AttuneConfig, ConfigError, load_config
from attune.online_store import AGG_SCRIPT, APPLY_SCRIPT, TRENDING_SCRIPT, OnlineStore
from speed_layer.jvm_writer import writer_spec


def build(parts: list[str], *ids: str) -> str:
    """What the Java side does with a template: parts[0] + id1 + parts[1] + ..."""
    out = parts[0]
    for value, part in zip(ids, parts[1:], strict=True):
        out += value + part
    return out


def spec(**cfg: Any) -> dict[str, Any]:
    config = AttuneConfig.model_validate(cfg)
    return dict(json.loads(writer_spec(config, OnlineStore(prefix="att"), bandits=False)))


def test_the_scripts_and_parameters_are_the_python_ones_not_copies() -> None:
    s = spec()
    assert s["scripts"] == {
        "apply": APPLY_SCRIPT,
        "aggregate": AGG_SCRIPT,
        "trending": TRENDING_SCRIPT,
    }
    assert s["params"] == OnlineStore(prefix="att").script_params().decode()


def test_key_templates_rebuild_the_documented_key_names() -> None:
    k = spec()["keys"]
    # attune.keys' table, written out for prefix "att", user "alice", item "m1"
    assert [build(t, "alice") for t in k["user"]] == [
        "att:u:{alice}:recent",
        "att:u:{alice}:recent_meta",
        "att:u:{alice}:aff",
        "att:u:{alice}:counters",
        "att:u:{alice}:session",
        "att:u:{alice}:dismissed",
        "att:u:{alice}:neg",
        "att:u:{alice}:undo",
        "att:u:{alice}:applied",
        "att:u:{alice}:meta",
        "att:u:{alice}:outbox",
    ]
    assert build(k["outbox"], "alice") == "att:u:{alice}:outbox"
    assert build(k["item_meta"], "m1") == "att:i:{m1}:meta"
    assert build(k["item_stats"], "m1") == "att:{agg}:i:m1:stats"
    assert build(k["trend_slice"], "3600", "42") == "att:{agg}:trend:3600:42"
    assert build(k["trending"], "3600") == "att:{agg}:trending:3600"
    assert build(k["exp_live"], "2013-03-01") == "att:{agg}:exp:live:2013-03-01"
    assert (
        build(k["exp_live_users"], "2013-03-01", "e1", "b")
        == "att:{agg}:exp:live:2013-03-01:users:e1|b"
    )
    assert (k["agg_seen"], k["meta"], k["popular"]) == (
        "att:{agg}:seen",
        "att:{agg}:meta",
        "att:{agg}:popular",
    )


def test_redis_and_live_count_settings() -> None:
    s = spec(redis={"host": "10.0.0.5", "port": 6390, "db": 3})
    assert s["redis"] == {"host": "10.0.0.5", "port": 6390, "db": 3}
    assert s["trending"] == {"windows_s": [3600, 86400], "slices": 12}
    assert s["live"]["pattern"] == "^([^:]+):([^:]+):"
    assert s["live"]["counts"]["impression"] == "impressions"
    assert s["live"]["none"] == "none"


def test_a_cluster_is_refused_naming_the_keys_to_change() -> None:
    config = AttuneConfig.model_validate({"redis": {"cluster": True}})
    with pytest.raises(ConfigError, match=r"speed\.realtime_writer: python.*redis\.cluster"):
        writer_spec(config, OnlineStore(), bandits=False)


def test_bandits_are_refused_naming_the_key_to_change() -> None:
    with pytest.raises(ConfigError, match=r"bandits.*speed\.realtime_writer: python"):
        writer_spec(AttuneConfig(), OnlineStore(), bandits=True)


def test_the_config_key_defaults_to_python_and_rejects_other_writers(tmp_path: Any) -> None:
    assert AttuneConfig().speed.realtime_writer == "python"
    path = tmp_path / "a.yaml"
    path.write_text("speed:\n  realtime_writer: jvm\n")
    assert load_config(path, environ={}).speed.realtime_writer == "jvm"
    path.write_text("speed:\n  realtime_writer: scala\n")
    with pytest.raises(ConfigError, match="realtime_writer"):
        load_config(path, environ={})


def test_the_realtime_batch_defaults_to_each_writers_own_length(tmp_path: Any) -> None:
    # python: its rows arrive when a batch ends, so the batch is its latency (Spark's minimum);
    # jvm: rows are written as they arrive, the batch is a checkpoint interval (Spark's 5 min)
    assert AttuneConfig().speed.realtime_batch_duration == timedelta(seconds=5)
    path = tmp_path / "a.yaml"
    path.write_text("speed:\n  realtime_writer: jvm\n")
    assert load_config(path, environ={}).speed.realtime_batch_duration == timedelta(minutes=5)
    path.write_text("speed:\n  realtime_writer: jvm\n  realtime_batch: PT30S\n")
    assert load_config(path, environ={}).speed.realtime_batch_duration == timedelta(seconds=30)
