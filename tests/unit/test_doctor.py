"""`attune doctor`'s rules on hand-made facts, and the command on this machine."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest

from attune.config import AttuneConfig
from attune.doctor import (
    GIB,
    Facts,
    PortUse,
    cmd_doctor,
    java_version,
    judge,
    render,
    version_tuple,
)

SPARK_JARS = (
    "commons-pool2-2.12.1.jar",
    "delta-spark_4.1_2.13-4.1.0.jar",
    "delta-storage-4.1.0.jar",
    "kafka-clients-3.9.1.jar",
    "spark-sql-kafka-0-10_2.13-4.1.1.jar",
    "spark-token-provider-kafka-0-10_2.13-4.1.1.jar",
)
GOOD = Facts(
    python=(3, 11, 7),
    python_exe="/x/.venv/bin/python",
    java="17.0.15",
    maven="3.8.7",
    go="1.24.4",
    redis_server="7.0.15",
    redis_manage=True,
    chromium="/usr/bin/chromium",
    spark_jars_dir="/x/var/jars/spark",
    spark_jars=SPARK_JARS,
    kafka_jars_dir="/x/var/jars/kafka",
    kafka_jars=("kafka_2.13-4.1.1.jar", "kafka-clients-4.1.1.jar"),
    pom={"spark.version": "4.1.1", "delta.version": "4.1.0", "kafka.version": "4.1.1"},
    packages={"pyspark": ("4.1.1", "4.1.1"), "streamlit": ("1.67.0", "1.67.0")},
    ports=(PortUse("api.port", "127.0.0.1", 8000),),
    disk_path="/x/var",
    disk_free=50 * GIB,
    mem_total=24 * GIB,
    mem_available=20 * GIB,
    cpus=2,
)


def by_name(facts: Facts) -> dict[str, tuple[str, str, str]]:
    return {c.name: (c.status, c.detail, c.fix) for c in judge(facts)}


def test_a_ready_machine_passes_every_check() -> None:
    checks = judge(GOOD)
    assert [c.status for c in checks] == ["ok"] * len(checks)
    assert [c.name for c in checks] == [
        "python", "java", "maven", "go", "jars", "packages", "redis-server", "chromium",
        "port api.port", "disk", "memory", "cpus",
    ]  # fmt: skip
    assert render(checks).splitlines()[-1] == "doctor: ready"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("17.0.15", (17, 0, 15)), ("1.24.4", (1, 24, 4)), ("21", (21,)), ("", None), (None, None)],
)
def test_version_tuple(text: str | None, expected: tuple[int, ...] | None) -> None:
    assert version_tuple(text) == expected


def test_java_8_reads_as_8() -> None:
    assert java_version("1.8.0_392") == (8, 0)
    assert java_version("17.0.15") == (17, 0, 15)


def test_old_or_missing_java_fails_with_the_package_to_install() -> None:
    status, detail, fix = by_name(replace(GOOD, java="1.8.0_392"))["java"]
    assert status == "fail" and "1.8.0_392" in detail and "openjdk-17" in fix
    status, detail, fix = by_name(replace(GOOD, java=None))["java"]
    assert status == "fail" and "no `java`" in detail


def test_python_other_than_311_fails() -> None:
    status, detail, fix = by_name(replace(GOOD, python=(3, 12, 1)))["python"]
    assert status == "fail" and "3.12.1" in detail and "PYTHON=" in fix


def test_maven_is_only_needed_while_jars_are_missing() -> None:
    assert by_name(replace(GOOD, maven=None))["maven"][0] == "warn"
    no_jars = replace(GOOD, maven=None, kafka_jars=())
    assert by_name(no_jars)["maven"][0] == "fail"
    status, detail, fix = by_name(no_jars)["jars"]
    assert status == "fail" and "/x/var/jars/kafka/kafka_2.13-*.jar" in detail
    assert "make jars" in fix


def test_a_jar_at_another_version_than_the_pom_is_reported() -> None:
    old = tuple(
        j.replace("delta-spark_4.1_2.13-4.1.0", "delta-spark_4.0_2.13-4.0.0") for j in SPARK_JARS
    )
    status, detail, _ = by_name(replace(GOOD, spark_jars=old))["jars"]
    assert status == "fail"
    assert "delta-spark_*-4.1.0.jar (found delta-spark_4.0_2.13-4.0.0.jar)" in detail


def test_packages_off_the_lock_fail_and_pyspark_must_match_the_pom() -> None:
    facts = replace(GOOD, packages={"pyspark": ("4.1.1", "4.1.1"), "streamlit": (None, "1.67.0")})
    status, detail, fix = by_name(facts)["packages"]
    assert status == "fail" and detail == "streamlit not installed (lock: 1.67.0)"
    assert "make setup" in fix
    facts = replace(GOOD, packages={"pyspark": ("4.0.0", "4.0.0")})
    assert (
        by_name(facts)["packages"][1] == "pyspark 4.0.0 but jvm/spark/pom.xml spark.version 4.1.1"
    )


def test_a_port_taken_by_another_program_names_the_key_and_the_variable() -> None:
    ports = (
        PortUse("api.port", "127.0.0.1", 8000, "nginx (pid 7)", ours=False),
        PortUse("redis.port", "127.0.0.1", 6379, "redis-server (pid 9)", ours=True),
    )
    checks = by_name(replace(GOOD, ports=ports))
    status, detail, fix = checks["port api.port"]
    assert status == "fail" and detail == "127.0.0.1:8000 is taken by nginx (pid 7)"
    assert "`api.port`" in fix and "ATTUNE__API__PORT=<port>" in fix
    assert checks["port redis.port"][0] == "ok"


def test_every_kafka_node_of_a_local_cluster_has_its_ports_checked(cfg: AttuneConfig) -> None:
    from attune.doctor import configured_ports

    broker = cfg.kafka.broker.model_copy(update={"nodes": 3, "port_step": 100})
    three = cfg.model_copy(update={"kafka": cfg.kafka.model_copy(update={"broker": broker})})
    kafka = [(k, port, node) for k, _, port, node in configured_ports(three) if "kafka" in k]
    # by hand: node i at 9092 + 100 i and 9093 + 100 i
    assert kafka == [
        ("kafka.broker.port", 9092, 0),
        ("kafka.broker.controller_port", 9093, 0),
        ("kafka.broker.port", 9192, 1),
        ("kafka.broker.controller_port", 9193, 1),
        ("kafka.broker.port", 9292, 2),
        ("kafka.broker.controller_port", 9293, 2),
    ]
    taken = PortUse("kafka.broker.port", "127.0.0.1", 9292, "java (pid 5)", node=2)
    status, detail, fix = by_name(replace(GOOD, ports=(taken,)))["port kafka.broker.port (node 2)"]
    assert status == "fail" and detail == "127.0.0.1:9292 is taken by java (pid 5)"
    assert "ATTUNE__KAFKA__BROKER__PORT=<port>" in fix and "+ 2 * kafka.broker.port_step" in fix


@pytest.mark.parametrize(
    ("free_gib", "status"), [(1.9, "fail"), (2.0, "warn"), (9.9, "warn"), (10.0, "ok")]
)
def test_disk_thresholds(free_gib: float, status: str) -> None:
    assert by_name(replace(GOOD, disk_free=int(free_gib * GIB)))["disk"][0] == status


@pytest.mark.parametrize(("avail_gib", "status"), [(3.9, "fail"), (4.0, "warn"), (8.0, "ok")])
def test_memory_thresholds(avail_gib: float, status: str) -> None:
    assert by_name(replace(GOOD, mem_available=int(avail_gib * GIB)))["memory"][0] == status


def test_missing_redis_server_is_a_warning_when_the_stack_installs_it() -> None:
    assert by_name(replace(GOOD, redis_server=None))["redis-server"][0] == "warn"
    assert (
        by_name(replace(GOOD, redis_server=None, redis_manage=False))["redis-server"][0] == "fail"
    )


def test_render_shows_the_fix_under_a_failed_check_and_counts() -> None:
    text = render(judge(replace(GOOD, java=None, chromium=None)))
    lines = text.splitlines()
    java = next(i for i, line in enumerate(lines) if line.startswith("FAIL  java"))
    assert lines[java + 1].strip().startswith("fix: apt-get install openjdk-17")
    assert lines[-1] == "doctor: 1 problem(s) to fix first, 1 warning(s)"


def test_the_command_on_this_machine_prints_json_with_every_port(
    cfg: AttuneConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cmd_doctor(cfg, argparse.Namespace(json=True))
    checks = json.loads(capsys.readouterr().out)
    names = {c["name"] for c in checks}
    assert {"python", "java", "jars", "disk", "memory"} <= names
    assert {"port collector.port", "port api.port", "port serving.grpc_port"} <= names
    assert rc == (1 if any(c["status"] == "fail" for c in checks) else 0)


def test_go_is_a_warning_only() -> None:
    assert by_name(replace(GOOD, go=None))["go"][0] == "warn"
    status, detail, _ = by_name(replace(GOOD, go="1.19.2"))["go"]
    assert status == "warn" and "1.19.2" in detail
