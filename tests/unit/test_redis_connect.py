"""The Redis client factory (:mod:`attune.redis_connect`), ``redis.cluster`` in the config, and
the pure parts of the local cluster (:mod:`attune.stack.redis_cluster`). No Redis needed: the
cluster client classes are replaced by recorders where constructing one would connect."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
from pydantic import ValidationError

from attune import redis_connect
from attune.config import ConfigError, RedisConfig, load_config
from attune.redis_connect import connect, connect_async, queue_script
from attune.stack.redis_cluster import (
    RedisClusterLayout,
    cluster_settings,
    free_cluster_ports,
    node_conf,
)

# -- the config --------------------------------------------------------------------------------


def test_cluster_is_off_by_default_and_needs_db_0() -> None:
    assert RedisConfig().cluster is False
    assert RedisConfig(cluster=True).db == 0
    with pytest.raises(ValidationError, match=r"redis\.db is 3, but redis\.cluster is true") as e:
        RedisConfig(cluster=True, db=3)
    assert "set redis.db: 0" in str(e.value)
    assert RedisConfig(cluster=False, db=3).db == 3  # a plain Redis has 16 databases


def test_an_override_with_a_db_for_a_cluster_names_the_key_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ATTUNE_CONFIG", raising=False)
    monkeypatch.setenv("ATTUNE__REDIS__CLUSTER", "true")
    monkeypatch.setenv("ATTUNE__REDIS__DB", "5")
    with pytest.raises(ConfigError, match=r"redis\.db is 5.*set redis\.db: 0"):
        load_config(None)


def test_the_cluster_settings_point_the_config_at_the_seed_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layout = RedisClusterLayout(root=Path("/nowhere"), ports=(7001, 7002, 7003))
    monkeypatch.delenv("ATTUNE_CONFIG", raising=False)
    for name, value in cluster_settings(layout).items():
        monkeypatch.setenv(name, value)
    r = load_config(None).redis
    assert (r.host, r.port, r.db, r.cluster, r.manage) == ("127.0.0.1", 7001, 0, True, False)
    assert layout.seed == r


# -- the factory -------------------------------------------------------------------------------


class _Recorder:
    """Stands for a cluster client class: records the keywords it was made with."""

    made: ClassVar[list[dict[str, Any]]]

    def __init__(self, **kwargs: Any) -> None:
        type(self).made.append(kwargs)


def test_a_plain_config_gives_a_plain_client_with_the_db_and_the_options() -> None:
    client = connect(RedisConfig(host="10.1.2.3", port=6390, db=4), socket_timeout=1.5)
    try:
        assert type(client) is redis.Redis
        kw = client.connection_pool.connection_kwargs
        assert (kw["host"], kw["port"], kw["db"], kw["socket_timeout"]) == (
            "10.1.2.3",
            6390,
            4,
            1.5,
        )
    finally:
        client.close()


def test_a_cluster_config_gives_cluster_clients_without_a_db(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis.asyncio.cluster
    import redis.cluster

    class Sync(_Recorder):
        made: ClassVar[list[dict[str, Any]]] = []

    class Async(_Recorder):
        made: ClassVar[list[dict[str, Any]]] = []

    monkeypatch.setattr(redis.cluster, "RedisCluster", Sync)
    monkeypatch.setattr(redis.asyncio.cluster, "RedisCluster", Async)
    r = RedisConfig(host="10.1.2.3", port=7001, cluster=True)
    assert isinstance(connect(r, socket_timeout=2.0, db=0), Sync)
    assert isinstance(connect_async(r, max_connections=8), Async)
    # `db` is dropped (RedisCluster refuses it), everything else passes through
    assert Sync.made == [{"host": "10.1.2.3", "port": 7001, "socket_timeout": 2.0}]
    assert Async.made == [{"host": "10.1.2.3", "port": 7001, "max_connections": 8}]


def test_a_real_async_cluster_client_is_made_without_connecting() -> None:
    from redis.asyncio.cluster import RedisCluster

    client = connect_async(RedisConfig(port=1, cluster=True), socket_timeout=0.5)
    assert isinstance(client, RedisCluster) and redis_connect.is_cluster(client)
    plain = connect_async(RedisConfig(port=1, db=2))
    assert not redis_connect.is_cluster(plain)
    assert plain.connection_pool.connection_kwargs["db"] == 2


def test_an_unreachable_cluster_seed_is_a_redis_connection_error() -> None:
    from attune.config import free_port

    r = RedisConfig(port=free_port(), cluster=True)  # nothing listens there
    # the same error class a plain client's first command raises, so `except RedisError` holds
    with pytest.raises(redis.exceptions.ConnectionError, match=rf"seed 127.0.0.1:{r.port}"):
        connect(r, socket_connect_timeout=0.5)


class _Pipe:
    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> _Pipe:
        self.commands.append(args)
        return self


class _Script:
    script = "return KEYS[1]"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, keys: Any, args: Any, client: Any) -> Any:
        self.calls.append({"keys": keys, "args": args, "client": client})
        return client


def test_queue_script_sends_the_text_on_a_cluster_pipeline_and_the_sha_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script, pipe = _Script(), _Pipe()
    monkeypatch.setattr(redis_connect, "is_cluster", lambda client: True)
    queue_script(pipe, script, ["k1", "k2"], [7, "x"])
    assert pipe.commands == [("EVAL", "return KEYS[1]", 2, "k1", "k2", 7, "x")]
    assert script.calls == []
    monkeypatch.setattr(redis_connect, "is_cluster", lambda client: False)
    queue_script(pipe, script, ["k1"], [])
    assert script.calls == [{"keys": ["k1"], "args": [], "client": pipe}]
    assert len(pipe.commands) == 1


# -- the local cluster's pure parts --------------------------------------------------------------


def test_free_cluster_ports_leave_room_for_the_cluster_bus() -> None:
    ports = free_cluster_ports(3)
    assert len(set(ports)) == 3
    # Redis refuses a cluster port above 55535: its bus listens on port + 10000
    assert all(20000 <= p <= 55535 for p in ports)
    assert not {p + 10000 for p in ports} & set(ports)


def test_a_node_conf_enables_cluster_mode_and_persistence(tmp_path: Path) -> None:
    layout = RedisClusterLayout(root=tmp_path, ports=(30001, 30002), node_timeout_ms=3000)
    conf = node_conf(layout, 30002).splitlines()
    for line in (
        "port 30002",
        "bind 127.0.0.1",
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        "cluster-node-timeout 3000",
        "appendonly yes",
        f'dir "{tmp_path / "node-30002"}"',
    ):
        assert line in conf


def test_stack_up_redis_masters_starts_the_cluster_above_redis_port_and_prints_the_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from attune.cli import build_parser
    from attune.config import AttuneConfig
    from attune.stack import cli, redis_cluster

    started: list[RedisClusterLayout] = []
    monkeypatch.setattr(cli, "stack_up", lambda cfg: None)
    monkeypatch.setattr(redis_cluster, "redis_cluster_up", started.append)
    cfg = AttuneConfig.model_validate(
        {"paths": {"var_dir": str(tmp_path)}, "redis": {"host": "127.0.0.1", "port": 7000}}
    )
    args = build_parser().parse_args(["stack", "up", "--redis-masters", "3"])
    assert cli.cmd_up(cfg, args) == 0
    root = tmp_path / "redis-cluster"
    assert started == [RedisClusterLayout(root=root, ports=(7001, 7002, 7003))]
    out = capsys.readouterr().out
    for line in (
        "export ATTUNE__REDIS__PORT=7001",
        "export ATTUNE__REDIS__CLUSTER=true",
        "export ATTUNE__REDIS__DB=0",
    ):
        assert line in out
    # redis-cli refuses fewer than 3 masters; argparse says so first
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stack", "up", "--redis-masters", "2"])


def test_stack_down_finds_the_cluster_it_started_by_its_node_folders(tmp_path: Path) -> None:
    from attune.config import AttuneConfig
    from attune.stack.redis_cluster import recorded_cluster

    cfg = AttuneConfig.model_validate({"paths": {"var_dir": str(tmp_path)}})
    assert recorded_cluster(cfg) is None
    for port in (7003, 7001, 7002):
        (tmp_path / "redis-cluster" / f"node-{port}").mkdir(parents=True)
    (tmp_path / "redis-cluster" / "create.log").write_text("")
    layout = recorded_cluster(cfg)
    assert layout is not None and layout.ports == (7001, 7002, 7003)
