"""Run ``attune serve api`` as a child process (the demo, the tests and the benchmarks).

The child gets the parent's configuration exactly (:func:`attune.supervisor.attune_command`),
its output goes to a log file, and :func:`start_api` returns once its ``/readyz`` answers 200.
"""

from __future__ import annotations

from pathlib import Path

from attune import supervisor
from attune.config import AttuneConfig, ConfigError


def api_url(cfg: AttuneConfig) -> str:
    return supervisor.local_url(cfg.api.host, cfg.api.port)


def start_api(
    cfg: AttuneConfig, log_path: Path | None = None, ready_timeout_s: float = 120.0
) -> supervisor.Child:
    """Start ``attune serve api`` for ``cfg`` and wait until it is ready; the caller stops it."""
    url = api_url(cfg)
    if supervisor.http_answers(f"{url}/healthz"):
        raise ConfigError(
            f"something already answers at {url}; stop it or give api.port a free port"
        )
    name = f"api-{cfg.api.port}"
    cmd, env = supervisor.attune_command(cfg, ["serve", "api"], name)
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return supervisor.start(
        cmd,
        name=f"the personalization API at {url}",
        log=log_path or cfg.log_dir / f"{name}.log",
        env=env,
        ready=supervisor.http_probe(f"{url}/readyz"),
        ready_timeout_s=ready_timeout_s,
        url=url,
    )
