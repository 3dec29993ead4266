"""Freshness benchmark: collector acknowledgement -> feature visible in Redis, per trigger mode.

    .venv/bin/python benchmarks/freshness.py [--rate 1000] [--duration 30] [--warmup 15]
        [--modes microbatch,realtime,realtime-1s,realtime-jvm] [--no-max-rate]
        [--bronze|--no-bronze] [--bronze-process same|own] [--bronze-nice 10]
        [--realtime-batch S]

On the configured stack (``attune stack up``; ``ATTUNE__*`` overrides apply), with its own
topics (uuid suffix), Redis db and key prefix, var dir and lake:

1. starts ``attune serve collector`` and publishes the MovieTweetings catalog;
2. for each trigger mode, starts the speed layer (``attune speed start --foreground``, bronze
   and online queries, ``spark.master local[8]`` so real-time mode has a task slot for each of
   the 6 partitions) and, after ``--warmup`` seconds of load, measures for ``--duration``
   seconds:

   * steady load: a separate process POSTs ``item_view`` events of MovieTweetings users and
     items, happening now (fresh ids, current timestamps: live traffic, not a replay of 2013),
     through the collector at ``--rate`` events/s, in requests of 50;
   * probes: 10 times a second a single ``item_view`` of a new item by one of 16 probe users
     is POSTed; its freshness is the time from the collector's 200 (Kafka acknowledged it) to
     the item appearing in the user's ``recent`` zset in Redis, polled every 2 ms.

   Modes: ``microbatch`` (back-to-back micro-batches, the default trigger), ``realtime``
   (Spark 4.1 real-time mode with its default minimum batch of 5 s), ``realtime-1s`` (the
   same with the minimum lowered to 1 s through ``spark.sql.streaming.realTimeMode.
   minBatchDuration``), ``realtime-jvm`` (real-time mode with the JVM writer:
   ``speed.realtime_writer: jvm``, :mod:`speed_layer.jvm_writer`, and its default 5-minute
   batches; no bandit is configured in this mode, since the JVM writer does not count bandit
   feedback, so it has no bandit figures). ``--realtime-batch S`` sets the real-time batch of
   ``realtime`` and ``realtime-jvm``. A batch's end pauses real-time mode's writes, so the
   report says how many batch ends the measured window held (from the online checkpoint's
   commit log): measure for at least one batch length, or the tail is not in the figures.
   ``--bronze-process own`` runs the bronze query in a second speed-layer process of its own,
   started at ``--bronze-nice`` (its nice value and its session's scheduling group's), against
   the deployed layout of both queries in one process (each in its own FAIR scheduler pool);
   The CPU the speed layer's processes (driver and JVM) used in the window is reported too,
   in cores: on a shared machine it tells how much of the latency is waiting for a CPU; and
   their peak RSS in the window (the driver, the JVM and its Python workers as one tree,
   ``benchmarks/memory.py``).
   Every probe request also carries a bandit impression (the API's kind: one arm, a fresh name
   per probe, ``context.placement`` = ``slot:home_banner``, whose bandit the benchmark
   configures); its freshness is the time from the same 200 to the arm's impression count
   appearing in the policy's state (``P:bandit:{slot:home_banner}``), the speed layer's
   learning delay (issue 16: "updated from impressions and clicks by the speed layer within
   seconds").
   Each run also reports the online query's mean time per micro-batch step over the measured
   window (from the speed layer's status board: ``spark`` collect, ``genres``, ``users`` (the
   write scripts), ``count``, ``clear``, ``trending``, ``bandits``) and the mean of Spark's
   ``durationMs`` parts over the progress reports the board showed;
3. the highest sustained rate (micro-batch mode): events are produced straight to Kafka (the
   collector is not what is measured here) at increasing rates for ``--step`` seconds each; a
   rate "holds" when the online query's lag at the end of the step is under 2 s worth of events
   and the probes' p95 freshness stays under 5 s. The highest rate that holds is reported,
   with the query's processed rows/s.

Prints a table and writes ``benchmarks/results/freshness.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "freshness.json"
TARGET_P95_S = 0.25  # issue 15: p95 <= 250 ms and p99 <= 500 ms at 1,000 events/s
TARGET_P99_S = 0.5
PROBE_USERS = 16
PROBE_HZ = 10.0
BATCH = 50
REDIS_DB = 9
MODES = ("microbatch", "realtime", "realtime-1s", "realtime-jvm")
BANDIT_POLICY = "slot:home_banner"  # a default content slot, given a bandit for the probes


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


# ----------------------------------------------------------------------------------------
# Load (separate processes)


def _http_load(
    url: str, key: str, events: list[dict[str, Any]], rate: float, stop: Any, out: Any
) -> None:
    """POST ``events`` (cycled, fresh ids) at ``rate`` events/s in requests of ``BATCH``."""
    import httpx
    import orjson

    client = httpx.Client(headers={"X-Write-Key": key, "Content-Type": "application/json"})
    sent = accepted = errors = 0
    interval = BATCH / rate
    start = time.monotonic()
    i = n = 0
    while not stop.is_set():
        due = start + n * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        batch = []
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        for _ in range(BATCH):
            e = dict(events[i % len(events)])
            e["event_id"] = f"{e['event_id']}-{i}"
            e["timestamp"] = now  # live traffic: MovieTweetings users and items, happening now
            batch.append(e)
            i += 1
        try:
            r = client.post(f"{url}/v1/events", content=orjson.dumps(batch), timeout=30)
            sent += len(batch)
            if r.status_code == 200:
                accepted += r.json()["accepted"]
            else:
                errors += 1
        except httpx.HTTPError:
            errors += 1
        n += 1
    out.put(
        {"sent": sent, "accepted": accepted, "errors": errors, "seconds": time.monotonic() - start}
    )


def _kafka_load(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate: float, stop: Any, out: Any
) -> None:
    """Produce ``records`` (pre-encoded StoredEvents) to Kafka at ``rate`` records/s."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=5, compression_type="lz4"
    )
    chunk = max(1, int(rate / 100))  # 100 bursts a second
    start = time.monotonic()
    sent = n = 0
    while not stop.is_set():
        due = start + n / 100
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for _ in range(chunk):
            k, v = records[sent % len(records)]
            producer.send(topic, key=k, value=v)
            sent += 1
        n += 1
    producer.flush(timeout=60)
    producer.close()
    out.put({"sent": sent, "seconds": time.monotonic() - start})


# ----------------------------------------------------------------------------------------
# Probes


class Prober:
    """Posts probe events and times them from the collector's 200 to Redis visibility."""

    def __init__(
        self,
        url: str,
        key: str,
        redis_client: Any,
        store: Any,
        users: list[str],
        pseudonyms: list[str],
        bandits: bool = True,
    ) -> None:
        import httpx

        self.url, self.redis, self.store = url, redis_client, store
        self.users, self.pseudonyms = users, pseudonyms
        self.bandits = bandits  # whether the speed layer counts the probes' bandit impressions
        self.http = httpx.Client(headers={"X-Write-Key": key})
        self.pending: dict[str, tuple[str, float]] = {}  # item -> (pseudonym, ack time)
        self.arms: dict[str, float] = {}  # bandit arm -> ack time
        self.bandit_key = store.keys.bandit(BANDIT_POLICY)
        self.bandit_samples: list[float] = []
        self.lock = threading.Lock()
        self.samples: list[float] = []
        self.lost = 0
        self.failed_posts = 0
        self.seq = 0
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                pending = list(self.pending.items())
                arms = list(self.arms.items())
            if pending or arms:
                pipe = self.redis.pipeline(transaction=False)
                for item, (user, _) in pending:
                    pipe.zscore(self.store.keys.user_key(user, "recent"), item)
                if arms:
                    pipe.hmget(self.bandit_key, [f"n:{arm}" for arm, _ in arms])
                seen = pipe.execute()
                now = time.monotonic()
                with self.lock:
                    scores = seen[: len(pending)]  # then the arms' counts, when any
                    for (item, (_, acked)), score in zip(pending, scores, strict=True):
                        if score is not None and item in self.pending:
                            del self.pending[item]
                            self.samples.append(now - acked)
                    counted = seen[-1] if arms else []
                    for (arm, acked), n in zip(arms, counted, strict=True):
                        if n is not None and arm in self.arms:
                            del self.arms[arm]
                            self.bandit_samples.append(now - acked)
            time.sleep(0.002)

    def probe(self, record: bool = True) -> None:
        self.seq += 1
        k = self.seq % len(self.users)
        item = f"probe-{uuid.uuid4().hex[:12]}"
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        event = {
            "event_id": f"probe-{uuid.uuid4().hex}",
            "type": "item_view",
            "user_id": self.users[k],
            "timestamp": now,
            "items": [{"item_id": item}],
        }
        arm = f"arm-{uuid.uuid4().hex[:12]}"
        impression = {  # what the API logs for a bandit decision (docs/bandits.md)
            "event_id": f"probe-{uuid.uuid4().hex}",
            "type": "impression",
            "user_id": self.users[k],
            "timestamp": now,
            "items": [{"item_id": arm, "position": 0, "propensity": 0.5}],
            "recommendation_id": f"d-{arm}",
            "context": {"placement": BANDIT_POLICY},
        }
        r = self.http.post(f"{self.url}/v1/events", json=[event, impression], timeout=30)
        acked = time.monotonic()
        if r.status_code != 200 or r.json().get("accepted") != 2:
            self.failed_posts += 1
            return
        if record:
            with self.lock:
                self.pending[item] = (self.pseudonyms[k], acked)
                if self.bandits:
                    self.arms[arm] = acked

    def run(self, seconds: float, record: bool = True) -> None:
        end = time.monotonic() + seconds
        n = 0
        start = time.monotonic()
        while time.monotonic() < end:
            due = start + n / PROBE_HZ
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.probe(record)
            n += 1

    def finish(self, grace_s: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending and not self.arms:
                    break
            time.sleep(0.05)
        with self.lock:
            self.lost += len(self.pending)
            self.pending.clear()
            samples, self.samples = self.samples, []
            bandit, self.bandit_samples = self.bandit_samples, []
            bandit_lost = len(self.arms)
            self.arms.clear()
        lost, self.lost = self.lost, 0
        return {
            "bandit": {
                "probes": len(bandit),
                "not_counted_within_grace": bandit_lost,
                "p50_s": _percentile(bandit, 50),
                "p95_s": _percentile(bandit, 95),
                "p99_s": _percentile(bandit, 99),
            },
            "probes": len(samples),
            "not_visible_within_grace": lost,
            "failed_posts": self.failed_posts,
            "p50_s": _percentile(samples, 50),
            "p95_s": _percentile(samples, 95),
            "p99_s": _percentile(samples, 99),
            "max_s": max(samples) if samples else float("nan"),
        }

    def close(self) -> None:
        self._stop.set()
        self._poller.join(timeout=5)
        self.http.close()


# ----------------------------------------------------------------------------------------
# The speed layer as a child process


class SpeedLayer:
    """``attune speed start --foreground`` for one config, in its own process group."""

    def __init__(self, cfg: Any, name: str) -> None:
        from speed_layer.job import speed_paths

        self.cfg = cfg
        self.name = name
        self.log = cfg.log_dir / f"speed-{name}.log"
        self.status = speed_paths(cfg).status_file
        self.child: Any = None  # an attune.supervisor.Child once started

    def board(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status.read_text()))
        except (OSError, ValueError):
            return {}

    def start(self, extra: list[str], nice: int = 0) -> None:
        from speed_layer.control import spawn_speed_layer, wait_running

        config_name = f"speed-{self.name}"
        self.child = spawn_speed_layer(
            self.cfg, extra, log=self.log, config_name=config_name, nice=nice
        )
        wait_running(self.cfg, self.child, timeout_s=300)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(90)  # then SIGKILL to its group, JVM included
            self.child = None


def _online_batch_id(cfg: Any) -> int | None:
    """The online query's last committed batch (the highest file name in its checkpoint's
    ``commits``; each batch end writes one), None before the first."""
    from speed_layer.job import online_checkpoint_name, speed_paths

    commits = speed_paths(cfg).checkpoint(online_checkpoint_name(cfg)) / "commits"
    ids = [int(p.name) for p in commits.glob("[0-9]*") if p.name.isdigit()]
    return max(ids) if ids else None


def _group_cpu_s(pgid: int) -> float:
    """user + system CPU seconds of every live process in process group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of /proc/PID/stat: the process group
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _online_lag(cfg: Any) -> int:
    from speed_layer.control import committed_offsets, end_offsets
    from speed_layer.job import online_checkpoint_name, speed_paths

    topic = cfg.kafka.topic("events").name
    ends = end_offsets(cfg, topic)
    _, committed = committed_offsets(
        speed_paths(cfg).checkpoint(online_checkpoint_name(cfg)), topic
    )
    return sum(e - committed.get(p, 0) for p, e in ends.items())


def _mode_config(base: Any, mode: str, var: Path, realtime_batch_s: float | None = None) -> Any:
    from attune.config import AttuneConfig, BanditConfig

    speed = base.speed.model_copy(
        update={
            "trigger": "microbatch" if mode == "microbatch" else "realtime",
            # every mode reads only what is sent while it runs, not the earlier modes' events
            "starting_offsets": "latest",
            "realtime_batch": (
                timedelta(seconds=1)
                if mode == "realtime-1s"
                else None
                if realtime_batch_s is None
                else timedelta(seconds=realtime_batch_s)
            ),
            "realtime_writer": "jvm" if mode == "realtime-jvm" else "python",
            "online_store": base.speed.online_store.model_copy(
                update={"key_prefix": f"{base.speed.online_store.key_prefix}{mode[:2]}"}
            ),
        }
    )
    spark = base.spark.model_copy(update={"master": "local[8]"})
    paths = base.paths.model_copy(update={"var_dir": var / mode})
    # the probes' bandit impressions count for this slot's policy (Thompson, the defaults)
    slot = BANDIT_POLICY.removeprefix("slot:")
    api = base.api.model_copy(update={"bandits": {**base.api.bandits, slot: BanditConfig()}})
    if mode == "realtime-jvm":  # the JVM writer refuses bandits (their feedback is Python's)
        api = base.api
    cfg = base.model_copy(update={"speed": speed, "spark": spark, "paths": paths, "api": api})
    return AttuneConfig.model_validate(cfg.model_dump())


# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", help="attune config file (default: $ATTUNE_CONFIG / defaults)")
    p.add_argument("--rate", type=float, default=1000.0, help="steady load, events/s")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per mode")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds of load before measuring")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--max-rate", dest="max_rate", action="store_true", default=True)
    p.add_argument("--no-max-rate", dest="max_rate", action="store_false")
    p.add_argument(
        "--rates",
        default="1000,2000,4000,8000,16000,32000",
        help="steps of the max-rate search, events/s",
    )
    p.add_argument("--step", type=float, default=20.0, help="seconds per max-rate step")
    p.add_argument(
        "--bronze",
        dest="bronze",
        action="store_true",
        default=True,
        help="run the bronze query too (default: yes, as deployed)",
    )
    p.add_argument("--no-bronze", dest="bronze", action="store_false")
    p.add_argument(
        "--bronze-process",
        choices=["same", "own"],
        default="same",
        help="run the bronze query in the online query's process (same, as deployed) or in a "
        "second speed-layer process of its own (own), started with --bronze-nice",
    )
    p.add_argument(
        "--bronze-nice",
        type=int,
        default=10,
        help="with --bronze-process own: the bronze process's nice value (0 = same priority)",
    )
    p.add_argument(
        "--realtime-batch",
        type=float,
        default=None,
        help="real-time mode's batch (checkpoint) length in seconds, except realtime-1s "
        "(default: speed.realtime_batch's, 5 s for the python writer, 300 s for the jvm one); "
        "measure for at least one batch, so that the window holds a batch end",
    )
    args = p.parse_args(argv)
    if args.bronze_process == "own" and not args.bronze:
        p.error("--bronze-process own needs the bronze query: drop --no-bronze")

    import redis
    from memory import PeakMemory, ProcessGroup

    from attune.collector.process import collector_process
    from attune.config import AttuneConfig, isolated_config, load_config
    from attune.events import StoredEvent
    from attune.online_store import OnlineStore
    from attune.replay import dataset_events, publish_catalog, read_catalog, resolve_dataset
    from attune.secrets import Pseudonymizer, create_write_key, pseudonym_key
    from attune.stack import create_topics, kafka_admin

    base = load_config(args.config)
    run = uuid.uuid4().hex[:8]
    var = Path(tempfile.mkdtemp(prefix=f"attune-freshness-{run}-"))
    cfg = isolated_config(base, suffix=f"bench-freshness-{run}", var_dir=var, redis_db=REDIS_DB)
    cfg = cfg.model_copy(
        update={
            "spark": cfg.spark.model_copy(
                update={"jars_dir": base.paths.resolve(base.spark.jars_dir)}
            ),
            "speed": cfg.speed.model_copy(
                update={
                    "online_store": cfg.speed.online_store.model_copy(
                        update={"key_prefix": f"bf{run}"}
                    )
                }
            ),
        }
    )
    cfg = AttuneConfig.model_validate(cfg.model_dump())
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"unknown modes {sorted(unknown)}: use {', '.join(MODES)}")

    print(f"freshness: var {var}, topics *.bench-freshness-{run}, redis db {REDIS_DB}", flush=True)
    create_topics(cfg)
    key = create_write_key(cfg, "bench")
    pseudo = Pseudonymizer(pseudonym_key(cfg))
    ds = resolve_dataset(cfg, "movietweetings")
    assert ds.catalog_file is not None
    publish_catalog(cfg, read_catalog(ds.catalog_file))
    _, _, dataset = dataset_events(cfg, "movietweetings", 20_000)
    views = [e for e in dataset if e["type"] == "item_view"]
    users = [f"probe-{run}-{i}" for i in range(PROBE_USERS)]
    r = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=REDIS_DB)
    results: dict[str, Any] = {
        "run": run,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg(),
        },
        "rate": args.rate,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "bronze_query": args.bronze,
        "bronze_process": args.bronze_process if args.bronze else None,
        "bronze_nice": args.bronze_nice if args.bronze_process == "own" else None,
        "realtime_batch_s": args.realtime_batch,  # None: each writer's default
        "modes": {},
    }
    ctx = mp.get_context("spawn")
    layers: list[SpeedLayer] = []
    queries = "bronze,online" if args.bronze and args.bronze_process == "same" else "online"
    try:
        with collector_process(cfg, ready_timeout_s=120) as url:
            for mode in modes:
                mcfg = _mode_config(cfg, mode, var, args.realtime_batch)
                store = OnlineStore.from_config(mcfg)
                print(f"\n== {mode}: starting the speed layer ...", flush=True)
                bronze_layer = None
                if args.bronze and args.bronze_process == "own":
                    # same topics, its own var dir (pid, status board, checkpoint, lake)
                    bcfg = mcfg.model_copy(
                        update={
                            "paths": mcfg.paths.model_copy(
                                update={"var_dir": var / f"{mode}-bronze"}
                            )
                        }
                    )
                    bronze_layer = SpeedLayer(bcfg, f"{mode}-bronze")
                    layers.append(bronze_layer)  # stopped below, or in `finally` on an error
                    bronze_layer.start(["--queries", "bronze"], nice=args.bronze_nice)
                with _speed(SpeedLayer(mcfg, mode), ["--queries", queries]) as layer:
                    prober = Prober(
                        url,
                        key,
                        r,
                        store,
                        users,
                        [pseudo(u) for u in users],
                        bandits=mode != "realtime-jvm",
                    )
                    stop = ctx.Event()
                    out = ctx.Queue()
                    load = ctx.Process(
                        target=_http_load, args=(url, key, views, args.rate, stop, out)
                    )
                    load.start()
                    load_started = time.monotonic()
                    print(
                        f"   warm-up {args.warmup:.0f} s at {args.rate:.0f} events/s ...",
                        flush=True,
                    )
                    prober.run(args.warmup, record=False)
                    prober.finish(grace_s=1)
                    load_avg = os.getloadavg()[0]
                    print(f"   measuring {args.duration:.0f} s ...", flush=True)
                    groups = [ProcessGroup("speed layer", [layer.child.pid], reset_hwm=True)]
                    if bronze_layer is not None:
                        groups.append(
                            ProcessGroup("bronze process", [bronze_layer.child.pid], reset_hwm=True)
                        )
                    memory = PeakMemory(groups).start()
                    cpu0, t0 = _group_cpu_s(layer.child.pid), time.monotonic()
                    batch0 = _online_batch_id(mcfg)
                    bronze_cpu0 = (
                        _group_cpu_s(bronze_layer.child.pid) if bronze_layer is not None else 0.0
                    )
                    board0 = _writer_board(layer)
                    sampler = _ProgressSampler(layer)
                    prober.run(args.duration)
                    sampler.stop()
                    peaks = memory.stop()
                    elapsed = time.monotonic() - t0
                    speed_cores = (_group_cpu_s(layer.child.pid) - cpu0) / elapsed
                    bronze_cores = (
                        (_group_cpu_s(bronze_layer.child.pid) - bronze_cpu0) / elapsed
                        if bronze_layer is not None
                        else None
                    )
                    batch_steps = _step_means(board0, _writer_board(layer))
                    if batch_steps:
                        batch_steps["progress_ms"] = sampler.means()
                    load_avg_end = os.getloadavg()[0]
                    stop.set()
                    load_stats = out.get(timeout=120)
                    load.join(timeout=30)
                    stats = prober.finish()
                    prober.close()
                    stats["load"] = {
                        **load_stats,
                        "events_per_s": round(
                            load_stats["accepted"] / max(1e-9, time.monotonic() - load_started), 1
                        ),
                    }
                    stats["loadavg_1m"] = load_avg
                    stats["loadavg_1m_end"] = load_avg_end
                    stats["realtime_batch_s"] = (
                        mcfg.speed.realtime_batch_duration.total_seconds()
                        if mcfg.speed.trigger == "realtime"
                        else None
                    )
                    # a real-time batch's end pauses the writes: say how many the window held
                    batch1 = _online_batch_id(mcfg)
                    stats["batch_ends_in_window"] = (
                        0 if batch1 is None else batch1 - (-1 if batch0 is None else batch0)
                    )
                    stats["speed_layer_cores"] = round(speed_cores, 2)
                    stats["bronze_process_cores"] = (
                        round(bronze_cores, 2) if bronze_cores is not None else None
                    )
                    stats["peak_memory"] = peaks
                    stats["batch_steps"] = batch_steps
                    online = layer.board().get("queries", {}).get("online", {})
                    stats["last_progress"] = {
                        k: (online.get("progress") or {}).get(k)
                        for k in (
                            "numInputRows",
                            "inputRowsPerSecond",
                            "processedRowsPerSecond",
                            "durationMs",
                        )
                    }
                    results["modes"][mode] = stats
                    print(
                        f"   p50 {stats['p50_s']:.3f} s  p95 {stats['p95_s']:.3f} s  "
                        f"p99 {stats['p99_s']:.3f} s  ({stats['probes']} probes, "
                        f"{stats['not_visible_within_grace']} not visible)",
                        flush=True,
                    )
                    b = stats["bandit"]
                    print(
                        f"   bandit state: p50 {b['p50_s']:.3f} s  p95 {b['p95_s']:.3f} s  "
                        f"p99 {b['p99_s']:.3f} s  ({b['probes']} impressions, "
                        f"{b['not_counted_within_grace']} not counted)",
                        flush=True,
                    )
                    if batch_steps:
                        print(f"   per micro-batch: {_fmt_steps(batch_steps)}", flush=True)
                if bronze_layer is not None:
                    bronze_layer.stop()

            if args.max_rate:
                mcfg = _mode_config(cfg, "microbatch", var / "max")
                store = OnlineStore.from_config(mcfg)
                topic = mcfg.kafka.topic("events").name
                now = datetime.now(UTC)
                records = []
                for i, e in enumerate(views[:20_000]):
                    se = StoredEvent.model_validate(
                        {
                            **e,
                            "event_id": f"max-{run}-{i}",
                            "user_id": pseudo(e["user_id"]),
                            "timestamp": now,
                            "received_at": now,
                            "source": "bench",
                            "consent": {
                                "analytics": True,
                                "personalization": True,
                                "marketing": False,
                            },
                        }
                    )
                    records.append((se.key.encode(), se.to_json()))
                print(
                    "\n== max sustained rate (micro-batch, produced straight to Kafka) ...",
                    flush=True,
                )
                steps = []
                rates = [float(x) for x in args.rates.split(",")]
                with _speed(SpeedLayer(mcfg, "max"), ["--queries", queries]) as layer:
                    prober = Prober(url, key, r, store, users, [pseudo(u) for u in users])
                    # warm up at the first rate (a fresh JVM's first batches are slow), drain
                    stop = ctx.Event()
                    out = ctx.Queue()
                    proc = ctx.Process(
                        target=_kafka_load,
                        args=(mcfg.kafka.bootstrap_servers, topic, records, rates[0], stop, out),
                    )
                    proc.start()
                    prober.run(args.warmup, record=False)
                    stop.set()
                    out.get(timeout=120)
                    proc.join(timeout=30)
                    prober.finish(grace_s=1)
                    deadline = time.monotonic() + 120
                    while _online_lag(mcfg) > 0 and time.monotonic() < deadline:
                        time.sleep(1)
                    for rate in rates:
                        stop = ctx.Event()
                        out = ctx.Queue()
                        proc = ctx.Process(
                            target=_kafka_load,
                            args=(mcfg.kafka.bootstrap_servers, topic, records, rate, stop, out),
                        )
                        proc.start()
                        prober.run(args.step)
                        lag = _online_lag(mcfg)
                        stop.set()
                        produced = out.get(timeout=120)
                        proc.join(timeout=30)
                        stats = prober.finish(grace_s=5)
                        online = layer.board().get("queries", {}).get("online", {})
                        prog = online.get("progress") or {}
                        achieved = produced["sent"] / max(1e-9, produced["seconds"])
                        holds = (
                            lag < 2 * rate
                            and stats["p95_s"] < 5
                            and stats["not_visible_within_grace"] == 0
                            and achieved >= 0.9 * rate
                        )
                        step = {
                            "rate": rate,
                            "produced_per_s": round(achieved, 1),
                            "lag_at_end": lag,
                            "holds": holds,
                            "p50_s": stats["p50_s"],
                            "p95_s": stats["p95_s"],
                            "processed_rows_per_s": prog.get("processedRowsPerSecond"),
                            "loadavg_1m": os.getloadavg()[0],
                        }
                        steps.append(step)
                        print(
                            f"   {rate:>8.0f}/s: produced {achieved:,.0f}/s, lag {lag:,}, "
                            f"p95 {stats['p95_s']:.2f} s -> "
                            f"{'holds' if holds else 'does not hold'}",
                            flush=True,
                        )
                        if not holds:
                            break
                        # let the query drain before the next step
                        deadline = time.monotonic() + 60
                        while _online_lag(mcfg) > 0 and time.monotonic() < deadline:
                            time.sleep(1)
                    prober.close()
                held = [s["rate"] for s in steps if s["holds"]]
                results["max_rate"] = {
                    "steps": steps,
                    "highest_holding": max(held) if held else None,
                    "step_s": args.step,
                }
    finally:
        for extra_layer in layers:
            extra_layer.stop()
        r.close()
        try:
            with kafka_admin(cfg) as admin:
                names = [t.name for t in cfg.kafka.topics.values()]
                admin.delete_topics([n for n in names if n in admin.list_topics()])
        except Exception as exc:  # best effort: unique names harm nobody
            print(f"freshness: could not delete the topics: {exc}", file=sys.stderr)
        cleanup = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=REDIS_DB)
        for k in cleanup.scan_iter(match=f"bf{run}*", count=1000):
            cleanup.delete(k)
        cleanup.close()

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=str))
    _print_table(results)
    print(f"\nwritten to {RESULTS}")
    return 0


class _speed:
    """Context manager running a :class:`SpeedLayer` with extra CLI arguments."""

    def __init__(self, layer: SpeedLayer, extra: list[str]) -> None:
        self.layer, self.extra = layer, extra

    def __enter__(self) -> SpeedLayer:
        self.layer.start(self.extra)
        return self.layer

    def __exit__(self, *exc: object) -> None:
        self.layer.stop()


class _ProgressSampler:
    """Polls the status board for the online query's progress reports while measuring: the
    mean of each ``durationMs`` part per micro-batch (``triggerExecution`` is the whole batch,
    ``addBatch`` the ``foreachBatch``)."""

    def __init__(self, layer: SpeedLayer) -> None:
        self.layer = layer
        self.seen: dict[int, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            online = self.layer.board().get("queries", {}).get("online", {})
            progress = online.get("progress") or {}
            if "batchId" in progress and progress.get("numInputRows"):
                self.seen[int(progress["batchId"])] = dict(progress.get("durationMs") or {})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def means(self) -> dict[str, float]:
        if not self.seen:
            return {}
        parts = sorted({k for d in self.seen.values() for k in d})
        n = len(self.seen)
        return {
            "sampled_batches": n,
            **{k: round(sum(d.get(k, 0.0) for d in self.seen.values()) / n, 1) for k in parts},
        }


def _writer_board(layer: SpeedLayer) -> dict[str, Any]:
    online = layer.board().get("queries", {}).get("online", {})
    return dict(online.get("writer") or {})


def _step_means(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Mean ms per micro-batch of each step of the online writer between two status-board
    snapshots (the measured window)."""
    batches = int(after.get("batches", 0)) - int(before.get("batches", 0))
    if batches <= 0:
        return {}

    def means(key: str, n: int) -> dict[str, float]:
        a, b = after.get(key) or {}, before.get(key) or {}
        return {k: round((v - b.get(k, 0.0)) / n, 1) for k, v in a.items()} if n > 0 else {}

    out: dict[str, Any] = {
        "batches": batches,
        "rows_per_batch": round(
            (int(after.get("rows", 0)) - int(before.get("rows", 0))) / batches, 1
        ),
        "batch_ms": means("step_ms_total", batches),
    }
    return out


def _fmt_steps(steps: dict[str, Any]) -> str:
    parts = [f"{steps['batches']} batches, {steps['rows_per_batch']:.0f} rows"]
    parts += [f"{k} {v:.1f}" for k, v in steps["batch_ms"].items()]
    text = "; in the batch (ms): ".join([parts[0], ", ".join(parts[1:])])
    if steps.get("progress_ms"):
        text += "; Spark progress (ms): " + ", ".join(
            f"{k} {v:.0f}" for k, v in steps["progress_ms"].items()
        )
    return text


def _fmt(x: Any) -> str:
    return "-" if x is None or x != x else f"{x:.3f}"


def _bronze_label(r: dict[str, Any]) -> str:
    if not r["bronze_query"]:
        return "off"
    if r.get("bronze_process") == "own":
        return f"on, in a process of its own at nice {r['bronze_nice']}"
    return "on, in the online query's process"


def _print_table(r: dict[str, Any]) -> None:
    from memory import format_peaks

    print(
        f"\nfreshness: collector ack -> visible in Redis, steady load {r['rate']:.0f} events/s "
        f"through the collector, {r['duration_s']:.0f} s per mode "
        f"(bronze query {_bronze_label(r)}; 2 cores, load avg at start "
        f"{r['machine']['loadavg_at_start'][0]:.1f})"
    )
    print(
        f"{'mode':<24}{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}{'max s':>8}{'probes':>8}"
        f"{'lost':>6}{'load ev/s':>11}{'loadavg':>9}{'speed cores':>13}"
        f"  target p95 <= {TARGET_P95_S:g} s, p99 <= {TARGET_P99_S:g} s"
    )
    for mode, s in r["modes"].items():
        ok = "ok" if s["p95_s"] <= TARGET_P95_S and s["p99_s"] <= TARGET_P99_S else "MISSED"
        print(
            f"{mode:<24}{_fmt(s['p50_s']):>8}{_fmt(s['p95_s']):>8}{_fmt(s['p99_s']):>8}"
            f"{_fmt(s['max_s']):>8}{s['probes']:>8}{s['not_visible_within_grace']:>6}"
            f"{s['load']['events_per_s']:>11,.0f}{s['loadavg_1m']:>9.1f}"
            f"{s['speed_layer_cores']:>13.2f}  {ok}"
        )
        if s.get("realtime_batch_s"):
            ends = s.get("batch_ends_in_window")
            print(
                f"{'':<24}real-time batches of {s['realtime_batch_s']:g} s: "
                f"{'?' if ends is None else ends} batch end(s) in the measured window"
            )
        if s.get("bronze_process_cores") is not None:
            print(f"{'':<24}bronze process: {s['bronze_process_cores']:.2f} cores")
    for mode, s in r["modes"].items():
        b = s.get("bandit") or {}
        if b.get("probes"):
            print(
                f"{mode + ' bandit':<24}{_fmt(b['p50_s']):>8}{_fmt(b['p95_s']):>8}"
                f"{_fmt(b['p99_s']):>8}{'':>8}{b['probes']:>8}{b['not_counted_within_grace']:>6}"
                "  (impression -> counted in the policy's state)"
            )
    for mode, s in r["modes"].items():
        if s.get("peak_memory"):
            print(f"  {mode}: {format_peaks(s['peak_memory'])}")
    for mode, s in r["modes"].items():
        if s.get("batch_steps"):
            print(f"  {mode}: {_fmt_steps(s['batch_steps'])}")
    m = r.get("max_rate")
    if m:
        print(
            f"\nmax sustained rate (micro-batch, straight to Kafka, {m['step_s']:.0f} s steps): "
            f"{m['highest_holding'] or 'none'} events/s"
        )
        for s in m["steps"]:
            print(
                f"  {s['rate']:>8.0f}/s  produced {s['produced_per_s']:>9,.0f}/s  lag "
                f"{s['lag_at_end']:>8,}  p95 {_fmt(s['p95_s'])} s  processed "
                f"{s['processed_rows_per_s'] or 0:>9,.0f} rows/s  "
                f"{'holds' if s['holds'] else 'does not hold'}"
            )


if __name__ == "__main__":
    sys.exit(main())
