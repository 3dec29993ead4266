"""``attune serve models``: the model server process (REST + gRPC over one model manager).

Start-up follows TF Serving: the models the configuration names are loaded first (a model whose
versions cannot load is reported in its status, it does not stop the server), then both APIs
start listening. From then on the poll thread picks up new versions, removed versions and
changes of the model config file (or of the repository's promotions) without a restart.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attune.config import AttuneConfig, ConfigError

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"localhost", "::1"})


def exposure_warning(host: str) -> str | None:
    """The warning to log when the model server listens beyond this machine, else None.

    Like TensorFlow Serving, the model server has no authentication: anyone who reaches its
    ports can call every model (and read what the models hold, e.g. the users' id vocabulary).
    The default is loopback; a wider address is allowed (a container, or a private network
    behind a firewall) but never silently."""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return None
    where = "every network interface" if host in ("0.0.0.0", "::", "") else host
    return (
        f"the model server listens on {where} (serving.host {host!r}) and has no "
        "authentication, like TensorFlow Serving: anyone who reaches its ports can call every "
        "model. Keep them behind a firewall or a private network reachable only by the API, or "
        "set serving.host: 127.0.0.1 (docs/serving.md, 'Network boundary')"
    )


@dataclass(frozen=True)
class ServerOptions:
    """The settings of one server; from ``cfg.serving`` with command-line overrides."""

    host: str
    rest_port: int
    grpc_port: int
    model_config_file: Path | None
    repository: Path
    poll_interval_s: float
    request_threads: int
    grpc_max_message_bytes: int
    intra_op_parallelism: int
    inter_op_parallelism: int
    batching: bool
    max_batch_size: int
    batch_timeout_s: float
    max_enqueued: int
    batch_threads: int

    @classmethod
    def from_config(
        cls, cfg: AttuneConfig, args: argparse.Namespace | None = None
    ) -> ServerOptions:
        s = cfg.serving

        def arg(name: str) -> Any:
            return getattr(args, name, None) if args is not None else None

        config_file: Path | None = None
        if arg("model_config_file"):
            config_file = Path(arg("model_config_file")).absolute()  # as typed: from the cwd
        elif s.model_config_file is not None:
            config_file = cfg.paths.resolve(s.model_config_file)
        repository = (
            Path(arg("repository")).absolute()
            if arg("repository")
            else cfg.paths.resolve(cfg.models.repository_dir)
        )
        batching = s.batching.enabled if arg("batching") is None else bool(arg("batching"))
        return cls(
            host=arg("host") or s.host,
            rest_port=arg("rest_port") or s.rest_port,
            grpc_port=arg("grpc_port") or s.grpc_port,
            model_config_file=config_file,
            repository=repository,
            poll_interval_s=s.poll_interval_s,
            request_threads=s.request_threads,
            grpc_max_message_bytes=s.grpc_max_message_mb * 1024 * 1024,
            intra_op_parallelism=s.intra_op_parallelism,
            inter_op_parallelism=s.inter_op_parallelism,
            batching=batching,
            max_batch_size=s.batching.max_batch_size,
            batch_timeout_s=s.batching.batch_timeout_ms / 1000.0,
            max_enqueued=s.batching.max_enqueued_requests,
            batch_threads=s.batching.threads,
        )


def configure_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Size TensorFlow's thread pools before the first model loads (0 = TensorFlow's default).

    TensorFlow fixes them when its runtime starts; in a process where it already has (a test
    that trained a model first), the pools stay as they are and a warning says so.
    """
    import tensorflow as tf

    try:
        if tf.config.threading.get_intra_op_parallelism_threads() != intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if tf.config.threading.get_inter_op_parallelism_threads() != inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as exc:
        log.warning("TensorFlow's thread pools are already running, left as they are: %s", exc)


class ModelServer:
    """The model manager plus the REST and gRPC front ends.

    ``start()`` runs everything in background threads (tests, benchmarks, the demo);
    ``serve_forever()`` runs the REST server in the calling (main) thread so Ctrl-C and SIGTERM
    stop it gracefully.
    """

    def __init__(self, options: ServerOptions) -> None:
        from attune.serving.batching import BatchingOptions
        from attune.serving.core import ServingCore
        from attune.serving.metrics import ServingMetrics
        from attune.serving.repository import (
            ConfigFileSource,
            ModelManager,
            RepositorySource,
            Source,
        )

        self.options = options
        configure_tensorflow_threads(options.intra_op_parallelism, options.inter_op_parallelism)
        source: Source
        if options.model_config_file is not None:
            source = ConfigFileSource(options.model_config_file)
        else:
            source = RepositorySource(options.repository)
        self.metrics = ServingMetrics(self._available_versions)
        self.manager = ModelManager(
            source, poll_interval_s=options.poll_interval_s, on_event=self.metrics.model_event
        )
        batching = (
            BatchingOptions(
                max_batch_size=options.max_batch_size,
                batch_timeout_s=options.batch_timeout_s,
                max_enqueued=options.max_enqueued,
                threads=options.batch_threads,
            )
            if options.batching
            else None
        )
        self.core = ServingCore(self.manager, self.metrics, batching)
        self.source_description = source.describe()
        self._executor = ThreadPoolExecutor(
            max_workers=options.request_threads, thread_name_prefix="rest"
        )
        self._grpc: Any = None
        self._uvicorn: Any = None
        self._rest_thread: threading.Thread | None = None

    def _available_versions(self) -> dict[str, int]:
        return {n: len(self.manager.available_versions(n)) for n in self.manager.model_names()}

    @property
    def rest_url(self) -> str:
        host = self.options.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.options.rest_port}"

    @property
    def grpc_target(self) -> str:
        host = self.options.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"{host}:{self.options.grpc_port}"

    def _start_models_and_grpc(self) -> None:
        from attune.serving.grpc_service import start_grpc_server

        started = time.perf_counter()
        log.info("loading the models of %s", self.source_description)
        self.manager.start()
        for name, info in self.manager.describe().items():
            if info["available"]:
                log.info("model %s: serving versions %s", name, info["available"])
            else:
                log.warning(
                    "model %s: no version available yet in %s (%s)",
                    name,
                    info["base_path"],
                    info["policy"],
                )
        log.info("models ready in %.1f s", time.perf_counter() - started)
        self._grpc = start_grpc_server(
            self.core,
            self.options.host,
            self.options.grpc_port,
            self.options.request_threads,
            self.options.grpc_max_message_bytes,
        )
        log.info("gRPC API on %s", self.grpc_target)

    def _uvicorn_server(self) -> Any:
        import uvicorn

        from attune.serving.rest import RestApp

        config = uvicorn.Config(
            RestApp(self.core, self._executor),
            host=self.options.host,
            port=self.options.rest_port,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=10,
        )
        return uvicorn.Server(config)

    def start(self, timeout_s: float = 30.0) -> None:
        """Load the models, start both APIs in background threads, return once they listen."""
        warning = exposure_warning(self.options.host)
        if warning is not None:
            log.warning(warning)
        self._start_models_and_grpc()
        self._uvicorn = self._uvicorn_server()
        self._rest_thread = threading.Thread(target=self._uvicorn.run, name="rest", daemon=True)
        self._rest_thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._uvicorn.started:
            if not self._rest_thread.is_alive():
                self.stop()
                raise ConfigError(
                    f"the REST API could not listen on {self.options.host}:"
                    f"{self.options.rest_port}; set serving.rest_port (or --rest-port) to a "
                    "free port"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the REST API did not start within {timeout_s:.0f} s")
            time.sleep(0.02)
        log.info("REST API on %s", self.rest_url)

    def serve_forever(self) -> None:
        """Load the models and serve until SIGINT or SIGTERM, then shut down gracefully."""
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop.wait(0.5):
                if self._rest_thread is not None and not self._rest_thread.is_alive():
                    raise ConfigError("the REST API stopped unexpectedly")
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def stop(self) -> None:
        """Stop taking requests, let running ones finish, unload every model."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._rest_thread is not None:
            self._rest_thread.join(timeout=15)
        if self._grpc is not None:
            self._grpc.stop(grace=5).wait(10)
            self._grpc = None
        self._executor.shutdown(wait=True, cancel_futures=False)
        self.manager.stop()
        log.info("model server stopped")


def cmd_serve(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune serve models [--model-config-file F] [--repository DIR] [--host H]
    [--rest-port P] [--grpc-port P] [--batching | --no-batching]``."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = ServerOptions.from_config(cfg, args)
    if options.model_config_file is not None and not options.model_config_file.is_file():
        raise ConfigError(
            f"model config file {options.model_config_file} does not exist (serving."
            "model_config_file or --model-config-file); leave it unset to serve the model "
            f"repository {options.repository}"
        )
    ModelServer(options).serve_forever()
    return 0
