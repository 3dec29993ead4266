"""The configuration loader and the example file that documents it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from attune.config import AttuneConfig, ConfigError, load_config, with_overrides

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "attune.example.yaml"


def _key_drift(model: BaseModel, data: dict[str, Any], prefix: str = "") -> tuple[set, set]:
    """(keys of ``model`` missing from ``data``, keys of ``data`` the model lacks), as dotted
    paths, walking into sections and into maps of sections (kafka.topics) but not into plain
    maps such as spark.conf, whose keys are data."""
    missing: set[str] = set()
    extra = {f"{prefix}{k}" for k in data if k not in type(model).model_fields}
    for name in type(model).model_fields:
        path = f"{prefix}{name}"
        if name not in data:
            missing.add(path)
            continue
        value, given = getattr(model, name), data[name]
        if isinstance(value, BaseModel):
            sub = _key_drift(value, given, f"{path}.")
        elif isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):
            sub = (set(), set())
            for role in value.keys() | given.keys():
                if role not in given or role not in value:
                    (sub[0] if role not in given else sub[1]).add(f"{path}.{role}")
                else:
                    m, e = _key_drift(value[role], given[role], f"{path}.{role}.")
                    sub[0].update(m)
                    sub[1].update(e)
        else:
            continue
        missing |= sub[0]
        extra |= sub[1]
    return missing, extra


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "attune.yaml"
    path.write_text(text)
    return path


def test_example_equals_the_defaults() -> None:
    assert load_config(EXAMPLE, environ={}) == AttuneConfig()


def test_example_lists_every_key() -> None:
    # equality above cannot notice a key left out of the example (it would take its default)
    missing, extra = _key_drift(AttuneConfig(), yaml.safe_load(EXAMPLE.read_text()))
    assert sorted(missing) == [], "keys missing from config/attune.example.yaml"
    assert sorted(extra) == [], "keys in config/attune.example.yaml that the config lacks"


def test_default_topics_are_what_the_design_says() -> None:
    # worked out by hand: 7 days = 7 * 24 * 3600 * 1000 ms = 604,800,000 ms;
    # 30 days = 2,592,000,000 ms; the catalog is compacted and kept forever (-1)
    topics = {t.name: t for t in AttuneConfig().kafka.topics.values()}
    assert {n: (t.partitions, t.retention_ms, t.cleanup_policy) for n, t in topics.items()} == {
        "attune.events": (6, 604_800_000, "delete"),
        "attune.events.dead-letter": (1, 2_592_000_000, "delete"),
        "attune.catalog": (3, -1, "compact"),
    }
    assert topics["attune.catalog"].topic_configs() == {
        "retention.ms": "-1",
        "cleanup.policy": "compact",
    }


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, ""), environ={}) == AttuneConfig()


def test_file_values_override_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, "redis:\n  port: 6390\nkafka:\n  broker:\n    heap: 512m\n")
    cfg = load_config(path, environ={})
    assert (cfg.redis.port, cfg.kafka.broker.heap) == (6390, "512m")
    assert cfg.redis.host == "127.0.0.1"  # untouched keys keep their defaults


def test_item_knn_neighbours_need_the_batch_to_compute_them(tmp_path: Path) -> None:
    path = _write(tmp_path, "api:\n  candidates:\n    neighbours: user\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert str(path) in str(err.value)
    assert "batch.cooccurrence.user_knn: true" in str(err.value)
    both = (
        "api:\n  candidates:\n    neighbours: user\nbatch:\n  cooccurrence:\n    user_knn: true\n"
    )
    cfg = load_config(_write(tmp_path, both), environ={})
    assert cfg.api.candidates.neighbours == "user" and cfg.batch.cooccurrence.user_knn


def test_unknown_key_names_the_file_and_the_key_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "kafka:\n  bootstrap_server: broker:9092\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    message = str(err.value)
    assert str(path) in message
    assert "kafka.bootstrap_server: unknown key" in message
    assert "attune.example.yaml" in message  # says where to look up the right spelling


def test_unknown_section_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "kafak:\n  bootstrap_servers: broker:9092\n")
    with pytest.raises(ConfigError, match=r"kafak: unknown key"):
        load_config(path, environ={})


def test_environment_override_wins_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "kafka:\n  bootstrap_servers: from-file:9092\n")
    env = {
        "ATTUNE__KAFKA__BOOTSTRAP_SERVERS": "from-env:19092",
        "ATTUNE__KAFKA__BROKER__PORT": "19092",
        "ATTUNE__REDIS__MANAGE": "false",
        "UNRELATED": "ignored",
    }
    cfg = load_config(path, environ=env)
    assert cfg.kafka.bootstrap_servers == "from-env:19092"
    assert cfg.kafka.broker.port == 19092  # "19092" parsed as a YAML int
    assert cfg.redis.manage is False


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    path = _write(tmp_path, "lake:\n  root: s3a://bucket/lake\n")
    cfg = load_config(None, environ={"ATTUNE_CONFIG": str(path)})
    assert cfg.lake_root == "s3a://bucket/lake"


def test_bad_type_says_where_and_what(tmp_path: Path) -> None:
    path = _write(tmp_path, "redis:\n  port: not-a-port\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    message = str(err.value)
    assert str(path) in message
    assert "redis.port" in message
    assert "'not-a-port'" in message  # the offending value is shown


def test_bad_type_from_the_environment_names_the_override() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"ATTUNE__REDIS__PORT": "six-three-seven-nine"})
    message = str(err.value)
    assert "ATTUNE__* environment overrides" in message
    assert "redis.port" in message
    assert "six-three-seven-nine" in message


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_relative_paths_go_under_var_dir(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, f"paths:\n  var_dir: {tmp_path}/state\n"), environ={})
    assert cfg.paths.resolve("jars/kafka") == tmp_path / "state" / "jars" / "kafka"
    assert cfg.paths.resolve("/abs/path") == Path("/abs/path")
    assert cfg.run_dir == tmp_path / "state" / "run"


def test_event_time_window_errors_name_the_key_and_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={"ATTUNE__COLLECTOR__EVENT_TIMES__MAX_AHEAD": "-60"})
    assert (
        "collector.event_times.max_ahead: Value error, must be a duration of zero or more, "
        "e.g. P1D or 86400" in str(err.value)
    )
    with pytest.raises(ConfigError) as err:
        load_config(environ={"ATTUNE__COLLECTOR__EVENT_TIMES__EARLIEST": "2000-01-01T00:00:00"})
    assert (
        "collector.event_times.earliest: Value error, needs a zone, e.g. "
        "2000-01-01T00:00:00Z" in str(err.value)
    )
    cfg = load_config(environ={"ATTUNE__COLLECTOR__EVENT_TIMES__EARLIEST": "1995-01-01T00:00:00Z"})
    assert cfg.collector.event_times.earliest.year == 1995


def test_dotted_overrides_are_read_as_yaml_and_validated() -> None:
    base = AttuneConfig()
    cfg = with_overrides(base, {"kafka.producer.linger_ms": "20", "api.impressions": "false"})
    assert cfg.kafka.producer.linger_ms == 20 and cfg.api.impressions is False
    assert cfg.kafka.producer.acks == base.kafka.producer.acks  # the rest as it was
    with pytest.raises(ValidationError, match="no_such_key"):
        with_overrides(base, {"serving.no_such_key": "1"})


def test_dotted_overrides_that_are_not_strings_are_taken_as_they_are() -> None:
    # benchmarks/ingest.py's BEFORE settings are Python values, not command-line text
    base = AttuneConfig()
    cfg = with_overrides(
        base,
        {
            "collector.gc_young_threshold": 0,
            "collector.kafka_append": "send",
            "api.impressions": False,
        },
    )
    assert cfg.collector.gc_young_threshold == 0
    assert cfg.collector.kafka_append == "send"
    assert cfg.api.impressions is False
    assert cfg.collector.workers == base.collector.workers  # the rest of the section as it was
    with pytest.raises(ValidationError, match="gc_young_threshold"):
        with_overrides(base, {"collector.gc_young_threshold": -5})
