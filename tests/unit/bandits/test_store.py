"""The bandit store's pure parts: key name, field encoding, the update script's arguments
(``tests/integration/bandits`` runs the script on the real Redis)."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from attune.bandits.policies import ArmCounts, BetaState, LinearState
from attune.bandits.store import (
    decode_beta_state,
    decode_counts,
    decode_linear_state,
    decode_statistics,
    encode_statistics,
    update_arguments,
)
from attune.keys import Keys


def test_key_of_a_policy() -> None:
    assert Keys("att").bandit("slot:home_banner") == "att:bandit:{slot:home_banner}"


def test_statistics_are_xr_then_the_upper_triangle_as_little_endian_doubles() -> None:
    xx = np.array([[2.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    xr = np.array([1.0, 1.0, 0.0])
    blob = encode_statistics(xx, xr)
    # 3 + 3 * 4 / 2 = 9 doubles: xr (1, 1, 0), then the upper triangle's rows (2, 1, 1),
    # (1, 0), (1)
    assert blob == struct.pack("<9d", 1, 1, 0, 2, 1, 1, 1, 0, 1)
    back_xx, back_xr = decode_statistics(blob, 3)
    assert back_xx.tolist() == xx.tolist() and back_xr.tolist() == xr.tolist()
    with pytest.raises(ValueError, match="reset the policy"):
        decode_statistics(blob, 4)


def test_decode_counts_reads_arms_with_any_character() -> None:
    raw = {
        b"n:a": b"10",
        b"c:a": b"2",
        b"n:with:colon": b"3",
        b"features": b"[]",
        b"batch:w1": b"7",
        b"x:a": b"\x00" * 8,
    }
    assert decode_counts(raw) == {"a": ArmCounts(10, 2), "with:colon": ArmCounts(3, 0)}
    state = decode_beta_state(raw, ["with:colon", "new"])
    assert (state.impressions, state.clicks) == ((3, 0), (0, 0))


def test_decode_linear_state_refuses_another_feature_layout() -> None:
    raw = {b"features": orjson.dumps(["bias", "segment=s1"]), b"n:a": b"1"}
    state = decode_linear_state(raw, ["a", "b"], ["bias", "segment=s1"])
    assert state.impressions == (1, 0) and not state.xx.any()
    with pytest.raises(ValueError, match="feature layout changed"):
        decode_linear_state(raw, ["a"], ["bias", "segment=s2"])


def test_update_arguments_leave_out_arms_with_nothing_to_add() -> None:
    delta = BetaState(("a", "b", "c"), (5, 0, 0), (1, 0, 2))
    args = update_arguments(delta, "speed-1", 42)
    assert orjson.loads(args[0]) == {
        "w": "speed-1",
        "b": 42,
        "f": "",
        "arms": [["a", 5, 1, 0], ["c", 0, 2, 0]],
    }
    assert len(args) == 1
    with pytest.raises(ValueError, match="both writer and batch_id"):
        update_arguments(delta, "speed-1", None)
    lin = LinearState(
        ("a", "b"), ("bias",), (1, 0), (0, 0), np.array([[[1.0]], [[0.0]]]), np.zeros((2, 1))
    )
    args = update_arguments(lin)
    assert orjson.loads(args[0]) == {"w": "", "b": -1, "f": '["bias"]', "arms": [["a", 1, 0, 1]]}
    assert args[1:] == [struct.pack("<2d", 0.0, 1.0)]  # xr = 0, xx = 1
