"""Run ``attune serve collector`` as a child process (the demo, the benchmark and the tests).

The child gets the parent's configuration exactly: it is written to a YAML file (with absolute
paths) and passed with ``--config``, and ``ATTUNE__*`` overrides are removed from the child's
environment so they cannot apply twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from attune.config import CONFIG_ENV, ENV_PREFIX, AttuneConfig, ConfigError


def absolute_config(cfg: AttuneConfig) -> AttuneConfig:
    """``cfg`` with ``var_dir`` and ``data_dir`` made absolute (a child may run elsewhere)."""
    paths = cfg.paths.model_copy(
        update={
            "var_dir": cfg.paths.var_dir.absolute(),
            "data_dir": cfg.paths.data_dir.absolute(),
        }
    )
    return cfg.model_copy(update={"paths": paths})


def write_config(cfg: AttuneConfig, path: Path) -> Path:
    """Write ``cfg`` as a YAML config file that :func:`attune.config.load_config` reads back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = absolute_config(cfg).model_dump(mode="json")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def collector_url(cfg: AttuneConfig) -> str:
    host = cfg.collector.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{cfg.collector.port}"


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``/readyz`` until it answers 200; raise with the last answer when it does not."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ConfigError(f"the collector exited with code {proc.returncode} while starting")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2.0)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.25)
    raise ConfigError(f"the collector at {url} was not ready after {timeout_s:.0f} s: {last}")


@contextmanager
def collector_process(
    cfg: AttuneConfig,
    *,
    log_path: Path | None = None,
    ready_timeout_s: float = 60.0,
    extra_env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start a collector for ``cfg``, wait until ready, yield its URL, stop it (SIGTERM)."""
    url = collector_url(cfg)
    try:
        httpx.get(f"{url}/healthz", timeout=1.0)
    except httpx.HTTPError:
        pass
    else:
        raise ConfigError(
            f"something already answers at {url}; stop it or set collector.port to a free port"
        )
    run_dir = cfg.run_dir
    config_file = write_config(cfg, run_dir / f"collector-{cfg.collector.port}.yaml")
    log_path = log_path or cfg.log_dir / f"collector-{cfg.collector.port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != CONFIG_ENV}
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "attune.cli", "--config", str(config_file), "serve", "collector"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        try:
            wait_ready(url, ready_timeout_s, proc)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; see {log_path}") from None
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=cfg.collector.ack_timeout_s + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
