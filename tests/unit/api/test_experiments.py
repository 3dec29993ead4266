from __future__ import annotations

import pytest

from attune.api.experiments import assign_variant, unit_hash


def test_assignment_is_deterministic_and_depends_on_the_experiment() -> None:
    weights = {"a": 1.0, "b": 1.0}
    first = [assign_variant("exp1", f"user{i}", weights) for i in range(200)]
    assert first == [assign_variant("exp1", f"user{i}", weights) for i in range(200)]
    other = [assign_variant("exp2", f"user{i}", weights) for i in range(200)]
    assert first != other  # a new experiment reshuffles (same outcome has chance 2**-200)


def test_shares_follow_the_weights() -> None:
    # weights 3:1 -> 75 % / 25 %; over 20,000 users the standard error of a share is
    # sqrt(0.75 * 0.25 / 20000) = 0.003, so +-0.015 is 5 standard errors
    weights = {"control": 3.0, "treatment": 1.0}
    n = 20_000
    got = [assign_variant("recs", f"u{i}", weights) for i in range(n)]
    assert abs(got.count("control") / n - 0.75) < 0.015


def test_zero_weight_arms_get_nobody() -> None:
    got = {assign_variant("e", f"u{i}", {"off": 0.0, "on": 2.0}) for i in range(500)}
    assert got == {"on"}


def test_no_positive_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        assign_variant("e", "u", {"a": 0.0})


def test_unit_hash_is_sha256_based() -> None:
    # `printf e:u | sha256sum` starts with b5bd348ef098c56d; 0xb5bd348ef098c56d / 2**64
    assert unit_hash("e", "u") == pytest.approx(0.7099182938551137, abs=1e-15)
