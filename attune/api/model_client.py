"""A TensorFlow Serving protocol client: the only way the API reaches its models.

Two transports with one interface (:class:`ModelClient.predict`: model name, signature, optional
version label, NumPy inputs -> NumPy outputs):

* :class:`GrpcModelClient` – ``tensorflow.serving.PredictionService/Predict`` on ``grpc.aio``
  with tensorflow-serving-api's request and response messages. Tensors are converted by hand
  (``string_val``, ``int64_val``, ``tensor_content``), which is several times faster than
  ``tf.make_tensor_proto`` for the small tensors of one request; importing the protos imports
  TensorFlow once, at start-up.
* :class:`RestModelClient` – ``POST /v1/models/{name}[/labels/{label}]:predict`` in the
  columnar ``inputs`` format on ``httpx``; needs no TensorFlow at all.

Both work against ``attune serve models`` and the official ``tensorflow/serving`` server alike.
:class:`GuardedModels` adds the time budget (``api.model_server.timeout_ms`` per call) and the
circuit breaker, and turns every failure into :class:`ModelUnavailable` with a short reason, so
the recommender can fall back instead of failing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import orjson

from attune.api.breaker import CircuitBreaker, CircuitOpen
from attune.config import AttuneConfig


class ModelUnavailable(Exception):
    """A model call did not answer usefully; ``reason`` is short and safe to return."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ModelCallError(Exception):
    """The model server answered with an error (bad request, unknown model, ...)."""


Inputs = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


class ModelClient(Protocol):
    protocol: str

    async def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        signature: str = "serving_default",
        label: str | None = None,
        timeout_s: float = 1.0,
    ) -> Outputs: ...

    async def close(self) -> None: ...


# ----------------------------------------------------------------------------------------
# gRPC


class _Protos:
    """tensorflow-serving-api's messages, imported once (this imports TensorFlow)."""

    def __init__(self) -> None:
        try:
            from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
            from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        except ImportError as exc:
            # An install of the `api` extra alone has no TensorFlow: say which way out to take.
            raise ImportError(
                f"api.model_server.protocol is grpc, whose messages need tensorflow-serving-api "
                f"({exc}): install attune[serving], or set api.model_server.protocol: rest"
            ) from exc

        self.tensor_pb2 = tensor_pb2
        self.shape_pb2 = tensor_shape_pb2
        self.types = types_pb2
        self.predict_pb2 = predict_pb2
        self.stub_cls = prediction_service_pb2_grpc.PredictionServiceStub


def tensor_proto(protos: Any, arr: np.ndarray) -> Any:
    """A ``TensorProto`` of a string, int64/int32, float32 or float64 array."""
    t = protos.types
    proto = protos.tensor_pb2.TensorProto()
    for size in arr.shape:
        proto.tensor_shape.dim.add(size=int(size))
    kind = arr.dtype.kind
    if kind in ("O", "U", "S"):
        proto.dtype = t.DT_STRING
        proto.string_val.extend(
            v if isinstance(v, bytes) else str(v).encode() for v in arr.reshape(-1)
        )
    elif kind in ("i", "u"):
        if arr.dtype.itemsize <= 4 and arr.dtype != np.uint32:
            proto.dtype = t.DT_INT32
            proto.tensor_content = np.ascontiguousarray(arr, dtype="<i4").tobytes()
        else:
            proto.dtype = t.DT_INT64
            proto.tensor_content = np.ascontiguousarray(arr, dtype="<i8").tobytes()
    elif arr.dtype == np.float64:
        proto.dtype = t.DT_DOUBLE
        proto.tensor_content = np.ascontiguousarray(arr, dtype="<f8").tobytes()
    elif kind == "f":
        proto.dtype = t.DT_FLOAT
        proto.tensor_content = np.ascontiguousarray(arr, dtype="<f4").tobytes()
    elif kind == "b":
        proto.dtype = t.DT_BOOL
        proto.bool_val.extend(bool(v) for v in arr.reshape(-1))
    else:
        raise TypeError(f"cannot send a {arr.dtype} tensor")
    return proto


_NUMERIC: dict[str, tuple[str, str]] = {
    # dtype enum name -> (numpy dtype, repeated field holding the values)
    "DT_FLOAT": ("<f4", "float_val"),
    "DT_DOUBLE": ("<f8", "double_val"),
    "DT_INT32": ("<i4", "int_val"),
    "DT_INT64": ("<i8", "int64_val"),
    "DT_BOOL": ("?", "bool_val"),
}


def tensor_array(protos: Any, proto: Any) -> np.ndarray:
    """A ``TensorProto`` as a NumPy array (strings as ``str``)."""
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    size = int(np.prod(shape)) if shape else 1
    name = protos.types.DataType.Name(proto.dtype)
    if name == "DT_STRING":
        values = [v.decode("utf-8", "replace") for v in proto.string_val]
        arr = np.array(values if len(values) == size else values * size, dtype=object)
        return arr.reshape(shape)
    if name not in _NUMERIC:
        raise ModelCallError(f"cannot read a {name} output")
    dtype, field = _NUMERIC[name]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    vals = np.asarray(getattr(proto, field), dtype=dtype)
    if vals.size == 1 and size != 1:  # TF's compact form: one value for the whole tensor
        vals = np.full(size, vals[0], dtype=dtype)
    return vals.reshape(shape)


class GrpcModelClient:
    protocol = "grpc"

    def __init__(self, target: str, max_message_mb: int = 64, protos: Any = None) -> None:
        """Create it on the event loop that will use it (``grpc.aio`` binds to that loop);
        ``protos`` (a :class:`_Protos`) can be loaded beforehand in a thread.

        ``target`` is any gRPC name: ``host:port``; ``dns:///name:port``, whose every address
        is a replica (a Kubernetes headless service, compose's ``deploy.replicas``); or
        ``ipv4:host1:port1,host2:port2``. The channel balances calls round-robin over the
        replicas that are up and stops sending to one whose connection fails, so model-server
        replicas need no load balancer of their own (gRPC keeps one connection per replica,
        which a layer-4 balancer in front would pin to one replica)."""
        import grpc

        self._grpc = grpc
        self.protos = protos or _Protos()
        options = [
            ("grpc.max_receive_message_length", max_message_mb * 1024 * 1024),
            ("grpc.max_send_message_length", max_message_mb * 1024 * 1024),
            # reconnect quickly once a restarted model server is back
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # every address the target resolves to takes calls in turn (one address: as before)
            ("grpc.lb_policy_name", "round_robin"),
        ]
        self.target = target
        self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = self.protos.stub_cls(self._channel)

    async def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        signature: str = "serving_default",
        label: str | None = None,
        timeout_s: float = 1.0,
    ) -> Outputs:
        request = self.protos.predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if label:
            request.model_spec.version_label = label
        for name, arr in inputs.items():
            request.inputs[name].CopyFrom(tensor_proto(self.protos, arr))
        try:
            response = await self._stub.Predict(request, timeout=timeout_s)
        except self._grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ModelUnavailable(
                    "timeout", f"{model} over {timeout_s * 1000:.0f} ms"
                ) from None
            if code == self._grpc.StatusCode.UNAVAILABLE:
                raise ModelUnavailable("unavailable", f"{self.target}: {exc.details()}") from None
            raise ModelCallError(f"{model}: {code.name}: {exc.details()}") from None
        return {k: tensor_array(self.protos, v) for k, v in response.outputs.items()}

    async def close(self) -> None:
        await self._channel.close()


# ----------------------------------------------------------------------------------------
# REST


def _jsonable(arr: np.ndarray) -> Any:
    if arr.dtype.kind in ("O", "U", "S"):
        return np.vectorize(
            lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object]
        )(arr).tolist()
    return arr.tolist()


class RestModelClient:
    protocol = "rest"

    def __init__(self, base_url: str) -> None:
        import httpx

        self._httpx = httpx
        self.base_url = base_url.rstrip("/")
        self._output_names: dict[tuple[str, str | None, str], str] = {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            timeout=5.0,
        )

    async def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        signature: str = "serving_default",
        label: str | None = None,
        timeout_s: float = 1.0,
    ) -> Outputs:
        path = f"/v1/models/{model}" + (f"/labels/{label}" if label else "") + ":predict"
        body = orjson.dumps(
            {"signature_name": signature, "inputs": {k: _jsonable(v) for k, v in inputs.items()}}
        )
        try:
            r = await self._client.post(
                path,
                content=body,
                headers={"content-type": "application/json"},
                timeout=timeout_s,
            )
        except self._httpx.TimeoutException:
            raise ModelUnavailable("timeout", f"{model} over {timeout_s * 1000:.0f} ms") from None
        except self._httpx.TransportError as exc:
            raise ModelUnavailable("unavailable", f"{self.base_url}: {exc}") from None
        if r.status_code == 503:
            raise ModelUnavailable("unavailable", f"{model}: 503 {r.text[:200]}")
        if r.status_code != 200:
            raise ModelCallError(f"{model}: HTTP {r.status_code}: {r.text[:300]}")
        outputs = orjson.loads(r.content)["outputs"]
        if not isinstance(outputs, dict):
            # TF Serving writes a signature's only output without its name: look it up once
            name = await self._only_output(model, label, signature, timeout_s)
            outputs = {name: outputs}
        return {k: np.asarray(v, dtype=object if _is_text(v) else None) for k, v in outputs.items()}

    async def _only_output(
        self, model: str, label: str | None, signature: str, timeout_s: float
    ) -> str:
        key = (model, label, signature)
        name = self._output_names.get(key)
        if name is not None:
            return name
        path = f"/v1/models/{model}" + (f"/labels/{label}" if label else "") + "/metadata"
        r = await self._client.get(path, timeout=timeout_s)
        if r.status_code != 200:
            raise ModelCallError(f"{model}: metadata: HTTP {r.status_code}: {r.text[:300]}")
        sigs = orjson.loads(r.content)["metadata"]["signature_def"]["signature_def"]
        names = list((sigs.get(signature) or {}).get("outputs") or {})
        if len(names) != 1:
            raise ModelCallError(f"{model} signature {signature} has outputs {names}")
        self._output_names[key] = names[0]
        return names[0]

    async def close(self) -> None:
        await self._client.aclose()


def _is_text(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str)


# ----------------------------------------------------------------------------------------
# Budget + breaker


async def open_model_client(cfg: AttuneConfig) -> ModelClient:
    """The client ``api.model_server`` names, created on the running loop (the protos, which
    import TensorFlow, are loaded in a thread so the loop is not blocked)."""
    m = cfg.api.model_server
    host = cfg.serving.host if cfg.serving.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if m.protocol == "grpc":
        target = m.grpc_target or f"{host}:{cfg.serving.grpc_port}"
        protos = await asyncio.to_thread(_Protos)
        return GrpcModelClient(target, cfg.serving.grpc_max_message_mb, protos)
    return RestModelClient(m.rest_url or f"http://{host}:{cfg.serving.rest_port}")


class GuardedModels:
    """Model calls within the time budget, behind the circuit breaker."""

    def __init__(
        self,
        client: ModelClient,
        timeout_s: float,
        breaker: CircuitBreaker,
        on_call: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.breaker = breaker
        self._on_call = on_call or (lambda model, outcome, seconds: None)

    async def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        signature: str = "serving_default",
        label: str | None = None,
    ) -> Outputs:
        try:
            self.breaker.before_call()
        except CircuitOpen as exc:
            self._on_call(model, "circuit_open", 0.0)
            raise ModelUnavailable("circuit_open", str(exc)) from None
        started = time.perf_counter()
        try:
            out = await asyncio.wait_for(
                self.client.predict(
                    model, inputs, signature=signature, label=label, timeout_s=self.timeout_s
                ),
                self.timeout_s,
            )
        except TimeoutError:
            self.breaker.failure()
            self._on_call(model, "timeout", time.perf_counter() - started)
            raise ModelUnavailable(
                "timeout", f"{model} over {self.timeout_s * 1000:.0f} ms"
            ) from None
        except ModelUnavailable as exc:
            self.breaker.failure()
            self._on_call(model, exc.reason, time.perf_counter() - started)
            raise
        except ModelCallError as exc:
            # The server is up but refused this call: not a reason to open the breaker.
            self.breaker.success()
            self._on_call(model, "error", time.perf_counter() - started)
            raise ModelUnavailable("model_error", str(exc)) from None
        self.breaker.success()
        self._on_call(model, "ok", time.perf_counter() - started)
        return out

    async def close(self) -> None:
        await self.client.close()
