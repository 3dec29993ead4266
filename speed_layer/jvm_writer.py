"""The online query's JVM writer for real-time mode (``speed.realtime_writer: jvm``).

In Spark 4.1.1's real-time mode a Python ``foreach`` writer receives an epoch's rows only when
the epoch ends (``speed.realtime_batch``, 5 s at least), which is most of real-time mode's
freshness. The JVM writer of ``jvm/writer`` (:code:`io.attune.spark.RedisOnlineWriter`, built
and copied to the Spark jars by ``make jars``) gets each row as Spark reads it and writes it to
Redis at once, in groups of whatever rows arrived meanwhile. With it the batch is only a
checkpoint interval (5 minutes by default: ``SpeedConfig.realtime_batch_duration``): each batch
end pauses the writes while Spark commits and starts the next batch's tasks, which is what is
left of real-time mode's tail latency.

It runs the very same writes as :class:`attune.online_store.OnlineStoreWriter` (the three steps
of that module's docstring, "Redis Cluster", then the trending refresh), and nothing of the
feature logic is stated twice: :func:`writer_spec` hands it, as one JSON document, the Lua
scripts' sources (:data:`attune.online_store.APPLY_SCRIPT`, ``AGG_SCRIPT``, ``TRENDING_SCRIPT``),
their constant parameters (:meth:`attune.online_store.OnlineStore.script_params`), the key
templates (:class:`attune.keys.KeyTemplate`) and the data of the live experiment counts' rule
(:func:`attune.online_store.live_payload`). The Java side only groups rows by user, orders
them, and calls the scripts. One difference of timing, none of result: it recomputes the
trending windows at most once a second (:data:`TRENDING_INTERVAL_MS`) and when an epoch ends,
not after every write.

Not covered: a Redis Cluster (the writer connects to one Redis) and the bandits' feedback
(:mod:`attune.bandits.feedback`, Python); :func:`writer_spec` refuses both with a
:class:`attune.config.ConfigError` naming the keys to change.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from attune.config import ConfigError
from attune.experiments.live import LIVE_COUNTS, NO_EXPERIMENT
from attune.keys import ONLINE_USER_KEYS, KeyTemplate
from attune.online_store import AGG_SCRIPT, APPLY_SCRIPT, TRENDING_SCRIPT, OnlineStore

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

    from attune.config import AttuneConfig

WRITER_CLASS = "io.attune.spark.RedisOnlineWriter"
WRITER_JAR = "attune-spark-writer-*.jar"
TRENDING_INTERVAL_MS = 1000
"""How often at most the JVM writer recomputes the trending windows (and when an epoch ends).
The Python writers do it once per batch; the JVM writer writes groups of a row or two, and a
recomputation (a union of every window's slices) after each would cost Redis more than the
writes themselves. The windows are an hour and a day long: a second is invisible in them."""


def writer_spec(
    cfg: AttuneConfig, store: OnlineStore, *, bandits: bool, users_per_pipeline: int = 500
) -> str:
    """The JVM writer's settings as JSON (see the module docstring).

    ``bandits``: whether bandit policies are configured (their feedback needs the Python
    writer). Raises :class:`attune.config.ConfigError` when the JVM writer cannot do what the
    Python writer would.
    """
    if cfg.redis.cluster:
        raise ConfigError(
            "speed.realtime_writer is jvm, but redis.cluster is true and the JVM writer writes "
            "to one Redis only; set speed.realtime_writer: python (or redis.cluster: false)"
        )
    if bandits:
        raise ConfigError(
            "speed.realtime_writer is jvm, but bandits are configured (api.bandits, "
            "api.message_bandit or a bandit experiment) and their feedback is counted by the "
            "Python writer only; set speed.realtime_writer: python"
        )
    k = store.keys

    def user_key(name: str) -> list[str]:
        return list(KeyTemplate.of(lambda u: k.user_key(u, name)).parts)

    spec: dict[str, Any] = {
        "redis": {"host": cfg.redis.host, "port": cfg.redis.port, "db": cfg.redis.db},
        "scripts": {"apply": APPLY_SCRIPT, "aggregate": AGG_SCRIPT, "trending": TRENDING_SCRIPT},
        "params": store.script_params().decode(),
        "keys": {
            "user": [user_key(name) for name in ONLINE_USER_KEYS],
            "outbox": user_key("outbox"),
            "item_meta": list(KeyTemplate.of(k.item_meta).parts),
            "item_stats": list(KeyTemplate.of(k.item_stats).parts),
            "trend_slice": list(KeyTemplate.of(k.trend_slice, 2).parts),
            "trending": list(KeyTemplate.of(k.trending).parts),
            "exp_live": list(KeyTemplate.of(k.experiment_live).parts),
            "exp_live_users": list(KeyTemplate.of(k.experiment_live_users, 3).parts),
            "agg_seen": k.agg_seen,
            "meta": k.meta,
            "popular": k.popular,
        },
        "trending": {"windows_s": list(store.trending_windows_s), "slices": store.trending_slices},
        "live": {
            "pattern": store.recommendation_id_pattern,
            "counts": LIVE_COUNTS,
            "none": NO_EXPERIMENT,
        },
        "users_per_pipeline": users_per_pipeline,
        "trending_interval_ms": TRENDING_INTERVAL_MS,
    }
    return json.dumps(spec)


def start_jvm_writer(
    spark: SparkSession,
    rows: DataFrame,
    spec: str,
    name: str,
    checkpoint: str,
    trigger_ms: int,
    jars_dir: str,
) -> StreamingQuery:
    """Start ``rows`` in real-time mode into the JVM writer, through the JVM DataStreamWriter
    (py4j), with the query name, output mode, checkpoint and trigger of the Python writer's
    query."""
    from py4j.java_gateway import JavaClass
    from pyspark.sql.streaming import StreamingQuery

    jvm: Any = spark.sparkContext._jvm
    writer_class = jvm
    for part in WRITER_CLASS.split("."):
        writer_class = getattr(writer_class, part)
    if not isinstance(writer_class, JavaClass):
        raise ConfigError(
            f"speed.realtime_writer is jvm, but {WRITER_CLASS} is not on the Spark classpath: "
            f"build it with `make jars` (jvm/writer, copied to {jars_dir} as {WRITER_JAR}) and "
            "start the speed layer again, or set speed.realtime_writer: python"
        )
    writer = writer_class(spec)
    trigger = jvm.org.apache.spark.sql.streaming.Trigger.RealTime(trigger_ms)
    jquery = (
        rows._jdf.writeStream()
        .queryName(name)
        .foreach(writer)
        .outputMode("update")
        .option("checkpointLocation", checkpoint)
        .trigger(trigger)
        .start()
    )
    return StreamingQuery(jquery)
