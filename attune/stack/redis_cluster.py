"""A local Redis Cluster of ``N`` masters (3 by default) from the Debian ``redis-server``, for
trying and testing ``redis.cluster: true`` on one machine.

Each master is its own ``redis-server`` on a loopback port, with its own folder
``<root>/node-<port>/`` holding its ``redis.conf`` (written here on every start, like
:func:`attune.stack.redis.redis_conf`), its append-only file, its ``nodes.conf`` (the cluster
state Redis itself keeps: who the other nodes are and which slots each serves), its log and its
pid record. :func:`redis_cluster_up`:

1. starts every node that is not running yet (``cluster-enabled yes``);
2. when no node serves any slot yet (a new cluster), joins them and splits the 16384 hash slots
   evenly with ``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``; a cluster
   that was created before is left as it is (its nodes find each other again from
   ``nodes.conf`` after a restart);
3. waits until every node reports ``cluster_state:ok`` (all slots served, every node agreeing).

:func:`redis_cluster_down` stops the nodes it started (SIGTERM: Redis flushes its append-only
file and exits), found by their pid records. No replicas: a master that stops takes its slots
down with it, which is what a test of the clients needs, not what production wants.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attune import supervisor
from attune.config import AttuneConfig, RedisConfig
from attune.stack.common import (
    StackError,
    owned_pid,
    recorded_for,
    say,
    stop,
    wait_until,
)
from attune.stack.redis import _is_redis, ensure_redis_server, ping_not_ready

CLUSTER_START_TIMEOUT_S = 60.0
HASH_SLOTS = 16384
BUS_PORT_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
MIN_MASTERS = 3  # what `redis-cli --cluster create` accepts


@dataclass(frozen=True)
class RedisClusterLayout:
    """Where the cluster's nodes listen and keep their files."""

    root: Path
    ports: tuple[int, ...]
    host: str = "127.0.0.1"
    node_timeout_ms: int = 5000

    def node_dir(self, port: int) -> Path:
        return self.root / f"node-{port}"

    def address(self, port: int) -> str:
        return f"{self.host}:{port}"

    @property
    def seed(self) -> RedisConfig:
        """The redis section that points every attune client at this cluster."""
        return RedisConfig(host=self.host, port=self.ports[0], db=0, manage=False, cluster=True)


def cluster_layout(cfg: AttuneConfig, masters: int = 3) -> RedisClusterLayout:
    """``masters`` nodes on ``redis.port + 1 ..`` (the standalone Redis keeps ``redis.port``),
    their files under ``var/redis-cluster`` (``attune stack up --redis-masters N``)."""
    if masters < MIN_MASTERS:
        raise StackError(
            f"redis-cli creates a Redis Cluster of at least {MIN_MASTERS} masters, not {masters}"
        )
    if cfg.redis.port + masters + BUS_PORT_OFFSET > 65535:
        raise StackError(
            f"redis.port {cfg.redis.port} leaves no room for {masters} cluster nodes above it "
            "(each node's bus port is its port + 10000, at most 65535); lower redis.port"
        )
    first = cfg.redis.port + 1
    return RedisClusterLayout(
        root=cfg.paths.resolve("redis-cluster"),
        ports=tuple(range(first, first + masters)),
        host=cfg.redis.host,
    )


def free_cluster_ports(count: int, host: str = "127.0.0.1") -> tuple[int, ...]:
    """``count`` ports on ``host`` that are free now, each with its cluster bus port (Redis uses
    port + 10000 for the nodes' own traffic, so the port must be at most 55535) free too."""
    import random
    import socket

    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
        return True

    found: list[int] = []
    for _ in range(2000):
        p = random.randint(20000, 65535 - BUS_PORT_OFFSET)
        taken = p in found or p + BUS_PORT_OFFSET in found
        if not taken and free(p) and free(p + BUS_PORT_OFFSET):
            found.append(p)
            if len(found) == count:
                return tuple(found)
    raise StackError(f"found no {count} free ports (each with port + 10000 free) on {host}")


def cluster_settings(layout: RedisClusterLayout) -> dict[str, str]:
    """The ``ATTUNE__REDIS__*`` overrides that point attune at the cluster."""
    return {
        "ATTUNE__REDIS__HOST": layout.host,
        "ATTUNE__REDIS__PORT": str(layout.ports[0]),
        "ATTUNE__REDIS__DB": "0",
        "ATTUNE__REDIS__MANAGE": "false",
        "ATTUNE__REDIS__CLUSTER": "true",
    }


def node_conf(layout: RedisClusterLayout, port: int) -> str:
    """``redis.conf`` of the node on ``port``: the stack's persistence, plus cluster mode."""
    d = layout.node_dir(port)
    lines = [
        "# Written by attune.stack.redis_cluster; overwritten on the next start.",
        f"bind {layout.host}",
        f"port {port}",
        "protected-mode yes",
        "daemonize no",
        f'dir "{d}"',
        f'logfile "{d / "redis.log"}"',
        "loglevel notice",
        "appendonly yes",
        "appendfsync everysec",
        "cluster-enabled yes",
        # Redis's own record of the cluster; never edit it by hand
        "cluster-config-file nodes.conf",
        f"cluster-node-timeout {layout.node_timeout_ms}",
        # a test stops masters on purpose; the others keep serving their own slots
        "cluster-require-full-coverage no",
    ]
    return "\n".join(lines) + "\n"


def _client(layout: RedisClusterLayout, port: int, timeout_s: float = 1.0) -> Any:
    """A plain (non-cluster) client of one node: cluster commands are per node."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        host=layout.host,
        port=port,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


def _cluster_info(layout: RedisClusterLayout, port: int) -> dict[str, Any]:
    client = _client(layout, port)
    try:
        info: dict[str, Any] = client.cluster("INFO")
        return info
    finally:
        client.close()


def node_not_ready(layout: RedisClusterLayout, port: int) -> str | None:
    """Why the node on ``port`` does not answer yet, or None."""
    return ping_not_ready(_client(layout, port))


def cluster_not_ready(layout: RedisClusterLayout) -> str | None:
    """Why the cluster cannot serve every slot yet, or None when every node reports
    ``cluster_state:ok`` and knows all the others."""
    import redis

    for port in layout.ports:
        try:
            info = _cluster_info(layout, port)
        except redis.exceptions.RedisError as exc:
            return f"{layout.address(port)}: CLUSTER INFO failed: {exc}"
        state = info.get("cluster_state")
        known = int(info.get("cluster_known_nodes", 0))
        if state != "ok":
            return f"{layout.address(port)} reports cluster_state:{state}"
        if known != len(layout.ports):
            return f"{layout.address(port)} knows {known} of {len(layout.ports)} nodes"
    return None


def _pid_file(layout: RedisClusterLayout, port: int) -> Path:
    return layout.node_dir(port) / "redis.pid"


def _start_node(layout: RedisClusterLayout, server: str, port: int) -> int:
    d = layout.node_dir(port)
    address = layout.address(port)
    pid = recorded_for(_pid_file(layout, port), _is_redis, address, "Redis Cluster node")
    if pid is not None:
        say(f"Redis Cluster node {address} already running (pid {pid})")
        return pid
    if supervisor.port_open(layout.host, port):
        raise StackError(
            f"{address} is in use by a program attune did not start; stop it or choose other "
            "ports for the cluster"
        )
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "redis.conf"
    conf.write_text(node_conf(layout, port))
    child = supervisor.spawn(
        [server, str(conf)],
        name=f"Redis Cluster node {address}",
        log=d / "redis.out",
        detached=True,
        cwd=d,
        pid_file=_pid_file(layout, port),
        address=address,
    )
    say(f"Redis Cluster node {address} starting (pid {child.pid}, data {d})")
    return child.pid


def _slots_assigned(layout: RedisClusterLayout) -> dict[int, int]:
    return {p: int(_cluster_info(layout, p).get("cluster_slots_assigned", 0)) for p in layout.ports}


def _create(layout: RedisClusterLayout) -> None:
    """Join the nodes and split the slots among them (``redis-cli --cluster create``)."""
    import shutil

    cli = shutil.which("redis-cli")
    if cli is None:
        raise StackError(
            "redis-cli is not on PATH (it comes with redis-server: `apt-get install -y "
            "redis-tools`); it creates the cluster"
        )
    cmd = [cli, "--cluster", "create", *(layout.address(p) for p in layout.ports)]
    cmd += ["--cluster-replicas", "0", "--cluster-yes"]
    say("creating the Redis Cluster: " + " ".join(cmd))
    log = layout.root / "create.log"
    with log.open("ab") as out:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise StackError(
            f"`{' '.join(cmd)}` failed (exit {done.returncode}); see {log}. If the nodes kept "
            f"the state of an older cluster, stop them and delete {layout.root}:\n{tail}"
        )


def redis_cluster_up(
    layout: RedisClusterLayout, timeout_s: float = CLUSTER_START_TIMEOUT_S
) -> None:
    """Start the cluster's nodes, create the cluster when it is new, and wait until every node
    reports ``cluster_state:ok`` (see the module docstring)."""
    server = ensure_redis_server()
    layout.root.mkdir(parents=True, exist_ok=True)
    pids = {port: _start_node(layout, server, port) for port in layout.ports}
    for port, pid in pids.items():
        d = layout.node_dir(port)
        wait_until(
            f"Redis Cluster node {layout.address(port)}",
            lambda port=port: node_not_ready(layout, port),  # type: ignore[misc]
            timeout_s,
            pid,
            (d / "redis.log", d / "redis.out"),
        )
    assigned = _slots_assigned(layout)
    if not any(assigned.values()):
        _create(layout)
    elif any(n != HASH_SLOTS for n in assigned.values()):
        raise StackError(
            f"the nodes {', '.join(layout.address(p) for p in layout.ports)} already serve "
            f"some slots but do not form one cluster ({assigned} slots assigned as each sees "
            f"it); stop them (attune.stack.redis_cluster.redis_cluster_down) and delete "
            f"{layout.root} to start a new one"
        )
    first = layout.ports[0]
    try:
        waited = wait_until(
            f"the Redis Cluster of {len(layout.ports)} masters",
            lambda: cluster_not_ready(layout),
            timeout_s,
            pids[first],
            [layout.node_dir(p) / "redis.log" for p in layout.ports],
        )
    except StackError as exc:
        raise StackError(
            f"{exc}\nThe nodes answer but do not agree on one cluster: read their logs "
            f"({layout.root}/node-*/redis.log); to start over, stop them and delete {layout.root}"
        ) from None
    say(
        f"Redis Cluster ready: {len(layout.ports)} masters at "
        f"{', '.join(layout.address(p) for p in layout.ports)} ({waited:.1f}s)"
    )


def redis_cluster_down(layout: RedisClusterLayout) -> None:
    """Stop every node :func:`redis_cluster_up` started (SIGTERM; each flushes its files)."""
    for port in layout.ports:
        address = layout.address(port)
        pid = owned_pid(_pid_file(layout, port), _is_redis, address)
        if pid is None:
            say(f"Redis Cluster node {address} is not running")
            continue
        say(f"stopping Redis Cluster node {address} (pid {pid})")
        stop(pid, f"Redis Cluster node {address}")
        _pid_file(layout, port).unlink(missing_ok=True)


def redis_cluster_pids(layout: RedisClusterLayout) -> dict[int, int | None]:
    """``{port: pid of the node attune started there, or None}``."""
    return {p: owned_pid(_pid_file(layout, p), _is_redis, layout.address(p)) for p in layout.ports}


def recorded_cluster(cfg: AttuneConfig) -> RedisClusterLayout | None:
    """The layout of the cluster ``attune stack up --redis-masters N`` started for ``cfg``, found
    from its node folders (``attune stack down`` does not know N); None when there is none."""
    root = cfg.paths.resolve("redis-cluster")
    ports = sorted(
        int(d.name.removeprefix("node-"))
        for d in root.glob("node-*")
        if d.name.removeprefix("node-").isdigit()
    )
    return RedisClusterLayout(root=root, ports=tuple(ports), host=cfg.redis.host) if ports else None


def stack_redis_cluster_down(cfg: AttuneConfig) -> None:
    """``attune stack down``'s part: stop the nodes of :func:`recorded_cluster`, if any run."""
    layout = recorded_cluster(cfg)
    if layout is not None and any(p is not None for p in redis_cluster_pids(layout).values()):
        redis_cluster_down(layout)
