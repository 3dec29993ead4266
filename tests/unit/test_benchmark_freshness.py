"""The freshness benchmark's pure parts: each mode's config and the batch ends it counts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import ModuleType

import pytest

from attune.config import AttuneConfig
from tests.unit.benchmark_modules import load_benchmark


@pytest.fixture(scope="module")
def freshness() -> ModuleType:
    return load_benchmark("freshness")


@pytest.mark.parametrize(
    ("mode", "batch_s", "trigger", "writer", "expected"),
    [
        ("microbatch", None, "microbatch", "python", None),
        ("realtime", None, "realtime", "python", timedelta(seconds=5)),  # python's default
        ("realtime-1s", 30.0, "realtime", "python", timedelta(seconds=1)),  # fixed by its name
        ("realtime-jvm", None, "realtime", "jvm", timedelta(minutes=5)),  # jvm's default
        ("realtime-jvm", 30.0, "realtime", "jvm", timedelta(seconds=30)),
    ],
)
def test_each_mode_gets_its_trigger_writer_and_batch(
    freshness: ModuleType,
    tmp_path: Path,
    mode: str,
    batch_s: float | None,
    trigger: str,
    writer: str,
    expected: timedelta | None,
) -> None:
    cfg = freshness._mode_config(AttuneConfig(), mode, tmp_path, batch_s)
    assert (cfg.speed.trigger, cfg.speed.realtime_writer) == (trigger, writer)
    if expected is not None:
        assert cfg.speed.realtime_batch_duration == expected
    assert cfg.paths.var_dir == tmp_path / mode


def test_batch_ends_are_read_from_the_online_checkpoints_commit_log(
    freshness: ModuleType, tmp_path: Path
) -> None:
    cfg = freshness._mode_config(AttuneConfig(), "realtime-jvm", tmp_path)
    commits = tmp_path / "realtime-jvm" / "checkpoints" / "speed" / "online-realtime" / "commits"
    assert freshness._online_batch_id(cfg) is None  # no checkpoint yet
    commits.mkdir(parents=True)
    assert freshness._online_batch_id(cfg) is None  # no batch committed yet
    for name in ("0", "1", "11", ".11.crc", "2"):  # Hadoop writes a .crc beside each
        (commits / name).write_text("v1\n")
    assert freshness._online_batch_id(cfg) == 11  # numerically, not as text
