"""Run ``attune serve models`` as a child process (the demo, the tests and the benchmarks).

The child gets the parent's configuration exactly (:func:`attune.supervisor.attune_command`),
its output goes to a log file, and :func:`start_model_server` returns once every requested
model has a version in state AVAILABLE (with ``models=()``, once it answers at all: a server
started before the first training, which loads each model when it is published).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from attune import supervisor
from attune.config import AttuneConfig, ConfigError


def model_server_rest_url(cfg: AttuneConfig) -> str:
    return supervisor.local_url(cfg.serving.host, cfg.serving.rest_port)


def models_available(url: str, models: Sequence[str]) -> supervisor.Probe:
    """Ready when the server at ``url`` reports an AVAILABLE version of each of ``models``."""

    def probe() -> str | None:
        if not models:
            try:
                supervisor.http_get(f"{url}/v1/models/retrieval")
            except supervisor.NoAnswer as exc:
                return str(exc)
            return None
        for name in models:
            try:
                status, body = supervisor.http_get(f"{url}/v1/models/{name}")
            except supervisor.NoAnswer as exc:
                return str(exc)
            try:
                versions = json.loads(body).get("model_version_status", []) if status == 200 else []
            except (ValueError, AttributeError):
                versions = []
            if "AVAILABLE" not in [v.get("state") for v in versions]:
                return f"{name}: {status} {body[:200]}"
        return None

    return probe


def start_model_server(
    cfg: AttuneConfig,
    models: Sequence[str] = ("retrieval", "ranking"),
    log_path: Path | None = None,
    ready_timeout_s: float = 180.0,
) -> supervisor.Child:
    """Start ``attune serve models`` and wait until every model in ``models`` is AVAILABLE."""
    url = model_server_rest_url(cfg)
    if supervisor.http_answers(f"{url}/v1/models/{models[0] if models else 'retrieval'}"):
        raise ConfigError(f"a model server already answers at {url}; stop it first")
    name = f"models-{cfg.serving.rest_port}"
    cmd, env = supervisor.attune_command(cfg, ["serve", "models"], name)
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return supervisor.start(
        cmd,
        name=f"the model server at {url}",
        log=log_path or cfg.log_dir / f"{name}.log",
        env=env,
        ready=models_available(url, models),
        ready_timeout_s=ready_timeout_s,
        url=url,
    )
