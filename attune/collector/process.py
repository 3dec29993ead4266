"""Run ``attune serve collector`` as a child process (the demo, the benchmarks and the tests).

The child gets the parent's configuration exactly (:func:`attune.supervisor.attune_command`),
its output goes to a log file, and :func:`collector_process` waits until its ``/readyz``
answers 200 and stops it (SIGTERM, then SIGKILL) when the block ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attune import supervisor
from attune.config import AttuneConfig, ConfigError


def collector_url(cfg: AttuneConfig) -> str:
    return supervisor.local_url(cfg.collector.host, cfg.collector.port)


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
    if supervisor.http_answers(f"{url}/healthz"):
        raise ConfigError(
            f"something already answers at {url}; stop it or set collector.port to a free port"
        )
    name = f"collector-{cfg.collector.port}"
    cmd, env = supervisor.attune_command(cfg, ["serve", "collector"], name)
    env.update(extra_env or {})
    with supervisor.running(
        cmd,
        name=f"the collector at {url}",
        log=log_path or cfg.log_dir / f"{name}.log",
        env=env,
        ready=supervisor.http_workers_probe(f"{url}/readyz", cfg.collector.workers),
        ready_timeout_s=ready_timeout_s,
        # in-flight requests wait up to ack_timeout_s for Kafka before the collector exits
        stop_timeout_s=cfg.collector.ack_timeout_s + 10,
        url=url,
    ):
        yield url
