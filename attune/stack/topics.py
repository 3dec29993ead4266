"""The Kafka topics: declared once in ``cfg.kafka.topics`` and made so on the broker.

:func:`plan_topics` compares the declared topics with what the broker reports (pure, no I/O);
:func:`create_topics` carries the plan out: creates missing topics, adds partitions, sets
retention and cleanup policy, and says what Kafka cannot change in place.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from attune.config import AttuneConfig, TopicConfig
from attune.stack.common import ComponentStatus, StackError, say
from attune.stack.kafka import any_bootstrap_open, kafka_admin

if TYPE_CHECKING:
    from kafka.admin import KafkaAdminClient

TOPICS_READY_TIMEOUT_S = 30.0

# Topic settings attune declares and keeps in line with the config.
MANAGED_TOPIC_CONFIGS = ("retention.ms", "cleanup.policy", "min.insync.replicas")


@dataclass(frozen=True)
class ExistingTopic:
    """What the broker reports about a topic."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]
    leaderless: tuple[int, ...] = ()


@dataclass
class TopicPlan:
    """What ``create_topics`` must do to make the broker match the declared topics."""

    create: list[TopicConfig] = field(default_factory=list)
    add_partitions: dict[str, tuple[int, int]] = field(default_factory=dict)  # (now, declared)
    alter_configs: dict[str, dict[str, str]] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)  # topic name -> problems
    unchanged: list[str] = field(default_factory=list)

    def problem(self, topic: str, message: str) -> None:
        self.problems.setdefault(topic, []).append(message)

    def all_problems(self) -> list[str]:
        return [m for messages in self.problems.values() for m in messages]


def _partitions(n: int) -> str:
    return f"{n} partition" if n == 1 else f"{n} partitions"


def _same_config(key: str, a: str, b: str) -> bool:
    if key == "cleanup.policy":  # a list: "compact,delete" == "delete,compact"
        return sorted(a.replace(" ", "").split(",")) == sorted(b.replace(" ", "").split(","))
    return a == b


def plan_topics(
    declared: Mapping[str, TopicConfig], existing: Mapping[str, ExistingTopic]
) -> TopicPlan:
    """Compare the declared topics (role -> config) with the broker's; pure, no I/O.

    Missing topics are created; too few partitions are added (Kafka can add partitions);
    configs that differ are set to the declared value. What Kafka cannot change in place
    (fewer partitions, another replication factor) becomes a problem with the way out.
    """
    plan = TopicPlan()
    seen: dict[str, str] = {}
    for role, topic in declared.items():
        where = f"kafka.topics.{role}"
        if topic.name in seen:
            plan.problem(
                topic.name,
                f"{where} and kafka.topics.{seen[topic.name]} both name topic {topic.name!r}; "
                "give each role its own topic",
            )
            continue
        seen[topic.name] = role
        have = existing.get(topic.name)
        if have is None:
            plan.create.append(topic)
            continue
        changed = False
        if have.partitions < topic.partitions:
            plan.add_partitions[topic.name] = (have.partitions, topic.partitions)
            changed = True
        elif have.partitions > topic.partitions:
            plan.problem(
                topic.name,
                f"topic {topic.name!r} has {have.partitions} partitions but "
                f"{where}.partitions is {topic.partitions}; Kafka cannot remove partitions. "
                f"Set {where}.partitions to {have.partitions}, or delete the topic (its data "
                "is lost) and run `attune stack up` again",
            )
        if have.replication_factor != topic.replication_factor:
            plan.problem(
                topic.name,
                f"topic {topic.name!r} has replication factor {have.replication_factor} but "
                f"{where}.replication_factor is {topic.replication_factor}; attune does not "
                f"reassign replicas. Set {where}.replication_factor to "
                f"{have.replication_factor}, or delete and recreate the topic",
            )
        wanted = topic.topic_configs()
        diff = {
            k: v
            for k, v in wanted.items()
            if k not in have.configs or not _same_config(k, have.configs[k], v)
        }
        if diff:
            plan.alter_configs[topic.name] = diff
            changed = True
        if not changed:
            plan.unchanged.append(topic.name)
    return plan


def existing_topics(admin: KafkaAdminClient, names: list[str]) -> dict[str, ExistingTopic]:
    from kafka.admin import ConfigResource, ConfigResourceType

    described = [t for t in admin.describe_topics(names) if t.get("error_code", 0) == 0]
    if not described:
        return {}
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, t["name"], list(MANAGED_TOPIC_CONFIGS))
        for t in described
    ]
    configs = admin.describe_configs(resources, config_filter="all").get("topic", {})
    out = {}
    for t in described:
        parts = t.get("partitions", [])
        out[t["name"]] = ExistingTopic(
            name=t["name"],
            partitions=len(parts),
            replication_factor=max((len(p.get("replica_nodes", [])) for p in parts), default=0),
            configs={k: str(v.get("value")) for k, v in configs.get(t["name"], {}).items()},
            leaderless=tuple(
                sorted(p["partition_index"] for p in parts if p.get("leader_id", -1) < 0)
            ),
        )
    return out


def create_topics(cfg: AttuneConfig) -> None:
    """Make the broker's topics match ``cfg.kafka.topics``; idempotent.

    Creates missing topics, adds partitions up to the declared count, sets retention and
    cleanup policy to the declared values, then waits until every partition has a leader.
    Raises :class:`StackError` listing whatever could not be made to match.
    """
    from kafka.errors import TopicAlreadyExistsError, for_code

    declared = cfg.kafka.topics
    names = [t.name for t in declared.values()]
    with ExitStack() as exits:
        try:
            if not any_bootstrap_open(cfg):
                raise ConnectionRefusedError("no bootstrap server accepts connections")
            admin = exits.enter_context(kafka_admin(cfg, 10.0))
        except Exception as exc:
            raise StackError(
                f"cannot reach Kafka at {cfg.kafka.bootstrap_servers} to create the topics "
                f"({type(exc).__name__}: {exc}); start it with `attune stack up`"
            ) from None
        plan = plan_topics(declared, existing_topics(admin, names))
        failures = plan.all_problems()
        not_created: set[str] = set()
        by_name = declared_by_name(cfg)
        if plan.create:
            request = {
                t.name: {
                    "num_partitions": t.partitions,
                    "replication_factor": t.replication_factor,
                    "configs": t.topic_configs(),
                }
                for t in plan.create
            }
            response = admin.create_topics(request, raise_errors=False)
            for result in response.get("topics", []):
                error = for_code(result.get("error_code", 0))
                topic = by_name[result["name"]]
                if result.get("error_code", 0) == 0 or error is TopicAlreadyExistsError:
                    say(
                        f"created topic {topic.name} ({_partitions(topic.partitions)}, "
                        f"replication {topic.replication_factor}, "
                        + ", ".join(f"{k}={v}" for k, v in topic.topic_configs().items())
                        + ")"
                    )
                else:
                    not_created.add(topic.name)
                    failures.append(
                        f"creating topic {result['name']!r} failed: {error.__name__}: "
                        f"{result.get('error_message') or ''} (check the declared partitions, "
                        "replication factor and configs; this stack has one broker)"
                    )
        for name, (now, wanted) in plan.add_partitions.items():
            try:
                admin.create_partitions({name: wanted}, raise_errors=True)
            except Exception as exc:
                failures.append(f"adding partitions to topic {name!r} failed: {exc}")
            else:
                say(f"topic {name}: partitions {now} -> {wanted}")
        if plan.alter_configs:
            from kafka.admin import ConfigResource, ConfigResourceType

            resources = [
                ConfigResource(ConfigResourceType.TOPIC, name, dict(changes))
                for name, changes in plan.alter_configs.items()
            ]
            try:
                results = admin.alter_configs(resources).get("topic", {})
            except Exception as exc:
                results = {name: f"{type(exc).__name__}: {exc}" for name in plan.alter_configs}
            for name, changes in plan.alter_configs.items():
                outcome = results.get(name, "no answer")
                if outcome == "OK":
                    say(f"topic {name}: set " + ", ".join(f"{k}={v}" for k, v in changes.items()))
                else:
                    failures.append(f"changing the configs of topic {name!r} failed: {outcome}")
        for name in plan.unchanged:
            say(f"topic {name} exists as declared")
        ready = [n for n in names if n not in not_created]
        try:
            admin.wait_for_topics(ready, timeout_ms=int(TOPICS_READY_TIMEOUT_S * 1000))
        except Exception as exc:
            failures.append(f"topics not ready: {exc}")
        # New partitions and config changes reach the broker's metadata asynchronously (KRaft):
        # wait until describing the topics shows them, so a caller reads back what it declared.
        deadline = time.monotonic() + TOPICS_READY_TIMEOUT_S
        while (plan.alter_configs or plan.add_partitions) and time.monotonic() < deadline:
            settled = plan_topics(declared, existing_topics(admin, names))
            if not settled.alter_configs and not settled.add_partitions:
                break
            time.sleep(0.2)
    if failures:
        raise StackError(
            "the Kafka topics do not match kafka.topics in the config:\n"
            + "\n".join(f"  - {f}" for f in failures)
        )


def declared_by_name(cfg: AttuneConfig) -> dict[str, TopicConfig]:
    return {t.name: t for t in cfg.kafka.topics.values()}


def topic_statuses(
    cfg: AttuneConfig, existing: dict[str, ExistingTopic] | None
) -> list[ComponentStatus]:
    """One status per declared topic (``existing`` None: Kafka is not answering)."""
    out = []
    address = cfg.kafka.bootstrap_servers
    plan = plan_topics(cfg.kafka.topics, existing or {})
    for role, topic in cfg.kafka.topics.items():
        component = f"topic:{topic.name}"
        if existing is None:
            out.append(ComponentStatus(component, address, False, "Kafka is not answering"))
            continue
        have = existing.get(topic.name)
        if have is None:
            detail = f"missing (kafka.topics.{role}); create it with `attune stack up`"
            out.append(ComponentStatus(component, address, False, detail))
            continue
        issues = list(plan.problems.get(topic.name, []))
        if topic.name in plan.add_partitions:
            now, wanted = plan.add_partitions[topic.name]
            issues.append(f"{now} partitions, {wanted} declared (`attune stack up` adds them)")
        if topic.name in plan.alter_configs:
            issues.append(
                "configs differ: "
                + ", ".join(
                    f"{k}={have.configs.get(k)} (declared {v})"
                    for k, v in plan.alter_configs[topic.name].items()
                )
            )
        if have.leaderless:
            issues.append(f"no leader for partitions {list(have.leaderless)}")
        summary = (
            f"{_partitions(have.partitions)}, replication {have.replication_factor}, "
            + ", ".join(f"{k}={have.configs.get(k)}" for k in MANAGED_TOPIC_CONFIGS)
        )
        detail = summary + ("; " + "; ".join(issues) if issues else "")
        out.append(ComponentStatus(component, address, not issues, detail))
    return out
