"""TF Serving's JSON tensor formats (attune.serving.tensors), without a model or TensorFlow.

Expected arrays and JSON texts are written out by hand from TF Serving's documented rules
(api_rest.md): row format -> one item per example, columnar -> whole tensors, b64 objects for
binary strings, shortest float forms, NaN/Infinity tokens.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from attune.serving.errors import Code, ServingError
from attune.serving.tensors import (
    SignatureInfo,
    TensorInfo,
    decode_predict_request,
    encode_predict_response,
    json_to_array,
)

SIG = SignatureInfo(
    "serving_default",
    inputs={"x": TensorInfo("DT_FLOAT", (None,)), "tag": TensorInfo("DT_STRING", (None,))},
    outputs={"y": TensorInfo("DT_FLOAT", (None,))},
)
SINGLE = SignatureInfo("single", {"m": TensorInfo("DT_INT64", (None, 2))}, {})


def decode(body: object, sig: SignatureInfo = SIG) -> tuple[str, dict[str, np.ndarray], str]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    req = decode_predict_request(raw, lambda name: sig)
    return req.signature_name, req.inputs, req.format


def error(body: object, sig: SignatureInfo = SIG) -> ServingError:
    with pytest.raises(ServingError) as err:
        decode(body, sig)
    return err.value


def test_row_format_with_named_inputs() -> None:
    name, inputs, fmt = decode({"instances": [{"x": 1, "tag": "a"}, {"x": 2.5, "tag": "é"}]})
    assert (name, fmt) == ("", "row")
    assert inputs["x"].dtype == np.float32 and inputs["x"].tolist() == [1.0, 2.5]
    # "é" is sent as UTF-8: the two bytes c3 a9
    assert inputs["tag"].dtype == object and inputs["tag"].tolist() == [b"a", b"\xc3\xa9"]


def test_row_format_with_one_input_takes_plain_values() -> None:
    _, inputs, _ = decode({"signature_name": "single", "instances": [[1, 2], [3, 4]]}, SINGLE)
    assert inputs["m"].dtype == np.int64 and inputs["m"].tolist() == [[1, 2], [3, 4]]


def test_columnar_format_and_base64_strings() -> None:
    # "aGk=" is base64 for b"hi"
    _, inputs, fmt = decode({"inputs": {"x": [0.5], "tag": [{"b64": "aGk="}]}})
    assert fmt == "columnar"
    assert inputs["tag"].tolist() == [b"hi"] and inputs["x"].tolist() == [0.5]


def test_nan_and_infinity_tokens_are_accepted() -> None:
    _, inputs, _ = decode(b'{"inputs": {"x": [NaN, Infinity, -Infinity], "tag": ["a","b","c"]}}')
    x = inputs["x"]
    assert np.isnan(x[0]) and x[1] == np.inf and x[2] == -np.inf


def test_lossless_integers_only_for_floats() -> None:
    # float32 holds integers exactly up to 2**24 - 1 = 16,777,215
    assert json_to_array([16_777_215], "DT_FLOAT").tolist() == [16_777_215.0]
    with pytest.raises(ServingError, match="without loss of precision"):
        json_to_array([16_777_217], "DT_FLOAT")


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (["a"], "DT_FLOAT", 'JSON Value: "a" Type: String is not of expected type: float'),
        ([1.5], "DT_INT64", "JSON Value: 1.5 Type: Number is not of expected type: int64"),
        ([1], "DT_BOOL", "is not of expected type: bool"),
        ([True], "DT_FLOAT", "Type: True is not of expected type: float"),
        ([2**31], "DT_INT32", "is not of expected type: int32"),
        ([[1, 2], [3]], "DT_INT64", "Encountered list at unexpected size: 1 at level: 1"),
        ([[1, 2], 3], "DT_INT64", "found at incorrect level"),
        ([1, [2]], "DT_INT64", "Encountered list at unexpected level"),
        ([{"b64": "***"}], "DT_STRING", "Unable to base64 decode"),
        ([{"text": "a"}], "DT_STRING", "not formatted correctly for base64 data"),
    ],
)
def test_values_of_the_wrong_type_or_shape(value: object, dtype: str, message: str) -> None:
    with pytest.raises(ServingError) as err:
        json_to_array(value, dtype)
    assert err.value.code == Code.INVALID_ARGUMENT
    assert message in err.value.message


def test_request_shape_errors() -> None:
    assert "Missing 'inputs' or 'instances' key" in error({"signature_name": ""}).message
    assert "only one of 'inputs' or 'instances'" in error({"inputs": 1, "instances": [1]}).message
    assert "No values in 'instances' array" in error({"instances": []}).message
    assert "Is not object" in error([1, 2]).message
    assert "The document is empty" in error(b"").message
    assert error(b'{"instances": [').message.startswith("JSON Parse error")
    assert "'signature_name' key must be a string" in error({"signature_name": 3}).message
    assert "Missing named input: tag in 'inputs' object." in error({"inputs": {"x": [1]}}).message
    assert "expecting list of objects" in error({"instances": [1.0, 2.0]}).message
    assert "keys must be equal to: tag,x" in error({"instances": [{"x": 1.0}]}).message
    assert (
        "does not have named input: z"
        in error({"instances": [{"x": 1.0, "tag": "a", "z": 1}]}).message
    )
    # every instance must have the same shape as the first
    assert (
        "Expecting shape [2] but got: [3]"
        in error(
            {"instances": [{"m": [1, 2]}, {"m": [1, 2, 3]}]},
            SignatureInfo("s", {"m": TensorInfo("DT_INT64", (None, None))}, {}),
        ).message
    )


def test_signature_lookup_errors_pass_through() -> None:
    def missing(name: str) -> SignatureInfo:
        raise ServingError(Code.NOT_FOUND, "Servable not found for request: Latest(m)")

    with pytest.raises(ServingError) as err:
        decode_predict_request(b'{"instances": [1]}', missing)
    assert err.value.code == Code.NOT_FOUND and err.value.http_status == 404


def test_row_response_with_several_outputs() -> None:
    outputs = {
        "y": np.array([0.1, 2.0], np.float32),
        "ids": np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object),
        "raw_bytes": np.array([b"\x00\xff", b"hi"], dtype=object),
    }
    # float32 0.1 is written in its shortest form 0.1 (not 0.10000000149011612), 2 as 2.0;
    # base64 of 00 ff is "AP8=", of "hi" is "aGk="
    assert orjson.loads(encode_predict_response(outputs, "row")) == {
        "predictions": [
            {"y": 0.1, "ids": ["a", "b"], "raw_bytes": {"b64": "AP8="}},
            {"y": 2.0, "ids": ["c", "d"], "raw_bytes": {"b64": "aGk="}},
        ]
    }
    assert b'"y":0.1' in encode_predict_response(outputs, "row")


def test_single_output_drops_its_name() -> None:
    y = {"y": np.array([[1, 2], [3, 4]], np.int64)}
    assert encode_predict_response(y, "row") == b'{"predictions":[[1,2],[3,4]]}'
    assert encode_predict_response(y, "columnar") == b'{"outputs":[[1,2],[3,4]]}'
    scalar = {"total": np.array(16.0, np.float32)}
    assert encode_predict_response(scalar, "columnar") == b'{"outputs":16.0}'


def test_non_finite_floats_use_tf_serving_tokens() -> None:
    out = {"y": np.array([np.nan, np.inf, -np.inf, 0.1], np.float32)}
    assert encode_predict_response(out, "columnar") == b'{"outputs":[NaN,Infinity,-Infinity,0.1]}'


def test_row_response_needs_a_common_batch_dimension() -> None:
    with pytest.raises(ServingError, match="has no shape information"):
        encode_predict_response({"total": np.array(1.0, np.float32)}, "row")
    with pytest.raises(ServingError, match="inconsistent batch size: 3 expecting: 2"):
        encode_predict_response({"a": np.zeros(2), "b": np.zeros(3)}, "row")
