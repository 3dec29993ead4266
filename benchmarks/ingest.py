"""Ingest benchmark: sustained events/s through the collector into Kafka, vs the raw producer.

    .venv/bin/python benchmarks/ingest.py [--duration 20] [--connections 8] [--batch 100]
        [--compare [--rounds N]]

What it does, on the configured stack (``attune stack up``; ``ATTUNE__*`` overrides apply):

1. creates its own topics (uuid suffix) so it never mixes with the demo's data;
2. builds realistic events from MovieTweetings 100K (an ``item_view`` and a ``rating`` per
   rating row; a fresh uuid4 ``event_id`` per event so every event is distinct);
3. **raw ceiling**: a kafka-python producer with the collector's settings (acks=all,
   idempotent, the configured compression) sends the exact records the collector would write
   (same keys, same canonical JSON) and waits for every ack;
4. **collector**: starts ``attune serve collector`` as a child process (``--workers``
   processes) and drives it from a load generator in a separate process (``--connections``
   concurrent keep-alive HTTP/1.1 connections, ``--batch`` events per request, a lean asyncio
   client so the generator leaves the CPU to the collector) for ``--duration`` seconds after a
   warm-up; every request must be answered 200 (Kafka acknowledged all of its events);
5. **zero loss**: reads the events topic back and checks that every acknowledged event id is
   there (distinct ids == accepted);
6. **memory**: the peak RSS, while the load generator runs, of the collector's processes and
   of the stack's Kafka broker JVM (``benchmarks/memory.py``).

``--compare`` measures the collector as it was before issue 15's ingest work (:data:`BEFORE`:
``collector.kafka_append: send``, ``collector.gc_young_threshold: 0``; or, with ``--against
collector.KEY=VALUE``, one setting alone) and as configured now,
alternating ``--rounds`` times, each run with its own topics and collector, in the same
conditions; the table has a column for each (the best round of each; every round is in the
JSON), with the load average and the machine's CPU use during each run.

It prints a table and writes ``benchmarks/results/ingest.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ingest.json"
TARGET_EVENTS_PER_S = 50_000
TARGET_RATIO = 0.5


def _cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of these processes."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (all processes: the
    collector, the broker, the load generator and anything else running)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _make_bodies(
    events: list[dict[str, Any]], batch: int, n_events: int
) -> list[tuple[bytes, list[str]]]:
    """Request bodies of ``batch`` events, cycling over the dataset with fresh ids."""
    import orjson

    bodies = []
    i = 0
    while i < n_events:
        chunk = []
        ids = []
        for _ in range(batch):
            ev = dict(events[i % len(events)])
            ev["event_id"] = str(uuid.uuid4())
            ids.append(ev["event_id"])
            chunk.append(ev)
            i += 1
        bodies.append((orjson.dumps(chunk), ids))
    return bodies


class _Connection:
    """A minimal HTTP/1.1 keep-alive client for the load generator.

    httpx costs about 1 ms of CPU per request, on the same two cores the collector needs; this
    costs a tenth of that, like a purpose-built load tool (wrk, oha) would. It speaks just
    enough HTTP for ``POST /v1/events``: Content-Length bodies, no chunked responses.
    """

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.head = (
            f"POST /v1/events HTTP/1.1\r\nHost: {host}:{port}\r\nX-Write-Key: {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _load_generator(
    url: str,
    key: str,
    bodies: list[tuple[bytes, list[str]]],
    connections: int,
    warmup_s: float,
    duration_s: float,
    out_path: str,
) -> None:
    """Runs in its own process: POST the bodies over ``connections`` connections."""
    import orjson

    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")

    async def main() -> dict[str, Any]:
        cpu_start = time.process_time()
        queue = list(reversed(bodies))
        start = time.monotonic()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s
        latencies: list[float] = []
        acked: list[str] = []
        measured_events = 0
        measured_first: float | None = None
        measured_last = 0.0
        errors: dict[str, int] = {}

        async def worker() -> None:
            nonlocal measured_events, measured_first, measured_last
            conn = _Connection(host, int(port), key)
            try:
                while queue and time.monotonic() < stop_at:
                    body, ids = queue.pop()
                    t0 = time.monotonic()
                    try:
                        status, payload = await conn.post(body)
                    except (OSError, asyncio.IncompleteReadError) as exc:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                        await conn.close()
                        continue
                    t1 = time.monotonic()
                    if status != 200:
                        errors[str(status)] = errors.get(str(status), 0) + 1
                        continue
                    accepted = orjson.loads(payload)["accepted"]
                    if accepted != len(ids):
                        errors["partial"] = errors.get("partial", 0) + 1
                    acked.extend(ids)
                    if t0 >= measure_from:
                        if measured_first is None:
                            measured_first = t0
                        latencies.append(t1 - t0)
                        measured_events += accepted
                        measured_last = t1
            finally:
                await conn.close()

        await asyncio.gather(*(worker() for _ in range(connections)))
        window = measured_last - (measured_first or measured_last)
        return {
            "latencies": latencies,
            "measured_events": measured_events,
            "window_s": window,
            "acked": acked,
            "errors": errors,
            "ran_out_of_bodies": not queue,
            "cpu_s": time.process_time() - cpu_start,
        }

    try:
        import uvloop

        result = uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is installed with uvicorn[standard]
        result = asyncio.run(main())
    Path(out_path).write_text(json.dumps(result))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _raw_producer(cfg: Any, records: list[tuple[bytes, bytes]], topic: str) -> dict[str, Any]:
    from kafka import KafkaProducer

    from attune.ingest.producer import producer_settings

    producer = KafkaProducer(**producer_settings(cfg))
    producer.partitions_for(topic)  # metadata first, like the warmed-up collector
    failures: list[BaseException] = []
    cpu0 = time.process_time()
    t0 = time.monotonic()
    for key, value in records:
        producer.send(topic, key=key, value=value).add_errback(failures.append)
    producer.flush(timeout=120)
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    producer.close(timeout=10)
    return {
        "events": len(records),
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(len(records) / elapsed, 1),
        "cpu_s": round(cpu, 2),
        "failures": len(failures),
    }


def _collector_records(cfg: Any, events: list[dict[str, Any]], n: int) -> list[tuple[bytes, bytes]]:
    """The exact (key, value) records the collector writes for ``n`` of the events."""
    from datetime import UTC, datetime

    from attune.ingest.pipeline import BatchProcessor
    from attune.secrets import Pseudonymizer, pseudonym_key

    processor = BatchProcessor(Pseudonymizer(pseudonym_key(cfg)), cfg.collector.event_times)
    default = cfg.privacy.default_consent.model_dump()
    out: list[tuple[bytes, bytes]] = []
    for start in range(0, n, 500):
        raw = [
            {**events[i % len(events)], "event_id": str(uuid.uuid4())}
            for i in range(start, min(n, start + 500))
        ]
        received_at = datetime.now(UTC)
        batch = processor.validate(raw, received_at)
        plan = batch.plan(
            {},
            default=default,
            drop_without_analytics=True,
            received_at=received_at,
            source="bench",
        )
        out.extend(plan.records)
    return out


# What "before" means in --compare: the collector as it was before issue 15's ingest work.
# Each entry is (config section, key, value) applied to the "before" run only; "after" runs the
# configuration as loaded (the defaults, or the operator's file and ATTUNE__* overrides).
BEFORE: tuple[tuple[str, str, Any], ...] = (
    ("collector", "kafka_append", "send"),
    ("collector", "gc_young_threshold", 0),
)


def parse_overrides(items: list[str]) -> tuple[tuple[str, str, Any], ...]:
    """``["collector.gc_young_threshold=0", ...]`` -> ``(("collector", "gc_young_threshold",
    "0"), ...)``; the configuration's own validation converts the values."""
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        section, _, key = name.rpartition(".")
        if not sep or section not in ("collector", "kafka.producer") or not key:
            raise ValueError(
                f"--against {item!r}: expected SECTION.KEY=VALUE with SECTION collector or "
                "kafka.producer, e.g. collector.gc_young_threshold=0"
            )
        out.append((section, key, value))
    return tuple(out)


def _variant(cfg: Any, overrides: tuple[tuple[str, str, Any], ...]) -> Any:
    """``cfg`` with ``(section, key, value)`` overrides (``collector`` or ``kafka.producer``),
    validated as a configuration file's values are (so ``"0"`` from the command line is 0)."""
    from attune.config import with_overrides

    return with_overrides(cfg, {f"{section}.{key}": value for section, key, value in overrides})


def _run_collector(
    cfg: Any, key: str, events: list[dict[str, Any]], args: argparse.Namespace, var: Path
) -> dict[str, Any]:
    """One collector run on ``cfg``'s own topics: throughput, latency, CPU and zero loss."""
    from memory import PeakMemory, ProcessGroup

    from attune.collector.process import collector_process
    from attune.config import load_config
    from attune.events_cli import read_topic
    from attune.stack import kafka_pid

    broker = kafka_pid(load_config())  # the stack's, found from its own config's pid file
    events_topic = cfg.kafka.topic("events")
    n_events = int(args.max_rate * (args.duration + args.warmup))
    n_events -= n_events % args.batch
    bodies = _make_bodies(events, args.batch, n_events)
    print(
        f"collector ({cfg.collector.kafka_append}): {len(bodies):,} prepared requests of "
        f"{args.batch} events, {args.connections} connections, {args.warmup:g} s warm-up + "
        f"{args.duration:g} s measured",
        flush=True,
    )
    out_path = var / f"loadgen-{cfg.collector.port}.json"
    load_before = os.getloadavg()
    with collector_process(cfg, log_path=var / f"collector-{cfg.collector.port}.log") as url:
        pids = _collector_pids(cfg.collector.port)
        ctx = mp.get_context("spawn")
        proc = ctx.Process(
            target=_load_generator,
            args=(url, key, bodies, args.connections, args.warmup, args.duration, str(out_path)),
        )
        del bodies
        memory = PeakMemory(
            [
                ProcessGroup("collector", pids, reset_hwm=True),
                ProcessGroup("Kafka broker", [broker], tree=False),
            ]
        ).start()
        cpu0 = _cpu_seconds(pids)
        busy0 = _cpu_busy()
        proc.start()
        proc.join()
        cpu1 = _cpu_seconds(pids)
        peaks = memory.stop()
        busy1 = _cpu_busy()
        load_after = os.getloadavg()
        if proc.exitcode != 0:
            raise SystemExit(f"the load generator failed (exit {proc.exitcode})")
    gen = json.loads(out_path.read_text())

    print("zero loss: reading the events topic back ...", flush=True)
    landed = {
        json.loads(r.value)["event_id"]
        for r in read_topic(cfg, events_topic.name, progress=False, timeout_s=600)
    }
    acked = set(gen["acked"])
    missing = len(acked - landed)
    lat = gen["latencies"]
    rate = gen["measured_events"] / gen["window_s"] if gen["window_s"] > 0 else 0.0
    total_acked = len(gen["acked"])
    return {
        "settings": {
            "kafka_append": cfg.collector.kafka_append,
            "gc_young_threshold": cfg.collector.gc_young_threshold,
            "compression": cfg.kafka.producer.compression_type,
            "linger_ms": cfg.kafka.producer.linger_ms,
            "batch_size": cfg.kafka.producer.batch_size,
            "workers": cfg.collector.workers,
        },
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "peak_memory": peaks,
        # share of the machine's CPU time in use while the load generator ran (all processes)
        "machine_cpu_busy": round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 3),
        "events_per_s": round(rate, 1),
        "requests": len(lat),
        "events": gen["measured_events"],
        "window_s": round(gen["window_s"], 3),
        "p50_ms": round(_percentile(lat, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(lat, 0.99) * 1000, 2),
        "max_ms": round(max(lat) * 1000, 2) if lat else None,
        "errors": gen["errors"],
        "ran_out_of_prepared_requests": gen["ran_out_of_bodies"],
        "cpu_s_per_1000_events": round(1000 * (cpu1 - cpu0) / total_acked, 4)
        if total_acked
        else None,
        "load_generator_cpu_s_per_1000_events": round(1000 * gen["cpu_s"] / total_acked, 4)
        if total_acked
        else None,
        "zero_loss": {
            "acknowledged": total_acked,
            "distinct_ids_in_topic": len(landed),
            "acknowledged_missing": missing,
            "ok": missing == 0 and len(landed) >= total_acked,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds not measured")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="collector.workers: processes (default 2: one per core of the 2-core target box)",
    )
    parser.add_argument("--raw-events", type=int, default=200_000)
    parser.add_argument("--max-rate", type=float, default=70_000, help="events/s to prepare for")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also run the collector as it was before issue 15's ingest work (BEFORE: "
        "collector.kafka_append=send, collector.gc_young_threshold=0), alternating with the "
        "current one, each run on its own topics",
    )
    parser.add_argument("--rounds", type=int, default=1, help="with --compare: before/after pairs")
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="with --compare: the 'before' runs use these overrides (collector.* or "
        "kafka.producer.*, repeatable) instead of BEFORE, e.g. "
        "--against collector.gc_young_threshold=0 to measure one setting alone",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep-topics", action="store_true")
    args = parser.parse_args(argv)

    from attune.config import TopicConfig, isolated_config, load_config
    from attune.replay import dataset_events
    from attune.secrets import create_write_key
    from attune.stack import create_topics, kafka_admin

    base = load_config()
    try:
        before_overrides = parse_overrides(args.against) if args.against else BEFORE
    except ValueError as exc:
        parser.error(str(exc))
    run = uuid.uuid4().hex[:8]
    var = Path(tempfile.mkdtemp(prefix="attune-bench-"))

    def variant_cfg(label: str) -> Any:
        cfg = isolated_config(
            base, suffix=f"bench-{run}-{label}", var_dir=var, redis_db=15, workers=args.workers
        )
        return _variant(cfg, before_overrides) if label.startswith("before") else cfg

    labels = ["after"]
    if args.compare:
        labels = [f"{w}{i}" for i in range(1, args.rounds + 1) for w in ("before", "after")]
    cfgs = {label: variant_cfg(label) for label in labels}
    cfg = cfgs[labels[-1]]
    events_topic = cfg.kafka.topic("events")
    raw_topic = TopicConfig(
        name=f"attune.bench-raw.{run}",
        partitions=events_topic.partitions,
        retention_ms=3600 * 1000,
        key=events_topic.key,
        description="ingest benchmark: raw producer ceiling",
    )
    cfg = cfg.model_copy(
        update={
            "kafka": cfg.kafka.model_copy(
                update={"topics": {**cfg.kafka.topics, "bench_raw": raw_topic}}
            )
        }
    )
    cfgs[labels[-1]] = cfg
    print(f"ingest benchmark {run}: stack {cfg.kafka.bootstrap_servers}, var {var}", flush=True)
    for c in cfgs.values():
        create_topics(c)
    key = create_write_key(cfg, "bench")
    _, rows, events = dataset_events(cfg, "movietweetings")
    print(f"payloads: {rows:,} MovieTweetings ratings -> {len(events):,} events", flush=True)

    load_before = os.getloadavg()
    runs: dict[str, dict[str, Any]] = {}
    try:
        print(f"raw producer: {args.raw_events:,} events ...", flush=True)
        raw = _raw_producer(cfg, _collector_records(cfg, events, args.raw_events), raw_topic.name)
        print(f"raw producer: {raw['events_per_s']:,.0f} events/s", flush=True)
        for label in labels:
            runs[label] = _run_collector(cfgs[label], key, events, args, var)
            print(f"{label}: {runs[label]['events_per_s']:,.0f} events/s", flush=True)
    finally:
        if not args.keep_topics:
            try:
                with kafka_admin(cfg) as admin:
                    existing = admin.list_topics()
                    names = {t.name for c in cfgs.values() for t in c.kafka.topics.values()}
                    admin.delete_topics([n for n in names if n in existing])
            except Exception as exc:  # best effort
                print(f"could not delete the benchmark topics: {exc}", file=sys.stderr)

    def summary(prefix: str) -> dict[str, Any] | None:
        picked = [r for label, r in runs.items() if label.startswith(prefix)]
        if not picked:
            return None
        best = max(picked, key=lambda r: r["events_per_s"])
        return {**best, "events_per_s_each_round": [r["events_per_s"] for r in picked]}

    after = summary("after")
    before = summary("before")
    assert after is not None
    rate = after["events_per_s"]
    ratio = rate / raw["events_per_s"] if raw["events_per_s"] else 0.0
    zero_loss_ok = all(r["zero_loss"]["ok"] for r in runs.values())
    result: dict[str, Any] = {
        "run": run,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "bootstrap_servers": cfg.kafka.bootstrap_servers,
            "acks": cfg.kafka.producer.acks,
            "batch_events": args.batch,
            "connections": args.connections,
            "workers": cfg.collector.workers,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "before_overrides": [list(o) for o in before_overrides] if before else None,
        },
        "collector": after,
        "collector_before": before,
        "runs_in_order": runs,
        "speedup_after_vs_before": round(rate / before["events_per_s"], 3)
        if before and before["events_per_s"]
        else None,
        "raw_producer": raw,
        "ratio_collector_to_raw": round(ratio, 3),
        "zero_loss": {"ok": zero_loss_ok, **after["zero_loss"]},
        "targets": {
            "events_per_s": TARGET_EVENTS_PER_S,
            "ratio": TARGET_RATIO,
            "met": rate >= TARGET_EVENTS_PER_S and ratio >= TARGET_RATIO,
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    _print_table(result)
    print(f"written to {args.output}")
    return 0 if zero_loss_ok else 1


def _collector_pids(port: int) -> list[int]:
    """The pids of the processes holding the socket listening on ``port`` (the collector and,
    with several workers, each worker)."""
    inode = None
    hex_port = f"{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1].endswith(f":{hex_port}") and parts[3] == "0A":  # LISTEN
            inode = parts[9]
            break
    if inode is None:
        return []
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _print_table(r: dict[str, Any]) -> None:
    """Rows per measure; a column per collector run kept (before, after) when --compare."""
    from memory import format_peaks

    cols = [("after", r["collector"])]
    if r["collector_before"] is not None:
        cols.insert(0, ("before", r["collector_before"]))
    raw = r["raw_producer"]

    def loss(c: dict[str, Any]) -> str:
        z = c["zero_loss"]
        return (
            f"{'OK' if z['ok'] else 'FAILED'} {z['acknowledged_missing']} missing of "
            f"{z['acknowledged']:,}"
        )

    measures: list[tuple[str, Any]] = [
        (
            "kafka_append / linger_ms / compression",
            lambda c: "{kafka_append} / {linger_ms} / {compression}".format(**c["settings"]),
        ),
        ("collector events/s (best round)", lambda c: f"{c['events_per_s']:,.0f}"),
        ("  each round", lambda c: ", ".join(f"{x:,.0f}" for x in c["events_per_s_each_round"])),
        (
            "  requests (batch of events)",
            lambda c: f"{c['requests']:,} ({r['settings']['batch_events']})",
        ),
        (
            "  latency p50 / p99 / max ms",
            lambda c: f"{c['p50_ms']} / {c['p99_ms']} / {c['max_ms']}",
        ),
        ("  errors", lambda c: json.dumps(c["errors"]) if c["errors"] else "none"),
        ("  collector CPU s / 1000 events", lambda c: f"{c['cpu_s_per_1000_events']}"),
        (
            "  load generator CPU s / 1000 events",
            lambda c: f"{c['load_generator_cpu_s_per_1000_events']}",
        ),
        ("  zero loss", loss),
        ("  peak RSS MB (HWM)", lambda c: format_peaks(c["peak_memory"]).split(": ", 1)[1]),
        ("  machine CPU busy during the run", lambda c: f"{100 * c['machine_cpu_busy']:.0f}%"),
        (
            "  load average before / after run",
            lambda c: f"{c['load_avg_before'][0]} / {c['load_avg_after'][0]}",
        ),
    ]
    rows = [("", *[name for name, _ in cols])]
    rows += [(label, *[fn(c) for _, c in cols]) for label, fn in measures]
    if r["speedup_after_vs_before"] is not None:
        rows.append(("after / before", "", f"{r['speedup_after_vs_before']:.2f}x"))
    rows += [
        ("raw producer events/s", f"{raw['events_per_s']:,.0f}"),
        ("collector (after) / raw", f"{r['ratio_collector_to_raw']:.2f}"),
        ("zero loss, every run", "OK" if r["zero_loss"]["ok"] else "FAILED"),
        (
            f"targets (>= {TARGET_EVENTS_PER_S:,} ev/s, >= {TARGET_RATIO} x raw)",
            "met" if r["targets"]["met"] else "NOT met",
        ),
        (
            "load average (1/5/15 min) before / after",
            f"{r['machine']['load_avg_before']} / {r['machine']['load_avg_after']}",
        ),
    ]
    widths = [max(len(str(row[i])) for row in rows if i < len(row)) for i in range(len(cols) + 1)]
    print()
    for row in rows:
        print("  ".join(f"{v!s:<{widths[i]}}" for i, v in enumerate(row)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
