"""The model repository's format: atomic publication, version numbers, version folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from attune.model_repository import ModelRepository, version_folders


def _writer(content: str):  # type: ignore[no-untyped-def]
    def write(path: Path) -> None:
        path.mkdir(parents=True)
        (path / "saved_model.pb").write_text(content)

    return write


def test_publish_numbers_versions_and_leaves_no_temp(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    assert repo.publish("retrieval", _writer("a"), {"data": {"version": "x"}}) == 1
    assert repo.publish("retrieval", _writer("b"), {"data": {"version": "y"}}) == 2
    assert repo.versions("retrieval") == [1, 2]
    assert (tmp_path / "retrieval" / "2" / "saved_model.pb").read_text() == "b"
    meta = repo.metadata("retrieval", 2)
    assert meta["version"] == 2 and meta["name"] == "retrieval" and meta["data"]["version"] == "y"
    assert "created_at" in meta
    assert [p.name for p in (tmp_path / "retrieval").iterdir() if p.name.startswith(".")] == []


def test_failed_write_publishes_nothing(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)

    def broken(path: Path) -> None:
        path.mkdir(parents=True)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        repo.publish("ranking", broken, {})
    assert repo.versions("ranking") == []
    assert list((tmp_path / "ranking").iterdir()) == []


def test_a_taken_version_number_moves_to_the_next(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    repo = ModelRepository(tmp_path)
    repo.publish("m", _writer("first"), {})
    real = repo.versions
    calls = {"n": 0}

    def stale(name: str) -> list[int]:
        # the first look misses version 1 (another publisher just took it)
        calls["n"] += 1
        return [] if calls["n"] == 1 else real(name)

    monkeypatch.setattr(repo, "versions", stale)
    assert repo.publish("m", _writer("second"), {}) == 2
    assert (tmp_path / "m" / "1" / "saved_model.pb").read_text() == "first"


def test_version_folders_are_integer_named_folders(tmp_path: Path) -> None:
    for name in ("1", "3", ".tmp-0a1b", "latest"):
        (tmp_path / "m" / name).mkdir(parents=True)
    (tmp_path / "m" / "2").write_text("a file, not a version")
    assert version_folders(tmp_path / "m") == {1: tmp_path / "m" / "1", 3: tmp_path / "m" / "3"}
    assert version_folders(tmp_path / "missing") == {}
    assert ModelRepository(tmp_path).versions("m") == [1, 3]


def test_names_are_the_models_with_a_published_version(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    repo.publish("retrieval", _writer("a"), {})
    repo.publish("ranking", _writer("b"), {})
    (tmp_path / "draft" / ".tmp-0a1b").mkdir(parents=True)  # no version: not a model
    (tmp_path / "serving.json").write_text("{}")
    assert repo.names() == ["ranking", "retrieval"]
    assert ModelRepository(tmp_path / "missing").names() == []
