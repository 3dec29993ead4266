"""TF Serving conformance: the model server driven only through REST (httpx) and the official
gRPC stubs of tensorflow-serving-api, as any TF Serving client would drive it.

By default the suite writes its own tiny SavedModels (``conformance_models``) into a temporary
repository and starts ``attune serve models`` on it (one process for the module). With
``TF_SERVING_URL`` (REST base URL), optionally ``TF_SERVING_GRPC`` (host:port) and
``TF_SERVING_REPO`` (the folder the server's model config points into, shared with it), the
same tests run against a real TensorFlow Serving; docs/serving.md has the recipe with the
official image. Expected values are worked out by hand from the models' formulas
(``y = 0.5 x + v`` for version ``v``, ...).
"""

from __future__ import annotations

import base64
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from attune import supervisor
from attune.config import free_port
from tests.integration.serving import conformance_models as cm

pytestmark = pytest.mark.integration

TF_SERVING_URL = os.environ.get("TF_SERVING_URL", "").rstrip("/")
TF_SERVING_GRPC = os.environ.get("TF_SERVING_GRPC", "")
TF_SERVING_REPO = os.environ.get("TF_SERVING_REPO", "")
READY_TIMEOUT_S = 180.0


@dataclass
class Target:
    rest: str
    grpc: str | None
    repo: Path
    official: bool  # a real TF Serving rather than attune's server


def _ready(rest: str) -> supervisor.Probe:
    """Until toy 1 and 2 and rolling are AVAILABLE (what the model config asks for)."""

    def probe() -> str | None:
        try:
            toy = httpx.get(f"{rest}/v1/models/{cm.TOY}", timeout=2)
            rolling = httpx.get(f"{rest}/v1/models/{cm.ROLLING}", timeout=2)
            states = {s["version"]: s["state"] for s in toy.json().get("model_version_status", [])}
            if states == {"1": "AVAILABLE", "2": "AVAILABLE"} and rolling.status_code == 200:
                return None
            return f"{toy.status_code} {toy.text[:300]}"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"

    return probe


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    if TF_SERVING_URL:
        if not TF_SERVING_REPO:
            pytest.fail(
                "TF_SERVING_URL is set but TF_SERVING_REPO is not: point it at the folder the "
                "server's model config reads (written by python -m "
                "tests.integration.serving.conformance_models DIR --base-path ...)"
            )
        repo = Path(TF_SERVING_REPO)
        for name, version in ((cm.TOY, 1), (cm.TOY, 2), (cm.ROLLING, 1)):
            if not (repo / name / str(version) / "saved_model.pb").is_file():
                pytest.fail(f"{repo} lacks {name}/{version}: write the conformance models first")
        supervisor.wait_ready(
            f"TF Serving at {TF_SERVING_URL}", _ready(TF_SERVING_URL), READY_TIMEOUT_S
        )
        yield Target(TF_SERVING_URL, TF_SERVING_GRPC or None, repo, official=True)
        return

    repo = tmp_path_factory.mktemp("conformance") / "repo"
    config = cm.write_repository(repo)
    rest_port, grpc_port = free_port(), free_port()
    log = repo.parent / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE__SERVING__")}
    cmd = [
        sys.executable, "-m", "attune.cli", "serve", "models",
        "--model-config-file", str(config), "--host", "127.0.0.1",
        "--rest-port", str(rest_port), "--grpc-port", str(grpc_port), "--no-batching",
    ]  # fmt: skip
    rest = f"http://127.0.0.1:{rest_port}"
    with supervisor.running(
        cmd,
        name=f"the model server at {rest}",
        log=log,
        env=env,
        ready=_ready(rest),
        ready_timeout_s=READY_TIMEOUT_S,
        stop_timeout_s=30,
    ):
        yield Target(rest, f"127.0.0.1:{grpc_port}", repo, official=False)


@pytest.fixture(scope="module")
def http(target: Target) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=target.rest, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_api(target: Target) -> Iterator[Any]:
    if target.grpc is None:
        pytest.skip("TF_SERVING_GRPC is not set: the gRPC tests need the server's host:port")
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(target.grpc)
    grpc.channel_ready_future(channel).result(timeout=30)

    class Api:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        models = model_service_pb2_grpc.ModelServiceStub(channel)

    yield Api()
    channel.close()


def _predict(http: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    return http.post(f"/v1/models/{path}:predict", json=body)


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def _error(response: httpx.Response, status: int) -> str:
    """The TF Serving error shape: the HTTP status and a body {"error": "<message>"}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
    return str(body["error"])


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ---------------------------------------------------------------------------------------------
# Model status


def test_status_lists_every_version(http: httpx.Client) -> None:
    body = _ok(http.get("/v1/models/toy"))
    entries = sorted(body["model_version_status"], key=lambda e: e["version"])
    assert entries == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
    ]


def test_status_of_one_version_and_of_a_label(http: httpx.Client) -> None:
    one = _ok(http.get("/v1/models/toy/versions/1"))["model_version_status"]
    assert [(e["version"], e["state"]) for e in one] == [("1", "AVAILABLE")]
    canary = _ok(http.get("/v1/models/toy/labels/canary"))["model_version_status"]
    assert [(e["version"], e["state"]) for e in canary] == [("2", "AVAILABLE")]


def test_status_errors(http: httpx.Client) -> None:
    _error(http.get("/v1/models/no_such_model"), 404)
    _error(http.get("/v1/models/toy/versions/7"), 404)
    _error(http.get("/v1/models/toy/labels/no_such_label"), 400)


def test_grpc_status(grpc_api: Any) -> None:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "toy"
    response = grpc_api.models.GetModelStatus(request, timeout=10)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert sorted(
        (s.version, s.state, s.status.error_code) for s in response.model_version_status
    ) == [
        (1, available, 0),
        (2, available, 0),
    ]
    request.model_spec.version_label = "stable"
    response = grpc_api.models.GetModelStatus(request, timeout=10)
    assert [s.version for s in response.model_version_status] == [1]
    request.model_spec.version.value = 7
    with pytest.raises(grpc.RpcError) as err:
        grpc_api.models.GetModelStatus(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------------------------------
# Metadata


def _dims(info: dict[str, Any]) -> list[int]:
    return [int(d["size"]) for d in info["tensor_shape"].get("dim", [])]


def test_metadata_describes_every_signature(http: httpx.Client) -> None:
    body = _ok(http.get("/v1/models/toy/versions/1/metadata"))
    assert body["model_spec"] == {"name": "toy", "signature_name": "", "version": "1"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "single", "matrix", "ints", "total"} <= set(sigs)
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert {k: (v["dtype"], _dims(v)) for k, v in default["inputs"].items()} == {
        "x": ("DT_FLOAT", [-1]),
        "tag": ("DT_STRING", [-1]),
    }
    assert {k: (v["dtype"], _dims(v)) for k, v in default["outputs"].items()} == {
        "y": ("DT_FLOAT", [-1]),
        "greeting": ("DT_STRING", [-1]),
        "echo_bytes": ("DT_STRING", [-1]),
    }
    matrix = sigs["matrix"]
    assert {k: (v["dtype"], _dims(v)) for k, v in matrix["inputs"].items()} == {
        "m": ("DT_FLOAT", [-1, 2])
    }
    total = sigs["total"]["outputs"]["total"]
    assert (total["dtype"], _dims(total)) == ("DT_FLOAT", [])  # a scalar
    ints = sigs["ints"]
    assert {k: v["dtype"] for k, v in ints["outputs"].items()} == {
        "doubled": "DT_INT64",
        "is_even": "DT_BOOL",
    }


def test_metadata_by_label_and_latest(http: httpx.Client) -> None:
    assert _ok(http.get("/v1/models/toy/labels/stable/metadata"))["model_spec"]["version"] == "1"
    assert _ok(http.get("/v1/models/toy/metadata"))["model_spec"]["version"] == "2"  # latest
    _error(http.get("/v1/models/no_such_model/metadata"), 404)


def test_grpc_metadata_matches_rest(http: httpx.Client, grpc_api: Any) -> None:
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "toy"
    request.model_spec.version.value = 1
    request.metadata_field.append("signature_def")
    response = grpc_api.predict.GetModelMetadata(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("toy", 1)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    from_grpc = json_format.MessageToDict(sig_map, preserving_proto_field_name=True)
    rest = _ok(http.get("/v1/models/toy/versions/1/metadata"))
    from_rest = rest["metadata"]["signature_def"]["signature_def"]

    def shape(sigs: dict[str, Any]) -> dict[str, Any]:
        return {
            name: {
                part: {k: (v["dtype"], _dims(v)) for k, v in s.get(part, {}).items()}
                for part in ("inputs", "outputs")
            }
            for name, s in sigs.items()
            if name != "__saved_model_init_op"
        }

    assert shape(from_grpc["signature_def"]) == shape(from_rest)


# ---------------------------------------------------------------------------------------------
# Predict over REST


def test_predict_row_format(http: httpx.Client) -> None:
    # version 1 (label stable): y = 0.5 x + 1 -> 1.5 and 2.5; "é" is two UTF-8 bytes c3 a9,
    # base64 "w6k="; binary outputs (name ending in _bytes) come back as {"b64": ...}
    body = _ok(
        _predict(
            http,
            "toy/labels/stable",
            {"instances": [{"x": 1.0, "tag": "a"}, {"x": 3, "tag": {"b64": _b64("é")}}]},
        )
    )
    assert body == {
        "predictions": [
            {"y": 1.5, "greeting": "v1:a", "echo_bytes": {"b64": "YQ=="}},
            {"y": 2.5, "greeting": "v1:é", "echo_bytes": {"b64": "w6k="}},
        ]
    }


def test_predict_columnar_format(http: httpx.Client) -> None:
    # version 2 (the latest): y = 0.5 x + 2 -> 2.5 and 3.5
    body = _ok(_predict(http, "toy", {"inputs": {"x": [1.0, 3.0], "tag": ["a", "b"]}}))
    assert body == {
        "outputs": {
            "y": [2.5, 3.5],
            "greeting": ["v2:a", "v2:b"],
            "echo_bytes": [{"b64": "YQ=="}, {"b64": "Yg=="}],
        }
    }


def test_one_input_one_output_drops_the_names(http: httpx.Client) -> None:
    # signature "single", version 2: 0.5 * [1, 2] + 2 = [2.5, 3.0]
    row = _ok(_predict(http, "toy", {"signature_name": "single", "instances": [1.0, 2.0]}))
    assert row == {"predictions": [2.5, 3.0]}
    col = _ok(_predict(http, "toy", {"signature_name": "single", "inputs": [1.0, 2.0]}))
    assert col == {"outputs": [2.5, 3.0]}


def test_nested_lists_integers_and_booleans(http: httpx.Client) -> None:
    # matrix, version 2: row sums 1+2=3 and 3+4=7; scaled = m * 2
    body = _ok(_predict(http, "toy", {"signature_name": "matrix", "instances": [[1, 2], [3, 4]]}))
    assert body == {
        "predictions": [
            {"row_sum": 3.0, "scaled": [2.0, 4.0]},
            {"row_sum": 7.0, "scaled": [6.0, 8.0]},
        ]
    }
    ints = _ok(_predict(http, "toy", {"signature_name": "ints", "inputs": {"n": [1, 2, -3]}}))
    assert ints == {"outputs": {"doubled": [2, 4, -6], "is_even": [False, True, False]}}


def test_columnar_inputs_may_differ_in_batch_size(http: httpx.Client) -> None:
    # total = (1 + 2 + 3) + 10 = 16, a scalar
    body = {"signature_name": "total", "inputs": {"a": [1, 2, 3], "b": [10]}}
    assert _ok(_predict(http, "toy", body)) == {"outputs": 16.0}
    # a scalar output has no batch dimension, so it cannot be answered in rows
    row = {"signature_name": "total", "instances": [{"a": 1.0, "b": 2.0}]}
    _error(_predict(http, "toy", row), 400)


def test_version_and_label_addressing(http: httpx.Client) -> None:
    # x = 2: y = 0.5 * 2 + v = 1 + v
    def y(path: str) -> float:
        return float(_ok(_predict(http, path, {"instances": [{"x": 2.0, "tag": ""}]}))[
            "predictions"][0]["y"])  # fmt: skip

    assert y("toy/versions/1") == 2.0
    assert y("toy/versions/2") == 3.0
    assert y("toy/labels/stable") == 2.0
    assert y("toy/labels/canary") == 3.0
    assert y("toy") == 3.0  # no version: the latest available


BAD_REQUESTS = [
    ("unknown model", "no_such_model", {"instances": [1.0]}, 404),
    ("unknown version", "toy/versions/9", {"instances": [{"x": 1.0, "tag": "a"}]}, 404),
    ("unknown label", "toy/labels/no_such_label", {"instances": [1.0]}, 400),
    ("unknown signature", "toy", {"signature_name": "nope", "instances": [1.0]}, 400),
    ("input missing", "toy", {"instances": [{"x": 1.0}]}, 400),
    ("input unknown", "toy", {"instances": [{"x": 1.0, "tag": "a", "z": 1}]}, 400),
    ("string for a float", "toy", {"inputs": {"x": ["one"], "tag": ["a"]}}, 400),
    ("float for an int64", "toy", {"signature_name": "ints", "inputs": [1.5]}, 400),
    ("ragged list", "toy", {"signature_name": "matrix", "inputs": [[1, 2], [3]]}, 400),
    ("wrong inner size", "toy", {"signature_name": "matrix", "inputs": [[1, 2, 3]]}, 400),
    ("both formats", "toy", {"instances": [1.0], "inputs": [1.0]}, 400),
    ("no inputs", "toy", {"signature_name": "single"}, 400),
    ("empty instances", "toy", {"signature_name": "single", "instances": []}, 400),
    ("plain list for two inputs", "toy", {"instances": [1.0, 2.0]}, 400),
    ("bad base64", "toy", {"inputs": {"x": [1.0], "tag": [{"b64": "!!"}]}}, 400),
]


@pytest.mark.parametrize(
    ("path", "body", "status"), [r[1:] for r in BAD_REQUESTS], ids=[r[0] for r in BAD_REQUESTS]
)
def test_bad_predict_requests(http: httpx.Client, path: str, body: Any, status: int) -> None:
    _error(_predict(http, path, body), status)


def test_malformed_requests(http: httpx.Client) -> None:
    _error(http.post("/v1/models/toy:predict", content=b'{"instances": [1.0'), 400)
    _error(http.post("/v1/models/toy:predict", content=b"[1, 2]"), 400)
    _error(http.post("/v1/models/toy:predict", content=b""), 400)
    _error(http.get("/v1/models/toy/versions/first"), 400)  # not a version number
    _error(http.get("/v1/models/toy:predict"), 400)  # predict is a POST


# ---------------------------------------------------------------------------------------------
# Predict over gRPC


def _grpc_request(model: str, signature: str = "", **inputs: Any) -> Any:
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    return request


def test_grpc_predict(grpc_api: Any) -> None:
    import numpy as np
    import tensorflow as tf

    request = _grpc_request(
        "toy", x=np.array([1.0, 3.0], np.float32), tag=np.array([b"a", b"b"], dtype=object)
    )
    response = grpc_api.predict.Predict(request, timeout=10)
    # no version: the latest (2); y = 0.5 x + 2
    assert (response.model_spec.name, response.model_spec.version.value) == ("toy", 2)
    assert response.model_spec.signature_name == "serving_default"
    outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    assert sorted(outputs) == ["echo_bytes", "greeting", "y"]
    assert outputs["y"].dtype == np.float32 and outputs["y"].tolist() == [2.5, 3.5]
    assert outputs["greeting"].tolist() == [b"v2:a", b"v2:b"]

    request.model_spec.version_label = "stable"  # version 1: y = 0.5 x + 1
    request.output_filter.append("y")
    response = grpc_api.predict.Predict(request, timeout=10)
    assert response.model_spec.version.value == 1
    assert list(response.outputs) == ["y"]
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [1.5, 2.5]


def test_grpc_predict_other_dtypes(grpc_api: Any) -> None:
    import numpy as np
    import tensorflow as tf

    request = _grpc_request("toy", "ints", n=np.array([5, 6], np.int64))
    request.model_spec.version.value = 1
    out = grpc_api.predict.Predict(request, timeout=10).outputs
    assert tf.make_ndarray(out["doubled"]).tolist() == [10, 12]
    assert tf.make_ndarray(out["is_even"]).tolist() == [False, True]
    request = _grpc_request("toy", "matrix", m=np.array([[1, 2], [3, 4]], np.float32))
    out = grpc_api.predict.Predict(request, timeout=10).outputs
    assert tf.make_ndarray(out["scaled"]).tolist() == [[2.0, 4.0], [6.0, 8.0]]  # m * 2


def test_grpc_errors(grpc_api: Any) -> None:
    import grpc
    import numpy as np

    x = np.array([1.0], np.float32)
    cases = [
        (_grpc_request("no_such_model", x=x), grpc.StatusCode.NOT_FOUND),
        (_grpc_request("toy", "nope", x=x), grpc.StatusCode.FAILED_PRECONDITION),
        (_grpc_request("toy", x=x), grpc.StatusCode.INVALID_ARGUMENT),  # tag missing
        (
            _grpc_request("toy", "single", x=np.array(["a"], dtype=object)),
            grpc.StatusCode.INVALID_ARGUMENT,  # a string where a float belongs
        ),
    ]
    versioned = _grpc_request("toy", "single", x=x)
    versioned.model_spec.version.value = 9
    cases.append((versioned, grpc.StatusCode.NOT_FOUND))
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            grpc_api.predict.Predict(request, timeout=10)
        assert err.value.code() == code, (request.model_spec, err.value.details())
        assert err.value.details()


# ---------------------------------------------------------------------------------------------
# A new version while requests flow (runs last: it changes the "rolling" model)


def _rolling_states(http: httpx.Client) -> dict[int, str]:
    body = _ok(http.get("/v1/models/rolling"))
    return {int(s["version"]): s["state"] for s in body["model_version_status"]}


def test_hot_load_of_a_new_version_fails_no_request(
    http: httpx.Client, target: Target, grpc_api: Any
) -> None:
    import numpy as np
    import tensorflow as tf

    states = _rolling_states(http)
    old = max(v for v, s in states.items() if s == "AVAILABLE")
    on_disk = [int(p.name) for p in (target.repo / cm.ROLLING).iterdir() if p.name.isdigit()]
    new = max([old, *on_disk]) + 1

    stop = threading.Event()
    failures: list[str] = []
    seen: dict[str, set[int]] = {"rest": set(), "grpc": set()}

    def rest_client() -> None:
        with httpx.Client(base_url=target.rest, timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.post("/v1/models/rolling:predict", json={"instances": [2.0]})
                    if r.status_code != 200:
                        failures.append(f"REST {r.status_code} {r.text[:200]}")
                        continue
                    y = r.json()["predictions"][0]  # 0.5 * 2 + v = 1 + v
                    seen["rest"].add(round(y - 1.0))
                except Exception as exc:
                    failures.append(f"REST {type(exc).__name__}: {exc}")
                time.sleep(0.002)

    def grpc_client() -> None:
        request = _grpc_request("rolling", x=np.array([2.0], np.float32))
        while not stop.is_set():
            try:
                response = grpc_api.predict.Predict(request, timeout=10)
                version = response.model_spec.version.value
                y = float(tf.make_ndarray(response.outputs["y"])[0])
                if y != 1.0 + version:
                    failures.append(f"gRPC version {version} answered y={y}")
                seen["grpc"].add(int(version))
            except Exception as exc:
                failures.append(f"gRPC {type(exc).__name__}: {exc}")
            time.sleep(0.002)

    threads = [threading.Thread(target=rest_client), threading.Thread(target=grpc_client)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # requests flow on the old version
        # a folder being written is ignored: a temporary name, then one atomic rename
        cm.write_version(target.repo, cm.ROLLING, new)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = _rolling_states(http)
            if states.get(new) == "AVAILABLE" and states.get(old) != "AVAILABLE":
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"version {new} did not replace {old}: {states}")
        time.sleep(1.0)  # and flow on the new one
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

    assert failures == []
    assert {old, new} <= seen["rest"], seen
    assert {old, new} <= seen["grpc"], seen
    # the old version is unloaded: its status says END, and it no longer answers
    assert _rolling_states(http)[old] == "END"
    _error(_predict(http, f"rolling/versions/{old}", {"instances": [2.0]}), 404)
    assert _ok(_predict(http, "rolling", {"instances": [2.0]})) == {"predictions": [1.0 + new]}
