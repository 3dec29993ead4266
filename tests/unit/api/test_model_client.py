"""TensorProto conversion of the gRPC client, checked against TensorFlow's own conversion."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from attune.api.model_client import _Protos, tensor_array, tensor_proto  # noqa: E402


@pytest.fixture(scope="module")
def protos() -> _Protos:
    return _Protos()


@pytest.mark.parametrize(
    "arr",
    [
        np.array([["a", "bé", ""]], dtype=object),
        np.array([1_700_000_000], dtype=np.int64),
        np.array([[0.5, -1.25]], dtype=np.float32),
        np.array([[1.0, 2.0]], dtype=np.float64),
        np.array([3, 4], dtype=np.int32),
    ],
)
def test_tensorflow_reads_what_we_write(protos: _Protos, arr: np.ndarray) -> None:
    back = tf.make_ndarray(tensor_proto(protos, arr))
    if arr.dtype == object:
        assert back.tolist() == [[s.encode() for s in row] for row in arr.tolist()]
    else:
        assert back.dtype == arr.dtype and back.tolist() == arr.tolist()


def test_we_read_what_tensorflow_writes(protos: _Protos) -> None:
    scores = np.array([[0.25, 0.5, 0.75]], dtype=np.float32)
    np.testing.assert_array_equal(tensor_array(protos, tf.make_tensor_proto(scores)), scores)
    ids = np.array([[b"x", b"y"]], dtype=object)
    assert tensor_array(protos, tf.make_tensor_proto(ids)).tolist() == [["x", "y"]]
    # TF's compact form: one value standing for a whole [2, 2] tensor
    compact = tf.make_tensor_proto(7.0, dtype=tf.float32, shape=[2, 2])
    assert tensor_array(protos, compact).tolist() == [[7.0, 7.0], [7.0, 7.0]]
