"""docker/compose.yaml and docker/Dockerfile, checked without a container engine.

The compose file is loaded by ``var/bin/composecheck`` (``make composecheck``): compose-go, the
loader of ``docker compose`` itself, which validates against the compose-spec schema,
interpolates variables, normalizes and checks consistency (undeclared services, volumes). On the
project it resolves, these tests check what compose cannot know: every attune service's command
is one the ``attune`` CLI accepts, every ``ATTUNE__*`` variable is one ``load_config`` accepts,
the three Kafka brokers form one quorum with attune's topics replicated 3 times and
``min.insync.replicas`` 2, every build target is a stage of the Dockerfile, and the start order
waits on healthchecks that exist. Nothing is pulled, built or started.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from attune.cli import build_parser
from attune.config import ENV_PREFIX, AttuneConfig, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSECHECK = ROOT / "var" / "bin" / "composecheck"

# The variables compose.yaml requires (${VAR:?...}); a user puts them in docker/.env.
REQUIRED_VARIABLES = {
    "POSTGRES_PASSWORD": "pw",
    "AIRFLOW_FERNET_KEY": "fernet",
    "AIRFLOW_SECRET_KEY": "secret",
    "AIRFLOW_JWT_SECRET": "jwt",
}

# Read off docker/compose.yaml by hand: the services whose command is an `attune` command (the
# attune image's entry point). The Spark services run `spark-class`, the Airflow ones `airflow`.
ATTUNE_COMMAND_SERVICES = {"topics", "speed", "collector", "api", "dashboard"}
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
}
BROKERS = {"kafka-1": 1, "kafka-2": 2, "kafka-3": 3}


def run_composecheck(path: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    if not COMPOSECHECK.exists():
        pytest.fail(
            f"{COMPOSECHECK.relative_to(ROOT)} is missing: build it with `make composecheck` "
            "(needs Go; `make test` builds it first)",
            pytrace=False,
        )
    # Only PATH and the given variables: a KAFKA_CLUSTER_ID or password in the caller's
    # environment, or a filled-in docker/.env, must not change what is checked.
    return subprocess.run(
        [str(COMPOSECHECK), "-env-file", os.devnull, str(path)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    done = run_composecheck(COMPOSE, REQUIRED_VARIABLES)
    assert done.returncode == 0, f"compose-go refused {COMPOSE}:\n{done.stderr}"
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


@pytest.fixture(scope="module")
def services(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = project["services"]
    return result


def attune_environ(service: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in (service.get("environment") or {}).items() if k.startswith(ENV_PREFIX)}


def config_of(service: Mapping[str, Any]) -> AttuneConfig:
    """The configuration the service's `attune` process loads (no file, only its variables)."""
    return load_config(None, environ=attune_environ(service))


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> what it is built FROM, read from docker/Dockerfile."""
    stages = {}
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)\s*$", line, re.IGNORECASE)
        if m:
            stages[m.group(2)] = m.group(1)
    return stages


# ----------------------------------------------------------------------------------------
# compose-go loads the file, and refuses broken ones


def test_compose_go_loads_the_file_with_every_service(services: dict[str, Any]) -> None:
    assert set(services) == {
        *BROKERS,
        "redis",
        "topics",
        "spark-master",
        "spark-worker",
        "speed",
        "collector",
        "tf-serving",
        "api",
        "postgres",
        *AIRFLOW_SERVICES,
        "dashboard",
    }


def test_missing_secrets_are_refused_with_where_to_set_them() -> None:
    done = run_composecheck(COMPOSE, {})
    assert done.returncode == 1
    for name in REQUIRED_VARIABLES:
        assert f"required variable {name} is missing a value" in done.stderr
    assert "docker/.env" in done.stderr


def test_the_loader_refuses_an_inconsistent_file(tmp_path: Path) -> None:
    # the check can fail: a dependency on a service that does not exist, and a misspelled key
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  a:\n    image: x\n    depends_on: [b]\n")
    done = run_composecheck(broken, {})
    assert done.returncode == 1
    assert 'depends on undefined service "b"' in done.stderr
    broken.write_text("services:\n  a:\n    image: x\n    helthcheck: {}\n")
    done = run_composecheck(broken, {})
    assert done.returncode == 1
    assert "helthcheck" in done.stderr


# ----------------------------------------------------------------------------------------
# commands


def test_every_attune_service_runs_a_command_the_cli_accepts(services: dict[str, Any]) -> None:
    attune_services = {
        name
        for name, s in services.items()
        if s.get("image", "").startswith("attune-")
        and not s.get("entrypoint")
        and name not in AIRFLOW_SERVICES
    }
    assert attune_services == ATTUNE_COMMAND_SERVICES
    parser = build_parser()
    for name in sorted(attune_services):
        command = services[name]["command"]
        try:
            args = parser.parse_args(command)
        except SystemExit:
            pytest.fail(f"service {name}: `attune {' '.join(command)}` is not an attune command")
        assert callable(args.handler), name
    # the speed layer must stay in the foreground (without it, `start` detaches and exits)
    assert parser.parse_args(services["speed"]["command"]).foreground


def test_a_wrong_command_is_refused_by_the_same_check() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "colector"])


def test_airflow_and_spark_services_run_their_own_processes(services: dict[str, Any]) -> None:
    from attune.stack.airflow import COMPONENTS  # what `attune airflow up` starts

    # the Airflow image's entry point is `airflow` (docker/Dockerfile, target airflow)
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands["airflow-init"] == ["db", "migrate"]
    assert sorted(c[0] for n, c in commands.items() if n != "airflow-init") == sorted(COMPONENTS)
    for name in ("spark-master", "spark-worker"):
        assert services[name]["entrypoint"] == ["spark-class"]
        # pyspark ships spark-class next to the interpreter's scripts, as in the batch image
        assert (Path(sys.executable).parent / "spark-class").exists()
    assert services["spark-master"]["command"][0] == "org.apache.spark.deploy.master.Master"
    assert services["spark-worker"]["command"][:2] == [
        "org.apache.spark.deploy.worker.Worker",
        "spark://spark-master:7077",
    ]


# ----------------------------------------------------------------------------------------
# ATTUNE__* configuration


def test_every_attune_variable_is_accepted_by_load_config(services: dict[str, Any]) -> None:
    configured = {name for name, s in services.items() if attune_environ(s)}
    assert configured == ATTUNE_COMMAND_SERVICES | AIRFLOW_SERVICES
    for name in sorted(configured):
        try:
            config_of(services[name])
        except ConfigError as exc:
            pytest.fail(f"service {name}: {exc}")


def test_a_misspelled_variable_is_refused(services: dict[str, Any]) -> None:
    env = {**attune_environ(services["collector"]), "ATTUNE__COLLECTOR__HOSTS": "0.0.0.0"}
    with pytest.raises(ConfigError, match=r"collector\.hosts: unknown key"):
        load_config(None, environ=env)


def test_servers_listen_everywhere_and_clients_use_service_names(
    services: dict[str, Any],
) -> None:
    collector, api, dashboard = (config_of(services[n]) for n in ("collector", "api", "dashboard"))
    assert collector.collector.host == "0.0.0.0"
    assert api.api.host == "0.0.0.0"
    assert dashboard.dashboard.host == "0.0.0.0"
    # a client (the dashboard, the Airflow tasks' smoke test) reaches them by service name
    assert dashboard.collector.host == "collector"
    assert dashboard.api.host == "api"
    for name in ATTUNE_COMMAND_SERVICES | AIRFLOW_SERVICES:
        cfg = config_of(services[name])
        assert cfg.redis.host == "redis" and cfg.redis.manage is False, name
        assert cfg.spark.master == "spark://spark-master:7077", name
        assert cfg.api.model_server.grpc_target == "tf-serving:8500", name
        assert str(cfg.models.repository_dir) == "/models", name
        assert cfg.models.serving_base_path == "/models", name
        # the image's checkout is /opt/attune: the experiments file ships there
        assert cfg.experiments.file is not None, name
        relative = cfg.experiments.file.relative_to("/opt/attune")
        assert (ROOT / relative).is_file(), name
    # the watchdog DAG runs in the scheduler: it must not start a 2nd speed layer there
    assert config_of(services["airflow-scheduler"]).speed.watchdog.restart is False


def test_spark_drivers_advertise_their_service_name_and_cap_their_cores(
    services: dict[str, Any],
) -> None:
    for name in ("speed", "airflow-scheduler"):
        conf = config_of(services[name]).spark.conf
        assert conf == {"spark.driver.host": name, "spark.cores.max": "2"}
        assert services[name]["hostname"] == name
    # two applications of 2 cores each fit on the worker's 4 at the same time
    assert services["spark-worker"]["environment"]["SPARK_WORKER_CORES"] == "4"


def test_shared_state_is_one_volume_at_the_image_var_dir(services: dict[str, Any]) -> None:
    # the Dockerfile's ATTUNE__PATHS__VAR_DIR is /var/lib/attune; the worker's executors write
    # the same Delta tables as the drivers (`topics` only talks to Kafka: no state)
    for name in (ATTUNE_COMMAND_SERVICES - {"topics"}) | AIRFLOW_SERVICES | {"spark-worker"}:
        mounts = {(v["source"], v["target"]) for v in services[name]["volumes"]}
        assert ("attune-var", "/var/lib/attune") in mounts, name
    models = {
        name: v.get("read_only", False)
        for name, s in services.items()
        for v in s.get("volumes") or []
        if v["source"] == "attune-models"
    }
    # the trainer (in the scheduler) writes the repository; TF Serving and the dashboard read it
    assert models == {"airflow-scheduler": False, "tf-serving": True, "dashboard": True}
    assert "ATTUNE__PATHS__VAR_DIR=/var/lib/attune" in DOCKERFILE.read_text()


# ----------------------------------------------------------------------------------------
# Kafka: 3 brokers, one quorum, replication 3, min.insync.replicas 2


def test_the_three_brokers_form_one_kraft_quorum(services: dict[str, Any]) -> None:
    brokers = {n: s for n, s in services.items() if s["image"].startswith("apache/kafka:")}
    assert set(brokers) == set(BROKERS)
    expected_voters = {(1, "kafka-1:9093"), (2, "kafka-2:9093"), (3, "kafka-3:9093")}
    cluster_ids = set()
    for name, s in brokers.items():
        env = s["environment"]
        assert env["KAFKA_NODE_ID"] == str(BROKERS[name])
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        voters = {
            (int(v.split("@")[0]), v.split("@")[1])
            for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        }
        assert voters == expected_voters, name
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert s["hostname"] == name
        cluster_ids.add(env["CLUSTER_ID"])
        # each broker keeps its own log on its own volume
        assert [(v["source"], v["target"]) for v in s["volumes"]] == [
            (f"{name}-data", env["KAFKA_LOG_DIRS"])
        ]
    assert len(cluster_ids) == 1


def test_topics_get_replication_3_and_min_insync_replicas_2(services: dict[str, Any]) -> None:
    for name, s in services.items():
        if s["image"].startswith("apache/kafka:"):
            env = s["environment"]
            # min.insync.replicas is a broker default: attune's topics set no value of their
            # own (TopicConfig.topic_configs: retention.ms, cleanup.policy), so they get 2
            assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
            assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3", name
            assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3", name
            assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3", name
            assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2", name
            assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", name
    topics_cfg = config_of(services["topics"])
    # the declared roles (attune/config.py, _default_topics): all three, each on 3 brokers
    assert set(topics_cfg.kafka.topics) == {"events", "dead_letter", "catalog"}
    for role, topic in topics_cfg.kafka.topics.items():
        assert topic.replication_factor == 3, role
        assert "min.insync.replicas" not in topic.topic_configs(), role
    for name in ATTUNE_COMMAND_SERVICES | AIRFLOW_SERVICES:
        cfg = config_of(services[name])
        # every process sees the same topics (`attune stack status` compares replication)
        assert cfg.kafka.topics == topics_cfg.kafka.topics, name
        assert cfg.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092,kafka-3:9092", name
    assert services["topics"]["depends_on"] == {
        b: {"condition": "service_healthy", "required": True} for b in BROKERS
    }


# ----------------------------------------------------------------------------------------
# images: every target a Dockerfile stage, every extra a declared one


def test_every_image_is_a_stage_of_the_dockerfile(services: dict[str, Any]) -> None:
    stages = dockerfile_stages()
    assert set(stages) == {
        "jars",
        "base",
        "collector",
        "api",
        "jvm",
        "speed",
        "batch",
        "airflow",
        "dashboard",
    }
    built: dict[str, str] = {}
    for name, s in services.items():
        build = s.get("build")
        if not build:
            continue
        assert Path(build["context"]) / build["dockerfile"] == DOCKERFILE, name
        assert build["target"] in stages, f"service {name}: no stage {build['target']!r}"
        assert s["image"] not in built, f"{s['image']} is built by {built.get(s['image'])} too"
        built[s["image"]] = name
        assert s["image"] == f"attune-{build['target']}:latest", name
    for name, s in services.items():
        if s["image"].startswith("attune-") and not s.get("build"):
            assert s["image"] in built, f"service {name}: no service builds {s['image']}"
            # compose must not try to pull an image that only exists once built here
            assert s.get("pull_policy") == "never", name
    # a stage builds on a registry image or on an earlier stage
    order = list(stages)
    for i, (stage, base) in enumerate(stages.items()):
        assert "/" in base or base in order[:i], f"stage {stage}: FROM {base}"


def test_the_dockerfile_installs_declared_extras_against_the_lock() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    text = DOCKERFILE.read_text()
    installs = re.findall(r"uv pip install [^\n]*(?:\\\n[^\n]*)*", text)
    assert installs
    for line in installs:
        assert "-c requirements.lock" in line, line
    used = {e for group in re.findall(r'"\.\[([a-z,]+)\]"', text) for e in group.split(",")}
    assert used == {
        "collector",
        "api",
        "serving",
        "speed",
        "batch",
        "models",
        "airflow",
        "dashboard",
    }
    assert used <= set(extras)


# ----------------------------------------------------------------------------------------
# start order


def test_start_order_waits_on_healthchecks_that_exist(services: dict[str, Any]) -> None:
    for name, s in services.items():
        for dep, how in (s.get("depends_on") or {}).items():
            target = services[dep]
            if how["condition"] == "service_healthy":
                assert target.get("healthcheck"), f"{name} waits for {dep}'s missing healthcheck"
            elif how["condition"] == "service_completed_successfully":
                # a one-shot: restarted, it would never complete
                assert target.get("restart") == "no", f"{name} waits for {dep} to complete"
    # the loop starts in order: brokers -> topics -> producers and consumers
    for name in ("speed", "collector", "api", "airflow-scheduler"):
        assert services[name]["depends_on"]["topics"]["condition"] == (
            "service_completed_successfully"
        ), name
