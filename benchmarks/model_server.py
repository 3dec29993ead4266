"""Model server benchmark: REST vs gRPC predict latency (p50/p99) and throughput.

    .venv/bin/python benchmarks/model_server.py [--duration 10] [--concurrency 4] [--batch 1]
    .venv/bin/python benchmarks/model_server.py --url http://host:8501 --grpc host:8500 \\
        --model retrieval   # any running TF-Serving-protocol server (e.g. the official image)

What it does:

1. without ``--url``: writes a small ranking-style SavedModel into a temporary repository
   (``user_id`` string [batch] and ``candidate_ids`` string [batch, 50] -> ``scores`` float32
   [batch, 50]: hashed 32-d embeddings and a dot product, so strings cross the wire both ways
   like the real models' requests) and starts ``attune serve models`` on it in a child process;
2. builds one request from the model's metadata (random ids for strings, random numbers
   otherwise; ``--batch`` rows, ``--width`` for other unknown dimensions), in the REST JSON
   format (``--format``) and as a gRPC ``PredictRequest``; checks both answers agree;
3. for each API: **latency**, one client sending requests back to back for ``--duration``
   seconds after a warm-up; **throughput**, ``--concurrency`` clients (threads, one keep-alive
   connection or channel each) for ``--duration`` seconds; every answer must be 200 / OK.

The load generator runs in this process while the server runs in its own, on the same machine:
on 2 cores both compete for the CPU, which is part of what is measured. It prints a table and
writes ``benchmarks/results/model_server.json`` (git-ignored) with the ratios gRPC / REST.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from attune import supervisor
from attune.config import free_port

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "model_server.json"
BENCH_MODEL = "bench_ranker"
CANDIDATES = 50


def write_bench_model(root: Path) -> Path:
    """A small ranking-style SavedModel at ``root/bench_ranker/1``; returns a model config."""
    import tensorflow as tf

    class Ranker(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = tf.random.Generator.from_seed(7)
            self.users = tf.Variable(rng.normal([1000, 32]), name="users")
            self.items = tf.Variable(rng.normal([5000, 32]), name="items")

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="user_id"),
                tf.TensorSpec([None, None], tf.string, name="candidate_ids"),
            ]
        )
        def score(self, user_id: tf.Tensor, candidate_ids: tf.Tensor) -> dict[str, tf.Tensor]:
            u = tf.gather(self.users, tf.strings.to_hash_bucket_fast(user_id, 1000))
            c = tf.gather(self.items, tf.strings.to_hash_bucket_fast(candidate_ids, 5000))
            return {"scores": tf.einsum("bd,bkd->bk", u, c)}

    model = Ranker()
    folder = root / BENCH_MODEL
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{secrets.token_hex(4)}"
    tf.saved_model.save(
        model, str(tmp), signatures={"serving_default": model.score.get_concrete_function()}
    )
    os.rename(tmp, folder / "1")
    config = root / "models.config"
    config.write_text(
        "model_config_list {\n"
        f'  config {{ name: "{BENCH_MODEL}" base_path: "{folder}" '
        'model_platform: "tensorflow" }\n}\n'
    )
    return config


def _inputs_from_metadata(
    metadata: dict[str, Any], signature: str, batch: int, width: int
) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(11)
    sig = metadata["metadata"]["signature_def"]["signature_def"][signature]
    inputs: dict[str, Any] = {}
    for name, info in sorted(sig["inputs"].items()):
        dims = [int(d["size"]) for d in info["tensor_shape"].get("dim", [])]
        shape = [batch if i == 0 and d < 0 else (width if d < 0 else d) for i, d in enumerate(dims)]
        dtype = info["dtype"]
        if dtype == "DT_STRING":
            ids = rng.integers(0, 5000, size=shape)
            inputs[name] = np.vectorize(lambda i: f"item-{i}".encode(), otypes=[object])(ids)
        elif dtype in ("DT_FLOAT", "DT_DOUBLE", "DT_HALF"):
            np_type = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16}
            inputs[name] = rng.random(size=shape).astype(np_type[dtype])
        elif dtype == "DT_BOOL":
            inputs[name] = rng.random(size=shape) < 0.5
        elif dtype.startswith(("DT_INT", "DT_UINT")):
            np_type = np.dtype(dtype[3:].lower())
            inputs[name] = rng.integers(0, 100, size=shape).astype(np_type)
        else:
            raise SystemExit(f"input {name} has dtype {dtype}, which this benchmark cannot fill")
    return inputs


def _rest_body(inputs: dict[str, Any], signature: str, fmt: str) -> bytes:
    import numpy as np

    def plain(arr: Any) -> Any:
        if arr.dtype == object:
            return np.vectorize(lambda b: b.decode(), otypes=[object])(arr).tolist()
        return arr.tolist()

    if fmt == "columnar":
        doc: dict[str, Any] = {"inputs": {k: plain(v) for k, v in inputs.items()}}
    else:
        cols = {k: plain(v) for k, v in inputs.items()}
        n = len(next(iter(cols.values())))
        doc = {"instances": [{k: cols[k][i] for k in cols} for i in range(n)]}
    if signature != "serving_default":
        doc["signature_name"] = signature
    return json.dumps(doc).encode()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _run(make_call: Any, clients: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """``clients`` threads, each calling its own ``make_call()`` back to back."""
    stop = threading.Event()
    measuring = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def client(i: int) -> None:
        call = make_call()
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                call()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            if measuring.is_set():
                latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(warmup_s)
    measuring.set()
    started = time.perf_counter()
    time.sleep(duration_s)
    stop.set()
    elapsed = time.perf_counter() - started
    for t in threads:
        t.join(timeout=30)
    flat = [x for per in latencies for x in per]
    if errors:
        raise SystemExit(f"{len(errors)} request(s) failed, first: {errors[0]}")
    return {
        "clients": clients,
        "requests": len(flat),
        "throughput_rps": len(flat) / elapsed,
        "p50_ms": _percentile(flat, 50) * 1000,
        "p99_ms": _percentile(flat, 99) * 1000,
        "mean_ms": (sum(flat) / len(flat) * 1000) if flat else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="REST base URL of a running server (default: start one)")
    parser.add_argument("--grpc", help="host:port of its gRPC API (with --url)")
    parser.add_argument("--model", default=BENCH_MODEL, help="model to call (with --url)")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--batch", type=int, default=1, help="rows per request (default: 1)")
    parser.add_argument("--width", type=int, default=CANDIDATES, help="other unknown dims")
    parser.add_argument("--format", choices=["row", "columnar"], default="row")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--concurrency", type=int, default=4, help="clients for throughput")
    parser.add_argument("--batching", action="store_true", help="server-side batching on")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import grpc
    import httpx
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    workdir = Path(tempfile.mkdtemp(prefix="attune-bench-serving-"))
    server: supervisor.Child | None = None
    try:
        if args.url:
            rest, grpc_target, model = args.url.rstrip("/"), args.grpc, args.model
            if not grpc_target:
                raise SystemExit("--grpc host:port is needed with --url")
            server_desc = f"external server {rest} / {grpc_target}"
        else:
            print("writing the benchmark model ...", flush=True)
            config = write_bench_model(workdir)
            rest_port, grpc_port = free_port(), free_port()
            rest, grpc_target, model = (
                f"http://127.0.0.1:{rest_port}",
                f"127.0.0.1:{grpc_port}",
                BENCH_MODEL,
            )
            cmd = [
                sys.executable, "-m", "attune.cli", "serve", "models",
                "--model-config-file", str(config), "--host", "127.0.0.1",
                "--rest-port", str(rest_port), "--grpc-port", str(grpc_port),
                "--batching" if args.batching else "--no-batching",
            ]  # fmt: skip
            print(f"starting attune serve models (log: {workdir / 'server.log'}) ...", flush=True)
            try:
                server = supervisor.start(
                    cmd,
                    name="attune serve models",
                    log=workdir / "server.log",
                    ready=supervisor.http_probe(f"{rest}/v1/models/{model}"),
                    ready_timeout_s=180,
                    cwd=ROOT,
                )
            except supervisor.NotReady as exc:
                raise SystemExit(str(exc)) from None
            server_desc = "attune serve models" + (" --batching" if args.batching else "")

        metadata = httpx.get(f"{rest}/v1/models/{model}/metadata", timeout=30).json()
        inputs = _inputs_from_metadata(metadata, args.signature, args.batch, args.width)
        body = _rest_body(inputs, args.signature, args.format)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = args.signature
        for name, arr in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(arr))
        url = f"{rest}/v1/models/{model}:predict"

        # both APIs must give the same answer before anything is timed
        rest_answer = httpx.post(url, content=body, timeout=30)
        rest_answer.raise_for_status()
        with grpc.insecure_channel(grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            grpc_answer = stub.Predict(request, timeout=30)
        key = "predictions" if args.format == "row" else "outputs"
        rest_out = rest_answer.json()[key]
        grpc_out = {k: tf.make_ndarray(v) for k, v in grpc_answer.outputs.items()}
        if len(grpc_out) == 1:
            (only,) = grpc_out.values()
            if only.dtype.kind == "f" and not np.allclose(np.asarray(rest_out), only, atol=1e-5):
                raise SystemExit("REST and gRPC answers differ")

        def rest_call() -> Any:
            client = httpx.Client(timeout=30)

            def call() -> None:
                r = client.post(url, content=body, headers={"content-type": "application/json"})
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code} {r.text[:200]}")

            return call

        def grpc_call() -> Any:
            channel = grpc.insecure_channel(grpc_target)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            def call() -> None:
                stub.Predict(request, timeout=30)

            return call

        results: dict[str, Any] = {}
        for api, make in (("rest", rest_call), ("grpc", grpc_call)):
            for mode, clients in (("latency", 1), ("throughput", args.concurrency)):
                print(f"{api} {mode}: {clients} client(s), {args.duration:.0f} s ...", flush=True)
                results[f"{api}_{mode}"] = _run(make, clients, args.duration, args.warmup)

        def ratio(a: str, b: str, field: str) -> float:
            return float(results[a][field] / results[b][field])

        ratios = {
            "latency_p50_grpc_over_rest": ratio("grpc_latency", "rest_latency", "p50_ms"),
            "latency_p99_grpc_over_rest": ratio("grpc_latency", "rest_latency", "p99_ms"),
            "throughput_grpc_over_rest": ratio(
                "grpc_throughput", "rest_throughput", "throughput_rps"
            ),
        }
        print()
        print(
            f"model {model}, signature {args.signature}, {args.batch} row(s)/request, "
            f"REST {args.format} format, {server_desc}, {os.cpu_count()} CPUs"
        )
        print(f"{'api':<6}{'mode':<12}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
        for name, r in results.items():
            api, mode = name.split("_")
            print(
                f"{api:<6}{mode:<12}{r['clients']:>8}{r['throughput_rps']:>10.0f}"
                f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            )
        print(
            "gRPC / REST: p50 x{latency_p50_grpc_over_rest:.2f}, "
            "p99 x{latency_p99_grpc_over_rest:.2f}, "
            "throughput x{throughput_grpc_over_rest:.2f}".format(**ratios)
        )
        report = {
            "benchmark": "model_server",
            "model": model,
            "signature": args.signature,
            "rows_per_request": args.batch,
            "width": args.width,
            "rest_format": args.format,
            "server": server_desc,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "results": results,
            "ratios": ratios,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")
        return 0
    finally:
        if server is not None:
            server.stop(30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
