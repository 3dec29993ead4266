"""The local stack: one Kafka broker (KRaft) and Redis on this machine, and the declared topics.

``attune stack up`` is what turns a checkout into a running platform:

* **Kafka** (:mod:`attune.stack.kafka`) runs as a single combined broker + controller straight
  from the Apache Kafka jars that ``make jars`` copied into ``var/jars/kafka`` (no Kafka
  distribution, no ZooKeeper). Its settings are written to ``var/kafka/server.properties`` from
  ``cfg.kafka.broker`` on every start, its storage (``var/kafka/data``) is formatted on first
  start, and it logs to ``var/log/kafka.log``. Automatic topic creation is off: only the topics
  declared in ``cfg.kafka.topics`` exist (:mod:`attune.stack.topics`), with the partitions,
  retention and cleanup policy declared there.
* **Redis** (:mod:`attune.stack.redis`) is the Debian ``redis-server`` (installed with apt-get
  when missing), run with a config written to ``var/redis/redis.conf``: append-only file with
  an fsync every second, so the online store survives a restart. A Redis that already answers
  at ``cfg.redis`` is used as it is and never stopped by attune.

Processes are started detached by :mod:`attune.supervisor` (their own session, so they outlive
the CLI) and their pid records are kept in ``var/run/*.pid`` (:mod:`attune.stack.paths` lists
every file); ``attune stack down`` stops only processes recorded there, after checking the pid
still runs the program attune started. Every step is idempotent: running ``up`` on a running
stack checks it and changes nothing that is already right. The CLI handlers are in
:mod:`attune.stack.cli`.
"""

from __future__ import annotations

import time

from attune.config import AttuneConfig
from attune.stack.common import ComponentStatus, StackError, same_endpoint, say, started_by
from attune.stack.kafka import (
    any_bootstrap_open,
    bootstrap_addresses,
    kafka_admin,
    kafka_class_archive,
    kafka_cluster_id,
    kafka_down,
    kafka_log4j2_xml,
    kafka_pid,
    kafka_server_properties,
    kafka_up,
)
from attune.stack.paths import StackPaths, stack_paths
from attune.stack.redis import ensure_redis_server, redis_conf, redis_down, redis_status, redis_up
from attune.stack.topics import (
    ExistingTopic,
    TopicPlan,
    create_topics,
    declared_by_name,
    existing_topics,
    plan_topics,
    topic_statuses,
)

__all__ = [
    "ComponentStatus",
    "ExistingTopic",
    "StackError",
    "StackPaths",
    "TopicPlan",
    "bootstrap_addresses",
    "component_status",
    "create_topics",
    "declared_by_name",
    "ensure_redis_server",
    "kafka_admin",
    "kafka_class_archive",
    "kafka_cluster_id",
    "kafka_down",
    "kafka_log4j2_xml",
    "kafka_server_properties",
    "kafka_up",
    "plan_topics",
    "redis_conf",
    "redis_down",
    "redis_up",
    "stack_down",
    "stack_paths",
    "stack_up",
]


def stack_up(cfg: AttuneConfig) -> list[ComponentStatus]:
    """Kafka, Redis and the topics, each idempotently; returns the final status."""
    start = time.monotonic()
    kafka_up(cfg)
    redis_up(cfg)
    create_topics(cfg)
    statuses = component_status(cfg)
    bad = [s for s in statuses if not s.healthy]
    if bad:
        raise StackError(
            "the stack started but is not healthy:\n"
            + "\n".join(f"  - {s.component} at {s.address}: {s.detail}" for s in bad)
        )
    say(f"up in {time.monotonic() - start:.1f}s:")
    for s in statuses:
        if not s.component.startswith("topic:"):
            say(f"  {s.component:<6} {s.address:<22} {s.detail}")
    say(f"  topics {', '.join(t.name for t in cfg.kafka.topics.values())}")
    return statuses


def stack_down(cfg: AttuneConfig) -> None:
    """Stop what ``stack_up`` started; both components are tried even if one fails."""
    errors = []
    from attune.stack.redis_cluster import stack_redis_cluster_down

    for stop in (kafka_down, redis_down, stack_redis_cluster_down):
        try:
            stop(cfg)
        except (StackError, OSError) as exc:
            errors.append(f"{stop.__name__}: {exc}")
    if errors:
        raise StackError("stopping the stack failed:\n" + "\n".join(errors))


def _kafka_status(cfg: AttuneConfig) -> tuple[ComponentStatus, dict[str, ExistingTopic] | None]:
    address = cfg.kafka.bootstrap_servers
    own = (cfg.kafka.broker.host, cfg.kafka.broker.port)
    ours = any(same_endpoint(own, a) for a in bootstrap_addresses(cfg))
    pid = kafka_pid(cfg) if ours else None
    if not any_bootstrap_open(cfg):
        why = "starting, port not open yet" if pid is not None else "not running"
        hint = f"; start it with `attune stack up` (log: {stack_paths(cfg).kafka_log})"
        return ComponentStatus("kafka", address, False, why + hint), None
    try:
        with kafka_admin(cfg, 3.0) as admin:
            cluster = admin.describe_cluster()
            existing = existing_topics(admin, [t.name for t in cfg.kafka.topics.values()])
    except Exception as exc:
        detail = f"port open but metadata request failed ({type(exc).__name__}: {exc})"
        return ComponentStatus("kafka", address, False, detail), None
    brokers = cluster.get("brokers", [])
    live = [b for b in brokers if not b.get("is_fenced")]
    detail = (
        f"KRaft cluster {cluster.get('cluster_id')}, {len(live)}/{len(brokers)} broker(s) "
        f"unfenced, {started_by(pid)}"
    )
    return ComponentStatus("kafka", address, bool(live), detail), existing


def component_status(cfg: AttuneConfig) -> list[ComponentStatus]:
    """Kafka, Redis and every declared topic, each with its address and health."""
    kafka, existing = _kafka_status(cfg)
    return [kafka, redis_status(cfg), *topic_statuses(cfg, existing)]
