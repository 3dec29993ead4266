"""attune's one configuration object.

Every process (collector, stack manager, streaming job, batch job, trainer, server) receives an
:class:`AttuneConfig` as an argument. It is loaded once, at the process entry point, by
:func:`load_config` from three layers, later ones winning:

1. the embedded defaults (the models below; enough to run the whole demo on one machine),
2. an optional YAML file (``--config FILE`` or the ``ATTUNE_CONFIG`` environment variable),
3. environment overrides named ``ATTUNE__SECTION__KEY`` (double underscores separate levels),
   e.g. ``ATTUNE__KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or ``ATTUNE__COLLECTOR__PORT=9000``.
   Values are parsed as YAML scalars, so ``true``, ``42`` and ``[a, b]`` mean what they say.

Unknown keys are errors, not silently ignored: a typo such as ``kafka.bootstrap_server`` is
reported with the file (or variable) it came from and the key path.

Secrets (the pseudonymization key, write keys) are never config values: the config names the
files that hold them, and :mod:`attune.secrets` reads and creates those files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "ATTUNE__"
CONFIG_ENV = "ATTUNE_CONFIG"


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message says where and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    """Where runtime state lives. Relative paths are resolved against ``var_dir``."""

    var_dir: Path = Field(Path("var"), description="Root of all runtime state (git-ignored).")
    data_dir: Path = Field(
        Path("../shared/data"), description="Folder with the real datasets (see its README)."
    )

    def resolve(self, path: Path | str) -> Path:
        """``path`` as an absolute path; relative paths are taken under ``var_dir``."""
        p = Path(path)
        return p if p.is_absolute() else (self.var_dir / p).absolute()


class TopicConfig(_Section):
    """One Kafka topic, created by ``attune stack up`` exactly as declared here."""

    name: str
    partitions: int = Field(3, ge=1)
    replication_factor: int = Field(1, ge=1)
    retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=-1, description="-1 keeps forever.")
    cleanup_policy: Literal["delete", "compact", "compact,delete"] = "delete"
    key: str = Field(description="What the record key is (documentation and checks).")
    description: str = ""

    def topic_configs(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


def _default_topics() -> dict[str, TopicConfig]:
    return {
        "events": TopicConfig(
            name="attune.events",
            partitions=6,
            retention_ms=7 * 24 * 3600 * 1000,
            key="pseudonymized user id (anonymous id when there is no user)",
            description="Every accepted user event, JSON envelope (attune.events).",
        ),
        "dead_letter": TopicConfig(
            name="attune.events.dead-letter",
            partitions=1,
            retention_ms=30 * 24 * 3600 * 1000,
            key="source name",
            description="Rejected events with the reasons; user ids pseudonymized.",
        ),
        "catalog": TopicConfig(
            name="attune.catalog",
            partitions=3,
            retention_ms=-1,
            cleanup_policy="compact",
            key="item id",
            description="Latest item metadata per item (title, categories, attributes).",
        ),
    }


class BrokerConfig(_Section):
    """The local single-node KRaft broker that ``attune stack up`` runs from the Kafka jars."""

    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = Field("1g", description="JVM -Xmx for the broker.")
    num_partitions_default: int = 3


class ProducerConfig(_Section):
    """kafka-python producer settings used by the collector and the replay tool."""

    acks: Literal["all"] = "all"
    compression_type: Literal["lz4", "gzip", "zstd", "snappy", "none"] = "lz4"
    linger_ms: int = Field(5, ge=0)
    batch_size: int = Field(256 * 1024, ge=1024)
    buffer_memory: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    max_block_ms: int = Field(5000, ge=100)
    request_timeout_ms: int = Field(5000, ge=100)
    delivery_timeout_ms: int = Field(15000, ge=1000)


class KafkaConfig(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    broker: BrokerConfig = BrokerConfig()
    producer: ProducerConfig = ProducerConfig()
    topics: dict[str, TopicConfig] = Field(default_factory=_default_topics)

    def topic(self, role: str) -> TopicConfig:
        try:
            return self.topics[role]
        except KeyError:
            raise ConfigError(
                f"no Kafka topic with role {role!r} in kafka.topics; declared roles: "
                f"{', '.join(sorted(self.topics))}"
            ) from None


class RedisConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    manage: bool = Field(
        True, description="Let `attune stack up` start redis-server when none answers."
    )

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


class SparkConfig(_Section):
    master: str = "local[*]"
    app_name: str = "attune"
    jars_dir: Path = Field(
        Path("jars/spark"), description="Local jars copied by Maven (under var_dir if relative)."
    )
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    conf: dict[str, str] = Field(
        default_factory=dict, description="Extra spark.* settings, applied last."
    )


class LakeConfig(_Section):
    root: str = Field("lake", description="Delta Lake root: a folder (under var_dir) or a URI.")


class CollectorConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_events: int = Field(1000, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    ack_timeout_s: float = Field(10.0, gt=0, description="How long to wait for Kafka's ack.")
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with a 503.")
    workers: int = Field(
        1, ge=1, le=64, description="Collector processes (uvicorn workers), each with a producer."
    )
    write_keys_file: Path = Field(
        Path("secrets/write_keys.yaml"), description="source -> sha256 of its write key."
    )


class Consent(_Section):
    analytics: bool = True
    personalization: bool = True
    marketing: bool = False


class PrivacyConfig(_Section):
    pseudonym_key_file: Path = Field(
        Path("secrets/pseudonym.key"),
        description="HMAC key for user ids; created (mode 0600) on first use if missing.",
    )
    default_consent: Consent = Consent()
    drop_without_analytics_consent: bool = Field(
        True,
        description="Events whose analytics consent is false are acknowledged but not stored.",
    )


def _default_affinity_weights() -> dict[str, float]:
    return {
        "item_view": 1.0,
        "click": 1.0,
        "rec_click": 2.0,
        "dwell": 1.0,
        "add_to_cart": 3.0,
        "remove_from_cart": -1.0,
        "checkout": 3.0,
        "purchase": 5.0,
        "rating": 2.0,
        "dismiss": -2.0,
        "not_interested": -3.0,
    }


class FeaturesConfig(_Section):
    """Parameters of the online features; the speed layer and the nightly batch share them.

    Durations take seconds or ISO 8601 (``PT30M``, ``P7D``).
    """

    recent_items: int = Field(50, ge=1, le=1000, description="N of a user's last N items.")
    affinity_half_life: timedelta = Field(
        timedelta(days=7), description="Half-life of the genre/category affinities."
    )
    affinity_weights: dict[str, float] = Field(
        default_factory=_default_affinity_weights,
        description="Weight of one interaction per event type (types absent weigh 0). A "
        "rating weighs weight * (rating - rating_neutral) / rating_neutral.",
    )
    rating_neutral: float = Field(5.0, gt=0, description="Rating that neither helps nor hurts.")
    session_gap: timedelta = Field(
        timedelta(minutes=30),
        description="Inactivity that starts a new session when events carry no session_id.",
    )
    trending_windows: list[timedelta] = Field(
        default_factory=lambda: [timedelta(hours=1), timedelta(hours=24)],
        description="Sliding windows of the per-item trending counts.",
    )
    trending_slices: int = Field(
        12, ge=1, le=240, description="Each trending window slides by window / slices."
    )
    dismissed_items: int = Field(100, ge=1, description="How many dismissed items to keep.")
    ignore_min_impressions: int = Field(
        5, ge=1, description="Impressions of a genre without a click that mark it as ignored."
    )


class OnlineStoreConfig(_Section):
    """The Redis online store's key scheme and retention (see docs/online_store.md)."""

    key_prefix: str = Field("att", pattern=r"^[A-Za-z0-9_.-]+$")
    user_ttl: timedelta = Field(
        timedelta(days=90), description="A user's features expire after this much inactivity."
    )
    dedup_per_user: int = Field(
        2000, ge=10, description="Event ids remembered per user to make replays change nothing."
    )


class SpeedConfig(_Section):
    """The speed layer: Structured Streaming from the events topic to Redis and Delta bronze."""

    trigger: Literal["microbatch", "realtime"] = Field(
        "microbatch",
        description="Trigger of the online (Redis) query: micro-batches, or Spark 4.1's "
        "real-time mode (see docs/speed_layer.md for the measured comparison).",
    )
    online_interval: timedelta = Field(
        timedelta(0), description="Micro-batch interval of the online query (0 = back to back)."
    )
    realtime_batch: timedelta = Field(
        timedelta(seconds=5),
        description="Real-time mode's batch (checkpoint) duration; Spark's minimum is 5 s.",
    )
    bronze_interval: timedelta = Field(
        timedelta(seconds=5), description="Micro-batch interval of the bronze query."
    )
    online_max_offsets: int = Field(
        20_000, ge=1, description="At most this many records per online micro-batch."
    )
    bronze_max_offsets: int = Field(
        200_000, ge=1, description="At most this many records per bronze micro-batch."
    )
    starting_offsets: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a query with a fresh checkpoint starts reading."
    )
    checkpoint_dir: Path = Field(
        Path("checkpoints/speed"), description="One subfolder per query (under var_dir)."
    )
    bronze_table: str = Field("bronze/events", description="Under the lake root.")
    quarantine_table: str = Field("bronze/quarantine", description="Under the lake root.")
    dedup_watermark: timedelta = Field(
        timedelta(hours=1),
        description="Events repeating an event_id within this long (by Kafka time) are dropped.",
    )
    max_future_skew: timedelta = Field(
        timedelta(hours=1),
        description="Events stamped further than this after their receive time are quarantined.",
    )
    no_personalization_consent: Literal["store", "store_unlinked", "drop"] = Field(
        "store",
        description="Bronze policy for events without personalization consent: store as is, "
        "store without user/anonymous/session ids, or drop. They never reach Redis.",
    )
    catalog_source: Literal["topic", "delta"] = Field(
        "topic", description="Item metadata from the catalog topic or a Delta table."
    )
    catalog_table: str = Field(
        "silver/items", description="Delta catalog (item_id, title, year, genres) under the lake."
    )
    catalog_refresh: timedelta = Field(
        timedelta(seconds=10), description="How often to look for catalog changes."
    )
    shuffle_partitions: int = Field(
        4, ge=1, description="State partitions of the bronze query (fixed by its checkpoint)."
    )
    spark_conf: dict[str, str] = Field(
        default_factory=dict, description="Extra spark.* settings for the speed layer's session."
    )
    features: FeaturesConfig = FeaturesConfig()
    online_store: OnlineStoreConfig = OnlineStoreConfig()


class AttuneConfig(_Section):
    """The whole configuration. Every field has a default, so an empty file is valid."""

    paths: PathsConfig = PathsConfig()
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    spark: SparkConfig = SparkConfig()
    lake: LakeConfig = LakeConfig()
    collector: CollectorConfig = CollectorConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    speed: SpeedConfig = SpeedConfig()

    # Convenience resolved paths -------------------------------------------------------
    @property
    def var_dir(self) -> Path:
        return self.paths.var_dir.absolute()

    @property
    def log_dir(self) -> Path:
        return self.paths.resolve("log")

    @property
    def run_dir(self) -> Path:
        return self.paths.resolve("run")

    @property
    def lake_root(self) -> str:
        root = self.lake.root
        if "://" in root:
            return root
        return str(self.paths.resolve(root))


# ----------------------------------------------------------------------------------------
# Loading


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name} conflicts with another override")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"environment variable {name}: value is not valid YAML: {exc}"
            ) from exc
    return tree


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(
                f"  {where}: unknown key; check the spelling against config/attune.example.yaml"
            )
        else:
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid configuration in {origin}:\n" + "\n".join(lines)


def load_config(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> AttuneConfig:
    """Load the configuration: defaults, then ``path`` (or ``$ATTUNE_CONFIG``), then env overrides.

    Raises :class:`ConfigError` naming the file or variable and the key when anything is wrong.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    data: dict[str, Any] = {}
    origin = "the embedded defaults"
    if path is not None:
        p = Path(path)
        origin = str(p)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist (from --config or ${CONFIG_ENV})")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
        try:
            AttuneConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, origin)) from None
    overrides = _env_overrides(env)
    if overrides:
        # Merge into the complete tree (defaults + file), so that overriding one field of one
        # entry of a mapping (e.g. ATTUNE__KAFKA__TOPICS__EVENTS__PARTITIONS) keeps the rest.
        try:
            full = AttuneConfig.model_validate(data).model_dump()
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, origin)) from None
        data = _deep_merge(full, overrides)
        origin = f"{origin} with ATTUNE__* environment overrides"
    try:
        return AttuneConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None
