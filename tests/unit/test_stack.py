"""The stack manager's pure parts and process handling, without Kafka or Redis."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
from pathlib import Path

import pytest

from attune import stack, supervisor
from attune.config import AttuneConfig, TopicConfig, free_port, load_config
from attune.stack import ComponentStatus, ExistingTopic, StackError, common, kafka, plan_topics
from attune.stack import cli as stack_cli
from attune.stack import redis as stack_redis


def _cfg(tmp_path: Path, **env: str) -> AttuneConfig:
    return load_config(None, environ={"ATTUNE__PATHS__VAR_DIR": str(tmp_path / "var"), **env})


def _topic(name: str, partitions: int = 3, **kw: object) -> TopicConfig:
    return TopicConfig(name=name, partitions=partitions, key="k", **kw)  # type: ignore[arg-type]


def _existing(
    name: str,
    partitions: int = 3,
    rf: int = 1,
    retention: str = "604800000",
    policy: str = "delete",
) -> ExistingTopic:
    return ExistingTopic(
        name=name,
        partitions=partitions,
        replication_factor=rf,
        configs={"retention.ms": retention, "cleanup.policy": policy},
    )


# ----------------------------------------------------------------------------------------
# plan_topics


def test_plan_creates_missing_topics() -> None:
    declared = {"a": _topic("t.a"), "b": _topic("t.b")}
    plan = plan_topics(declared, {})
    assert [t.name for t in plan.create] == ["t.a", "t.b"]
    assert (plan.add_partitions, plan.alter_configs, plan.problems) == ({}, {}, {})


def test_plan_leaves_matching_topics_alone() -> None:
    plan = plan_topics({"a": _topic("t.a")}, {"t.a": _existing("t.a")})
    assert plan.unchanged == ["t.a"]
    assert (plan.create, plan.add_partitions, plan.alter_configs, plan.problems) == ([], {}, {}, {})


def test_plan_adds_partitions_up_to_the_declared_count() -> None:
    plan = plan_topics({"a": _topic("t.a", 6)}, {"t.a": _existing("t.a", 3)})
    assert plan.add_partitions == {"t.a": (3, 6)}
    assert plan.problems == {}


def test_plan_reports_more_partitions_than_declared_with_the_way_out() -> None:
    plan = plan_topics({"events": _topic("t.a", 2)}, {"t.a": _existing("t.a", 4)})
    assert plan.add_partitions == {}
    [message] = plan.problems["t.a"]
    assert "has 4 partitions but kafka.topics.events.partitions is 2" in message
    assert "cannot remove partitions" in message
    assert "Set kafka.topics.events.partitions to 4" in message


def test_plan_reports_another_replication_factor() -> None:
    plan = plan_topics({"a": _topic("t.a")}, {"t.a": _existing("t.a", rf=3)})
    [message] = plan.problems["t.a"]
    assert "replication factor 3" in message
    assert "kafka.topics.a.replication_factor is 1" in message


def test_plan_sets_configs_that_differ() -> None:
    declared = {"a": _topic("t.a", retention_ms=-1, cleanup_policy="compact")}
    plan = plan_topics(declared, {"t.a": _existing("t.a", retention="1000", policy="compact")})
    assert plan.alter_configs == {"t.a": {"retention.ms": "-1"}}
    assert plan.unchanged == []


def test_plan_compares_cleanup_policy_as_a_set() -> None:
    declared = {"a": _topic("t.a", cleanup_policy="compact,delete")}
    plan = plan_topics(declared, {"t.a": _existing("t.a", policy="delete, compact")})
    assert plan.alter_configs == {}
    assert plan.unchanged == ["t.a"]


def test_plan_rejects_two_roles_naming_one_topic() -> None:
    plan = plan_topics({"a": _topic("same"), "b": _topic("same")}, {})
    [message] = plan.problems["same"]
    assert "kafka.topics.b and kafka.topics.a both name topic 'same'" in message
    assert [t.name for t in plan.create] == ["same"]


# ----------------------------------------------------------------------------------------
# Generated files


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return dict(pairs)


def test_server_properties_for_one_kraft_node(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ATTUNE__KAFKA__BROKER__PORT="9192", ATTUNE__KAFKA__BROKER__HEAP="2g")
    props = _properties(stack.kafka_server_properties(cfg, tmp_path / "data"))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9192,CONTROLLER://127.0.0.1:9093"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    assert "controller.quorum.voters" not in props  # incompatible with `format --standalone`
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["num.partitions"] == "3"


def test_server_properties_for_node_two_of_a_three_node_cluster(tmp_path: Path) -> None:
    from attune.stack.kafka import with_brokers

    cfg = with_brokers(_cfg(tmp_path), 3)
    props = _properties(stack.kafka_server_properties(cfg, tmp_path / "data", 2))
    # node 2: 9092 + 2 * 100 and 9093 + 2 * 100; node ids 1, 2, 3
    assert props["node.id"] == "3"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9292,CONTROLLER://127.0.0.1:9293"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293"
    )
    assert "controller.quorum.bootstrap.servers" not in props
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"


def test_with_brokers_points_every_client_and_topic_at_the_cluster(tmp_path: Path) -> None:
    from attune.stack.kafka import cluster_replication, cluster_settings, with_brokers

    assert [cluster_replication(n) for n in (1, 2, 3, 5)] == [(1, 1), (2, 1), (3, 2), (3, 2)]
    cfg = with_brokers(_cfg(tmp_path), 3)
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292"
    events = cfg.kafka.topic("events")
    assert (events.replication_factor, events.min_insync_replicas) == (3, 2)
    assert events.topic_configs()["min.insync.replicas"] == "2"
    env = cluster_settings(cfg)
    assert env["ATTUNE__KAFKA__BROKER__NODES"] == "3"
    assert env["ATTUNE__KAFKA__TOPICS__EVENTS__MIN_INSYNC_REPLICAS"] == "2"
    # the printed variables load back into the same settings
    again = _cfg(tmp_path, **env)
    assert again.kafka.bootstrap_servers == cfg.kafka.bootstrap_servers
    assert again.kafka.topic("catalog").replication_factor == 3


def test_min_insync_above_replication_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no write could succeed"):
        _cfg(tmp_path, ATTUNE__KAFKA__TOPICS__EVENTS__MIN_INSYNC_REPLICAS="2")


def test_log4j2_config_writes_to_the_given_file(tmp_path: Path) -> None:
    xml = stack.kafka_log4j2_xml(tmp_path / "kafka.log")
    assert f'fileName="{tmp_path}/kafka.log"' in xml
    assert '<Root level="INFO"><AppenderRef ref="file"/></Root>' in xml


def test_redis_conf_persists_with_an_append_only_file(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ATTUNE__REDIS__PORT="6390", ATTUNE__REDIS__HOST="localhost")
    lines = set(stack.redis_conf(cfg, stack.stack_paths(cfg)).splitlines())
    assert {"port 6390", "bind 127.0.0.1", "appendonly yes", "appendfsync everysec"} <= lines
    assert "daemonize no" in lines
    assert f'dir "{tmp_path}/var/redis"' in lines
    assert f'logfile "{tmp_path}/var/log/redis.log"' in lines


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java on PATH")
def test_class_archive_is_made_once_and_renamed_when_jars_change(tmp_path: Path) -> None:
    paths = stack.stack_paths(_cfg(tmp_path))
    paths.kafka_jars.mkdir(parents=True)
    paths.kafka_dir.mkdir(parents=True)
    (paths.kafka_jars / "kafka_2.13-4.1.1.jar").write_bytes(b"v1")
    archive = stack.kafka_class_archive(paths)
    # no archive yet: the broker is asked to write one when it exits
    assert kafka.class_sharing_flags(paths) == [f"-XX:ArchiveClassesAtExit={archive}"]
    archive.write_bytes(b"archive")
    assert kafka.class_sharing_flags(paths) == ["-Xshare:auto", f"-XX:SharedArchiveFile={archive}"]
    # other jars: another name, and the old archive is removed
    (paths.kafka_jars / "kafka_2.13-4.1.1.jar").write_bytes(b"v2, longer")
    renamed = stack.kafka_class_archive(paths)
    assert renamed != archive
    assert kafka.class_sharing_flags(paths) == [f"-XX:ArchiveClassesAtExit={renamed}"]
    assert not archive.exists()


def test_cluster_ids_are_22_char_base64url_of_16_bytes() -> None:
    ids = {stack.kafka_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_bootstrap_addresses() -> None:
    cfg = load_config(None, environ={"ATTUNE__KAFKA__BOOTSTRAP_SERVERS": "a:1, b:2,c"})
    assert stack.bootstrap_addresses(cfg) == [("a", 1), ("b", 2), ("c", 9092)]


# ----------------------------------------------------------------------------------------
# The stack's pid records: one process per address and data folder (the process handling
# itself is tested in test_supervisor.py)


def _sleeper(tmp_path: Path, address: str) -> tuple[supervisor.Child, Path]:
    pid_file = tmp_path / "sleeper.pid"
    child = supervisor.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)", "attune-test-sleeper"],
        name="sleeper",
        log=tmp_path / "sleeper.out",
        detached=True,
        pid_file=pid_file,
        address=address,
    )
    return child, pid_file


def _is_sleeper(cmdline: str) -> bool:
    return "attune-test-sleeper" in cmdline


def test_owned_pid_checks_the_program_and_the_address(tmp_path: Path) -> None:
    child, pid_file = _sleeper(tmp_path, "127.0.0.1:7001")
    try:
        assert common.owned_pid(pid_file, _is_sleeper, "127.0.0.1:7001") == child.pid
        # a live pid running another program (e.g. reused after a reboot) is not ours
        assert common.owned_pid(pid_file, lambda cmd: "redis-server" in cmd, "x") is None
        assert not pid_file.exists()
    finally:
        child.stop(5)


def test_a_caller_with_other_ports_does_not_disown_a_live_process(tmp_path: Path) -> None:
    child, pid_file = _sleeper(tmp_path, "127.0.0.1:7001")
    try:
        # status/down with another address: not theirs, but the record stays for its owner
        assert common.owned_pid(pid_file, _is_sleeper, "127.0.0.1:7002") is None
        assert pid_file.exists()
        # up with another address refuses instead of starting a second server on the same data
        with pytest.raises(
            StackError, match=r"records a sleeper attune started for 127\.0\.0\.1:7001"
        ):
            common.recorded_for(pid_file, _is_sleeper, "127.0.0.1:7002", "sleeper")
        assert common.recorded_for(pid_file, _is_sleeper, "127.0.0.1:7001", "sleeper") == child.pid
    finally:
        child.stop(5)


def test_a_broker_started_by_an_earlier_version_is_still_found(tmp_path: Path) -> None:
    # before pid records were JSON, the stack wrote "PID ADDRESS"
    child, pid_file = _sleeper(tmp_path, "unused")
    try:
        pid_file.write_text(f"{child.pid} 127.0.0.1:7001\n")
        assert common.owned_pid(pid_file, _is_sleeper, "127.0.0.1:7001") == child.pid
    finally:
        child.stop(5)


def test_wait_until_fails_with_a_stack_error_and_progress_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    child, _ = _sleeper(tmp_path, "-")
    try:
        with pytest.raises(StackError, match=r"^thing: not ready after 4s \(port not open\)"):
            common.wait_until("thing", lambda: "port not open", 3.6, child.pid, logs=[])
    finally:
        child.stop(5)
    # a progress line every 3 s, as `attune stack up` prints them
    assert "stack: waiting for thing: port not open (3s of at most 4s)" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------
# Refusals with a way out (no services involved: the ports used are free)


def test_kafka_up_refuses_when_clients_would_not_reach_the_broker(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        ATTUNE__KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        ATTUNE__KAFKA__BROKER__PORT=str(free_port()),
    )
    with pytest.raises(StackError, match="Make them agree"):
        stack.kafka_up(cfg)


def test_kafka_up_without_jars_says_make_jars(tmp_path: Path) -> None:
    port = free_port()
    cfg = _cfg(
        tmp_path,
        ATTUNE__KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
        ATTUNE__KAFKA__BROKER__PORT=str(port),
        ATTUNE__KAFKA__BROKER__CONTROLLER_PORT=str(free_port()),
    )
    with pytest.raises(StackError, match=r"make jars"):
        stack.kafka_up(cfg)


def test_create_topics_without_kafka_says_so(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ATTUNE__KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    with pytest.raises(StackError, match=r"cannot reach Kafka at 127\.0\.0\.1:\d+ to create"):
        stack.create_topics(cfg)


def test_redis_up_unmanaged_and_absent(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ATTUNE__REDIS__PORT=str(free_port()), ATTUNE__REDIS__MANAGE="false")
    with pytest.raises(StackError, match=r"redis\.manage is false"):
        stack.redis_up(cfg)


def test_redis_install_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = stack_redis.shutil.which
    monkeypatch.setattr(
        stack_redis.shutil,
        "which",
        lambda name: None if name == "redis-server" else real_which(name),
    )
    monkeypatch.setattr(stack_redis.os, "geteuid", lambda: 1000)
    if real_which("apt-get") is None:
        pytest.skip("no apt-get on this machine")
    with pytest.raises(StackError, match="installing needs root"):
        stack.ensure_redis_server()


def test_down_with_nothing_running_is_a_no_op(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _cfg(tmp_path)
    stack.stack_down(cfg)
    out = capsys.readouterr().out
    assert "Kafka is not running" in out and "Redis is not running" in out


# ----------------------------------------------------------------------------------------
# attune stack status


def _fake_status(healthy: bool) -> list[ComponentStatus]:
    return [
        ComponentStatus("kafka", "127.0.0.1:9092", True, "ok"),
        ComponentStatus("redis", "127.0.0.1:6379", healthy, "ok" if healthy else "down"),
    ]


@pytest.mark.parametrize("healthy, code", [(True, 0), (False, 1)])
def test_status_json_and_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], healthy: bool, code: int
) -> None:
    monkeypatch.setattr(stack_cli, "component_status", lambda cfg: _fake_status(healthy))
    assert stack_cli.cmd_status(AttuneConfig(), argparse.Namespace(json=True)) == code
    assert json.loads(capsys.readouterr().out) == [
        {"component": "kafka", "address": "127.0.0.1:9092", "healthy": True, "detail": "ok"},
        {
            "component": "redis",
            "address": "127.0.0.1:6379",
            "healthy": healthy,
            "detail": "ok" if healthy else "down",
        },
    ]


def test_status_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(stack_cli, "component_status", lambda cfg: _fake_status(False))
    assert stack_cli.cmd_status(AttuneConfig(), argparse.Namespace(json=False)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "kafka  127.0.0.1:9092  up    ok",
        "redis  127.0.0.1:6379  DOWN  down",
    ]
