"""The local online store: the Debian ``redis-server`` (installed with apt-get when missing),
run with a config written to ``var/redis/redis.conf``: append-only file with an fsync every
second, so the online store survives a restart. A Redis that already answers at ``cfg.redis``
is used as it is and never stopped by attune.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from attune import supervisor
from attune.config import AttuneConfig
from attune.stack.common import (
    ComponentStatus,
    StackError,
    owned_pid,
    recorded_for,
    resolve_ip,
    say,
    started_by,
    stop_component,
    wait_until,
)
from attune.stack.paths import StackPaths, stack_paths

REDIS_START_TIMEOUT_S = 30.0


def redis_conf(cfg: AttuneConfig, paths: StackPaths) -> str:
    """``redis.conf`` for the local online store, from ``cfg.redis``."""
    lines = [
        "# Written by `attune stack up` from the redis section of the attune config.",
        "# Edits here are overwritten on the next start; change the config instead.",
        f"bind {resolve_ip(cfg.redis.host)}",
        f"port {cfg.redis.port}",
        "protected-mode yes",
        "daemonize no",
        f'dir "{paths.redis_dir}"',
        f'logfile "{paths.redis_log}"',
        "loglevel notice",
        "databases 16",
        "# the online store must survive a restart: append-only file, fsync once a second",
        "appendonly yes",
        "appendfsync everysec",
        "save 3600 1 300 100 60 10000",
    ]
    return "\n".join(lines) + "\n"


def redis_client(cfg: AttuneConfig, timeout_s: float = 1.0) -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from attune.redis_connect import connect

    # No retries: a health probe must answer at once (redis-py retries 3 times with backoff).
    return connect(
        cfg.redis,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def redis_not_ready(cfg: AttuneConfig) -> str | None:
    import redis

    try:
        client = redis_client(cfg)  # a cluster client connects here
    except redis.exceptions.RedisError as exc:
        return f"PING failed: {exc}"
    return ping_not_ready(client)


def ping_not_ready(client: Any) -> str | None:
    """Why ``client``'s server does not answer a PING yet (None: it does); closes ``client``."""
    import redis

    try:
        client.ping()
    except redis.exceptions.BusyLoadingError:
        return "loading its data set"
    except redis.exceptions.RedisError as exc:
        return f"PING failed: {exc}"
    finally:
        client.close()
    return None


def _is_redis(cmdline: str) -> bool:
    return "redis-server" in cmdline


def _redis_address(cfg: AttuneConfig) -> str:
    return f"{cfg.redis.host}:{cfg.redis.port}"


def redis_pid(cfg: AttuneConfig) -> int | None:
    return owned_pid(stack_paths(cfg).redis_pid, _is_redis, _redis_address(cfg))


def ensure_redis_server() -> str:
    """Path of ``redis-server``; installs the Debian package first when it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    how = (
        "install it (Debian/Ubuntu: `apt-get install -y redis-server`), or start a Redis "
        "yourself and point redis.host/redis.port at it"
    )
    if shutil.which("apt-get") is None:
        raise StackError(f"redis-server is not installed and apt-get is not available; {how}")
    if os.geteuid() != 0:
        raise StackError(f"redis-server is not installed and installing needs root; {how}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Keep the package from starting a system-wide Redis on 6379 (invoke-rc.d honours
    # policy-rc.d); attune runs its own with its own config.
    policy = Path("/usr/sbin/policy-rc.d")
    placed_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# temporary, written by attune stack up\nexit 101\n")
        policy.chmod(0o755)
        placed_policy = True
    try:
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"],
        ):
            say("redis-server is missing; running: " + " ".join(cmd))
            result = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, check=False)
            if result.returncode != 0:
                raise StackError(f"`{' '.join(cmd)}` failed (exit {result.returncode}); {how}")
    finally:
        if placed_policy:
            policy.unlink(missing_ok=True)
    found = shutil.which("redis-server")
    if not found:
        raise StackError(f"redis-server is still not on PATH after apt-get install; {how}")
    return found


def redis_up(cfg: AttuneConfig) -> None:
    """Start redis-server with attune's config, or use a Redis that already answers.

    With ``redis.manage`` false, only checks that a Redis answers.
    """
    paths = stack_paths(cfg)
    address = f"{cfg.redis.host}:{cfg.redis.port}"
    logs = (paths.redis_log, paths.redis_out)

    pid = recorded_for(paths.redis_pid, _is_redis, address, "Redis")
    if pid is not None:
        say(f"Redis already running (pid {pid}), checking it")
        waited = wait_until(
            f"Redis at {address}", lambda: redis_not_ready(cfg), REDIS_START_TIMEOUT_S, pid, logs
        )
        say(f"Redis ready at {address} (pid {pid}, {waited:.1f}s)")
        return

    if redis_not_ready(cfg) is None:
        paths.redis_external.parent.mkdir(parents=True, exist_ok=True)
        paths.redis_external.write_text(f"{address}\n")
        say(
            f"a Redis already answers at {address}; using it. It was not started by attune, "
            "so `attune stack down` leaves it running"
        )
        return
    paths.redis_external.unlink(missing_ok=True)

    if cfg.redis.cluster:
        raise StackError(
            f"no Redis Cluster answers at {address} (redis.cluster is true); start it (`attune "
            "stack up --redis-masters 3` runs a local one and prints its settings), or set "
            "redis.cluster: false"
        )
    if not cfg.redis.manage:
        raise StackError(
            f"no Redis answers at {address} and redis.manage is false; start that Redis, or "
            "set redis.manage: true to let `attune stack up` run one"
        )
    if supervisor.port_open(cfg.redis.host, cfg.redis.port):
        raise StackError(
            f"{address} is in use by a program that does not answer Redis PING; stop it or "
            "choose another redis.port"
        )
    server = ensure_redis_server()
    paths.redis_dir.mkdir(parents=True, exist_ok=True)
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    paths.redis_conf.write_text(redis_conf(cfg, paths))
    cmd = [server, str(paths.redis_conf)]
    child = supervisor.spawn(
        cmd,
        name="Redis",
        log=paths.redis_out,
        detached=True,
        cwd=paths.redis_dir,
        pid_file=paths.redis_pid,
        address=address,
    )
    say(f"Redis starting (pid {child.pid}, data {paths.redis_dir}, log {paths.redis_log})")
    waited = wait_until(
        f"Redis at {address}", lambda: redis_not_ready(cfg), REDIS_START_TIMEOUT_S, child.pid, logs
    )
    say(f"Redis ready at {address} ({waited:.1f}s)")


def redis_down(cfg: AttuneConfig) -> None:
    """Stop the redis-server ``redis_up`` started (it writes its files on SIGTERM)."""
    paths = stack_paths(cfg)
    how = stop_component(
        "Redis", paths.redis_pid, _is_redis, _redis_address(cfg), paths.redis_external
    )
    if how is not None:
        paths.redis_pid.unlink(missing_ok=True)


def redis_status(cfg: AttuneConfig) -> ComponentStatus:
    import redis

    address = f"{cfg.redis.host}:{cfg.redis.port}"
    pid = redis_pid(cfg)
    try:
        client = redis_client(cfg)  # a cluster client connects here
    except redis.exceptions.RedisError as exc:
        hint = "start it with `attune stack up`" if cfg.redis.manage else "start that Redis"
        return ComponentStatus("redis", address, False, f"not answering ({exc}); {hint}")
    try:
        client.ping()
        server = client.info("server")
        persistence = client.info("persistence")
    except redis.exceptions.RedisError as exc:
        hint = "start it with `attune stack up`" if cfg.redis.manage else "start that Redis"
        return ComponentStatus("redis", address, False, f"not answering ({exc}); {hint}")
    finally:
        client.close()
    aof = "append-only file on" if persistence.get("aof_enabled") else "append-only file off"
    detail = f"Redis {server.get('redis_version')}, {aof}, {started_by(pid)}"
    return ComponentStatus("redis", address, True, detail)
