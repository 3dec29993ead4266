"""Online store benchmark: the speed layer's Redis writes, one Redis against a Redis Cluster.

    .venv/bin/python benchmarks/online_store.py [--rows 200000] [--batch 2000] [--users 20000]

What it does:

1. builds interaction rows in the online rows' format (:func:`attune.features.online_rows`;
   the payload ``APPLY_SCRIPT`` in :mod:`attune.online_store` documents): for ``--users`` users
   over 5,000 items with two genres each, 45 % item views, 45 % impressions, 10 % add-to-carts,
   one event per row, event times one day spread, every id fresh;
2. **one Redis** (the baseline, measured in the same run): a ``redis-server`` the benchmark
   starts on a free loopback port, as ``attune stack up`` configures it (append-only file,
   fsync every second), written through :class:`attune.online_store.OnlineStoreWriter` in
   micro-batches of ``--batch`` rows, as the speed layer's online query does (after each batch,
   the trending refresh);
3. **Redis Cluster**: the same rows into a cluster of ``--masters`` masters started from the
   same binary (:mod:`attune.stack.redis_cluster`), through the same writer on a cluster
   client;
4. checks both stores hold the same aggregates (popular, one item's stats) and one user's
   features, so the two figures are for the same work.

It prints a table (rows/s, batch latency p50 / p95 / max, Redis CPU per 1,000 rows, the ratio
cluster / one Redis, the load average) and writes ``benchmarks/results/online_store.json``
(git-ignored). On a 2-core machine every Redis process shares the same 2 cores with the
writer: the cluster's figure here is its overhead (routing, one more round trip per pipeline),
not the capacity three machines would add.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "online_store.json"
HOUR = 3_600_000
DAY = 24 * HOUR
GENRES = ["Drama", "Comedy", "Action", "Thriller", "Romance", "Horror", "Animation", "Sci-Fi"]


def say(msg: str) -> None:
    print(f"online-store bench: {msg}", flush=True)


def make_rows(
    n: int, users: int, items: int, seed: int, half_life_ms: int
) -> list[tuple[str, int, str, str]]:
    """``n`` interaction rows ``(user, t, iid, payload)`` in the online rows' format."""
    rng = random.Random(seed)
    start = 1_765_000_000_000
    span = 16 * half_life_ms  # the affinity bucket width
    out = []
    for _ in range(n):
        user = f"u{rng.randrange(users):06d}"
        t = start + rng.randrange(DAY)
        item = f"m{rng.randrange(items):05d}"
        roll = rng.random()
        typ = "item_view" if roll < 0.45 else "impression" if roll < 0.9 else "add_to_cart"
        iid = f"{uuid.UUID(int=rng.getrandbits(128))}#0"
        p: dict[str, Any] = {"i": iid, "t": t, "y": typ, "x": 1, "it": item}
        if typ != "impression":
            bucket = t // span
            weight = 1.0 if typ == "item_view" else 3.0
            p["b"] = bucket
            p["a"] = str(round(weight * 2**20 * 2 ** ((t - bucket * span) / half_life_ms)))
            p["r"], p["n"] = 1, 1
            p["tr"] = [f"3600:{t // 300_000}", f"86400:{t // 7_200_000}"]
        else:
            p["m"] = 1
        out.append((user, t, iid, orjson.dumps(p).decode()))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def one_redis(workdir: Path) -> Iterator[Any]:
    """A ``redis-server`` on a free loopback port, configured like ``attune stack up``'s."""
    import redis

    port = _free_port()
    data = workdir / "single"
    data.mkdir()
    conf = data / "redis.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {data}\nappendonly yes\nappendfsync everysec\n"
        f'save ""\nlogfile {data / "redis.log"}\n'
    )
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield client, [client]
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def _redis_cpu(clients: list[Any]) -> float:
    """user + system CPU seconds of the Redis servers behind ``clients`` (INFO cpu)."""
    total = 0.0
    for c in clients:
        info = c.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def run_target(
    name: str,
    client: Any,
    servers: list[Any],
    rows: list[tuple[str, int, str, str]],
    batch: int,
    store: Any,
) -> dict[str, Any]:
    """Write ``rows`` in micro-batches of ``batch`` through the speed layer's writer."""
    from attune.online_store import OnlineStoreWriter

    writer = OnlineStoreWriter(client, store)
    items = sorted({orjson.loads(p)["it"] for _, _, _, p in rows})
    rng = random.Random(7)
    writer.write_item_metadata({i: {"title": i, "genres": rng.sample(GENRES, 2)} for i in items})
    cpu0, load0 = _redis_cpu(servers), os.getloadavg()[0]
    latencies = []
    applied = 0
    started = time.perf_counter()
    last_line = started
    for k in range(0, len(rows), batch):
        t0 = time.perf_counter()
        stats = writer.apply(rows[k : k + batch])
        if stats.applied:
            writer.refresh_trending()
        latencies.append((time.perf_counter() - t0) * 1000)
        applied += stats.applied
        now = time.perf_counter()
        if now - last_line >= 5:
            done = k + batch
            rate = done / (now - started)
            eta = (len(rows) - done) / rate
            say(f"{name}: {done:,}/{len(rows):,} rows, {rate:,.0f} rows/s, ETA {eta:.0f}s")
            last_line = now
    seconds = time.perf_counter() - started
    cpu = _redis_cpu(servers) - cpu0
    latencies.sort()

    def q(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1)

    return {
        "rows": len(rows),
        "applied": applied,
        "seconds": round(seconds, 2),
        "rows_per_s": round(len(rows) / seconds),
        "batches": len(latencies),
        "batch_ms": {"p50": q(0.5), "p95": q(0.95), "max": round(latencies[-1], 1)},
        "redis_cpu_s_per_1000_rows": round(cpu / len(rows) * 1000, 4),
        "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def fingerprint(client: Any, store: Any, user: str) -> dict[str, Any]:
    """What both targets must agree on: popular, one item's stats, one user's features."""
    from attune.online_store import read_item_stats, read_popular, read_user_features

    top = read_popular(client, store, 5)
    f = read_user_features(client, user, store)
    return {
        "popular_top5": top,
        "item_stats": read_item_stats(client, store, top[0][0]) if top else {},
        "user_counters": f.counters,
        "user_recent": f.recent_item_ids[:5],
        "user_affinities": {g: round(v, 9) for g, v in sorted(f.affinities.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2_000, help="rows per micro-batch")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from attune.online_store import OnlineStore

    if shutil.which("redis-server") is None:
        say("redis-server is not installed: `apt-get install redis-server` (or `make setup`)")
        return 2
    store = OnlineStore(prefix="bench", trending_windows_s=(3600, 86400))
    say(f"building {args.rows:,} rows for {args.users:,} users over {args.items:,} items")
    rows = make_rows(args.rows, args.users, args.items, args.seed, store.half_life_ms)
    probe = rows[0][0]
    results: dict[str, Any] = {}
    prints: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="attune-bench-redis-"))
    targets: list[tuple[str, Callable[[], Any]]] = [
        ("one Redis", lambda: one_redis(workdir)),
        (f"Redis Cluster, {args.masters} masters", lambda: cluster(workdir, args.masters)),
    ]
    try:
        for name, start in targets:
            say(f"{name}: starting")
            with start() as (client, servers):
                say(f"{name}: writing {args.rows:,} rows in batches of {args.batch:,}")
                results[name] = run_target(name, client, servers, rows, args.batch, store)
                prints[name] = fingerprint(client, store, probe)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base, other = (results[n] for n, _ in targets)
    same = prints[targets[0][0]] == prints[targets[1][0]]
    report = {
        "benchmark": "online_store",
        "settings": vars(args) | {"output": str(args.output)},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "redis_server": subprocess.run(
                ["redis-server", "--version"], capture_output=True, text=True
            ).stdout.strip(),
        },
        "results": results,
        "ratio_cluster_to_one_rows_per_s": round(other["rows_per_s"] / base["rows_per_s"], 3),
        "same_state": same,
        "fingerprint": prints[targets[0][0]],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    _print_table(report)
    say(f"wrote {args.output}")
    return 0 if same else 1


@contextmanager
def cluster(workdir: Path, masters: int) -> Iterator[Any]:
    """A Redis Cluster of ``masters`` on free loopback ports (:mod:`attune.stack.redis_cluster`,
    configured like the one-Redis baseline), a cluster client, and a client per master."""
    import redis

    from attune.redis_connect import connect
    from attune.stack.redis_cluster import (
        RedisClusterLayout,
        free_cluster_ports,
        redis_cluster_down,
        redis_cluster_up,
    )

    layout = RedisClusterLayout(workdir / "cluster", free_cluster_ports(masters))
    redis_cluster_up(layout)
    client = connect(layout.seed)
    nodes = [redis.Redis(host=layout.host, port=p) for p in layout.ports]
    try:
        yield client, nodes
    finally:
        client.close()
        for n in nodes:
            n.close()
        redis_cluster_down(layout)


def _print_table(r: dict[str, Any]) -> None:
    names = list(r["results"])
    print()
    print(f"{'':<34}" + "".join(f"{n:>30}" for n in names))
    for label, get in (
        ("rows/s", lambda x: f"{x['rows_per_s']:,}"),
        ("batch ms p50 / p95 / max", lambda x: "{p50} / {p95} / {max}".format(**x["batch_ms"])),
        ("Redis CPU s / 1000 rows", lambda x: str(x["redis_cpu_s_per_1000_rows"])),
        ("rows applied", lambda x: f"{x['applied']:,} of {x['rows']:,}"),
        ("load average before / after", lambda x: " / ".join(map(str, x["load_avg_1m"]))),
    ):
        print(f"{label:<34}" + "".join(f"{get(r['results'][n]):>30}" for n in names))
    print(f"{'cluster / one Redis (rows/s)':<34}{r['ratio_cluster_to_one_rows_per_s']:>30}")
    print(f"{'same aggregates and features':<34}{'yes' if r['same_state'] else 'NO':>30}")


if __name__ == "__main__":
    sys.exit(main())
