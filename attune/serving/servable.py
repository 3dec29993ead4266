"""One loaded model version (a *servable* in TF Serving's words) and how a request runs on it.

A servable is a SavedModel loaded with ``tf.saved_model.load``. Its signatures are read from the
``saved_model.pb`` meta graph tagged ``serve`` exactly as TF Serving reads them, so metadata
answers are the same, and each signature is called as a concrete function with NumPy inputs.

If the version folder holds TF Serving warm-up requests (``assets.extra/
tf_serving_warmup_requests``, a TFRecord file of ``PredictionLog`` protos), they are run once
while loading, before the version takes any traffic, as TF Serving does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attune.serving.errors import Code, ServingError, invalid_argument
from attune.serving.tensors import NUMPY_DTYPES, SHORT_NAMES, SignatureInfo, TensorInfo

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
INIT_OP_SIGNATURE = "__saved_model_init_op"
SERVE_TAG = "serve"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000

_DTYPE_OF_NUMPY = {np.dtype(v).str: k for k, v in NUMPY_DTYPES.items() if v is not object}


def saved_model_file(folder: Path) -> Path | None:
    """The ``saved_model.pb`` (or ``.pbtxt``) of a version folder, None while it is missing."""
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        p = folder / name
        if p.is_file():
            return p
    return None


def _read_meta_graph(folder: Path) -> Any:
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    path = saved_model_file(folder)
    if path is None:
        raise FileNotFoundError(f"no saved_model.pb in {folder}")
    model = saved_model_pb2.SavedModel()
    if path.suffix == ".pbtxt":
        text_format.Parse(path.read_text(), model)
    else:
        model.ParseFromString(path.read_bytes())
    for graph in model.meta_graphs:
        if SERVE_TAG in graph.meta_info_def.tags:
            return graph
    tags = [list(g.meta_info_def.tags) for g in model.meta_graphs]
    raise ValueError(f"{path} has no meta graph tagged '{SERVE_TAG}' (tags: {tags})")


def _tensor_info(proto: Any) -> TensorInfo:
    from tensorflow.core.framework import types_pb2

    dtype = types_pb2.DataType.Name(proto.dtype)
    if proto.tensor_shape.unknown_rank:
        return TensorInfo(dtype, None)
    return TensorInfo(dtype, tuple(d.size if d.size >= 0 else None for d in proto.tensor_shape.dim))


def signature_infos(meta_graph: Any) -> dict[str, SignatureInfo]:
    """The callable signatures of a meta graph (the init op is not one)."""
    out = {}
    for name, sig in meta_graph.signature_def.items():
        if name == INIT_OP_SIGNATURE:
            continue
        out[name] = SignatureInfo(
            name=name,
            inputs={k: _tensor_info(v) for k, v in sig.inputs.items()},
            outputs={k: _tensor_info(v) for k, v in sig.outputs.items()},
            method_name=sig.method_name,
        )
    return out


def dtype_name(arr: np.ndarray) -> str:
    if arr.dtype == object or arr.dtype.kind in "SU":
        return "DT_STRING"
    return _DTYPE_OF_NUMPY.get(arr.dtype.str, str(arr.dtype))


def _shape_text(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ",".join("-1" if d is None else str(d) for d in shape) + "]"


def validate_inputs(sig: SignatureInfo, inputs: Mapping[str, np.ndarray]) -> None:
    """Check names, dtypes and shapes of the inputs against the signature."""
    sent, expected = set(inputs), set(sig.inputs)
    if sent != expected:
        extra = ",".join(sorted(sent - expected))
        missing = ",".join(sorted(expected - sent))
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{extra}}}. Missing but required: {{{missing}}}."
        )
    for name in sorted(inputs):
        arr, info = inputs[name], sig.inputs[name]
        got = dtype_name(arr)
        if got != info.dtype:
            raise invalid_argument(
                f"input '{name}' is {SHORT_NAMES.get(got, got)} but signature "
                f"'{sig.name}' expects {SHORT_NAMES.get(info.dtype, info.dtype)}"
            )
        if info.shape is None:
            continue
        if arr.ndim != len(info.shape) or any(
            want is not None and want != have
            for want, have in zip(info.shape, arr.shape, strict=True)
        ):
            raise invalid_argument(
                f"input '{name}' has shape {_shape_text(arr.shape)} but signature '{sig.name}' "
                f"expects {_shape_text(info.shape)} (-1: any size)"
            )


class Servable:
    """A loaded model version: its signatures and a way to run them."""

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        signatures: dict[str, SignatureInfo],
        signature_def_map: Any,
        functions: Mapping[str, Any],
        loaded: Any,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.signatures = signatures
        # tensorflow.serving.SignatureDefMap of every signature, for metadata answers
        self.signature_def_map = signature_def_map
        self._functions = dict(functions)
        self._loaded = loaded  # keeps the restored variables alive
        self.batchers: dict[str, Any] = {}
        self.batchers_lock = threading.Lock()
        self.closed = False
        self._metadata_json: dict[str, Any] | None = None
        self._tf_dtypes: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, version={self.version})"

    def signature(self, name: str) -> SignatureInfo:
        """The signature called ``name`` ("" = ``serving_default``)."""
        key = name or DEFAULT_SIGNATURE
        sig = self.signatures.get(key)
        if sig is None:
            raise ServingError(
                Code.FAILED_PRECONDITION,
                f'Serving signature key "{key}" not found. This model has: '
                f"{', '.join(sorted(self.signatures)) or 'no signatures'}",
            )
        return sig

    def signature_defs_json(self) -> dict[str, Any]:
        """The SignatureDefMap as TF Serving writes it in REST metadata answers."""
        if self._metadata_json is None:
            from google.protobuf import json_format

            self._metadata_json = json_format.MessageToDict(
                self.signature_def_map,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
        return self._metadata_json

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call a signature on validated NumPy inputs; outputs as NumPy arrays."""
        import tensorflow as tf

        fn = self._functions[signature]
        dtypes = self._tf_dtypes.get(signature)
        if dtypes is None:
            dtypes = {k: _tf_dtype(v.dtype) for k, v in self.signatures[signature].inputs.items()}
            self._tf_dtypes[signature] = dtypes
        try:
            tensors = {k: tf.convert_to_tensor(v, dtype=dtypes[k]) for k, v in inputs.items()}
            result = fn(**tensors)
        except tf.errors.OpError as exc:
            code = (
                Code(exc.error_code) if exc.error_code in Code._value2member_map_ else Code.UNKNOWN
            )
            raise ServingError(code, exc.message) from None
        except (TypeError, ValueError) as exc:
            raise invalid_argument(f"cannot run signature '{signature}': {exc}") from None
        return {k: v.numpy() for k, v in result.items()}

    def close(self) -> None:
        """Stop this version's batchers once their queued requests are answered. Requests that
        already hold this servable keep running on it; it is freed when the last one ends."""
        with self.batchers_lock:
            self.closed = True
            batchers, self.batchers = list(self.batchers.values()), {}
        for b in batchers:
            b.close()


def _tf_dtype(dtype: str) -> Any:
    import tensorflow as tf

    return tf.string if dtype == "DT_STRING" else tf.dtypes.as_dtype(NUMPY_DTYPES[dtype])


def load_servable(name: str, version: int, path: Path) -> Servable:
    """Load ``path`` (a SavedModel version folder) and run its warm-up requests, if any."""
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2

    meta_graph = _read_meta_graph(path)
    loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
    signatures = signature_infos(meta_graph)
    functions = {}
    for key in signatures:
        if key not in loaded.signatures:
            raise ValueError(f"signature {key!r} of {path} cannot be called after loading")
        functions[key] = loaded.signatures[key]
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in meta_graph.signature_def.items():
        sig_map.signature_def[key].CopyFrom(sig)
    servable = Servable(name, version, path, signatures, sig_map, functions, loaded)
    _warm_up(servable)
    return servable


def _warm_up(servable: Servable) -> None:
    warmup = servable.path / WARMUP_FILE
    if not warmup.is_file():
        return
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    n = 0
    for record in tf.data.TFRecordDataset(str(warmup)).take(MAX_WARMUP_RECORDS):
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if entry.WhichOneof("log_type") != "predict_log":
            continue  # classify/regress/multi-inference warm-ups: not served here
        request = entry.predict_log.request
        sig = servable.signature(request.model_spec.signature_name)
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        validate_inputs(sig, inputs)
        servable.run(sig.name, inputs)
        n += 1
    log.info("%s version %d: ran %d warm-up request(s)", servable.name, servable.version, n)
