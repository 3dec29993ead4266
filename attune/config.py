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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

ENV_PREFIX = "ATTUNE__"
CONFIG_ENV = "ATTUNE_CONFIG"


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message says where and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    """Where runtime state lives. Relative paths are resolved against ``var_dir``."""

    var_dir: Path = Field(Path("var"), description="Root of all runtime state (git-ignored).")
    # Like var_dir, relative to the working directory (the repository root for the CLI), not
    # taken under var_dir: the datasets ship in the repository's data/ folder.
    data_dir: Path = Field(
        Path("data"), description="Folder with the real datasets (see its README)."
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
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="Replicas that must have a write before an acks=all producer is answered "
        "(at most replication_factor; 2 of 3 keeps writes safe and available with one broker "
        "down); null: the broker's min.insync.replicas.",
    )
    retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=-1, description="-1 keeps forever.")
    cleanup_policy: Literal["delete", "compact", "compact,delete"] = "delete"
    key: str = Field(description="What the record key is (documentation and checks).")
    description: str = ""

    @model_validator(mode="after")
    def _isr_fits(self) -> TopicConfig:
        if (self.min_insync_replicas or 0) > self.replication_factor:
            raise ValueError(
                f"topic {self.name}: min_insync_replicas {self.min_insync_replicas} is more than "
                f"its replication_factor {self.replication_factor}, so no write could succeed; "
                "lower min_insync_replicas or raise replication_factor"
            )
        return self

    def topic_configs(self) -> dict[str, str]:
        configs = {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}
        if self.min_insync_replicas is not None:
            configs["min.insync.replicas"] = str(self.min_insync_replicas)
        return configs


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
    """The local KRaft cluster that ``attune stack up`` runs from the Kafka jars: one combined
    broker + controller node, or ``nodes`` of them (``attune stack up --brokers 3``)."""

    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093
    heap: str = Field("1g", description="JVM -Xmx for each broker.")
    num_partitions_default: int = 3
    nodes: int = Field(
        1,
        ge=1,
        le=9,
        description="Combined broker + controller nodes; node i listens at port + i * "
        "port_step and controller_port + i * port_step.",
    )
    port_step: int = Field(100, ge=2, description="Port distance between two nodes.")

    def node_ports(self, node: int) -> tuple[int, int]:
        """``(broker port, controller port)`` of node ``node`` (0-based)."""
        return self.port + node * self.port_step, self.controller_port + node * self.port_step


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
    cluster: bool = Field(
        False,
        description="host/port is then a seed node of a Redis Cluster; every client becomes a "
        "cluster client (attune.redis_connect) that finds the other nodes from it.",
    )

    @model_validator(mode="after")
    def _cluster_has_db_0(self) -> RedisConfig:
        if self.cluster and self.db != 0:
            raise ValueError(
                f"redis.db is {self.db}, but redis.cluster is true and a Redis Cluster has only "
                "database 0; set redis.db: 0 (separate deployments by "
                "speed.online_store.key_prefix instead) or set redis.cluster: false"
            )
        return self

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


class EventTimesConfig(_Section):
    """The plausible window of event times (``timestamp``) the collector and the API accept.

    An event is refused (400, naming the field and the window) when its time is before
    ``earliest`` or more than ``max_ahead`` after the server received it (the server's clock,
    never the client's): a time in year 1 or 9999 is a client bug that would poison readers.
    """

    earliest: datetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC),
        description="The earliest event time accepted (ISO 8601 with a zone).",
    )
    max_ahead: timedelta = Field(
        timedelta(days=1),
        description="How far after the server's receive time an event time may be (clock skew).",
    )

    @field_validator("earliest")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.utcoffset() is None:
            raise ValueError("needs a zone, e.g. 2000-01-01T00:00:00Z")
        return v

    @field_validator("max_ahead")
    @classmethod
    def _not_negative(cls, v: timedelta) -> timedelta:
        if v < timedelta(0):
            raise ValueError("must be a duration of zero or more, e.g. P1D or 86400")
        return v


class CollectorConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_events: int = Field(1000, ge=1)
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Request body limit of every endpoint (413 over it).",
    )
    event_times: EventTimesConfig = EventTimesConfig()
    ack_timeout_s: float = Field(10.0, gt=0, description="How long to wait for Kafka's ack.")
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with a 503.")
    workers: int = Field(
        1, ge=1, le=64, description="Collector processes (uvicorn workers), each with a producer."
    )
    write_keys_file: Path = Field(
        Path("secrets/write_keys.yaml"), description="source -> sha256 of its write key."
    )
    metrics_requires_admin: bool = Field(
        True,
        description="/metrics, /docs and /openapi.json need an admin key "
        "(`attune keys create-admin NAME`); false: open to anyone who reaches the port.",
    )
    kafka_append: Literal["accumulator", "send"] = Field(
        "accumulator",
        description="How each record reaches kafka-python's producer: 'accumulator' appends it "
        "straight to the producer's record accumulator (the same batches, linger, compression, "
        "acks and idempotence as send(), without send()'s per-record checks, and one sender "
        "wake-up per request: attune.ingest.producer); 'send' calls KafkaProducer.send() per "
        "record (the previous path, kept to compare: benchmarks/ingest.py --compare).",
    )
    gc_young_threshold: int = Field(
        20_000,
        ge=0,
        description="Each collector process freezes its start-up objects (gc.freeze) and runs a "
        "young garbage collection every this many allocations instead of CPython's 700 "
        "(attune.collector.app.tune_gc); 0 keeps Python's defaults.",
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
    profile_key_file: Path = Field(
        Path("secrets/profile.key"),
        description="AES-256 key encrypting personal profile fields (traits) in the lake; "
        "created (mode 0600) on first use if missing.",
    )
    default_consent: Consent = Consent()
    drop_without_analytics_consent: bool = Field(
        True,
        description="Events whose analytics consent is false are acknowledged but not stored.",
    )
    erased_model_block: timedelta = Field(
        timedelta(days=30),
        gt=timedelta(0),
        description="After an erasure, how long the API keeps the user's id away from the "
        "models (their id embedding is in the served models until a model trained after the "
        "erasure is served): longer than the retraining cadence plus its worst delay.",
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

    @field_validator("affinity_half_life", "session_gap")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be a positive duration, e.g. P7D or 3600")
        return v

    @field_validator("trending_windows")
    @classmethod
    def _windows(cls, v: list[timedelta]) -> list[timedelta]:
        if any(w < timedelta(minutes=1) for w in v):
            raise ValueError("every trending window must be at least a minute, e.g. PT1H")
        return v

    @field_validator("affinity_weights")
    @classmethod
    def _no_undo_weights(cls, v: dict[str, float]) -> dict[str, float]:
        from attune.events import EVENT_TYPES

        undos = sorted(t for t in v if t in EVENT_TYPES and EVENT_TYPES[t].undoes)
        if undos:
            raise ValueError(
                f"{', '.join(undos)} takes back earlier feedback and is no signal of interest: "
                "it cannot have an affinity weight (remove it)"
            )
        return v


class OnlineStoreConfig(_Section):
    """The Redis online store's key scheme and retention (see docs/online_store.md)."""

    key_prefix: str = Field("att", pattern=r"^[A-Za-z0-9_.-]+$")
    user_ttl: timedelta = Field(
        timedelta(days=90), description="A user's features expire after this much inactivity."
    )
    dedup_per_user: int = Field(
        2000, ge=10, description="Event ids remembered per user to make replays change nothing."
    )
    aggregate_dedup_window: timedelta = Field(
        timedelta(minutes=10),
        description=(
            "How long the aggregates (popular, trending, item stats, live experiment counts) "
            "remember the interaction ids they counted: longer than a speed-layer restart "
            "between counting a batch and emptying its users' outboxes."
        ),
    )


SpeedQuery = Literal["bronze", "online"]
SPEED_QUERIES: tuple[SpeedQuery, ...] = ("bronze", "online")


class WatchdogConfig(_Section):
    """``attune speed watchdog`` (every few minutes): when the speed layer counts as unhealthy."""

    max_lag_events: int = Field(
        100_000,
        ge=0,
        description="A query further behind the end of the events topic than this many events "
        "is not keeping up.",
    )
    max_staleness: timedelta = Field(
        timedelta(minutes=10),
        description="A query without progress for this long while events wait for it is stuck.",
    )
    restart: bool = Field(True, description="Start the speed layer when it is not running.")
    queries: list[SpeedQuery] = Field(
        default_factory=lambda: list(SPEED_QUERIES),
        min_length=1,
        description="The queries that must be active (and that a restart starts).",
    )

    @field_validator("max_staleness")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be a positive duration, e.g. PT10M or 600")
        return v


REALTIME_BATCH_DEFAULTS = {"python": timedelta(seconds=5), "jvm": timedelta(minutes=5)}
"""``speed.realtime_batch`` when unset, by ``speed.realtime_writer``."""


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
    redis_outage_wait: timedelta = Field(
        timedelta(minutes=5),
        description="How long an online micro-batch retries its (idempotent) Redis writes while "
        "Redis is unreachable before the query fails and restarts from its checkpoint.",
    )
    realtime_batch: timedelta | None = Field(
        None,
        description="Real-time mode's batch (checkpoint) duration; Spark's minimum is 5 s. "
        "Unset (null): 5 s with the python writer, which sees a batch's rows only when the "
        "batch ends, so this is its latency; 5 minutes (Spark's default) with the jvm writer, "
        "which writes rows as they arrive, so this is only how often progress is checkpointed "
        "(each batch end pauses the writes for under a second, and a restart replays up to one "
        "batch of events, idempotently).",
    )
    realtime_writer: Literal["python", "jvm"] = Field(
        "python",
        description="Who writes real-time mode's rows to Redis: `python` (a Python foreach "
        "writer; Spark 4.1.1 hands it a batch's rows only when the batch ends) or `jvm` (the "
        "JVM writer of jvm/writer, built by `make jars`, which writes each row as it arrives "
        "with the same Lua scripts and parameters, handed to it from Python). `jvm` needs one "
        "Redis (redis.cluster: false) and no bandits (their feedback is counted by the Python "
        "writer only).",
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
    bandit_dedup_window: timedelta = Field(
        timedelta(hours=1),
        description="Bandit impressions and clicks count once: the ids of this much event time "
        "before the newest counted are kept; older events are not counted (too_late).",
    )
    bandit_history: timedelta = Field(
        timedelta(days=14),
        description="Hours of per-arm impressions and clicks kept for the dashboard.",
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
    new_item_vectors: bool = Field(
        True,
        description="Ask the model server (api.model_server, REST) for the retrieval vectors "
        "of catalog items the served retrieval model does not know, for the API's new items.",
    )
    shuffle_partitions: int = Field(
        4, ge=1, description="State partitions of the bronze query (fixed by its checkpoint)."
    )
    spark_conf: dict[str, str] = Field(
        default_factory=dict, description="Extra spark.* settings for the speed layer's session."
    )
    features: FeaturesConfig = FeaturesConfig()
    online_store: OnlineStoreConfig = OnlineStoreConfig()
    watchdog: WatchdogConfig = WatchdogConfig()

    @property
    def realtime_batch_duration(self) -> timedelta:
        """``realtime_batch``, or its default for ``realtime_writer`` when unset."""
        if self.realtime_batch is not None:
            return self.realtime_batch
        return REALTIME_BATCH_DEFAULTS[self.realtime_writer]


class BotFilterConfig(_Section):
    """Users whose event rate is not humanly possible are bots on that day (silver drops them)."""

    max_events_per_day: int = Field(5000, ge=1, description="More events on one day: a bot.")
    max_events_per_minute: int = Field(
        120, ge=1, description="More events in any one clock minute: a bot (for that day)."
    )


def _default_max_null_rates() -> dict[str, float]:
    return {
        "event_id": 0.0,
        "type": 0.0,
        "timestamp": 0.0,
        "received_at": 0.0,
        "consent": 0.0,
        "source": 0.0,
    }


class QualityConfig(_Section):
    """Data-quality checks run on every batch run; a failed check stops the run."""

    max_null_rates: dict[str, float] = Field(
        default_factory=_default_max_null_rates,
        description="Bronze column -> largest share of nulls allowed on the logical date.",
    )
    max_duplicate_rate: float = Field(
        0.05, ge=0, le=1, description="Largest share of bronze rows repeating an event_id."
    )
    volume_history_days: int = Field(
        7, ge=1, description="Days before the logical date whose average volume is compared."
    )
    volume_min_history_days: int = Field(
        3, ge=1, description="Skip the volume check until this many earlier days have events."
    )
    volume_min_ratio: float = Field(
        0.2, ge=0, description="Fail below this share of the trailing average daily volume."
    )
    volume_max_ratio: float = Field(
        5.0, ge=0, description="Fail above this multiple of the trailing average daily volume."
    )
    max_bot_rate: float = Field(
        0.5, ge=0, le=1, description="Largest share of a day's events filtered out as bots."
    )
    max_malformed_catalog_rate: float = Field(
        0.01, ge=0, le=1, description="Largest share of catalog records that do not parse."
    )


class CooccurrenceConfig(_Section):
    """Item co-occurrence: "seen in the same session" and "bought by the same user"."""

    max_session_items: int = Field(
        20, ge=2, description="Distinct items of a session taken into pairs (its latest ones)."
    )
    max_user_purchases: int = Field(
        50, ge=2, description="Distinct purchased items of a user taken into pairs (latest)."
    )
    min_count: int = Field(
        2, ge=1, description="Pairs seen in fewer sessions (or users) are dropped as noise."
    )
    top_k: int = Field(20, ge=1, description="Neighbours kept per item.")
    max_user_items: int = Field(
        50,
        ge=2,
        description="Distinct engaged items of a user taken into pairs (latest) for the kind "
        "user (item-kNN: items engaged with by the same users).",
    )
    user_shrinkage: float = Field(
        200.0,
        ge=0,
        description="Kind user's score is n_ab / (sqrt(n_a n_b) + user_shrinkage): pairs seen "
        "by few users pulled towards 0. 200 chosen on MovieTweetings-100K validation splits "
        "(0, 10, 50, 200 tried).",
    )
    user_knn: bool = Field(
        False,
        description="Also compute the kind user (item-kNN) and publish it (P:i:{item}:knn), "
        "which api.candidates.neighbours: user reads. Off unless used: its pairs (up to "
        "max_user_items^2 per user) made gold's co-occurrence 505 s instead of 130 s at 10M "
        "events (benchmarks/batch.py, docs/batch.md).",
    )


class SegmentsConfig(_Section):
    """The RFM rules that put each user in one segment (see docs/batch.md)."""

    new_days: int = Field(7, ge=1, description="First seen this recently: segment new.")
    active_days: int = Field(30, ge=1, description="Seen this recently: active.")
    loyal_purchases: int = Field(2, ge=1, description="Purchases (all time) that make loyal.")
    champion_purchases: int = Field(
        3, ge=1, description="Purchases within active_days that make a champion."
    )


class ViewsConfig(_Section):
    """Batch views written to Redis: the fallback when the model server cannot answer."""

    write_redis: bool = Field(True, description="Write the views (and corrections) to Redis.")
    recs_per_user: int = Field(20, ge=1, description="Precomputed recommendations per user.")
    seed_items: int = Field(
        10, ge=1, description="A user's latest items whose neighbours are recommended."
    )
    popular_per_segment: int = Field(100, ge=1, description="Items per segment's popular list.")
    ttl: timedelta = Field(
        timedelta(days=14), description="Views expire when the nightly run stops renewing them."
    )
    correct_online_features: bool = Field(
        True,
        description="Re-apply the window's interactions through the online store's idempotent "
        "write script, so events the stream missed reach Redis.",
    )
    drift_sample_users: int = Field(
        500, ge=0, description="Users whose Redis features are compared with the batch's."
    )


class MaintenanceConfig(_Section):
    """Compaction, VACUUM and the retention policy of the lake."""

    optimize: bool = Field(True, description="Compact the small files of the late window.")
    vacuum_retention: timedelta = Field(
        timedelta(days=7), description="VACUUM removes unreferenced files older than this."
    )
    event_retention: timedelta = Field(
        timedelta(days=730), description="Events older than this (by event date) are deleted."
    )


class GoldConfig(_Section):
    """How the gold stage rebuilds its tables each night (spark/gold.py, docs/batch.md)."""

    incremental: bool = Field(
        False,
        description="Rewrite gold/training_examples only for the event dates that changed "
        "(the late window, and whatever silver rewrote since the last gold run) plus, in full, "
        "the users a consent withdrawal, bot day or erasure touched; falls back to a full "
        "recompute whenever the table's state does not allow it. false recomputes it from all "
        "of silver every night (the old path, kept to compare the two). Off by default until "
        "its gain is measured at 10M events (docs/batch.md).",
    )


class BatchConfig(_Section):
    """The nightly batch layer: bronze -> silver -> gold -> views, over one logical date."""

    late_days: int = Field(
        3, ge=0, description="Event dates before the logical date re-derived for late data."
    )
    erasure_recheck: timedelta = Field(
        timedelta(days=14),
        description="How long after an erasure request bronze is re-checked for the user's "
        "late-arriving events (keep >= the events topic's segment.ms + retention.ms: Kafka "
        "drops whole segments, so a record can outlive retention.ms by up to segment.ms).",
    )
    recommendation_id_pattern: str = Field(
        r"^([^:]+):([^:]+):",
        description="Regex on recommendation_id: group 1 = experiment, group 2 = variant.",
    )
    spark_conf: dict[str, str] = Field(
        default_factory=dict, description="Extra spark.* settings for the batch's session."
    )
    bots: BotFilterConfig = BotFilterConfig()
    quality: QualityConfig = QualityConfig()
    cooccurrence: CooccurrenceConfig = CooccurrenceConfig()
    segments: SegmentsConfig = SegmentsConfig()
    views: ViewsConfig = ViewsConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    gold: GoldConfig = GoldConfig()


ModelFeature = Literal["user", "sequence", "context", "content", "prior"]
FEATURE_GROUP_NAMES: tuple[ModelFeature, ...] = ("user", "sequence", "context", "content", "prior")


SequenceEncoder = Literal["mean", "gru", "attention"]
"""The query tower's sequence encoders (models/encoders.py ``SEQUENCE_ENCODERS``)."""


class RetrievalConfig(_Section):
    """The two-tower retrieval model (models/retrieval.py); defaults tuned on a validation split
    of MovieTweetings carved from the training period (never on the test set)."""

    features: list[ModelFeature] = Field(
        default_factory=lambda: list(FEATURE_GROUP_NAMES),
        description="Feature groups: user id, recent-item sequence, request context, item "
        "content (genres, title, year, price), popularity prior.",
    )
    embedding_dim: int = Field(64, ge=4)
    query_hidden: int = Field(128, ge=0, description="Hidden ReLU layer of the query tower.")
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(1024, ge=8, description="Also the number of in-batch negatives.")
    learning_rate: float = Field(0.01, gt=0)
    temperature: float = Field(0.2, gt=0, description="Softmax temperature on cosine scores.")
    logq_weight: float = Field(
        0.0,
        ge=0,
        description="Strength of the in-loss popularity sampling-bias (log-Q) correction; 0 "
        "leaves the correction to serving time (see prior_weight).",
    )
    prior_weight: float | None = Field(
        3.0,
        ge=0,
        description="Fixed weight of the popularity prior added at serving (prior left out of "
        "training); None learns a per-query weight in training instead.",
    )
    batching: Literal["time", "shuffle"] = Field(
        "time", description="Batches of time-adjacent examples, or shuffled examples."
    )
    train_on: Literal["positives", "interactions"] = "positives"
    example_half_life_days: float | None = Field(
        30.0, gt=0, description="Recency weight of training examples (None = all equal)."
    )
    id_dropout: float = Field(
        0.1, ge=0, lt=1, description="Share of item ids hidden in training (content fallback)."
    )
    min_item_interactions: int = Field(1, ge=1, description="Rarer items share the OOV id.")
    user_oov_buckets: int = Field(16, ge=1, description="Hash buckets for unknown users.")
    sequence_length: int = Field(
        20, ge=1, description="Recent items the query tower reads (the first N it is given)."
    )
    sequence_encoder: SequenceEncoder = Field(
        "mean",
        description="How the query tower reads the recent items: mean (learned position "
        "weights), gru, or attention (self-attention with positions); gru and attention also "
        "read the time gaps request_time - recent_times.",
    )
    uniform_negatives: int = Field(
        0,
        ge=0,
        description="Catalog items sampled uniformly per batch as extra negatives, next to the "
        "in-batch ones (mixed negative sampling); the log-Q correction covers both.",
    )
    top_k: int = Field(100, ge=1, description="Items the exported serving signature returns.")


class RankingConfig(_Section):
    """The deep & cross ranking model (models/ranking.py)."""

    features: list[ModelFeature] = Field(default_factory=lambda: list(FEATURE_GROUP_NAMES))
    embedding_dim: int = Field(32, ge=4)
    query_hidden: int = Field(64, ge=0)
    cross_layers: int = Field(1, ge=0)
    deep_layers: list[int] = Field(default_factory=lambda: [128, 64])
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(2048, ge=8)
    learning_rate: float = Field(0.003, gt=0)
    negatives: int = Field(4, ge=1, description="Sampled negatives per positive.")
    negative_window: int = Field(
        2000, ge=2, description="Negatives come from positive events this close in time."
    )
    source_negatives: int = Field(
        0,
        ge=0,
        description="Of the negatives per positive, how many are co-occurrence neighbours of "
        "the user's then-latest items (api.candidates.seeds, per_seed): the hard negatives "
        "the served pipeline's neighbour source proposes (0 = none).",
    )
    source_features: bool = Field(
        False,
        description="Give the ranking model the candidate sources' view of each candidate "
        "(co-occurrence with the user's api.candidates.seeds latest items, popularity at 1 day, "
        "7 days and all time, item age; models/ranking_features.py), computed inside the "
        "SavedModel from its raw inputs: no signature change.",
    )
    source_recent_items: int = Field(
        0,
        ge=0,
        description="How many of the user's latest items the co-occurrence source features "
        "read (0 = api.candidates.seeds, the neighbour source's seeds).",
    )
    rating_weight: float = Field(0.1, ge=0, description="Weight of the rating task (0 = off).")
    prior_correction: float = Field(
        3.0, ge=0, description="Weight of the log prior added back to the served score."
    )
    blend: float = Field(0.0, ge=0, description="Weight of the retrieval score in re-ranking.")
    candidates: int = Field(100, ge=1, description="Retrieval candidates re-ranked in evaluation.")
    id_dropout: float = Field(0.1, ge=0, lt=1)
    user_oov_buckets: int = Field(16, ge=1)
    sequence_length: int = Field(20, ge=1)
    sequence_encoder: SequenceEncoder = Field(
        "mean", description="As models.retrieval.sequence_encoder, for the ranking model."
    )


class ALSConfig(_Section):
    """Spark MLlib ALS baseline (implicit feedback); tuned on MovieTweetings validation splits."""

    rank: int = Field(64, ge=1)
    max_iter: int = Field(10, ge=1)
    reg_param: float = Field(20.0, ge=0)
    alpha: float = Field(40.0, ge=0)
    blocks: int = Field(2, ge=1, description="User and item blocks (parallelism).")


class GateConfig(_Section):
    """The retraining gate's floor (``attune models retrain``, models/repository.py): besides
    beating the served version by ``models.promotion_margin``, a candidate must reach this share
    of the best baseline (popularity, recent popularity) on the same metric and holdout."""

    min_baseline_ratio: float = Field(
        0.9,
        ge=0,
        description="Promote only when candidate >= ratio x best baseline (0 = no floor). "
        "Measured on MovieTweetings-100K (NDCG@10, 10 % temporal holdout): healthy models "
        "0.995-1.049 x recent popularity (3 seeds), random scores 0.003-0.007, all-time "
        "popularity 0.45.",
    )


class RetrainConfig(_Section):
    """``attune models retrain``: the run folder, waiting for the model server, the smoke test."""

    runs_dir: Path = Field(
        Path("runs/retrain"),
        description="Run folders <runs_dir>/<UTC timestamp>/ when --run-dir is not given "
        "(under var_dir if relative).",
    )
    serving_timeout_s: float = Field(
        300.0, gt=0, description="How long await-serving waits for a published version."
    )
    smoke_read_key: str = Field(
        "retrain",
        min_length=1,
        description="Name of the API read key the smoke test uses (`attune keys create-read "
        "NAME` creates it).",
    )
    smoke_timeout_s: float = Field(
        10.0, gt=0, description="Time budget of the smoke test's recommendation request."
    )
    smoke_window_s: float = Field(
        60.0,
        gt=0,
        description="How long the smoke test keeps asking (once a second) for an answer from the "
        "model: a freshly loaded model's first predictions can miss the API's budget, and the "
        "API's breaker may need its reset time.",
    )


class ModelsConfig(_Section):
    """Training, evaluation, the model repository and the promotion gate (models/)."""

    repository_dir: Path = Field(
        Path("models"), description="Model repository <name>/<version>/ (under var_dir)."
    )
    serving_base_path: str | None = Field(
        None,
        description="Repository path as the TF Serving process sees it (in models.config); "
        "default: the repository's absolute path.",
    )
    training_examples_table: str = Field(
        "gold/training_examples", description="Gold training examples (under the lake root)."
    )
    items_table: str = Field("gold/items", description="Gold items (under the lake root).")
    promotion_metric: str = Field(
        "ndcg@10",
        pattern=r"^(recall|ndcg|map|hit_rate)@[1-9][0-9]*$",
        description="Metric the promotion gate compares, e.g. ndcg@10, recall@20.",
    )
    promotion_margin: float = Field(
        0.01, ge=0, description="Relative improvement needed: new >= served * (1 + margin)."
    )
    holdout_fraction: float = Field(
        0.1, gt=0, lt=1, description="Newest share of the data held out to gate a training run."
    )
    positive_threshold: float | None = Field(
        None,
        description="Ratings >= this are positives; None chooses from the data "
        "(models.data.choose_positives): no ratings -> every interaction event, a small scale "
        "(top <= 5) -> every rating, a wider one -> >= 0.7 x the top (7 on 0-10).",
    )
    k: int = Field(10, ge=1, description="Cut-off of the evaluation metrics.")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    validation_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Share of the training data used for validation; default: as many "
        "interactions as the test set.",
    )
    seed: int = 42
    prior_half_life_days: float | None = Field(
        None,
        gt=0,
        description="Half-life of the popularity prior; None picks it on the validation split "
        "from prior_half_life_grid.",
    )
    prior_half_life_grid: list[float] = Field(
        default_factory=lambda: [1.0, 2.0, 3.0, 5.0, 7.0, 14.0, 30.0, float("inf")],
        description="Half-lives tried, in days; .inf means no decay (all-time popularity).",
    )
    knn_neighbours_grid: list[int] = Field(
        default_factory=lambda: [50, 200, 1000],
        description="Item-kNN neighbourhood sizes tried on the validation split.",
    )
    knn_shrinkage_grid: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [0.0, 10.0, 50.0, 200.0],
        description="Item-kNN shrinkage values tried on the validation split, each with every "
        "neighbourhood size: sim = c_ab / (sqrt(n_a n_b) + shrinkage); 0 is plain cosine.",
    )
    ease_lambda_grid: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [50.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0],
        description="EASE L2 regularization values tried on the validation split (one "
        "Cholesky solve of an items x items matrix each).",
    )
    ease_max_memory_gb: float = Field(
        4.0,
        gt=0,
        description="Memory EASE may use for its items x items matrices (about 3 n^2 x 8 "
        "bytes in float64, half in float32, n = items with a training positive).",
    )
    retrieval: RetrievalConfig = RetrievalConfig()
    ranking: RankingConfig = RankingConfig()
    als: ALSConfig = ALSConfig()
    gate: GateConfig = GateConfig()
    retrain: RetrainConfig = RetrainConfig()


class ServingBatchingConfig(_Section):
    """Request batching of the model server (TF Serving's ``--enable_batching``)."""

    enabled: bool = Field(False, description="Merge concurrent predict requests into batches.")
    max_batch_size: int = Field(64, ge=1, description="Rows (examples) per merged batch.")
    batch_timeout_ms: float = Field(
        2.0, ge=0, description="How long a batch's first request waits for others."
    )
    max_enqueued_requests: int = Field(
        1000, ge=1, description="Waiting requests per model signature before 503s."
    )
    threads: int = Field(1, ge=1, description="Batches run in parallel per model signature.")


class ServingConfig(_Section):
    """``attune serve models``: the TF-Serving-protocol model server (REST + gRPC)."""

    host: str = Field(
        "127.0.0.1",
        description="Listen address of both APIs. Loopback by default: the server has no "
        "authentication (like TF Serving), and any other address is logged as a warning.",
    )
    rest_port: int = Field(8501, ge=1, le=65535)
    grpc_port: int = Field(8500, ge=1, le=65535)
    model_config_file: Path | None = Field(
        None,
        description="TF Serving model config (model_config_list), under var_dir if relative; "
        "None serves every model of models.repository_dir at its promoted (else latest) version.",
    )
    poll_interval_s: float = Field(
        1.0, gt=0, description="How often to look for new versions and model config changes."
    )
    request_threads: int = Field(8, ge=1, description="Worker threads of each API.")
    grpc_max_message_mb: int = Field(64, ge=1, description="Largest gRPC message, MiB.")
    intra_op_parallelism: int = Field(
        1,
        ge=0,
        description="Threads one TensorFlow op may use (TF Serving's "
        "--tensorflow_intra_op_parallelism); 0 = one per core. Recommendation requests are "
        "small: 1 avoids thread hand-offs that cost more than they save.",
    )
    inter_op_parallelism: int = Field(
        1,
        ge=0,
        description="Ops TensorFlow runs at once (--tensorflow_inter_op_parallelism); 0 = one "
        "per core. Concurrency comes from the request threads.",
    )
    batching: ServingBatchingConfig = ServingBatchingConfig()


class RateLimitConfig(_Section):
    """A token bucket: ``rate_per_s`` tokens a second, at most ``burst`` saved up."""

    rate_per_s: float = Field(100.0, gt=0, description="Sustained requests per second.")
    burst: int = Field(200, ge=1, description="Requests allowed at once after a quiet spell.")


class CircuitBreakerConfig(_Section):
    """Stops waiting on a dead dependency: closed -> open -> half-open -> closed."""

    failure_threshold: int = Field(
        5, ge=1, description="Consecutive failures (errors or timeouts) that open the breaker."
    )
    reset_timeout_s: float = Field(
        5.0, gt=0, description="How long the breaker stays open before one trial call."
    )


class ModelClientConfig(_Section):
    """How the API reaches the models: only through the TF Serving protocol."""

    protocol: Literal["grpc", "rest"] = Field(
        "grpc", description="gRPC (PredictionService) or REST (:predict) to the model server."
    )
    grpc_target: str | None = Field(
        None,
        description="HOST:PORT of the gRPC API; default serving.host:serving.grpc_port. Several "
        "replicas: dns:///NAME:PORT (every address of NAME) or ipv4:H1:P1,H2:P2; calls go "
        "round-robin to the replicas that are up.",
    )
    rest_url: str | None = Field(
        None, description="Base URL of the REST API; default http://serving.host:rest_port."
    )
    retrieval_model: str = "retrieval"
    ranking_model: str = "ranking"
    timeout_ms: float = Field(
        100.0, gt=0, description="Time budget of one model call; over it the API falls back."
    )
    breaker: CircuitBreakerConfig = CircuitBreakerConfig()


class CandidatesConfig(_Section):
    """Where the candidates that ranking re-orders come from."""

    retrieval: int = Field(100, ge=1, description="Best retrieval results kept.")
    seeds: int = Field(
        3, ge=0, description="Latest items (and the seed item) whose co-occurrence neighbours join."
    )
    per_seed: int = Field(10, ge=1, description="Neighbours taken per seed item.")
    neighbours: Literal["session", "user"] = Field(
        "session",
        description="Which co-occurrence the neighbour source reads: session (seen in the same "
        "session, P:i:{item}:similar) or user (item-kNN: engaged with by the same users, shrunk "
        "by batch.cooccurrence.user_shrinkage; P:i:{item}:knn). Same served NDCG@10 on "
        "MovieTweetings-100K validation splits with neighbour_weight 0.",
    )
    neighbour_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of a candidate's neighbour score (its summed similarity to the seeds: "
        "item-kNN's score) added to the ranking model's score (0 = the ranking score alone). "
        "Measured with neighbours user, seeds 20, per_seed 20 (served NDCG@10, MovieTweetings-"
        "100K validation, seed 42): user-stratified 0.1015 (0) -> 0.1091 (1000); temporal 0.1754 "
        "(0) -> 0.1683 (10), 0.0709 (1000). Raise it where users' histories predict better than "
        "recency.",
    )
    trending: int = Field(20, ge=0, description="Trending items that join.")
    trending_window_s: int = Field(
        3600, ge=1, description="Trending window read (one of speed.features.trending_windows)."
    )
    max_ranked: int = Field(150, ge=1, description="At most this many candidates are ranked.")
    popular: int = Field(100, ge=1, description="Popular items read to fill short lists.")
    new_items: int = Field(
        10,
        ge=0,
        description="Best items added after training (by their content vectors' score against "
        "the query) that join the pool, origin new (0 = none).",
    )
    new_slots: int = Field(
        1,
        ge=0,
        description="Places of each list kept for the best ranked new item when ranking did "
        "not put one in (exploration: new items have no popularity yet).",
    )
    new_items_refresh_s: float = Field(
        5.0, gt=0, description="How often the new items' vectors are re-read from Redis."
    )


class PinConfig(_Section):
    item_id: str = Field(min_length=1)
    position: int = Field(ge=0, description="0-based position in the list.")


class RulesConfig(_Section):
    """Business rules applied to every ranked list (docs/api.md)."""

    drop_seen: bool = Field(True, description="Leave out items the user interacted with.")
    drop_purchased: bool = Field(True, description="Leave out purchased items (even if shown).")
    max_per_category: int = Field(
        3, ge=0, description="At most this many items per primary category (0 = no cap)."
    )
    suppress_for: timedelta = Field(
        timedelta(days=30),
        description="How long 'not interested' hides the categories of the item it was about.",
    )
    ignored_category_penalty: float = Field(
        1.0,
        ge=0,
        description="Score taken off items of categories the user keeps ignoring (shown "
        "often, never engaged with).",
    )
    category_boosts: dict[str, float] = Field(
        default_factory=dict, description="Category -> score added to its items."
    )
    item_boosts: dict[str, float] = Field(
        default_factory=dict, description="Item id -> score added to it."
    )
    pins: dict[str, list[PinConfig]] = Field(
        default_factory=dict,
        description="Placement -> items pinned at fixed positions ('*' = every placement).",
    )
    calibration: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Weight of the user's genre mix against the ranking's order (0 = off, 1 = "
        "only the mix): the best `calibration_depth` items are re-ordered so that the list's "
        "genres follow the user's affinities (docs/api.md).",
    )
    calibration_depth: int = Field(
        50, ge=1, description="How many of the best-ranked items calibration may re-order."
    )


class ContentRule(_Section):
    """One rule of a content slot; the first whose conditions all hold picks the variant."""

    variant: str = Field(min_length=1)
    segments: list[str] = Field(default_factory=list, description="Any of these (empty = any).")
    genre: str | None = Field(None, description="Category whose affinity must reach min_affinity.")
    min_affinity: float = 0.0
    min_events: int = Field(0, ge=0, description="At least this many events of the user.")
    max_events: int | None = Field(None, ge=0, description="At most this many (None = any).")


class MessageConfig(_Section):
    """A targeted message with a frequency cap per user."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    text: str
    priority: int = Field(0, description="Higher first when several are eligible.")
    segments: list[str] = Field(default_factory=list, description="Any of these (empty = any).")
    genre: str | None = None
    min_affinity: float = 0.0
    min_events: int = Field(0, ge=0)
    cap: int = Field(1, ge=1, description="At most this many showings per user per cap_window.")
    cap_window: timedelta = timedelta(days=1)


class BanditConfig(_Section):
    """A bandit policy for one decision point (a content slot, the messages): among the arms
    that are eligible (a slot's variants whose rules hold, the uncapped messages whose targeting
    holds) the policy picks one, learns from impressions and clicks, and logs its propensity
    (docs/bandits.md)."""

    policy: Literal["thompson", "linucb"] = Field(
        "thompson",
        description="thompson: Beta-Bernoulli Thompson sampling; linucb: contextual (LinUCB "
        "over the user's segment).",
    )
    epsilon: float = Field(
        0.05, ge=0.0, le=1.0, description="Exploration floor: every arm >= epsilon / arms."
    )
    prior_alpha: float = Field(1.0, ge=1.0, description="thompson: Beta prior's alpha.")
    prior_beta: float = Field(1.0, ge=1.0, description="thompson: Beta prior's beta.")
    ucb_alpha: float = Field(0.5, gt=0.0, description="linucb: width of the confidence bonus.")
    ridge: float = Field(1.0, gt=0.0, description="linucb: ridge penalty of each arm's model.")
    segments: list[str] = Field(
        default_factory=lambda: ["new", "active", "at_risk", "dormant"],
        description="linucb: the segments one-hot encoded in the context (others: none set).",
    )
    seed: int = Field(0, description="Seeds every decision with the decision id (reproducible).")


def _default_content_slots() -> dict[str, list[ContentRule]]:
    return {
        "home_banner": [
            ContentRule(variant="welcome", max_events=0),
            ContentRule(variant="drama_picks", genre="Drama", min_affinity=2.0),
            ContentRule(variant="win_back", segments=["at_risk", "dormant"]),
            ContentRule(variant="default"),
        ]
    }


def _default_messages() -> list[MessageConfig]:
    return [
        MessageConfig(
            id="rate_more", text="Rate a few more titles to sharpen your recommendations."
        ),
        MessageConfig(
            id="come_back",
            text="New titles arrived since your last visit.",
            priority=1,
            segments=["at_risk", "dormant"],
            cap=1,
            cap_window=timedelta(days=7),
        ),
    ]


class ApiConfig(_Section):
    """``attune serve api``: the personalization API (docs/api.md)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    read_keys_file: Path = Field(
        Path("secrets/read_keys.yaml"), description="Key name -> sha256 of its read key (0600)."
    )
    admin_keys_file: Path = Field(
        Path("secrets/admin_keys.yaml"),
        description="Key name -> sha256 of its admin key (0600); the collector reads it too.",
    )
    metrics_requires_admin: bool = Field(
        True,
        description="/metrics, /docs and /openapi.json need an admin key "
        "(`attune keys create-admin NAME`); false: open to anyone who reaches the port.",
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Request body limit of every endpoint (413 over it).",
    )
    rate_limit: RateLimitConfig = RateLimitConfig()
    key_rate_limits: dict[str, RateLimitConfig] = Field(
        default_factory=dict, description="Key name -> its own limit (else rate_limit)."
    )
    default_k: int = Field(10, ge=1)
    max_k: int = Field(100, ge=1)
    source: str = Field("api", description="Source name on the events the API sends to Kafka.")
    impressions: bool = Field(True, description="Log each response as an impression event.")
    catalog_refresh_s: float = Field(
        300.0,
        gt=0,
        description="How often the catalog mirror (titles, categories) is re-read (a SCAN of "
        "the Redis keyspace: not too often on a large store).",
    )
    similar_max_age_s: int = Field(300, ge=0, description="Cache-Control max-age of similar.")
    trending_max_age_s: int = Field(60, ge=0, description="Cache-Control max-age of trending.")
    model_server: ModelClientConfig = ModelClientConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    rules: RulesConfig = RulesConfig()
    rule_sets: dict[str, RulesConfig] = Field(
        default_factory=dict,
        description="Named rule sets an experiment's variant can apply instead of api.rules "
        "(variants.<name>.rules in the experiments file).",
    )
    content_slots: dict[str, list[ContentRule]] = Field(default_factory=_default_content_slots)
    bandits: dict[str, BanditConfig] = Field(
        default_factory=dict,
        description="Content slot -> its bandit policy; a slot without one picks its first "
        "rule that holds.",
    )
    messages: list[MessageConfig] = Field(default_factory=_default_messages)
    message_bandit: BanditConfig | None = Field(
        None,
        description="A bandit policy that picks ONE of the eligible, uncapped messages per "
        "request (policy name 'messages'; attune/bandits/messages.py); null: every eligible "
        "message in priority order, up to the request's max.",
    )

    @field_validator("bandits")
    @classmethod
    def _bandits_name_slots(
        cls, bandits: dict[str, BanditConfig], info: ValidationInfo
    ) -> dict[str, BanditConfig]:
        slots = info.data.get("content_slots") or {}
        unknown = sorted(set(bandits) - set(slots))
        if unknown:
            raise ValueError(
                f"names {', '.join(unknown)}, which api.content_slots does not declare (slots: "
                f"{', '.join(sorted(slots)) or 'none'}): a bandit picks among a slot's "
                "variants, so declare the slot or fix the name"
            )
        return bandits

    @field_validator("message_bandit")
    @classmethod
    def _message_ids_unique(
        cls, bandit: BanditConfig | None, info: ValidationInfo
    ) -> BanditConfig | None:
        ids = [m.id for m in info.data.get("messages") or []]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if bandit is not None and repeated:
            raise ValueError(
                f"api.messages repeats the id(s) {', '.join(repeated)}: the message bandit "
                "learns per message id, so give every message its own id"
            )
        return bandit


class ExperimentsConfig(_Section):
    """Experiments: where they are declared, how the API follows their state, how they are
    analysed (docs in attune/experiments/spec.py and config/experiments.yaml)."""

    file: Path | None = Field(
        Path("config/experiments.yaml"),
        description="The declarations (relative: to the working directory, like "
        "airflow.dags_folder); null = no experiments. A named file that does not exist is an "
        "error.",
    )
    refresh_s: float = Field(
        10.0,
        gt=0,
        description="How often the API re-reads the running state from Redis (and the file, "
        "when it changed).",
    )
    attribution_window: timedelta = Field(
        timedelta(minutes=30),
        description="Clicks, carts, purchases, dwell and dismissals carrying a recommendation "
        "id count for its impression when they come at most this long after it.",
    )
    cuped_days: int = Field(
        14,
        ge=0,
        description="Days before a user's first exposure whose events are CUPED's "
        "covariate (0 = no CUPED).",
    )
    alpha: float = Field(
        0.05, gt=0, lt=0.5, description="Significance level of experiments that set none."
    )
    correction: Literal["holm", "bh"] = Field(
        "holm",
        description="Multiple-testing correction across an experiment's metrics and arms: Holm "
        "(family-wise error) or Benjamini-Hochberg (false discovery rate).",
    )
    reports_dir: Path = Field(
        Path("reports/experiments"),
        description="Daily report JSON (<date>.json, latest.json) the dashboard reads (under "
        "var_dir if relative).",
    )

    @field_validator("attribution_window")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be a positive duration, e.g. PT30M or 1800")
        return v


class AirflowConfig(_Section):
    """``attune airflow up``: a local Airflow 3 (API server with the UI, scheduler, DAG
    processor) on the project's DAG folder, with an embedded metadata database."""

    host: str = Field("127.0.0.1", description="Where the API server (and the UI) listens.")
    port: int = Field(8280, ge=1, le=65535, description="The API server's (and the UI's) port.")
    log_server_port: int = Field(
        8281, ge=1, le=65535, description="Where the scheduler serves task logs to the UI."
    )
    home: Path = Field(Path("airflow"), description="AIRFLOW_HOME (relative: under var_dir).")
    dags_folder: Path = Field(
        Path("dags"), description="The DAG folder (relative: to the working directory)."
    )
    sql_alchemy_conn: str | None = Field(
        None,
        description="Metadata database URL; null = SQLite in <home>/airflow.db (Airflow 3.3 runs "
        "its LocalExecutor on SQLite). A PostgreSQL URL for a shared deployment.",
    )
    parallelism: int = Field(2, ge=1, description="Task instances running at once.")
    admin_user: str = Field("admin", min_length=1, description="The UI's admin user.")
    credentials_file: Path = Field(
        Path("secrets/airflow-admin.json"),
        description="Generated once (mode 0600): the admin's password (relative: under var_dir).",
    )
    start_timeout_s: float = Field(180.0, gt=0, description="How long `up` waits for health.")
    dag_refresh_s: int = Field(
        10, ge=1, description="How often the DAG processor looks for new or changed DAG files."
    )


class DashboardConfig(_Section):
    """``attune dashboard``: the Streamlit results dashboard (dashboards/). It reads report files,
    the model repository, Redis and the services' ``/metrics``; it never starts Spark."""

    host: str = Field("127.0.0.1", description="Where the dashboard listens.")
    port: int = Field(
        8502,
        ge=1,
        le=65535,
        description="The dashboard's port (Streamlit's usual 8501 is the model server's REST "
        "port, serving.rest_port).",
    )
    cache_ttl_s: float = Field(
        30.0, gt=0, description="How long a read (report, repository, Redis, metrics) is reused."
    )
    start_timeout_s: float = Field(
        60.0, gt=0, description="How long `attune dashboard` waits for Streamlit to answer."
    )
    rate_window_s: float = Field(
        1.0,
        gt=0,
        le=30,
        description="The live page scrapes each /metrics twice, this far apart, for its rates "
        "(events/s) and the API's p99 over that window.",
    )


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
    batch: BatchConfig = BatchConfig()
    models: ModelsConfig = ModelsConfig()
    serving: ServingConfig = ServingConfig()
    api: ApiConfig = ApiConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()
    airflow: AirflowConfig = AirflowConfig()
    dashboard: DashboardConfig = DashboardConfig()

    @model_validator(mode="after")
    def _knn_is_computed_when_read(self) -> AttuneConfig:
        if self.api.candidates.neighbours == "user" and not self.batch.cooccurrence.user_knn:
            raise ValueError(
                "api.candidates.neighbours: user reads the item-kNN lists that the nightly "
                "batch writes only with batch.cooccurrence.user_knn: true; set that too, or "
                "use neighbours: session"
            )
        return self

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


def with_overrides(cfg: AttuneConfig, settings: Mapping[str, Any]) -> AttuneConfig:
    """``cfg`` with dotted settings (``{"serving.request_threads": "2"}``) applied, and
    validated again (a bad value or an unknown key raises pydantic's ValidationError naming
    it). A string value is read as YAML, as an ``ATTUNE__SERVING__REQUEST_THREADS`` override
    is; any other value (``0``, ``False``) is taken as it is."""
    env = {
        ENV_PREFIX + "__".join(key.split(".")): raw
        for key, raw in settings.items()
        if isinstance(raw, str)
    }
    tree = _env_overrides(env)
    for key, value in settings.items():
        if not isinstance(value, str):
            nested: Any = value
            for part in reversed(key.split(".")):
                nested = {part: nested}
            tree = _deep_merge(tree, nested)
    return AttuneConfig.model_validate(_deep_merge(cfg.model_dump(), tree))


MOVED_KEYS = {
    "api.experiment": "moved to the experiments file (experiments.file, by default "
    "config/experiments.yaml): declare the experiment there (its variants keep weight, ranking "
    "and model_label; see the example in config/experiments.yaml), start it with `attune "
    "experiments start ID`, and remove api.experiment from this file",
}
"""Keys of older versions that are gone, with where they went (reported instead of 'unknown')."""


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden" and where in MOVED_KEYS:
            lines.append(f"  {where}: {MOVED_KEYS[where]}")
        elif err["type"] == "extra_forbidden":
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


# ----------------------------------------------------------------------------------------
# Handing a configuration to another process, and isolated copies (tests, benchmarks)


def absolute_config(cfg: AttuneConfig) -> AttuneConfig:
    """``cfg`` with ``var_dir``, ``data_dir`` and ``experiments.file`` made absolute (a child may
    run elsewhere)."""
    paths = cfg.paths.model_copy(
        update={
            "var_dir": cfg.paths.var_dir.absolute(),
            "data_dir": cfg.paths.data_dir.absolute(),
        }
    )
    exp_file = cfg.experiments.file
    experiments = cfg.experiments.model_copy(
        update={"file": None if exp_file is None else exp_file.absolute()}
    )
    return cfg.model_copy(update={"paths": paths, "experiments": experiments})


def write_config(cfg: AttuneConfig, path: Path) -> Path:
    """Write ``cfg`` as a YAML config file that :func:`load_config` reads back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = absolute_config(cfg).model_dump(mode="json")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for tests and benchmarks)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def isolated_config(
    cfg: AttuneConfig,
    *,
    suffix: str,
    var_dir: Path,
    redis_db: int,
    port: int | None = None,
    **collector: object,
) -> AttuneConfig:
    """A copy of ``cfg`` that shares the stack but none of its data (tests, benchmarks).

    Every topic name gets ``.{suffix}``, runtime state (keys, logs) lives in ``var_dir``, consent
    state in Redis db ``redis_db``, and the collector listens on ``port`` (a free one by
    default); ``collector`` overrides other collector settings. The Spark jars stay the
    stack's (an absolute ``spark.jars_dir``), so Spark started from the copy, in this process or
    a child, finds them.
    """
    topics = {
        role: t.model_copy(update={"name": f"{t.name}.{suffix}"})
        for role, t in cfg.kafka.topics.items()
    }
    base = absolute_config(cfg)
    return cfg.model_copy(
        update={
            "paths": base.paths.model_copy(update={"var_dir": var_dir.absolute()}),
            "kafka": cfg.kafka.model_copy(update={"topics": topics}),
            "redis": cfg.redis.model_copy(update={"db": redis_db}),
            "spark": cfg.spark.model_copy(
                update={"jars_dir": base.paths.resolve(cfg.spark.jars_dir)}
            ),
            "collector": cfg.collector.model_copy(
                update={"port": port or free_port(), **collector}
            ),
        }
    )
