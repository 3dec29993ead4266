"""Serving benchmark: ``POST /v1/recommendations`` at fixed request rates, and freshness.

    .venv/bin/python benchmarks/serving.py [--rates 50,100,200,300,400] [--duration 20]
        [--protocols grpc,rest] [--freshness 30] [--users 100000] [--items 10000]
        [--profile DIR] [--freshness-load 1000]

What it does, on the configured stack (``attune stack up``; ``ATTUNE__*`` overrides apply):

1. **data** (seeded, cached in ``var/bench/serving`` and Redis db 8 under prefix ``bsv``): a
   10,000-item catalog (20 genres, Zipf popularity) and 100,000 users with genre tastes and
   about 8 interactions each. Their online features are written through the online store's
   own write script (:class:`attune.online_store.OnlineStoreWriter`), the catalog mirror with
   ``write_item_metadata``, and co-occurrence neighbours under the batch layer's key names.
2. **model**: TFRS retrieval + ranking trained on the interactions of a seeded sample of
   those users (``attune models train`` code, :func:`models.train.run_training`), published and
   promoted; reused while the data version (hash of the generated files) is unchanged.
3. **load**: ``attune serve models`` and ``attune serve api`` as child processes; a load
   generator in a *separate process* sends requests open-loop at each fixed rate (scheduled
   send times, latency measured from the scheduled time so queueing is not hidden), users
   drawn uniformly from the 100,000, k = 10, for ``--duration`` s after a 3 s warm-up.
   Client latency p50/p95/p99, the server's own per-stage times (its ``Server-Timing``
   header: features, retrieval, candidates, ranking, rules), the answering source. Once with
   the API on gRPC to the model server and once on REST, same data, same run.
   A rate is *held* when at least 98 % of the offered requests completed, none failed, every
   answer came from the model, and p99 <= 15 ms (the target). Per rate, the model server's CPU
   per predict call too (from its own request count: when the 2 cores saturate, the API's
   circuit breaker skips the model server and the CPU per API request looks lower than it
   is), and the peak RSS of the API (with its workers), the model server and the stack's Redis
   (``benchmarks/memory.py``).
4. **freshness**: the collector and the speed layer (Spark, online query) start; for
   ``--freshness`` users: read their recommendations, post a click on the top item to the
   collector, and from the collector's acknowledgement poll the API every 20 ms until that item
   has left the list (the click reached Redis and the next response changed). With
   ``--freshness-load N``, a second process posts N item views a second (by ``load*`` users,
   not the clicking ``bu*`` ones) to the same collector meanwhile, and the report says how many
   it sent and the collector accepted.

With ``--profile DIR``, py-spy samples the API and the model server during each rate (warm-up
included, ``--nonblocking`` so the processes are not paused) and writes their collapsed stacks
to ``DIR/{api,models}-{protocol}-{rate}.txt`` (py-spy's ``raw`` format: one stack and its
sample count a line; ``flamegraph.pl`` or speedscope read it). Sampling costs some CPU of its
own, so compare CPU per request from runs without it.

With ``--compare NAME:KEY=VALUE[,KEY=VALUE...]`` (twice or more), configuration variants are
compared in one run instead of the protocols: for each of ``--rounds`` rounds, each variant in
turn gets its own model server and API (first protocol of ``--protocols``) with those settings
(dotted config keys, YAML values: ``--compare t8:serving.request_threads=8 --compare
t2:serving.request_threads=2``) and runs every rate; the table gives per variant and rate
the median over the rounds of CPU per request (API: all threads, and its event-loop thread
alone), model-server CPU per predict call and p99, and every round's figures. Each variant's
fresh processes first get 5 s of unmeasured load, then 5 s without any (their idle CPU).

Everything runs on this machine (2 cores), load generator included. It prints tables and
writes ``benchmarks/results/serving.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
TARGET_P99_MS = 15.0
TARGET_RATE = 200
TARGET_FRESHNESS_P95_S = 0.25  # issue 15: p95 <= 250 ms and p99 <= 500 ms
TARGET_FRESHNESS_P99_S = 0.5
REDIS_DB = 8
PREFIX = "bsv"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: synthetic interactions end here
IDLE_S = 5.0  # --compare: seconds of idle CPU measured per variant and round
STAGES = ("features", "retrieval", "candidates", "ranking", "rules", "total")


def say(message: str) -> None:
    print(f"serving-bench: {message}", flush=True)


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """user + system CPU seconds of each thread of a process (from /proc)."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def start_profiles(
    folder: Path, pids: dict[str, int], label: str, seconds: float
) -> list[subprocess.Popen[bytes]]:
    """py-spy ``record`` of each ``{name: pid}`` for ``seconds``, into ``folder``."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        out = folder / f"{name}-{label}.txt"
        cmd = [spy, "record", "-p", str(pid), "-f", "raw", "-o", str(out), "--nonblocking"]
        cmd += ["-d", str(int(seconds + 1))]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def pct(values: list[float] | np.ndarray, q: float) -> float | None:
    arr = np.asarray(values, dtype=float)
    return float(np.percentile(arr, q)) if arr.size else None


# ----------------------------------------------------------------------------------------
# Load generator (runs in its own process: `serving.py loadgen ...`)


async def _loadgen(args: argparse.Namespace) -> dict[str, Any]:
    """Open-loop requests at ``args.rate`` for warm-up + duration, over keep-alive HTTP/1.1."""
    import orjson

    host, port = args.host, args.port
    rng = np.random.default_rng(args.seed)
    users = rng.integers(0, args.users, size=int(args.rate * (args.duration + args.warmup)) + 10)
    head = (
        f"POST /v1/recommendations HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nX-Read-Key: {args.key}\r\n"
    ).encode()
    # keep-alive connections with the time they were last used; uvicorn closes connections
    # idle for 5 s, so older ones are dropped instead of reused
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    results: list[tuple[float, float, int, str, dict[str, float]]] = []
    errors: dict[str, int] = {}
    measure_from = 0.0

    async def one(user: int, scheduled: float) -> None:
        body = orjson.dumps(
            {"user_id": f"bu{user}", "k": 10, "context": {"placement": "home", "device": "web"}}
        )
        request = head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        while idle and time.perf_counter() - idle[-1][2] > 3.0:
            idle.pop()[1].close()
        if idle:
            reader, writer, _ = idle.pop()
        else:
            reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            payload = await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            writer.close()
            if scheduled >= measure_from:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        done = time.perf_counter()
        idle.append((reader, writer, done))
        if scheduled < measure_from:
            return
        if status != 200:
            errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
            return
        source = orjson.loads(payload).get("source", "?")
        timing = {}
        for part in headers.get("server-timing", "").split(","):
            name, _, dur = part.strip().partition(";dur=")
            if dur:
                timing[name] = float(dur)
        results.append((scheduled, done, status, source, timing))

    start = time.perf_counter() + 0.2
    measure_from = start + args.warmup
    end = measure_from + args.duration
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while True:
        scheduled = start + i / args.rate
        if scheduled >= end:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(int(users[i]), scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    offered = int(args.rate * args.duration)
    lat = [(done - sched) * 1000 for sched, done, *_ in results]
    sources: dict[str, int] = {}
    for *_, source, _t in results:
        sources[source] = sources.get(source, 0) + 1
    stage_ms: dict[str, dict[str, float | None]] = {}
    for stage in STAGES:
        vals = [t[stage] for *_, t in results if stage in t]
        stage_ms[stage] = {"p50": pct(vals, 50), "p95": pct(vals, 95), "p99": pct(vals, 99)}
    last_done = max((done for _s, done, *_ in results), default=measure_from)
    return {
        "rate": args.rate,
        "offered": offered,
        "completed": len(results),
        "errors": errors,
        "achieved_rps": len(results) / max(1e-9, max(last_done, end) - measure_from),
        "latency_ms": {
            "p50": pct(lat, 50),
            "p95": pct(lat, 95),
            "p99": pct(lat, 99),
            "max": max(lat) if lat else None,
        },
        "server_ms": stage_ms,
        "sources": sources,
    }


def loadgen_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="serving.py loadgen")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_loadgen(args))))
    return 0


def run_loadgen(url: str, key: str, rate: float, args: argparse.Namespace, seed: int) -> Any:
    host, _, port = url.removeprefix("http://").partition(":")
    cmd = [
        sys.executable,
        __file__,
        "loadgen",
        "--host",
        host,
        "--port",
        port,
        "--key",
        key,
        "--rate",
        str(rate),
        "--duration",
        str(args.duration),
        "--users",
        str(args.users),
        "--seed",
        str(seed),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
# Synthetic data


class Synthetic:
    """A seeded catalog and user base; interactions end at ``T0``."""

    def __init__(self, seed: int, n_items: int, n_users: int, mean: float, genres: int = 20):
        rng = np.random.default_rng(seed)
        self.genre_names = [f"Genre{g:02d}" for g in range(genres)]
        primary = rng.integers(0, genres, n_items)
        second = np.where(rng.random(n_items) < 0.5, rng.integers(0, genres, n_items), -1)
        self.items = [f"i{i:05d}" for i in range(n_items)]
        self.item_genres = [
            [self.genre_names[p]] + ([self.genre_names[s]] if s >= 0 and s != p else [])
            for p, s in zip(primary, second, strict=True)
        ]
        popularity = 1.0 / np.arange(1, n_items + 1) ** 1.05
        popularity = popularity[rng.permutation(n_items)]
        self.popularity = popularity
        by_genre = [np.flatnonzero(primary == g) for g in range(genres)]
        genre_p = [popularity[idx] / popularity[idx].sum() for idx in by_genre]
        all_p = popularity / popularity.sum()
        counts = np.clip(rng.poisson(mean, n_users), 1, 50)
        self.user_items: list[np.ndarray] = []
        self.user_times: list[np.ndarray] = []
        for u in range(n_users):
            likes = rng.choice(genres, size=2, replace=False)
            n = int(counts[u])
            picks = np.empty(n, dtype=np.int64)
            own = rng.random(n) < 0.8
            for j in range(n):
                if own[j]:
                    g = likes[0] if rng.random() < 0.7 else likes[1]
                    picks[j] = rng.choice(by_genre[g], p=genre_p[g])
                else:
                    picks[j] = rng.choice(n_items, p=all_p)
            picks = np.unique(picks)
            rng.shuffle(picks)
            span = int(rng.integers(3600, 30 * 86400))
            times = np.sort(T0 - rng.integers(0, span, len(picks)))
            self.user_items.append(picks)
            self.user_times.append(times)

    def write_files(self, folder: Path, train_users: int, seed: int) -> tuple[Path, Path]:
        """interactions.csv (a seeded sample of users) and items.csv, for training."""
        import csv

        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed + 1)
        sample = np.sort(rng.choice(len(self.user_items), train_users, replace=False))
        inter = folder / "interactions.csv"
        with inter.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["user_id", "item_id", "timestamp", "event_type"])
            for u in sample:
                for it, t in zip(self.user_items[u], self.user_times[u], strict=True):
                    w.writerow([f"bu{u}", self.items[it], int(t), "item_view"])
        items = folder / "items.csv"
        with items.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["item_id", "title", "genres"])
            for i, name in enumerate(self.items):
                w.writerow([name, f"Item {i}", "|".join(self.item_genres[i])])
        return inter, items


def write_redis(cfg: Any, syn: Synthetic, version: str, pseudonymize: Any) -> None:
    """Catalog mirror, user features (through the write script), neighbours; skipped when
    Redis already holds this version."""
    import orjson
    import redis
    from tqdm import tqdm

    from attune.online_store import BUCKET_HALF_LIVES, SCALE, OnlineStore, OnlineStoreWriter

    r = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, db=cfg.redis.db)
    store = OnlineStore.from_config(cfg)
    marker = f"{store.prefix}:bench"
    if r.hget(marker, "version") == version.encode():
        say(f"Redis db {cfg.redis.db} already holds data version {version}")
        return
    say("writing the catalog mirror, user features and neighbours to Redis")
    stale = list(r.scan_iter(match=f"{store.prefix}:*", count=5000))
    for i in range(0, len(stale), 5000):
        r.delete(*stale[i : i + 5000])
    writer = OnlineStoreWriter(r, store, users_per_pipeline=1000)
    writer.write_item_metadata(
        {
            name: {"title": f"Item {i}", "genres": syn.item_genres[i]}
            for i, name in enumerate(syn.items)
        }
    )
    span = BUCKET_HALF_LIVES * store.half_life_ms
    weight = cfg.speed.features.affinity_weights.get("item_view", 1.0)
    batch: list[tuple[str, int, str, str]] = []
    bar = tqdm(total=len(syn.user_items), unit="user", desc="features", file=sys.stderr)
    for u, (items, times) in enumerate(zip(syn.user_items, syn.user_times, strict=True)):
        user = pseudonymize(f"bu{u}")
        for j, (it, t) in enumerate(zip(items, times, strict=True)):
            t_ms = int(t) * 1000
            iid = f"bench-{u}-{j}#0"
            b = t_ms // span
            row = {
                "i": iid,
                "t": t_ms,
                "y": "item_view",
                "x": 1,
                "it": syn.items[it],
                "r": 1,
                "n": 1,
                "b": b,
                "a": str(round(weight * SCALE * 2 ** ((t_ms - b * span) / store.half_life_ms))),
                "tr": [f"{w}:{t_ms // store.slice_ms(w)}" for w in store.trending_windows_s],
            }
            batch.append((user, t_ms, iid, orjson.dumps(row).decode()))
        if len(batch) >= 20_000:
            writer.apply(batch)
            bar.update(len({b[0] for b in batch}))
            batch = []
    if batch:
        writer.apply(batch)
        bar.update(len({b[0] for b in batch}))
    bar.close()
    writer.refresh_trending()
    rng = np.random.default_rng(7)
    pipe = r.pipeline(transaction=False)
    genre_of = [g[0] for g in syn.item_genres]
    by_genre: dict[str, list[int]] = {}
    for i, g in enumerate(genre_of):
        by_genre.setdefault(g, []).append(i)
    # the neighbour lists the API reads (api.candidates.neighbours)
    neighbours_key = (
        store.keys.item_knn if cfg.api.candidates.neighbours == "user" else store.keys.item_similar
    )
    for i, name in enumerate(syn.items):
        mates = by_genre[genre_of[i]]
        picks = rng.choice(mates, size=min(10, len(mates)), replace=False)
        pipe.zadd(
            neighbours_key(name),
            {
                syn.items[j]: float(s)
                for j, s in zip(picks, rng.random(len(picks)), strict=True)
                if j != i
            },
        )
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    r.hset(marker, mapping={"version": version, "written_at": datetime.now(UTC).isoformat()})
    r.close()


def train_or_reuse(cfg: Any, inter: Path, items: Path) -> dict[str, Any]:
    from models.data import load_csv
    from models.train import RANKING_NAME, RETRIEVAL_NAME, repository, run_training

    ds = load_csv(inter, items)
    repo = repository(cfg)
    served = {n: repo.served_version(n) for n in (RETRIEVAL_NAME, RANKING_NAME)}
    if all(v is not None for v in served.values()):
        versions = {
            n: (repo.metadata(n, v).get("data") or {}).get("version")
            for n, v in served.items()
            if v is not None
        }
        if set(versions.values()) == {ds.version.version}:
            say(f"reusing the trained models {served} (data version {ds.version.version})")
            return {"reused": True, "versions": served, "data_version": ds.version.version}
    say(
        f"training retrieval + ranking on {ds.version.rows:,} interactions of "
        f"{ds.version.users:,} users, {ds.version.items_count:,} items"
    )
    started = time.monotonic()
    result = run_training(cfg, ds, progress=True, say=say)
    return {
        "reused": False,
        "versions": result.versions,
        "data_version": ds.version.version,
        "seconds": round(time.monotonic() - started, 1),
        "metrics": result.metrics,
    }


# ----------------------------------------------------------------------------------------
# Freshness


def background_events(items: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    """Item views by ``load*`` users (not the probed ``bu*`` ones) of catalog items, for the
    freshness runs' background load (``freshness._http_load`` gives them fresh ids and
    times)."""
    rng = np.random.default_rng(seed)
    return [
        {
            "event_id": uuid.uuid4().hex,
            "type": "item_view",
            "user_id": f"load{int(u)}",
            "items": [{"item_id": items[int(i)]}],
        }
        for u, i in zip(rng.integers(0, 5_000, n), rng.integers(0, len(items), n), strict=True)
    ]


def freshness(
    cfg: Any,
    api_url: str,
    read_key: str,
    n: int,
    users: int,
    queries: str = "online",
    load_rate: float = 0.0,
    items: list[str] | None = None,
) -> dict[str, Any]:
    """``n`` clicks, each timed from the collector's acknowledgement to the clicked item gone
    from the API's next answer; with ``load_rate`` > 0, item views at that many events/s go
    through the same collector from a second process meanwhile."""
    import multiprocessing

    import httpx
    from freshness import _http_load  # benchmarks/ is on sys.path (see the bottom)

    from attune.collector.process import collector_process
    from attune.secrets import create_write_key
    from speed_layer.control import spawn_speed_layer, wait_running

    write_key = create_write_key(cfg, "bench-serving")
    shutil.rmtree(cfg.paths.resolve(cfg.speed.checkpoint_dir), ignore_errors=True)
    say(f"starting the speed layer ({queries}) and the collector for the freshness runs")
    speed = spawn_speed_layer(
        cfg, ["--queries", queries], log=cfg.log_dir / "bench-speed.log", config_name="bench-speed"
    )
    samples: list[float] = []
    timeouts = 0
    load: dict[str, Any] | None = None
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    loader = None
    try:
        wait_running(cfg, speed, timeout_s=240)
        time.sleep(5)  # let the first micro-batches settle
        rng = np.random.default_rng(11)
        with (
            collector_process(cfg, log_path=cfg.log_dir / "bench-collector.log") as curl,
            httpx.Client(timeout=10) as http,
        ):
            api_h = {"X-Read-Key": read_key}
            if load_rate > 0:
                say(f"background load: {load_rate:,.0f} item views/s through the collector")
                events = background_events(items or [], 20_000, seed=12)
                loader = ctx.Process(
                    target=_http_load, args=(curl, write_key, events, load_rate, stop, out)
                )
                loader.start()
                time.sleep(10)  # the speed layer under the load before the first click

            def top_items(user: str) -> list[str]:
                r = http.post(
                    f"{api_url}/v1/recommendations",
                    json={"user_id": user, "k": 10},
                    headers=api_h,
                )
                r.raise_for_status()
                return [i["item_id"] for i in r.json()["items"]]

            for trial in range(n):
                user = f"bu{int(rng.integers(0, users))}"
                clicked = top_items(user)[0]
                event = {
                    "event_id": uuid.uuid4().hex,
                    "type": "click",
                    "user_id": user,
                    "timestamp": datetime.now(UTC).isoformat(),
                    "items": [{"item_id": clicked}],
                }
                r = http.post(f"{curl}/v1/events", json=event, headers={"X-Write-Key": write_key})
                r.raise_for_status()
                acked = time.perf_counter()
                while True:
                    if clicked not in top_items(user):
                        samples.append(time.perf_counter() - acked)
                        break
                    if time.perf_counter() - acked > 15:
                        timeouts += 1
                        break
                    time.sleep(0.02)
                print(
                    f"  freshness {trial + 1}/{n}: "
                    + (f"{samples[-1]:.3f} s" if samples else "timeout"),
                    flush=True,
                )
                time.sleep(float(rng.uniform(0.2, 0.6)))  # clicks land at random phases
            if loader is not None:
                stop.set()
                got = out.get(timeout=120)
                loader.join(30)
                loader = None
                load = {
                    "rate": load_rate,
                    "sent": got["sent"],
                    "accepted": got["accepted"],
                    "errors": got["errors"],
                    "achieved_per_s": round(got["sent"] / got["seconds"], 1),
                }
    finally:
        if loader is not None:  # an error above: stop the load too
            stop.set()
            loader.join(30)
        speed.stop(60)
    return {
        "trials": n,
        "timeouts": timeouts,
        "p50_s": pct(samples, 50),
        "p95_s": pct(samples, 95),
        "p99_s": pct(samples, 99),
        "max_s": max(samples) if samples else None,
        "samples_s": [round(s, 4) for s in samples],
        "trigger": cfg.speed.trigger,
        "writer": cfg.speed.realtime_writer if cfg.speed.trigger == "realtime" else None,
        "realtime_batch_s": cfg.speed.realtime_batch_duration.total_seconds()
        if cfg.speed.trigger == "realtime"
        else None,
        "queries": queries,
        "background_load": load,
    }


# ----------------------------------------------------------------------------------------
# The run


def bench_config(args: argparse.Namespace) -> Any:
    from attune.config import AttuneConfig, RateLimitConfig, free_port, isolated_config, load_config

    base = load_config(None)
    jars = base.paths.resolve(base.spark.jars_dir)
    var = base.paths.resolve("bench/serving")
    cfg = isolated_config(base, suffix="bench-serving", var_dir=var, redis_db=REDIS_DB)
    speed = cfg.speed.model_copy(
        update={
            "trigger": args.speed_trigger,
            "realtime_writer": args.speed_writer,
            "starting_offsets": "latest",
            "online_store": cfg.speed.online_store.model_copy(update={"key_prefix": PREFIX}),
        }
    )
    api = cfg.api.model_copy(
        update={
            "port": free_port(),
            "rate_limit": RateLimitConfig(rate_per_s=10_000.0, burst=10_000),
        }
    )
    models = cfg.models.model_copy(
        update={
            "retrieval": cfg.models.retrieval.model_copy(update={"epochs": args.epochs}),
            "ranking": cfg.models.ranking.model_copy(update={"epochs": args.epochs}),
        }
    )
    serving = cfg.serving.model_copy(update={"rest_port": free_port(), "grpc_port": free_port()})
    # real-time mode needs a task slot per partition of the events topic, and one for the rest
    slots = cfg.kafka.topic("events").partitions + 2 if args.speed_trigger == "realtime" else 2
    spark = cfg.spark.model_copy(update={"jars_dir": jars, "master": f"local[{slots}]"})
    return AttuneConfig.model_validate(
        cfg.model_copy(
            update={
                "speed": speed,
                "api": api,
                "models": models,
                "serving": serving,
                "spark": spark,
            }
        ).model_dump()
    )


def measure_rate(
    api: Any,
    models: Any,
    redis: Any,
    key: str,
    rate: float,
    args: argparse.Namespace,
    seed: int,
    label: str,
) -> dict[str, Any]:
    """One load-generator run at ``rate`` against the running ``api`` and ``models``, with
    their CPU per request (and the API's event-loop thread alone), peak memory, profiles."""
    from memory import PeakMemory, ProcessGroup

    spies = (
        start_profiles(
            args.profile,
            {"api": api.pid, "models": models.pid},
            label,
            args.duration + 3.5,  # the load generator's warm-up + start
        )
        if args.profile
        else []
    )
    memory = PeakMemory(
        [
            ProcessGroup("API", [api.pid], reset_hwm=True),
            ProcessGroup("model server", [models.pid], reset_hwm=True),
            ProcessGroup("Redis", [redis], tree=False),
        ]
    ).start()
    predicts0 = model_server_predicts(models.url)
    cpu0 = (cpu_seconds(api.pid), cpu_seconds(models.pid))
    loop0 = thread_cpu_seconds(api.pid).get(api.pid, 0.0)  # the main thread: uvicorn's loop
    run = run_loadgen(api.url, key, rate, args, seed=seed)
    cpu1 = (cpu_seconds(api.pid), cpu_seconds(models.pid))
    loop1 = thread_cpu_seconds(api.pid).get(api.pid, 0.0)
    run["peak_memory"] = memory.stop()
    predicts = model_server_predicts(models.url) - predicts0
    run["model_server_predicts"] = predicts
    run["model_server_cpu_ms_per_predict"] = round(
        (cpu1[1] - cpu0[1]) * 1000 / max(1.0, predicts), 3
    )
    for spy in spies:
        spy.wait(timeout=60)
    served = max(1, run["completed"])
    # CPU per request is what contention from other processes cannot inflate
    # much; it includes the warm-up requests, so it is a slight overestimate
    run["cpu_ms_per_request"] = {
        "api": round((cpu1[0] - cpu0[0]) * 1000 / served, 3),
        "api_event_loop": round((loop1 - loop0) * 1000 / served, 3),
        "model_server": round((cpu1[1] - cpu0[1]) * 1000 / served, 3),
    }
    run["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    lat = run["latency_ms"]
    cpu = run["cpu_ms_per_request"]
    say(
        f"  done {run['completed']}/{run['offered']} "
        f"({run['achieved_rps']:.1f}/s), errors {run['errors']}, p50 "
        f"{lat['p50']:.1f} p95 {lat['p95']:.1f} p99 {lat['p99']:.1f} ms, "
        f"sources {run['sources']}, cpu ms/req api {cpu['api']} (loop "
        f"{cpu['api_event_loop']}) models {cpu['model_server']}, load "
        f"{run['loadavg_1m_after']}"
        if lat["p50"] is not None
        else f"  nothing completed: {run['errors']}"
    )
    return run


def with_overrides(cfg: Any, overrides: dict[str, str]) -> Any:
    """``cfg`` with dotted keys set (:func:`attune.config.with_overrides`: values read as YAML,
    validated again); an unknown key ends the run with its name."""
    from attune.config import with_overrides as apply

    tree = cfg.model_dump()
    for dotted in overrides:
        node = tree
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise SystemExit(f"--compare: unknown config key {dotted!r}")
            node = node[part]
    return apply(cfg, overrides)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE[,KEY=VALUE...]`` -> (name, {key: value})."""
    name, sep, rest = text.partition(":")
    pairs = [p for p in rest.split(",") if p] if sep else []
    if not name or not all("=" in p for p in pairs):
        raise SystemExit(f"--compare {text!r}: write NAME:KEY=VALUE[,KEY=VALUE...]")
    return name, dict(p.split("=", 1) for p in pairs)


def compare_variants(
    cfg: Any, redis: Any, key: str, rates: list[float], args: argparse.Namespace
) -> dict[str, Any]:
    """Each ``--compare`` variant in turn, ``--rounds`` times, every rate: fresh model server
    and API per variant and round, so the variants alternate under the same conditions."""
    from attune.api.process import start_api
    from attune.serving.process import start_model_server

    proto = next(x for x in args.protocols.split(",") if x)
    variants = [parse_variant(v) for v in args.compare]
    runs: list[dict[str, Any]] = []
    for rnd in range(1, args.rounds + 1):
        for name, overrides in variants:
            vcfg = with_overrides(cfg, {"api.model_server.protocol": proto, **overrides})
            say(f"round {rnd}, variant {name} ({overrides})")
            models = start_model_server(vcfg, log_path=cfg.log_dir / f"bench-models-{name}.log")
            try:
                api = start_api(vcfg, log_path=cfg.log_dir / f"bench-api-{name}.log")
                try:
                    # fresh processes: a short unmeasured load first, so the first rate does
                    # not pay for the first calls (and a breaker opened by them)
                    warm = argparse.Namespace(**{**vars(args), "duration": 5.0})
                    run_loadgen(api.url, key, min(rates) / 2, warm, seed=99)
                    # CPU with no requests at all: what every rate pays besides its requests
                    time.sleep(1.0)
                    c0 = (cpu_seconds(api.pid), cpu_seconds(models.pid))
                    time.sleep(IDLE_S)
                    c1 = (cpu_seconds(api.pid), cpu_seconds(models.pid))
                    idle = {
                        "api": round((c1[0] - c0[0]) / IDLE_S, 3),
                        "model_server": round((c1[1] - c0[1]) / IDLE_S, 3),
                    }
                    say(f"  {name}: idle CPU (cores) {idle}")
                    for i, rate in enumerate(rates):
                        say(f"  {name}: {rate:g} req/s for {args.duration:g} s")
                        run = measure_rate(
                            api,
                            models,
                            redis,
                            key,
                            rate,
                            args,
                            seed=100 + i,
                            label=f"{name}-{rnd}-{rate:g}",
                        )
                        run.update(variant=name, round=rnd, overrides=overrides, idle_cpu=idle)
                        runs.append(run)
                finally:
                    api.stop()
            finally:
                models.stop()
    return {"protocol": proto, "variants": dict(variants), "runs": runs}


def format_compare(compare: dict[str, Any]) -> str:
    def med(values: list[float]) -> str:
        return f"{float(np.median(values)):.2f}" if values else "-"

    lines = [
        f"variants over {compare['protocol']}: median of rounds (each round's value in brackets)",
        f"{'variant':<12} {'rate':>5} | {'api ms/req':>22} | {'api loop ms/req':>22} | "
        f"{'models ms/predict':>22} | {'p99 ms':>26} | model answers",
    ]
    keys = dict.fromkeys((r["variant"], r["rate"]) for r in compare["runs"])
    for variant, rate in sorted(
        keys, key=lambda vr: (vr[1], list(compare["variants"]).index(vr[0]))
    ):
        rs = [r for r in compare["runs"] if r["variant"] == variant and r["rate"] == rate]
        api = [r["cpu_ms_per_request"]["api"] for r in rs]
        loop = [r["cpu_ms_per_request"]["api_event_loop"] for r in rs]
        mod = [r["model_server_cpu_ms_per_predict"] for r in rs]
        p99 = [r["latency_ms"]["p99"] for r in rs if r["latency_ms"]["p99"] is not None]
        model = [r["sources"].get("model", 0) / max(1, r["completed"]) for r in rs]

        def each(values: list[float]) -> str:
            return "[" + " ".join(f"{v:.2f}" for v in values) + "]"

        lines.append(
            f"{variant:<12} {rate:>5.0f} | {med(api):>6} {each(api):<15} | {med(loop):>6} "
            f"{each(loop):<15} | {med(mod):>6} {each(mod):<15} | {med(p99):>6} "
            f"{each(p99):<19} | {min(model) * 100:.1f} % min"
        )
    loads = [r["loadavg_1m_after"] for r in compare["runs"]]
    lines.append(f"load average (1 min) after each rate: {min(loads):.2f}-{max(loads):.2f}")
    return "\n".join(lines)


def model_server_predicts(url: str) -> float:
    """Predict calls the model server at ``url`` has answered (any status), from its metrics."""
    import re

    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for m in re.finditer(r"^attune_serving_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        if 'method="predict"' in m.group(1):
            total += float(m.group(2))
    return total


def format_tables(report: dict[str, Any]) -> str:
    from memory import format_peaks

    lines = []
    hdr = (
        f"{'proto':<5} {'rate':>5} {'done/s':>7} {'err':>4} {'p50':>7} {'p95':>7} {'p99':>7} "
        f"{'max':>7} | server p50/p99: {'feat':>11} {'retr':>11} {'cand':>11} {'rank':>11} "
        f"{'rules':>11} {'total':>11} | source"
    )
    lines.append(hdr)
    lines.append("-" * len(hdr))

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    for proto, runs in report["load"].items():
        for run in runs:
            lat = run["latency_ms"]
            sm = run["server_ms"]
            stages = " ".join(
                f"{f(sm[s]['p50']):>5}/{f(sm[s]['p99']):<5}"
                for s in ("features", "retrieval", "candidates", "ranking", "rules", "total")
            )
            errs = sum(run["errors"].values())
            src = ",".join(f"{k}:{v}" for k, v in sorted(run["sources"].items()))
            cpu = run.get("cpu_ms_per_request") or {}
            lines.append(
                f"{proto:<5} {run['rate']:>5.0f} {run['achieved_rps']:>7.1f} {errs:>4} "
                f"{f(lat['p50']):>7} {f(lat['p95']):>7} {f(lat['p99']):>7} {f(lat['max']):>7} | "
                f"{'':>15}{stages} | {src} | cpu ms/req api {cpu.get('api', '-')} "
                f"models {cpu.get('model_server', '-')} (per predict call "
                f"{run.get('model_server_cpu_ms_per_predict', '-')}) | load "
                f"{run.get('loadavg_1m_after', '-')}"
            )
            if run.get("peak_memory"):
                lines.append(f"{'':>12}{format_peaks(run['peak_memory'])}")
    lines.append(
        "latencies in ms, client side from the scheduled send time; server = Server-Timing"
    )
    for proto, held in report["held"].items():
        lines.append(
            f"highest rate held ({proto}): {held or 'none'} req/s "
            f"(>= 98% completed, no errors, all from the model, p99 <= {TARGET_P99_MS:g} ms)"
        )
    fr = report.get("freshness")
    if fr:

        def f(x: float | None) -> str:  # seconds, to the millisecond
            return "-" if x is None else f"{x:.3f}"

        lines.append(
            f"freshness (collector ack -> changed recommendation), {len(fr['samples_s'])} of "
            f"{fr['trials']} trials ({fr['trigger']}"
            f"{', ' + fr['writer'] + ' writer' if fr.get('writer') else ''}, queries "
            f"{fr.get('queries', 'online')}): p50 {f(fr['p50_s'])} s, p95 {f(fr['p95_s'])} s, "
            f"p99 {f(fr.get('p99_s'))} s, max {f(fr['max_s'])} s, timeouts {fr['timeouts']} "
            f"(target p95 <= {TARGET_FRESHNESS_P95_S:g} s, p99 <= {TARGET_FRESHNESS_P99_S:g} s)"
        )
        load = fr.get("background_load")
        lines.append(
            "  background load: none"
            if not load
            else f"  background load: {load['achieved_per_s']:,.0f} item views/s through the "
            f"collector (asked {load['rate']:,.0f}), {load['accepted']:,} of {load['sent']:,} "
            f"accepted, {load['errors']} failed requests"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "loadgen":
        return loadgen_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="50,100,200,300,400", help="request rates (req/s)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured per rate")
    p.add_argument("--protocols", default="grpc,rest", help="API -> model server protocols")
    p.add_argument("--freshness", type=int, default=30, help="freshness trials (0 = skip)")
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--interactions", type=float, default=8.0, help="mean per user")
    p.add_argument("--train-users", type=int, default=25_000, help="users whose data trains")
    p.add_argument("--epochs", type=int, default=1, help="training epochs of both models")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="folder for py-spy profiles of the API and the model server during each rate",
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE...]",
        help="a configuration variant to compare (give two or more); replaces the protocol runs",
    )
    p.add_argument("--rounds", type=int, default=2, help="rounds of --compare variants")
    p.add_argument(
        "--speed-trigger",
        choices=["microbatch", "realtime"],
        default="microbatch",
        help="speed layer trigger for the freshness runs (speed.trigger)",
    )
    p.add_argument(
        "--speed-writer",
        choices=["python", "jvm"],
        default="python",
        help="real-time mode's Redis writer for the freshness runs (speed.realtime_writer); "
        "jvm's batches are 5 minutes: give enough --freshness trials (about 2 a second) that "
        "they span one",
    )
    p.add_argument(
        "--speed-queries",
        default="online",
        help="speed-layer queries during the freshness runs: online, or bronze,online (as "
        "deployed)",
    )
    p.add_argument(
        "--freshness-load",
        type=float,
        default=0.0,
        metavar="EV_S",
        help="item views per second posted to the collector during the freshness runs, from "
        "a second process (issue 15's target is measured at 1000)",
    )
    args = p.parse_args(argv)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

    from attune.api.keys import ensure_read_key
    from attune.api.process import start_api
    from attune.config import load_config
    from attune.secrets import Pseudonymizer, pseudonym_key
    from attune.serving.process import start_model_server
    from attune.stack import create_topics, kafka_admin
    from attune.stack.redis import redis_pid

    started = time.monotonic()
    cfg = bench_config(args)
    redis = redis_pid(load_config(None))  # the stack's redis-server (its pid file is there)
    say(f"var {cfg.var_dir}, Redis db {cfg.redis.db} prefix {PREFIX}")
    create_topics(cfg)
    t = time.monotonic()
    say(
        f"generating {args.items:,} items and {args.users:,} users "
        f"(seed {args.seed}, ~{args.interactions:g} interactions each)"
    )
    syn = Synthetic(args.seed, args.items, args.users, args.interactions)
    inter, items = syn.write_files(cfg.paths.resolve("data"), args.train_users, args.seed)
    version = f"{args.seed}:{args.items}:{args.users}:{args.interactions}"
    write_redis(cfg, syn, version, Pseudonymizer(pseudonym_key(cfg)))
    data_s = time.monotonic() - t
    t = time.monotonic()
    model = train_or_reuse(cfg, inter, items)
    train_s = time.monotonic() - t
    key = ensure_read_key(cfg, "bench")
    rates = [float(x) for x in args.rates.split(",") if x]
    report: dict[str, Any] = {
        "benchmark": "serving",
        "date": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "setup": {
            "items": args.items,
            "users": args.users,
            "mean_interactions": args.interactions,
            "train_users": args.train_users,
            "k": 10,
            "duration_s": args.duration,
            "data_seconds": round(data_s, 1),
            "train_seconds": round(train_s, 1),
            "model": model,
        },
        "targets": {
            "p99_ms": TARGET_P99_MS,
            "rate": TARGET_RATE,
            "freshness_p95_s": TARGET_FRESHNESS_P95_S,
            "freshness_p99_s": TARGET_FRESHNESS_P99_S,
        },
        "load": {},
        "held": {},
    }
    if args.compare:
        if len(args.compare) < 2:
            raise SystemExit("--compare needs two or more variants")
        try:
            report["compare"] = compare_variants(cfg, redis, key, rates, args)
        finally:
            with contextlib.suppress(Exception), kafka_admin(cfg) as admin:
                names = [tc.name for tc in cfg.kafka.topics.values()]
                admin.delete_topics([n for n in names if n in admin.list_topics()])
        report["seconds"] = round(time.monotonic() - started, 1)
        print(format_compare(report["compare"]))
        out = RESULTS.with_name("serving-compare.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        say(f"wrote {out}")
        return 0
    models = start_model_server(cfg, log_path=cfg.log_dir / "bench-models.log")
    try:
        for proto in [x for x in args.protocols.split(",") if x]:
            ms = cfg.api.model_server.model_copy(update={"protocol": proto})
            pcfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"model_server": ms})})
            api = start_api(pcfg, log_path=cfg.log_dir / f"bench-api-{proto}.log")
            runs = []
            try:
                for i, rate in enumerate(rates):
                    say(f"{proto}: {rate:g} req/s for {args.duration:g} s")
                    run = measure_rate(
                        api, models, redis, key, rate, args, seed=100 + i, label=f"{proto}-{rate:g}"
                    )
                    runs.append(run)
                    failed = sum(run["errors"].values())
                    if run["completed"] < 0.9 * run["offered"] or failed > 0.01 * run["offered"]:
                        say("  cannot keep up (< 90% answered or > 1% errors): stopping here")
                        break
            finally:
                api.stop()
            report["load"][proto] = runs
            held = [
                r["rate"]
                for r in runs
                if r["completed"] >= 0.98 * r["offered"]
                and not r["errors"]
                and set(r["sources"]) == {"model"}
                and r["latency_ms"]["p99"] is not None
                and r["latency_ms"]["p99"] <= TARGET_P99_MS
            ]
            report["held"][proto] = max(held) if held else None
        if args.freshness > 0:
            api = start_api(cfg, log_path=cfg.log_dir / "bench-api-freshness.log")
            try:
                report["freshness"] = freshness(
                    cfg,
                    api.url,
                    key,
                    args.freshness,
                    args.users,
                    args.speed_queries,
                    load_rate=args.freshness_load,
                    items=list(syn.items),
                )
            finally:
                api.stop()
    finally:
        models.stop()
        try:
            with kafka_admin(cfg) as admin:
                names = [tc.name for tc in cfg.kafka.topics.values()]
                admin.delete_topics([n for n in names if n in admin.list_topics()])
        except Exception as exc:
            say(f"could not delete the benchmark topics: {exc}")
    report["seconds"] = round(time.monotonic() - started, 1)
    print(format_tables(report))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
