"""``attune stack up | down | topics | status`` (wired in :mod:`attune.cli`)."""

from __future__ import annotations

import argparse
import json
import sys

from attune.config import AttuneConfig
from attune.stack import StackError, component_status, create_topics, stack_down, stack_up


def cmd_up(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    from attune.stack.kafka import cluster_settings, with_brokers

    brokers = getattr(args, "brokers", None)
    if brokers is not None:
        cfg = with_brokers(cfg, brokers)
    try:
        stack_up(cfg)
    except StackError as exc:
        print(f"attune stack up: {exc}", file=sys.stderr)
        return 1
    if brokers is not None and brokers > 1:
        print(
            f"attune stack up: a {brokers}-broker cluster; every attune process must use it "
            "too (put these in the config, or export them):"
        )
        for name, value in cluster_settings(cfg).items():
            print(f"  export {name}={value}")
    masters = getattr(args, "redis_masters", None)
    if masters is not None:
        return _redis_cluster_up(cfg, masters)
    return 0


def _redis_cluster_up(cfg: AttuneConfig, masters: int) -> int:
    """``--redis-masters N``: the local Redis Cluster (:mod:`attune.stack.redis_cluster`)."""
    from attune.stack import redis_cluster

    try:
        layout = redis_cluster.cluster_layout(cfg, masters)
        redis_cluster.redis_cluster_up(layout)
    except StackError as exc:
        print(f"attune stack up: {exc}", file=sys.stderr)
        return 1
    print(
        f"attune stack up: a Redis Cluster of {masters} masters; to use it instead of the "
        "Redis at redis.port, put these in the config, or export them:"
    )
    for name, value in redis_cluster.cluster_settings(layout).items():
        print(f"  export {name}={value}")
    return 0


def cmd_down(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    try:
        stack_down(cfg)
    except StackError as exc:
        print(f"attune stack down: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_topics(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """Create the declared topics on whatever broker ``kafka.bootstrap_servers`` names (used by
    docker/compose.yaml, where Kafka is not started by attune)."""
    try:
        create_topics(cfg)
    except StackError as exc:
        print(f"attune stack topics: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_status(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    try:
        statuses = component_status(cfg)
    except StackError as exc:
        print(f"attune stack status: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        width = max(len(s.component) for s in statuses)
        addr_width = max(len(s.address) for s in statuses)
        for s in statuses:
            health = "up" if s.healthy else "DOWN"
            print(f"{s.component:<{width}}  {s.address:<{addr_width}}  {health:<4}  {s.detail}")
    return 0 if all(s.healthy for s in statuses) else 1


# ----------------------------------------------------------------------------------------
# attune airflow up | down | status | trigger


def cmd_airflow_up(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    from attune.stack.airflow import airflow_up

    try:
        airflow_up(cfg)
    except StackError as exc:
        print(f"attune airflow up: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_airflow_down(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    from attune.stack.airflow import airflow_down

    airflow_down(cfg)
    return 0


def cmd_airflow_status(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    from attune.stack.airflow import airflow_status

    statuses = airflow_status(cfg)
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        width = max(len(s.component) for s in statuses)
        for s in statuses:
            health = "up" if s.healthy else "DOWN"
            print(f"{s.component:<{width}}  {s.address}  {health:<4}  {s.detail}")
    return 0 if all(s.healthy for s in statuses) else 1


def cmd_airflow_trigger(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune airflow trigger DAG [--date D] [--conf JSON] [--wait]``: unpause, trigger, and
    (with ``--wait``) follow the run task by task; exit 0 only for a successful run."""
    from datetime import date

    from attune.config import ConfigError
    from attune.stack.airflow_client import AirflowClient

    try:
        conf = json.loads(args.conf) if args.conf else {}
        day = date.fromisoformat(args.date) if args.date else None
    except ValueError as exc:
        raise ConfigError(f"--conf must be a JSON object and --date YYYY-MM-DD: {exc}") from None
    try:
        with AirflowClient.from_config(cfg) as client:
            client.wait_for_dags([args.dag], timeout_s=60)
            client.set_paused(args.dag, False)
            run_id = client.trigger(args.dag, day, conf)
            print(f"airflow: triggered {args.dag} run {run_id}")
            if not args.wait:
                return 0
            result = client.wait_run(args.dag, run_id, args.timeout)
    except StackError as exc:
        print(f"attune airflow trigger: {exc}", file=sys.stderr)
        return 1
    print(f"airflow: {args.dag} run {run_id}: {result.state} in {result.seconds:.0f} s")
    return 0 if result.state == "success" else 1
