"""Soak benchmark: mixed traffic at half the measured capacity; memory trend and 5xx count.

    .venv/bin/python benchmarks/soak.py [--minutes 20] [--probe-rates 5,10,20,40,60,80,120,160]
        [--probe-step 15] [--p99-ms 15] [--rate R] [--sample-s 10] [--warmup-minutes 2]

What it does, on the configured stack (``attune stack up``; ``ATTUNE__*`` overrides apply):

1. **data and model**: the serving benchmark's seeded catalog, users, online features and
   trained, promoted TFRS models (``benchmarks/serving.py``: :class:`serving.Synthetic`,
   :func:`serving.write_redis`, :func:`serving.train_or_reuse`), in this benchmark's own var
   dir (``var/bench/soak``), topics (``*.bench-soak``), Redis db 5 and key prefix ``bsk``;
   reused while the data version is unchanged.
2. **the stack pieces**, each a child process: ``attune serve models``, ``attune serve api``
   (gRPC to the model server), ``attune serve collector`` and the speed layer (``attune speed
   start --foreground --queries online``, Spark), so events, impressions and feedback flow
   through Kafka into Redis while the API reads from it.
3. **mixed traffic**, from a load generator in a separate process, open loop (scheduled send
   times, latency measured from the scheduled time, so queueing is not hidden). Every 10
   requests are 6 ``POST /v1/recommendations`` (API; a user drawn uniformly, k = 10; the API
   logs each answer as an impression), 3 ``POST /v1/events`` (collector; a batch of 10 events
   of one user, as the Tracker flushes them: 70 % ``item_view``, 20 % ``click``, 10 %
   ``add_to_cart``, items Zipf-like, timestamps now) and 1 ``POST /v1/feedback`` (API;
   ``dismiss`` or ``not_interested`` of one item, every fourth an ``undo``). Rates below are
   requests/s of this mix.
4. **capacity probe** (same run): ``--probe-step`` s (after a 3 s warm-up) at each of
   ``--probe-rates``. A rate is *held* (as ``serving.py`` defines it) when every endpoint
   completed at least 98 % of its offered requests with no 5xx and no other error, every
   recommendation came from the model, and the recommendations' p99 is within ``--p99-ms``
   (default: the serving target, 15 ms); it is *kept up with* when all of that holds but the
   p99. The probe stops at the first rate not kept up with. Capacity = the highest rate
   held. With the speed layer's Spark on the same 2 cores the p99 limit may fail at every
   rate; the soak then runs at half the highest rate kept up with, and says so.
5. **soak**: ``--minutes`` at 50 % of the capacity (or ``--rate``). Every ``--sample-s``
   seconds: the RSS of each process (psutil: model server, API, collector, speed layer Python
   driver, speed layer JVM with its Python workers, and the load generator for reference),
   the JVM's heap (used, and old generation used, from ``jstat -gc``; shown, not judged: a
   JVM's RSS follows its committed heap, which grows towards ``-Xmx`` and is not given back),
   and per endpoint the requests, 5xx, other errors and latency of that window.

The report: per process RSS at start (just before the soak), peak and end, and the slope in
MB/min of a least-squares line over the samples after ``--warmup-minutes`` (2; a quarter of
the run when the run is shorter than 8 minutes), with its 95 % interval. The verdict is
*no growth* when that interval includes 0 or the fitted growth over the fitted span is under
5 % of the process's mean RSS there, else *growth*. Per endpoint: requests, 5xx, other
errors, p50/p99; the last window against the first (p99 and RSS ratios); load averages at
start and end; the capacity probe. Tables on the console (library output goes to log files
under the var dir), ``benchmarks/results/soak.json`` and ``soak.png`` (RSS over time per
process, p99 per window), both git-ignored. Exit code 0 when no 5xx and no process grew,
1 otherwise, 2 when the stack could not be started.

Everything runs on this machine (2 cores), load generator included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules

import serving
from ingest import _Connection

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "soak.json"
PLOT = RESULTS.with_suffix(".png")
REDIS_DB = 5
PREFIX = "bsk"
SUFFIX = "bench-soak"
ENDPOINTS = ("recommendations", "events", "feedback")
# the mix, in the order requests are sent: 6 recommendations, 3 event batches, 1 feedback
MIX = (
    "recommendations",
    "events",
    "recommendations",
    "events",
    "recommendations",
    "feedback",
    "recommendations",
    "events",
    "recommendations",
    "recommendations",
)
EVENT_TYPES = (("item_view", 0.7), ("click", 0.2), ("add_to_cart", 0.1))
SOAK_FRACTION = 0.5
HELD_COMPLETED = 0.98
GROWTH_FRACTION = 0.05
IDLE_S = 3.0  # keep-alive connections idle longer are dropped (uvicorn closes them at 5 s)


def say(message: str) -> None:
    print(f"soak: {message}", flush=True)


def pct(values: list[float] | np.ndarray, q: float) -> float | None:
    """serving.py's percentile, to the microsecond."""
    x = serving.pct(values, q)
    return None if x is None else round(x, 3)


# ----------------------------------------------------------------------------------------
# Load generator (runs in its own process: `soak.py loadgen ...`)


class _Client(_Connection):
    """:class:`ingest._Connection` (a lean keep-alive HTTP/1.1 client) for any POST path."""

    def __init__(self, host: str, port: int, path: str, key_header: str, key: str) -> None:
        super().__init__(host, port, key)
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{key_header}: {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.used = 0.0


class _Pool:
    """Idle keep-alive connections to one endpoint; a new one when none is idle."""

    def __init__(self, host: str, port: int, path: str, key_header: str, key: str) -> None:
        self.args = (host, port, path, key_header, key)
        self.idle: deque[_Client] = deque()

    async def get(self) -> _Client:
        now = time.monotonic()
        while self.idle and now - self.idle[0].used > IDLE_S:
            await self.idle.popleft().close()
        return self.idle.pop() if self.idle else _Client(*self.args)

    def put(self, conn: _Client) -> None:
        conn.used = time.monotonic()
        self.idle.append(conn)


def _window() -> dict[str, dict[str, Any]]:
    return {
        e: {"offered": 0, "done": 0, "s5xx": 0, "errors": {}, "lat": [], "sources": {}}
        for e in ENDPOINTS
    }


async def _mixed_load(args: argparse.Namespace) -> None:
    """Open-loop mixed requests at ``args.rate``; one JSON line per window on stdout."""
    import orjson

    from attune.events import format_time

    rng = np.random.default_rng(args.seed)
    pools = {
        "recommendations": _Pool(
            args.api_host, args.api_port, "/v1/recommendations", "X-Read-Key", args.read_key
        ),
        "feedback": _Pool(
            args.api_host, args.api_port, "/v1/feedback", "X-Read-Key", args.read_key
        ),
        "events": _Pool(
            args.collector_host, args.collector_port, "/v1/events", "X-Write-Key", args.write_key
        ),
    }
    types = [t for t, _ in EVENT_TYPES]
    type_p = [p for _, p in EVENT_TYPES]
    window = _window()
    sent = dict.fromkeys(ENDPOINTS, 0)  # per kind, for the feedback's action and undo
    start = time.perf_counter() + 0.2
    measure_from = start + args.warmup
    end = measure_from + args.duration

    def item() -> str:
        return f"i{int(args.items * rng.random() ** 3):05d}"  # popular items more often

    def body(kind: str) -> bytes:
        n = sent[kind] = sent[kind] + 1
        user = f"bu{int(rng.integers(0, args.users))}"
        if kind == "recommendations":
            return orjson.dumps(
                {"user_id": user, "k": 10, "context": {"placement": "home", "device": "web"}}
            )
        if kind == "feedback":
            action = "dismiss" if n % 2 else "not_interested"
            return orjson.dumps(
                {"user_id": user, "action": action, "items": [item()], "undo": n % 4 == 0}
            )
        now = format_time(datetime.now(UTC))
        return orjson.dumps(
            [
                {
                    "event_id": uuid.uuid4().hex,
                    "type": str(t),
                    "user_id": user,
                    "timestamp": now,
                    "items": [{"item_id": item()}],
                }
                for t in rng.choice(types, size=args.events_per_batch, p=type_p)
            ]
        )

    async def one(kind: str, payload: bytes, scheduled: float) -> None:
        pool = pools[kind]
        conn = await pool.get()
        measured = scheduled >= measure_from
        try:
            status, answer = await conn.post(payload)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            await conn.close()
            if measured:
                errs = window[kind]["errors"]
                errs[type(e).__name__] = errs.get(type(e).__name__, 0) + 1
            return
        pool.put(conn)
        if not measured:
            return
        w = window[kind]
        if status >= 500:
            w["s5xx"] += 1
            w["errors"][f"HTTP {status}"] = w["errors"].get(f"HTTP {status}", 0) + 1
            return
        if status != 200:
            w["errors"][f"HTTP {status}"] = w["errors"].get(f"HTTP {status}", 0) + 1
            return
        w["done"] += 1
        w["lat"].append(round((time.perf_counter() - scheduled) * 1000, 3))
        if kind == "recommendations":
            source = orjson.loads(answer).get("source", "?")
            w["sources"][source] = w["sources"].get(source, 0) + 1

    def emit(t: float, final: bool = False, pending: int = 0) -> None:
        nonlocal window
        line = {"t": round(t, 3), "final": final, "pending": pending, "endpoints": window}
        window = _window()
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    async def windows() -> None:
        k = 1
        while True:
            boundary = measure_from + k * args.window
            if boundary > end + 1e-6:
                return
            await asyncio.sleep(max(0.0, boundary - time.perf_counter()))
            emit(boundary - measure_from)
            k += 1

    emitter = asyncio.create_task(windows())
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while True:
        scheduled = start + i / args.rate
        if scheduled >= end:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        kind = MIX[i % len(MIX)]
        if scheduled >= measure_from:
            window[kind]["offered"] += 1
        task = asyncio.create_task(one(kind, body(kind), scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await emitter
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    emit(time.perf_counter() - measure_from, final=True, pending=len(tasks))
    for pool in pools.values():
        for conn in pool.idle:
            await conn.close()


def loadgen_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="soak.py loadgen")
    p.add_argument("--api-host", default="127.0.0.1")
    p.add_argument("--api-port", type=int, required=True)
    p.add_argument("--collector-host", default="127.0.0.1")
    p.add_argument("--collector-port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--events-per-batch", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    # the keys come in the environment, not on the command line (`ps` shows that to everyone)
    args.read_key = os.environ["SOAK_READ_KEY"]
    args.write_key = os.environ["SOAK_WRITE_KEY"]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_mixed_load(args))
    return 0


class LoadGen:
    """``soak.py loadgen`` as a child process; :meth:`windows` yields its window lines."""

    def __init__(
        self,
        api_url: str,
        read_key: str,
        collector_url: str,
        write_key: str,
        rate: float,
        duration_s: float,
        args: argparse.Namespace,
        seed: int,
        log: Path,
    ) -> None:
        api_host, _, api_port = api_url.removeprefix("http://").rstrip("/").rpartition(":")
        col_host, _, col_port = collector_url.removeprefix("http://").rstrip("/").rpartition(":")
        cmd = [
            sys.executable,
            __file__,
            "loadgen",
            *("--api-host", api_host, "--api-port", api_port),
            *("--collector-host", col_host, "--collector-port", col_port),
            *("--rate", str(rate), "--duration", str(duration_s)),
            *("--window", str(args.sample_s), "--users", str(args.users)),
            *("--items", str(args.items), "--events-per-batch", str(args.events_per_batch)),
            *("--seed", str(seed)),
        ]
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "SOAK_READ_KEY": read_key, "SOAK_WRITE_KEY": write_key},
            )

    def windows(self) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            yield json.loads(line)
        if self.proc.wait() != 0:
            raise RuntimeError(
                f"the load generator failed (exit {self.proc.returncode}); see {self.log}"
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


# ----------------------------------------------------------------------------------------
# Windows -> numbers (pure)


def merge_windows(windows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per endpoint totals over ``windows``: offered, done, 5xx, errors, p50/p99/max, sources."""
    out: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        ws = [w["endpoints"][e] for w in windows]
        errors: dict[str, int] = {}
        sources: dict[str, int] = {}
        for w in ws:
            for k, v in w["errors"].items():
                errors[k] = errors.get(k, 0) + v
            for k, v in w["sources"].items():
                sources[k] = sources.get(k, 0) + v
        lat = [x for w in ws for x in w["lat"]]
        out[e] = {
            "offered": sum(w["offered"] for w in ws),
            "done": sum(w["done"] for w in ws),
            "s5xx": sum(w["s5xx"] for w in ws),
            "errors": errors,
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
            "max_ms": max(lat) if lat else None,
            "sources": sources,
        }
    return out


def held(step: dict[str, dict[str, Any]], p99_ms: float) -> tuple[bool, bool, str]:
    """Whether a probe step held (see the module docstring), whether it kept up (held but for
    the p99 limit), and if not why."""
    for e in ENDPOINTS:
        s = step[e]
        if s["offered"] and s["done"] < HELD_COMPLETED * s["offered"]:
            return False, False, f"{e}: {s['done']}/{s['offered']} completed"
        if s["errors"]:
            return False, False, f"{e}: errors {s['errors']}"
    recs = step["recommendations"]
    if set(recs["sources"]) - {"model"}:
        return False, False, f"recommendations not all from the model: {recs['sources']}"
    if recs["p99_ms"] is None or recs["p99_ms"] > p99_ms:
        return False, True, f"recommendations p99 {_f(recs['p99_ms'])} ms > {p99_ms:g} ms"
    return True, True, "held"


def trend(t_min: list[float], mb: list[float], level: float = 0.95) -> dict[str, Any]:
    """Least-squares slope (MB/min) of ``mb`` over ``t_min`` with its ``level`` interval, the
    fitted growth over the span, and the verdict (see the module docstring)."""
    x = np.asarray(t_min, dtype=float)
    y = np.asarray(mb, dtype=float)
    n = x.size
    if n < 3 or np.ptp(x) == 0:
        return {"n": int(n), "slope_mb_per_min": None, "verdict": "too few samples"}
    from scipy import stats

    sxx = float(((x - x.mean()) ** 2).sum())
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    resid = y - (y.mean() + slope * (x - x.mean()))
    se = float(np.sqrt((resid**2).sum() / (n - 2) / sxx))
    half = float(stats.t.ppf(0.5 + level / 2, n - 2)) * se
    growth = slope * float(np.ptp(x))
    fraction = growth / float(y.mean()) if y.mean() else 0.0
    flat = slope - half <= 0 <= slope + half or fraction < GROWTH_FRACTION
    return {
        "n": int(n),
        "slope_mb_per_min": slope,
        "ci95_mb_per_min": [slope - half, slope + half],
        "fitted_growth_mb": growth,
        "fitted_growth_fraction": fraction,
        "verdict": "no growth" if flat else "growth",
    }


# ----------------------------------------------------------------------------------------
# Processes and their memory


def process_groups(speed_pid: int | None) -> dict[str, list[int]]:
    """The pids behind each process the report names, found among this process's children
    by their command lines (looked up at every sample, so a restarted worker is followed)."""
    import psutil

    groups: dict[str, list[int]] = {}
    me = psutil.Process()
    for child in me.children():
        try:
            cmd = " ".join(child.cmdline())
            tree = [child, *child.children(recursive=True)]
        except psutil.Error:
            continue
        pids = [p.pid for p in tree]
        if "serve models" in cmd:
            groups["model server"] = pids
        elif "serve api" in cmd:
            groups["API"] = pids
        elif "serve collector" in cmd:
            groups["collector"] = pids
        elif "soak.py loadgen" in cmd:
            groups["load generator"] = pids
        elif child.pid == speed_pid:
            jvm: list[int] = []
            for p in tree[1:]:
                try:
                    if p.name() == "java":
                        jvm += [p.pid] + [q.pid for q in p.children(recursive=True)]
                except psutil.Error:
                    continue
            groups["speed layer driver"] = [p for p in pids if p not in jvm]
            groups["speed layer JVM"] = jvm
    return groups


def rss_mb(groups: dict[str, list[int]]) -> dict[str, float]:
    import psutil

    out = {}
    for name, pids in groups.items():
        total = 0
        for pid in pids:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        out[name] = round(total / 2**20, 1)
    return out


def jvm_heap_mb(groups: dict[str, list[int]]) -> dict[str, float]:
    """The speed layer JVM's heap, from ``jstat -gc`` next to its ``java``: used (eden,
    survivors and old generation) and old generation used. A JVM's RSS follows its heap's
    committed size, which grows towards ``-Xmx`` and is not given back; what is used, after
    the collections, is what tells a leak. Empty when there is no JVM or no jstat."""
    import psutil

    for pid in groups.get("speed layer JVM", [])[:1]:
        try:
            jstat = Path(psutil.Process(pid).exe()).with_name("jstat")
            out = subprocess.run(
                [str(jstat), "-gc", str(pid)], capture_output=True, text=True, timeout=10
            ).stdout.split()
        except (psutil.Error, OSError, subprocess.SubprocessError):
            return {}
        half = len(out) // 2
        kb = {k: float(v) for k, v in zip(out[:half], out[half:], strict=True) if v != "-"}
        if "OU" not in kb:
            return {}
        used = kb["OU"] + kb.get("EU", 0) + kb.get("S0U", 0) + kb.get("S1U", 0)
        return {
            "JVM heap used": round(used / 1024, 1),
            "JVM old gen used": round(kb["OU"] / 1024, 1),
        }
    return {}


def memory_sample(t_s: float, speed_pid: int | None) -> dict[str, Any]:
    groups = process_groups(speed_pid)
    return {"t_s": t_s, "rss_mb": rss_mb(groups), "heap_mb": jvm_heap_mb(groups)}


# ----------------------------------------------------------------------------------------
# The run


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Library noise into ``path`` for the block: file descriptor 2 points at the file, so
    TensorFlow's C++ log, progress bars and library warnings land there, not on the console
    (the script's own lines go to stdout). A traceback still reaches the console: the
    interpreter prints it after the block has restored stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def soak_config(args: argparse.Namespace) -> Any:
    """serving.py's benchmark configuration, in this benchmark's own var dir, topics, Redis
    db and key prefix (the soak writes events for minutes; the serving data stays as it is)."""
    from attune.config import AttuneConfig, isolated_config, load_config

    cfg = serving.bench_config(args)
    base = load_config(None)
    own = isolated_config(
        base, suffix=SUFFIX, var_dir=base.paths.resolve("bench/soak"), redis_db=REDIS_DB
    )
    speed = cfg.speed.model_copy(
        update={"online_store": cfg.speed.online_store.model_copy(update={"key_prefix": PREFIX})}
    )
    ms = cfg.api.model_server.model_copy(update={"protocol": args.protocol})
    return AttuneConfig.model_validate(
        cfg.model_copy(
            update={
                "paths": own.paths,
                "kafka": own.kafka,
                "redis": own.redis,
                "collector": own.collector,
                "speed": speed,
                "api": cfg.api.model_copy(update={"model_server": ms}),
            }
        ).model_dump()
    )


def probe(
    urls: dict[str, str], keys: dict[str, str], args: argparse.Namespace, log: Path
) -> tuple[float | None, float | None, list[dict[str, Any]]]:
    """Step through the probe rates; (capacity, highest rate kept up with, steps). Stops at
    the first step not kept up with (answers missing, errors or fallbacks)."""
    rates = [float(x) for x in args.probe_rates.split(",") if x]
    steps = []
    capacity = kept_up = None
    for i, rate in enumerate(rates):
        gen = LoadGen(
            urls["api"],
            keys["read"],
            urls["collector"],
            keys["write"],
            rate,
            args.probe_step,
            args,
            seed=200 + i,
            log=log,
        )
        result = merge_windows(list(gen.windows()))
        ok, up, why = held(result, args.p99_ms)
        steps.append({"rate": rate, "held": ok, "kept_up": up, "why": why, "endpoints": result})
        r = result["recommendations"]
        say(
            f"  probe {rate:g} req/s: {'held' if ok else 'kept up' if up else 'NOT held'}"
            f"{'' if ok else f' ({why})'}; recommendations "
            f"p50 {_f(r['p50_ms'])} p99 {_f(r['p99_ms'])} ms, events p99 "
            f"{_f(result['events']['p99_ms'])} ms, feedback p99 "
            f"{_f(result['feedback']['p99_ms'])} ms, load {os.getloadavg()[0]:.2f}"
        )
        if not up:
            break
        kept_up = rate
        if ok:
            capacity = rate
    if steps and steps[-1]["kept_up"]:
        say("  the highest probe rate was kept up with: the capacity may be higher")
    return capacity, kept_up, steps


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def soak(
    urls: dict[str, str],
    keys: dict[str, str],
    rate: float,
    args: argparse.Namespace,
    speed_pid: int,
    cfg: Any,
) -> dict[str, Any]:
    """The soak itself: windows and RSS samples, with progress lines."""
    from freshness import _online_lag

    duration = args.minutes * 60
    samples: list[dict[str, Any]] = [memory_sample(0.0, speed_pid)]
    windows: list[dict[str, Any]] = []
    gen = LoadGen(
        urls["api"],
        keys["read"],
        urls["collector"],
        keys["write"],
        rate,
        duration,
        args,
        seed=7,
        log=cfg.log_dir / "bench-soak-loadgen.log",
    )
    started = time.monotonic()
    every = max(1, round(args.progress_s / args.sample_s))
    try:
        for w in gen.windows():
            windows.append(w)
            if w["final"]:
                continue
            samples.append(memory_sample(w["t"], speed_pid))
            bad = {e: v["s5xx"] for e, v in w["endpoints"].items() if v["s5xx"] or v["errors"]}
            if len(windows) % every == 0 or bad:
                done = sum(v["done"] for v in w["endpoints"].values())
                elapsed = time.monotonic() - started
                rec = w["endpoints"]["recommendations"]
                rss = samples[-1]["rss_mb"]
                try:
                    lag = str(_online_lag(cfg))
                except Exception as exc:  # only a progress line
                    lag = f"? ({type(exc).__name__})"
                say(
                    f"  {elapsed / 60:5.1f}/{args.minutes:g} min (ETA "
                    f"{max(0.0, duration - w['t']) / 60:.1f} min): {done / args.sample_s:.1f} "
                    f"req/s done, recs p99 {_f(pct(rec['lat'], 99))} ms, 5xx/errors {bad or 0}, "
                    f"speed lag {lag} events, RSS MB "
                    + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
                )
    finally:
        gen.stop()
    return {"windows": windows, "samples": samples, "seconds": time.monotonic() - started}


def analyse(run: dict[str, Any], args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """Per process RSS table and trend, per endpoint totals, first vs last window."""
    samples = run["samples"]
    windows = [w for w in run["windows"] if not w["final"]]
    span_min = args.minutes
    warm = args.warmup_minutes if span_min >= 8 else span_min / 4
    names = [
        (k, n) for k in ("rss_mb", "heap_mb") for n in sorted({n for s in samples for n in s[k]})
    ]
    processes = {}
    for kind, name in names:
        points = [(s["t_s"] / 60, s[kind][name]) for s in samples if name in s[kind]]
        fit = [(t, mb) for t, mb in points if t >= warm]
        tr = trend([t for t, _ in fit], [mb for _, mb in fit])
        processes[name] = {
            "start_mb": points[0][1],
            "peak_mb": max(mb for _, mb in points),
            "end_mb": points[-1][1],
            "end_over_start": round(points[-1][1] / points[0][1], 3) if points[0][1] else None,
            "trend": tr,
            # the client and the JVM's heap are shown, not judged
            "judged": kind == "rss_mb" and name != "load generator",
            "series": kind,
        }
    totals = merge_windows(run["windows"])
    first, last = (
        (merge_windows([windows[0]]), merge_windows([windows[-1]])) if windows else ({}, {})
    )
    baseline = {}
    for e in ENDPOINTS:
        a = first.get(e, {}).get("p99_ms")
        b = last.get(e, {}).get("p99_ms")
        baseline[e] = {
            "first_window_p99_ms": a,
            "last_window_p99_ms": b,
            "ratio": round(b / a, 3) if a and b else None,
        }
    pending = sum(w["pending"] for w in run["windows"] if w["final"])
    return {
        "rate": rate,
        "warmup_minutes_excluded_from_fit": warm,
        "processes": processes,
        "endpoints": totals,
        "first_vs_last_window": baseline,
        "not_answered_at_end": pending,
        "s5xx_total": sum(v["s5xx"] for v in totals.values()),
        "achieved_rps": round(
            sum(v["done"] for v in totals.values()) / max(1e-9, args.minutes * 60), 2
        ),
    }


def format_report(report: dict[str, Any]) -> str:
    a = report["soak"]
    lines = [
        "",
        f"soak: {report['setup']['minutes']:g} min of mixed traffic at {a['rate']:g} req/s "
        f"({a['achieved_rps']:g} answered/s; mix per 10 requests: 6 recommendations, 3 event "
        f"batches of {report['setup']['events_per_batch']}, 1 feedback): {report['basis']}",
        "",
    ]
    hdr = (
        f"{'process':<20} {'start MB':>9} {'peak MB':>9} {'end MB':>9} {'end/start':>9} "
        f"{'MB/min':>8} {'95% CI':>17} {'growth':>7}  verdict"
    )
    lines += [hdr, "-" * len(hdr)]
    for name, p in a["processes"].items():
        tr = p["trend"]
        ci = tr.get("ci95_mb_per_min")
        frac = tr.get("fitted_growth_fraction")
        lines.append(
            f"{name:<20} {p['start_mb']:>9.1f} {p['peak_mb']:>9.1f} {p['end_mb']:>9.1f} "
            f"{_f(p['end_over_start'], 3):>9} {_f(tr.get('slope_mb_per_min'), 2):>8} "
            + (f"{f'[{ci[0]:+.2f}, {ci[1]:+.2f}]':>17}" if ci else f"{'-':>17}")
            + f" {(f'{frac:+.1%}' if frac is not None else '-'):>7}  {tr['verdict']}"
            + ("" if p["judged"] else " (not judged)")
        )
    lines.append(
        f"slope: least squares over the samples after {a['warmup_minutes_excluded_from_fit']:g} "
        f"min; growth = fitted growth over that span / mean RSS; 'no growth' when the 95% CI "
        f"includes 0 or growth < {GROWTH_FRACTION:.0%}"
    )
    lines.append("")
    hdr = (
        f"{'endpoint':<16} {'offered':>8} {'answered':>8} {'5xx':>5} {'errors':>20} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'p99 last/first':>15}"
    )
    lines += [hdr, "-" * len(hdr)]
    for e, s in a["endpoints"].items():
        b = a["first_vs_last_window"][e]
        errs = ",".join(f"{k}:{v}" for k, v in s["errors"].items()) or "0"
        lines.append(
            f"{e:<16} {s['offered']:>8} {s['done']:>8} {s['s5xx']:>5} {errs:>20} "
            f"{_f(s['p50_ms']):>7} {_f(s['p99_ms']):>7} {_f(s['max_ms']):>7} "
            f"{_f(b['ratio'], 2):>8} "
            f"({_f(b['first_window_p99_ms'])}->{_f(b['last_window_p99_ms'])})"
        )
    src = a["endpoints"]["recommendations"]["sources"]
    lines.append(
        f"latency from the scheduled send time; recommendations answered by {src}; "
        f"not answered at the end: {a['not_answered_at_end']}"
    )
    la = report["machine"]
    lines.append(
        f"load average (1/5/15 min) at start {la['loadavg_start']}, end {la['loadavg_end']}"
    )
    lines.append("")
    lines.append(
        f"capacity probe ({report['setup']['probe_step_s']:g} s per step; held = every endpoint "
        f">= 98% answered, no 5xx or error, all recommendations from the model, recommendations "
        f"p99 <= {report['setup']['p99_ms']:g} ms; kept up = held but for the p99):"
    )
    for step in report["probe"]:
        r = step["endpoints"]
        lines.append(
            f"  {step['rate']:>6g} req/s  "
            f"{'held' if step['held'] else 'kept up' if step['kept_up'] else 'not held':<9} "
            f"recs p50/p99 {_f(r['recommendations']['p50_ms'])}/"
            f"{_f(r['recommendations']['p99_ms'])} ms, events p99 "
            f"{_f(r['events']['p99_ms'])} ms, feedback p99 {_f(r['feedback']['p99_ms'])} ms"
            + ("" if step["held"] else f"  ({step['why']})")
        )
    if not report["probe"]:
        lines.append(f"  skipped (--rate {a['rate']:g})")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


def plot(report: dict[str, Any], run: dict[str, Any], path: Path) -> None:
    """Three panels over the soak's minutes: each process's RSS change since the start, the
    speed layer JVM's heap, and the p99 per window of each endpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = report["soak"]
    fig, (rss, heap, lat) = plt.subplots(
        3, 1, figsize=(12, 10), sharex=True, height_ratios=[2, 1, 1.2]
    )
    for name, proc in a["processes"].items():
        kind = proc["series"]
        pts = [(s["t_s"] / 60, s[kind][name]) for s in run["samples"] if name in s[kind]]
        ts = [t for t, _ in pts]
        if kind == "rss_mb":
            label = f"{name} ({proc['start_mb']:.0f} MB at start; {proc['trend']['verdict']})"
            rss.plot(ts, [mb - proc["start_mb"] for _, mb in pts], marker=".", label=label)
        else:
            heap.plot(ts, [mb for _, mb in pts], marker=".", label=name)
    for ax in (rss, heap):
        ax.axvspan(0, a["warmup_minutes_excluded_from_fit"], color="0.92", label="not fitted")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    rss.set_ylabel("RSS change since\nthe start (MB)")
    rss.set_title(
        f"soak: {a['rate']:g} req/s mixed traffic, {report['setup']['minutes']:g} min "
        f"({report['when'][:16]}Z)"
    )
    heap.set_ylabel("speed layer JVM\nheap (MB, jstat)")
    windows = [w for w in run["windows"] if not w["final"]]
    t = [w["t"] / 60 for w in windows]
    for e in ENDPOINTS:
        lat.plot(t, [pct(w["endpoints"][e]["lat"], 99) or np.nan for w in windows], label=e)
    bad = [w["t"] / 60 for w in windows if any(v["s5xx"] for v in w["endpoints"].values())]
    if bad:
        lat.scatter(bad, [0] * len(bad), color="red", marker="x", label="window with 5xx")
    lat.axhline(serving.TARGET_P99_MS, color="0.5", ls="--", lw=1, label="serving p99 target")
    lat.set_ylabel(f"p99 per {report['setup']['sample_s']:g} s\nwindow (ms)")
    lat.set_xlabel("minutes into the soak")
    lat.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    lat.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "loadgen":
        return loadgen_main(argv[1:])
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=20.0, help="soak length")
    p.add_argument("--warmup-minutes", type=float, default=2.0, help="not fitted (runs >= 8 min)")
    p.add_argument("--sample-s", type=float, default=10.0, help="RSS sample and window length")
    p.add_argument("--progress-s", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--probe-rates", default="5,10,20,40,60,80,120,160", help="mixed requests/s")
    p.add_argument("--probe-step", type=float, default=15.0, help="seconds measured per step")
    p.add_argument("--rate", type=float, help="soak at this rate; skips the capacity probe")
    p.add_argument(
        "--p99-ms",
        type=float,
        default=serving.TARGET_P99_MS,
        help="recommendations p99 limit of a held probe step (default: the serving target)",
    )
    p.add_argument("--protocol", choices=["grpc", "rest"], default="grpc", help="API -> models")
    p.add_argument("--events-per-batch", type=int, default=10)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--interactions", type=float, default=8.0, help="mean per user")
    p.add_argument("--train-users", type=int, default=25_000, help="users whose data trains")
    p.add_argument("--epochs", type=int, default=1, help="training epochs of both models")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--speed-trigger", choices=["microbatch", "realtime"], default="microbatch")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cfg = soak_config(args)
    noise = cfg.log_dir / "bench-soak.log"
    say(f"var {cfg.var_dir}, Redis db {cfg.redis.db} prefix {PREFIX}; library output in {noise}")
    with stderr_to(noise):
        return run(cfg, args)


def run(cfg: Any, args: argparse.Namespace) -> int:
    """Set up, probe, soak and report (see the module docstring); the exit code."""
    from attune.api.keys import ensure_read_key
    from attune.api.process import start_api
    from attune.collector.process import collector_process
    from attune.secrets import Pseudonymizer, create_write_key, pseudonym_key
    from attune.serving.process import start_model_server
    from attune.stack import create_topics, kafka_admin
    from speed_layer.control import spawn_speed_layer, wait_running

    started = time.monotonic()
    logs = cfg.log_dir
    create_topics(cfg)
    say(
        f"data: {args.items:,} items, {args.users:,} users (seed {args.seed}; Redis and the "
        "models are reused while the data is unchanged)"
    )
    syn = serving.Synthetic(args.seed, args.items, args.users, args.interactions)
    inter, items = syn.write_files(cfg.paths.resolve("data"), args.train_users, args.seed)
    version = f"{args.seed}:{args.items}:{args.users}:{args.interactions}"
    serving.write_redis(cfg, syn, version, Pseudonymizer(pseudonym_key(cfg)))
    del syn
    model = serving.train_or_reuse(cfg, inter, items)
    keys = {
        "read": ensure_read_key(cfg, "bench-soak"),
        "write": create_write_key(cfg, "bench-soak"),
    }
    report: dict[str, Any] = {
        "benchmark": "soak",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "setup": {
            "minutes": args.minutes,
            "sample_s": args.sample_s,
            "probe_step_s": args.probe_step,
            "probe_rates": args.probe_rates,
            "mix_per_10_requests": {"recommendations": 6, "events": 3, "feedback": 1},
            "events_per_batch": args.events_per_batch,
            "event_types": dict(EVENT_TYPES),
            "protocol": args.protocol,
            "p99_ms": args.p99_ms,
            "items": args.items,
            "users": args.users,
            "model": model,
            "speed_trigger": args.speed_trigger,
        },
    }
    shutil.rmtree(cfg.paths.resolve(cfg.speed.checkpoint_dir), ignore_errors=True)
    models = api = speed = None
    try:
        say("starting the model server, the API, the collector and the speed layer")
        try:
            models = start_model_server(cfg, log_path=logs / "bench-soak-models.log")
            api = start_api(cfg, log_path=logs / "bench-soak-api.log")
            speed = spawn_speed_layer(
                cfg,
                ["--queries", "online"],
                log=logs / "bench-soak-speed.log",
                config_name="bench-soak-speed",
            )
            wait_running(cfg, speed, timeout_s=240)
        except Exception as exc:
            say(f"could not start the stack pieces: {exc}")
            return 2
        with collector_process(cfg, log_path=logs / "bench-soak-collector.log") as curl:
            urls = {"api": api.url, "collector": curl}
            time.sleep(5)  # the speed layer's first micro-batches
            capacity: float | None = None
            steps: list[dict[str, Any]] = []
            if args.rate:
                rate = args.rate
                basis = f"--rate {rate:g} (no capacity probe)"
                say(f"soaking at --rate {rate:g} req/s (no capacity probe)")
            else:
                say(f"capacity probe: {args.probe_rates} req/s, {args.probe_step:g} s each")
                capacity, kept_up, steps = probe(urls, keys, args, logs / "bench-soak-loadgen.log")
                if capacity is not None:
                    rate = capacity * SOAK_FRACTION
                    basis = f"{SOAK_FRACTION:.0%} of the capacity ({capacity:g} req/s)"
                elif kept_up is not None:
                    rate = kept_up * SOAK_FRACTION
                    basis = (
                        f"{SOAK_FRACTION:.0%} of the highest rate kept up with ({kept_up:g} req/s;"
                        f" none held the p99 limit of {args.p99_ms:g} ms)"
                    )
                    say(
                        f"WARNING: no probe rate held the p99 limit of {args.p99_ms:g} ms; "
                        f"soaking at half the highest rate kept up with ({kept_up:g} req/s)"
                    )
                else:
                    rate = float(args.probe_rates.split(",")[0]) * SOAK_FRACTION
                    basis = f"{SOAK_FRACTION:.0%} of the lowest probe rate (none kept up)"
                    say(f"WARNING: no probe rate kept up; soaking at half the lowest: {rate:g}")
                report["kept_up_rps"] = kept_up
            report["capacity_rps"] = capacity
            report["basis"] = basis
            report["probe"] = steps
            time.sleep(3)
            report["machine"]["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
            say(
                f"soaking {args.minutes:g} min at {rate:g} req/s, "
                f"a sample every {args.sample_s:g} s"
            )
            run = soak(urls, keys, rate, args, speed.pid, cfg)
            report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for child in (speed, api, models):
            if child is not None:
                child.stop(60)
        try:
            with kafka_admin(cfg) as admin:
                names = [tc.name for tc in cfg.kafka.topics.values()]
                admin.delete_topics([n for n in names if n in admin.list_topics()])
        except Exception as exc:
            say(f"could not delete the benchmark topics: {exc}")
    report["soak"] = analyse(run, args, rate)
    grew = [
        n
        for n, p in report["soak"]["processes"].items()
        if p["judged"] and p["trend"]["verdict"] == "growth"
    ]
    s5xx = report["soak"]["s5xx_total"]
    report["verdict"] = (
        "OK: no 5xx, no memory growth"
        if not grew and not s5xx
        else f"FAILED: {s5xx} 5xx; memory growth in {grew or 'none'}"
    )
    report["samples"] = run["samples"]
    report["windows"] = [
        {
            "t_s": w["t"],
            "final": w["final"],
            "endpoints": {
                e: {k: v for k, v in s.items() if k != "lat"}
                | {"p50_ms": pct(s["lat"], 50), "p99_ms": pct(s["lat"], 99)}
                for e, s in w["endpoints"].items()
            },
        }
        for w in run["windows"]
    ]
    report["seconds"] = round(time.monotonic() - started, 1)
    print(format_report(report))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, run, PLOT)
    say(f"wrote {RESULTS} and {PLOT}")
    return 0 if not grew and not s5xx else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
