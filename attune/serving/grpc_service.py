"""TF Serving's gRPC API (port 8500 by default), with the servicers of tensorflow-serving-api.

``tensorflow.serving.PredictionService``: ``Predict`` (model spec by version, label or latest;
``output_filter``) and ``GetModelMetadata`` (``signature_def``); ``Classify``, ``Regress`` and
``MultiInference`` answer UNIMPLEMENTED.
``tensorflow.serving.ModelService``: ``GetModelStatus`` and ``HandleReloadConfigRequest`` (serve
the models of a ``ModelServerConfig`` from now on; as in TF Serving, a config file polled by the
server would replace it again, so this server stops following its file or repository then).

Tensors cross the wire as ``TensorProto`` converted with ``tf.make_ndarray`` and
``tf.make_tensor_proto``. Failures are gRPC statuses with TF Serving's codes and messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from attune.config import ConfigError
from attune.serving.core import ServingCore
from attune.serving.errors import Code, ServingError, invalid_argument
from attune.serving.servable import Servable

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
T = TypeVar("T")


def _spec_version(spec: Any) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return int(spec.version.value), None
    if choice == "version_label":
        return None, str(spec.version_label)
    return None, None


class _Call:
    """Runs one RPC: maps ServingError to the gRPC status and records the metrics."""

    def __init__(self, core: ServingCore, method: str) -> None:
        self.core, self.method = core, method

    def __call__(self, context: grpc.ServicerContext, model: str, work: Callable[[_Call], T]) -> T:
        started = time.perf_counter()
        self.servable: Servable | None = None
        self.signature = ""
        try:
            result = work(self)
        except ServingError as exc:
            code, message = exc.code, exc.message
        except Exception as exc:
            log.exception("gRPC %s failed", self.method)
            code, message = Code.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
        else:
            self._observe(model, Code.OK, started)
            return result
        self._observe(model, code, started)
        context.abort(grpc.StatusCode[code.name], message)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def _observe(self, model: str, code: Code, started: float) -> None:
        self.core.metrics.observe(
            "grpc",
            self.method,
            self.core.model_label(model),
            self.servable.version if self.servable is not None else None,
            self.signature,
            code.name,
            time.perf_counter() - started,
        )


def build_servicers(core: ServingCore) -> tuple[Any, Any]:
    """(PredictionService servicer, ModelService servicer) bound to ``core``."""
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_management_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from attune.serving.config import entries_from_config_proto
    from attune.serving.repository import StaticSource

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
            spec = request.model_spec

            def work(call: _Call) -> Any:
                version, label = _spec_version(spec)
                call.servable = servable = core.resolve(spec.name, version, label)
                try:
                    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                except (TypeError, ValueError) as exc:
                    raise invalid_argument(f"cannot read an input TensorProto: {exc}") from None
                prediction = core.predict(
                    servable, spec.signature_name, inputs, list(request.output_filter)
                )
                call.signature = prediction.signature
                response = predict_pb2.PredictResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = prediction.signature
                for name, arr in prediction.outputs.items():
                    response.outputs[name].CopyFrom(tf.make_tensor_proto(arr))
                return response

            return _Call(core, "predict")(context, spec.name, work)

        def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
            spec = request.model_spec

            def work(call: _Call) -> Any:
                fields = list(request.metadata_field)
                if not fields:
                    raise invalid_argument(
                        "GetModelMetadataRequest must specify at least one metadata_field"
                    )
                for name in fields:
                    if name != SIGNATURE_DEF_FIELD:
                        raise invalid_argument(f"Metadata field {name} is not supported")
                version, label = _spec_version(spec)
                call.servable = servable = core.resolve(spec.name, version, label)
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map)
                return response

            return _Call(core, "metadata")(context, spec.name, work)

        def _unimplemented(self, request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "this server implements Predict and GetModelMetadata; send a PredictRequest",
            )

        Classify = _unimplemented
        Regress = _unimplemented
        MultiInference = _unimplemented

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
            spec = request.model_spec

            def work(call: _Call) -> Any:
                version, label = _spec_version(spec)
                response = get_model_status_pb2.GetModelStatusResponse()
                state_enum = get_model_status_pb2.ModelVersionStatus.State
                for v, status in core.status(spec.name, version, label):
                    entry = response.model_version_status.add()
                    entry.version = v
                    entry.state = state_enum.Value(status.state)
                    entry.status.error_code = int(status.error_code)
                    entry.status.error_message = status.error_message
                return response

            return _Call(core, "status")(context, spec.name, work)

        def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
            def work(call: _Call) -> Any:
                try:
                    entries = entries_from_config_proto(request.config)
                    core.manager.set_source(StaticSource(entries, "a ReloadConfigRequest"))
                except ConfigError as exc:
                    raise invalid_argument(str(exc)) from None
                log.info(
                    "reloaded the model config from a ReloadConfigRequest: %s",
                    [e.name for e in entries],
                )
                response = model_management_pb2.ReloadConfigResponse()
                response.status.error_code = 0
                return response

            return _Call(core, "reload_config")(context, "", work)

    return PredictionService(), ModelService()


def start_grpc_server(
    core: ServingCore, host: str, port: int, threads: int, max_message_bytes: int
) -> grpc.Server:
    """Start the gRPC server on ``host:port``; raises when the port cannot be bound."""
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"), options=options
    )
    prediction, models = build_servicers(core)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, server)
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from None
    if bound == 0:
        raise ConfigError(
            f"cannot listen for gRPC on {address}: the port is in use or the address is "
            "invalid; set serving.grpc_port (or --grpc-port) to a free port"
        )
    server.start()
    return server
