"""attune's model server beyond the TF Serving protocol: serving the model repository with its
promotion gate, following a model config file, request batching and Prometheus metrics.

One server runs in this process (TensorFlow is imported here anyway to write the models); the
models are the conformance suite's ``rolling`` kind: version ``v`` answers ``y = 0.5 x + v``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from attune.config import AttuneConfig, free_port
from attune.serving.server import ModelServer, ServerOptions
from tests.integration.serving import conformance_models as cm

pytestmark = pytest.mark.integration


def _options(cfg: AttuneConfig, **changes: Any) -> ServerOptions:
    base = ServerOptions.from_config(cfg)
    return replace(
        base,
        host="127.0.0.1",
        rest_port=free_port(),
        grpc_port=free_port(),
        poll_interval_s=0.2,
        **changes,
    )


def _until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _y(http: httpx.Client, path: str, x: float = 2.0) -> float:
    r = http.post(f"/v1/models/{path}:predict", json={"instances": [x]})
    assert r.status_code == 200, r.text
    return float(r.json()["predictions"][0])


def _states(http: httpx.Client, name: str) -> dict[int, str]:
    r = http.get(f"/v1/models/{name}")
    if r.status_code != 200:
        return {}
    return {int(s["version"]): s["state"] for s in r.json()["model_version_status"]}


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if not m:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha 1 and 2 with 1 promoted; beta 1 (never promoted); an incomplete alpha 3."""
    root = tmp_path_factory.mktemp("repository")
    for name, version in (("alpha", 1), ("alpha", 2), ("beta", 1)):
        cm.write_version(root, name, version)
    (root / "alpha" / "3" / "variables").mkdir(parents=True)  # being written: no saved_model.pb
    (root / "serving.json").write_text(json.dumps({"alpha": {"version": 1}}))
    return root


@pytest.fixture(scope="module")
def server(cfg: AttuneConfig, repository: Path) -> Iterator[ModelServer]:
    options = _options(
        cfg,
        model_config_file=None,
        repository=repository,
        batching=True,
        max_batch_size=32,
        batch_timeout_s=0.05,
    )
    srv = ModelServer(options)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server: ModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        yield client


def test_repository_models_at_their_promoted_or_latest_version(http: httpx.Client) -> None:
    # alpha 2 exists but was not promoted; alpha 3 is still being written
    assert _states(http, "alpha") == {1: "AVAILABLE"}
    assert _states(http, "beta") == {1: "AVAILABLE"}
    assert _y(http, "alpha") == 2.0  # 0.5 * 2 + 1
    r = http.get("/v1/models/alpha/versions/2")
    assert r.status_code == 404


def test_a_promotion_switches_the_served_version(http: httpx.Client, repository: Path) -> None:
    from attune.model_repository import ModelRepository

    # what the promotion gate does when alpha 2 beats alpha 1
    ModelRepository(repository).set_served("alpha", 2, {"metric": "ndcg@10", "value": 0.5})
    _until(lambda: _states(http, "alpha").get(2) == "AVAILABLE", "alpha 2 to load")
    _until(lambda: _states(http, "alpha").get(1) == "END", "alpha 1 to unload")
    assert _y(http, "alpha") == 3.0  # 0.5 * 2 + 2


def test_a_new_model_folder_is_picked_up(http: httpx.Client, repository: Path) -> None:
    cm.write_version(repository, "gamma", 5)
    _until(lambda: _states(http, "gamma") == {5: "AVAILABLE"}, "gamma 5 to load")
    assert _y(http, "gamma", x=4.0) == 7.0  # 0.5 * 4 + 5


def test_concurrent_requests_are_batched_and_answered_row_by_row(
    http: httpx.Client, server: ModelServer
) -> None:
    n = 24
    before = server.metrics.render().decode()
    barrier = threading.Barrier(n)
    answers: dict[int, Any] = {}

    def one(i: int) -> None:
        with httpx.Client(base_url=server.rest_url, timeout=30) as client:
            barrier.wait()
            r = client.post("/v1/models/beta:predict", json={"instances": [float(i)]})
            answers[i] = r.json() if r.status_code == 200 else r.text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # beta 1: y = 0.5 i + 1 for request i
    assert answers == {i: {"predictions": [0.5 * i + 1.0]} for i in range(n)}
    after = server.metrics.render().decode()
    labels = {"model": "beta", "signature": "serving_default"}
    merged = _metric(after, "attune_serving_batch_requests_sum", **labels) - _metric(
        before, "attune_serving_batch_requests_sum", **labels
    )
    batches = _metric(after, "attune_serving_batch_requests_count", **labels) - _metric(
        before, "attune_serving_batch_requests_count", **labels
    )
    assert merged == n  # every request went through the queue ...
    assert batches < n  # ... and some ran together


def test_metrics_count_requests_by_api_model_and_version(
    http: httpx.Client, server: ModelServer
) -> None:
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    before = http.get("/monitoring/prometheus/metrics").text
    for _ in range(3):
        _y(http, "beta/versions/1")
    http.post("/v1/models/nope:predict", json={"instances": [1.0]})
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "beta"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
        for _ in range(2):
            stub.Predict(request, timeout=10)
    after = http.get("/metrics").text

    def delta(**labels: str) -> float:
        name = "attune_serving_requests_total"
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    ok = {"method": "predict", "model": "beta", "version": "1", "signature": "serving_default"}
    assert delta(api="rest", code="OK", **ok) == 3
    assert delta(api="grpc", code="OK", **ok) == 2
    # an unknown model is counted without creating a label for its name
    assert delta(api="rest", code="NOT_FOUND", method="predict", model="-") == 1
    assert _metric(after, "attune_serving_model_events_total", model="alpha", event="loaded") >= 2
    assert _metric(after, "attune_serving_model_events_total", model="alpha", event="unloaded") >= 1
    assert _metric(after, "attune_serving_available_versions", model="beta") == 1


def test_model_config_file_changes_apply_without_restart(
    cfg: AttuneConfig, repository: Path, tmp_path: Path
) -> None:
    config = tmp_path / "models.config"
    beta = repository / "beta"
    config.write_text(
        f'model_config_list {{ config {{ name: "beta" base_path: "{beta}" '
        'model_platform: "tensorflow" } }\n'
    )
    srv = ModelServer(_options(cfg, model_config_file=config, batching=False))
    srv.start()
    try:
        with httpx.Client(base_url=srv.rest_url, timeout=30) as http:
            assert _states(http, "beta") == {1: "AVAILABLE"}
            assert http.get("/v1/models/alpha").status_code == 404
            cm.write_version(repository, "beta", 2)
            # serve alpha 1 and 2 under labels, and beta's two latest versions
            config.write_text(
                "model_config_list {\n"
                f'  config {{ name: "beta" base_path: "{beta}" '
                "model_version_policy { latest { num_versions: 2 } } }\n"
                f'  config {{ name: "alpha" base_path: "{repository / "alpha"}" '
                "model_version_policy { specific { versions: 1 versions: 2 } } "
                'version_labels { key: "stable" value: 1 } '
                'version_labels { key: "canary" value: 2 } }\n'
                "}\n"
            )
            _until(lambda: _states(http, "alpha") == {1: "AVAILABLE", 2: "AVAILABLE"}, "alpha")
            _until(lambda: _states(http, "beta") == {1: "AVAILABLE", 2: "AVAILABLE"}, "beta")
            assert _y(http, "alpha/labels/stable") == 2.0  # 0.5 * 2 + 1
            assert _y(http, "alpha/labels/canary") == 3.0  # 0.5 * 2 + 2
            # a broken edit is reported in the log and changes nothing
            config.write_text("model_config_list { config { name: ")
            time.sleep(1.0)
            assert _y(http, "alpha/labels/canary") == 3.0
    finally:
        srv.stop()


def test_reload_config_request_over_grpc(cfg: AttuneConfig, repository: Path) -> None:
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    srv = ModelServer(_options(cfg, model_config_file=None, repository=repository / "none"))
    srv.start()
    try:
        with httpx.Client(base_url=srv.rest_url, timeout=30) as http:
            assert http.get("/v1/models/beta").status_code == 404  # an empty repository
            request = model_management_pb2.ReloadConfigRequest()
            model = request.config.model_config_list.config.add()
            model.name, model.base_path = "b", str(repository / "beta")
            with grpc.insecure_channel(srv.grpc_target) as channel:
                stub = model_service_pb2_grpc.ModelServiceStub(channel)
                response = stub.HandleReloadConfigRequest(request, timeout=60)
                assert response.status.error_code == 0
                # beta's latest version v, under the name b: 0.5 * 2 + v
                latest = max(
                    int(p.name) for p in (repository / "beta").iterdir() if p.name.isdigit()
                )
                assert _y(http, "b") == 1.0 + latest
                bad = model_management_pb2.ReloadConfigRequest()
                bad.config.model_config_list.config.add().name = "no_base_path"
                with pytest.raises(grpc.RpcError) as err:
                    stub.HandleReloadConfigRequest(bad, timeout=60)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "has no base_path" in err.value.details()
    finally:
        srv.stop()
