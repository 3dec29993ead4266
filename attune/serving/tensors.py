"""Tensors in TF Serving's REST JSON: requests into NumPy arrays, outputs back into JSON.

This module follows TF Serving's documented JSON mapping (``api_rest.md``) so REST clients
written for TF Serving work unchanged:

* **row format** ``{"instances": [...]}``: one list item per example; with one named input the
  items are its values, with several they are objects ``{input name: value}`` and every input
  gets the same 0-th (batch) dimension. The answer is ``{"predictions": [...]}``: one item per
  example, the value itself with one output, an object of all outputs with several.
* **columnar format** ``{"inputs": value | {name: value}}``: whole tensors, any shapes; the
  answer is ``{"outputs": value | {name: value}}``.
* Values are nested lists. ``DT_STRING`` values are JSON strings (UTF-8) or ``{"b64": "..."}``
  for binary data; outputs whose name ends in ``_bytes`` are written as ``{"b64": "..."}``.
  Integers must be JSON integers, floats accept integers that convert without loss, booleans
  must be ``true``/``false``; ``NaN``, ``Infinity`` and ``-Infinity`` are accepted and written.
* Floats are written in their shortest round-tripping form (a float32 0.1 as ``0.1``).

Nothing here imports TensorFlow: a signature is described by :class:`SignatureInfo` with
dtype names as in ``tensorflow/core/framework/types.proto`` (``"DT_FLOAT"``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from attune.serving.errors import Code, ServingError, invalid_argument

Format = Literal["row", "columnar"]

NUMPY_DTYPES: dict[str, Any] = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_HALF": np.float16,
    "DT_INT8": np.int8,
    "DT_INT16": np.int16,
    "DT_INT32": np.int32,
    "DT_INT64": np.int64,
    "DT_UINT8": np.uint8,
    "DT_UINT16": np.uint16,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
    "DT_BOOL": np.bool_,
    "DT_STRING": object,
}

# TensorFlow's short names (DataTypeString), used in error messages.
SHORT_NAMES: dict[str, str] = {k: k[3:].lower() for k in NUMPY_DTYPES}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature: dtype name and shape (None dims are unknown;
    ``shape`` None means unknown rank)."""

    dtype: str
    shape: tuple[int | None, ...] | None


@dataclass(frozen=True)
class SignatureInfo:
    name: str
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]
    method_name: str = "tensorflow/serving/predict"


@dataclass(frozen=True)
class JsonPredictRequest:
    signature_name: str  # as sent; "" means the default signature
    inputs: dict[str, np.ndarray]
    format: Format


# ---------------------------------------------------------------------------------------------
# JSON in


def _short(value: Any, limit: int = 200) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def parse_json(body: bytes) -> Any:
    """Parse a request body; ``NaN``/``Infinity`` tokens are accepted as TF Serving does."""
    if not body or not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first_error = str(exc)
    try:  # the standard parser knows NaN, Infinity and -Infinity (orjson does not)
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise invalid_argument(f"JSON Parse error: {first_error}") from None


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_object(value: Any) -> bool:
    """A JSON object that is not a base64 value."""
    return isinstance(value, dict) and not _is_b64(value)


def _type_error(value: Any, dtype: str) -> ServingError:
    return invalid_argument(
        f"JSON Value: {_short(value)} Type: {_json_type(value)} is not of expected type: "
        f"{SHORT_NAMES.get(dtype, dtype)}"
    )


_INT_RANGES = {
    "DT_INT8": (-(2**7), 2**7 - 1),
    "DT_INT16": (-(2**15), 2**15 - 1),
    "DT_INT32": (-(2**31), 2**31 - 1),
    "DT_INT64": (-(2**63), 2**63 - 1),
    "DT_UINT8": (0, 2**8 - 1),
    "DT_UINT16": (0, 2**16 - 1),
    "DT_UINT32": (0, 2**32 - 1),
    "DT_UINT64": (0, 2**64 - 1),
}
# Largest integer a float type holds exactly, and its largest finite value.
_FLOAT_LIMITS = {
    "DT_FLOAT": (2**24 - 1, float(np.finfo(np.float32).max)),
    "DT_DOUBLE": (2**53 - 1, float(np.finfo(np.float64).max)),
    "DT_HALF": (2**11 - 1, float(np.finfo(np.float16).max)),
}


def _leaf_converter(dtype: str) -> Callable[[Any], Any]:
    if dtype in _FLOAT_LIMITS:
        max_int, max_float = _FLOAT_LIMITS[dtype]

        def to_float(v: Any) -> Any:
            t = type(v)
            if t is float:
                if math.isfinite(v) and abs(v) > max_float:
                    raise invalid_argument(
                        f"Cannot convert JSON value: {v!r} to {SHORT_NAMES[dtype]} without loss "
                        "of precision."
                    )
                return v
            if t is int:
                if abs(v) > max_int:
                    raise invalid_argument(
                        f"Cannot convert JSON value: {v} to {SHORT_NAMES[dtype]} without loss "
                        "of precision."
                    )
                return v
            raise _type_error(v, dtype)

        return to_float
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]

        def to_int(v: Any) -> Any:
            if type(v) is int and low <= v <= high:
                return v
            raise _type_error(v, dtype)

        return to_int
    if dtype == "DT_BOOL":

        def to_bool(v: Any) -> Any:
            if type(v) is bool:
                return v
            raise _type_error(v, dtype)

        return to_bool
    if dtype == "DT_STRING":

        def to_bytes(v: Any) -> Any:
            if type(v) is str:
                return v.encode("utf-8")
            if isinstance(v, dict):
                if not _is_b64(v):
                    raise invalid_argument(
                        f"JSON Value: {_short(v)} not formatted correctly for base64 data"
                    )
                try:
                    return base64.b64decode(v["b64"], validate=True)
                except (binascii.Error, ValueError):
                    raise invalid_argument("Unable to base64 decode") from None
            raise _type_error(v, dtype)

        return to_bytes

    def unsupported(v: Any) -> Any:
        raise ServingError(
            Code.UNIMPLEMENTED, f"Conversion of JSON Value: {_short(v)} to type: {dtype}"
        )

    return unsupported


def _dense_shape(value: Any) -> list[int]:
    """The shape a nested list claims, read from its first elements (TF Serving's rule)."""
    shape: list[int] = []
    v = value
    while isinstance(v, list):
        shape.append(len(v))
        if not v:
            break
        v = v[0]
    return shape


def _fill(
    value: Any, level: int, shape: list[int], conv: Callable[[Any], Any], out: list[Any]
) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {_short(value)} found at incorrect level: {level + 1} in the JSON "
                f"DOM. Expected at level: {rank}"
            )
        out.append(conv(value))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected "
            f"size: {shape[level]}"
        )
    if level == rank - 1:
        for v in value:
            if isinstance(v, list):
                raise invalid_argument(
                    f"Encountered list at unexpected level: {level + 1} expected < {rank}"
                )
            out.append(conv(v))
        return
    for v in value:
        _fill(v, level + 1, shape, conv, out)


def _flatten(value: Any, dtype: str) -> tuple[list[int], list[Any]]:
    shape = _dense_shape(value)
    flat: list[Any] = []
    _fill(value, 0, shape, _leaf_converter(dtype), flat)
    return shape, flat


def _array(flat: list[Any], shape: list[int], dtype: str) -> np.ndarray:
    np_dtype = NUMPY_DTYPES.get(dtype)
    if np_dtype is None:
        raise ServingError(Code.UNIMPLEMENTED, f"tensors of type {dtype} are not supported")
    if np_dtype is object:
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
    else:
        arr = np.array(flat, dtype=np_dtype)
    return arr.reshape(shape)


def json_to_array(value: Any, dtype: str) -> np.ndarray:
    """One tensor from its JSON value (a scalar or a dense nested list)."""
    shape, flat = _flatten(value, dtype)
    return _array(flat, shape, dtype)


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _from_instances(instances: Any, sig: SignatureInfo) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid_argument("Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid_argument("No values in 'instances' array")
    names = sorted(sig.inputs)
    objects = _is_object(instances[0])
    if not objects and len(names) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            f"required as per tensorinfo_map ({', '.join(names)})"
        )
    shapes: dict[str, list[int]] = {}
    flats: dict[str, list[Any]] = {n: [] for n in names}

    def add(i: int, name: str, value: Any, key_note: str) -> None:
        try:
            shape, flat = _flatten(value, sig.inputs[name].dtype)
            if name not in shapes:
                shapes[name] = shape
            elif shapes[name] != shape:
                raise invalid_argument(
                    f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(shape)}"
                )
        except ServingError as exc:
            raise invalid_argument(
                f"Failed to process element: {i}{key_note} of 'instances' list. Error: "
                f"{exc.message}"
            ) from None
        flats[name].extend(flat)

    for i, item in enumerate(instances):
        if objects:
            if not _is_object(item):
                raise invalid_argument(f"Expecting object but got list at item {i} of input list")
            for key, value in item.items():
                if key not in sig.inputs:
                    raise invalid_argument(
                        f"Failed to process element: {i} key: {key} of 'instances' list. Error: "
                        f"JSON object: does not have named input: {key}"
                    )
                add(i, key, value, f" key: {key}")
            if len(item) != len(names):
                raise invalid_argument(
                    f"Failed to process element: {i} of 'instances' list. JSON object: "
                    f"{_short(item)} keys must be equal to: {','.join(names)}"
                )
        else:
            if _is_object(item):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {i} of input list"
                )
            add(i, names[0], item, "")
    n = len(instances)
    return {name: _array(flats[name], [n, *shapes[name]], sig.inputs[name].dtype) for name in names}


def _from_inputs(inputs: Any, sig: SignatureInfo) -> dict[str, np.ndarray]:
    names = sorted(sig.inputs)
    if not _is_object(inputs):
        if len(names) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                f"tensors required as per tensorinfo_map ({', '.join(names)})"
            )
        return {names[0]: json_to_array(inputs, sig.inputs[names[0]].dtype)}
    out = {}
    for name in names:
        if name not in inputs:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        out[name] = json_to_array(inputs[name], sig.inputs[name].dtype)
    return out


def decode_predict_request(
    body: bytes, signature_for: Callable[[str], SignatureInfo]
) -> JsonPredictRequest:
    """Parse a REST predict body; ``signature_for(name)`` looks the signature up (raising
    NOT_FOUND for a missing model, INVALID_ARGUMENT for a missing signature)."""
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {_short(doc)} Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid_argument(
            f"JSON Value: {_short(doc)} not formatted correctly. 'signature_name' key must be a "
            "string value."
        )
    sig = signature_for(signature_name)
    if not sig.inputs:
        raise invalid_argument(
            f"Failed to get input map for signature: {signature_name or 'DEFAULT'}"
        )
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(
            f"JSON Value: {_short(doc)} Not formatted correctly expecting only one of 'inputs' "
            "or 'instances' keys to exist "
        )
    if has_instances:
        return JsonPredictRequest(signature_name, _from_instances(doc["instances"], sig), "row")
    if has_inputs:
        return JsonPredictRequest(signature_name, _from_inputs(doc["inputs"], sig), "columnar")
    raise invalid_argument("Missing 'inputs' or 'instances' key")


# ---------------------------------------------------------------------------------------------
# JSON out


def _strings(arr: np.ndarray, as_bytes: bool) -> Any:
    if as_bytes:
        items: list[Any] = [{"b64": base64.b64encode(bytes(v)).decode("ascii")} for v in arr.flat]
    else:
        items = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.flat]
    if arr.ndim == 0:
        return items[0]
    holder = np.empty(len(items), dtype=object)
    holder[:] = items
    return holder.reshape(arr.shape).tolist()


def _jsonable(name: str, arr: np.ndarray) -> tuple[Any, bool]:
    """(value orjson can write, whether it holds NaN or infinities)."""
    if arr.dtype == object or arr.dtype.kind in "SU":
        return _strings(arr, name.endswith("_bytes")), False
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    nonfinite = arr.dtype.kind == "f" and not bool(np.isfinite(arr).all())
    if arr.ndim == 0:
        return arr[()], nonfinite
    return np.ascontiguousarray(arr), nonfinite


def _plain(value: Any) -> Any:
    """NumPy values as Python values with float32 in shortest form (slow path, for NaN/Inf)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            flat = [float(str(x)) for x in value.ravel()]
            return np.array(flat, dtype=np.float64).reshape(value.shape).tolist()
        return value.tolist()
    if isinstance(value, np.floating):
        return float(str(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _dumps(doc: Any, nonfinite: bool) -> bytes:
    if not nonfinite:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    # orjson writes NaN as null; TF Serving writes NaN, Infinity and -Infinity
    return json.dumps(_plain(doc), allow_nan=True, separators=(",", ":")).encode()


def encode_predict_response(outputs: Mapping[str, np.ndarray], fmt: Format) -> bytes:
    """The JSON body of a predict answer, shaped like TF Serving's."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == "row":
        batch = -1
        for name in names:
            arr = outputs[name]
            if arr.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch >= 0 and arr.shape[0] != batch:
                raise invalid_argument(
                    f"Tensor name: {name} has inconsistent batch size: {arr.shape[0]} "
                    f"expecting: {batch}"
                )
            batch = arr.shape[0]
    converted = {}
    nonfinite = False
    for name in names:
        value, bad = _jsonable(name, outputs[name])
        converted[name] = value
        nonfinite = nonfinite or bad
    if fmt == "columnar":
        body = converted[names[0]] if len(names) == 1 else converted
        return _dumps({"outputs": body}, nonfinite)
    if len(names) == 1:
        return _dumps({"predictions": converted[names[0]]}, nonfinite)
    rows = [{name: converted[name][i] for name in names} for i in range(batch)]
    return _dumps({"predictions": rows}, nonfinite)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
