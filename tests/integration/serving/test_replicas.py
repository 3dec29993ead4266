"""Model-server replicas behind the API's gRPC client: two real servers on one repository, the
API's own client (:class:`attune.api.model_client.GrpcModelClient`) with a target naming both.

The models are the conformance suite's ``rolling`` kind: version ``v`` answers ``y = 0.5 x + v``
(so ``x = 2`` gives 2.0 at version 1, by hand).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace

import httpx
import numpy as np
import pytest

from attune.api.model_client import GrpcModelClient, ModelUnavailable
from attune.config import AttuneConfig, free_port
from attune.serving.server import ModelServer, ServerOptions
from tests.integration.serving import conformance_models as cm
from tests.integration.serving.test_model_server import _metric

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def replicas(
    cfg: AttuneConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ModelServer]]:
    root = tmp_path_factory.mktemp("replicated-repository")
    cm.write_version(root, "alpha", 1)
    (root / "serving.json").write_text(json.dumps({"alpha": {"version": 1}}))
    servers = []
    for _ in range(2):
        options = replace(
            ServerOptions.from_config(cfg),
            host="127.0.0.1",
            rest_port=free_port(),
            grpc_port=free_port(),
            poll_interval_s=0.2,
            model_config_file=None,
            repository=root,
            batching=False,
        )
        server = ModelServer(options)
        server.start()
        servers.append(server)
    yield servers
    for server in servers:
        server.stop()


def _served(server: ModelServer) -> float:
    """How many gRPC predicts of alpha this server answered OK (its Prometheus counter)."""
    text = httpx.get(f"{server.rest_url}/metrics", timeout=10).text
    return _metric(text, "attune_serving_requests_total", api="grpc", model="alpha", code="OK")


def test_calls_go_round_robin_to_the_replicas_and_around_one_that_stops(
    replicas: list[ModelServer],
) -> None:
    a, b = replicas
    target = "ipv4:" + ",".join(s.grpc_target for s in replicas)
    x = {"x": np.array([2.0], np.float32)}

    async def calls(client: GrpcModelClient, n: int) -> list[float]:
        return [float((await client.predict("alpha", x, timeout_s=5.0))["y"][0]) for _ in range(n)]

    async def scenario() -> tuple[list[float], tuple[float, float], list[float], int, float]:
        client = GrpcModelClient(target)
        try:
            await calls(client, 2)  # both connections up
            before = (_served(a), _served(b))
            answers = await calls(client, 40)
            split = (_served(a) - before[0], _served(b) - before[1])
            b.stop()
            # calls already on their way to b may fail while the channel learns it is gone;
            # after that, every call must be answered, by a
            failed, after = 0, []
            for _ in range(40):
                try:
                    after.append(float((await client.predict("alpha", x, timeout_s=5.0))["y"][0]))
                except ModelUnavailable:
                    failed += 1
            a_before = _served(a)
            tail = await calls(client, 20)
            return answers, split, after + tail, failed, _served(a) - a_before
        finally:
            await client.close()

    answers, split, later, failed, a_tail = asyncio.run(scenario())
    assert answers == [2.0] * 40  # 0.5 * 2 + 1, by hand
    # round robin over two ready replicas: each takes every other call
    assert split == (20.0, 20.0), split
    assert failed <= 1, f"{failed} calls failed after one replica stopped"
    assert later == [2.0] * (60 - failed) and a_tail == 20.0
