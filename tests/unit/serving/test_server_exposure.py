"""The model server warns when it listens beyond loopback (it has no authentication)."""

from __future__ import annotations

import pytest

from attune.serving.server import exposure_warning


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "localhost", "::1"])
def test_loopback_is_quiet(host: str) -> None:
    assert exposure_warning(host) is None


@pytest.mark.parametrize(
    ("host", "where"),
    [
        ("0.0.0.0", "every network interface"),
        ("::", "every network interface"),
        ("10.0.0.5", "10.0.0.5"),
    ],
)
def test_any_other_address_is_named_with_the_fix(host: str, where: str) -> None:
    warning = exposure_warning(host)
    assert warning is not None
    assert f"listens on {where} (serving.host {host!r})" in warning
    assert "no authentication" in warning and "serving.host: 127.0.0.1" in warning
