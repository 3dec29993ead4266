"""The model manager (attune.serving.repository) with a fake loader: versions appear, fail,
get replaced and unloaded; requests resolve versions, labels and the latest."""

from __future__ import annotations

from pathlib import Path

import pytest

from attune.serving.config import ModelEntry, VersionPolicy
from attune.serving.errors import Code, ServingError
from attune.serving.repository import ModelManager, StaticSource, scan_versions


class FakeServable:
    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name, self.version, self.path = name, version, path
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Loader:
    """Loads every version except those whose saved_model.pb says b"broken"."""

    def __init__(self) -> None:
        self.loaded: list[tuple[str, int]] = []

    def __call__(self, name: str, version: int, path: Path) -> FakeServable:
        self.loaded.append((name, version))
        if (path / "saved_model.pb").read_bytes() == b"broken":
            raise ValueError("not a SavedModel")
        return FakeServable(name, version, path)


def publish(base: Path, version: int, content: bytes = b"") -> Path:
    folder = base / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "saved_model.pb").write_bytes(content)
    return folder


def manager(
    entries: list[ModelEntry], events: list[tuple[str, str, int]] | None = None
) -> tuple[ModelManager, Loader]:
    loader = Loader()
    hook = None if events is None else lambda m, e, v, s: events.append((m, e, v))
    m = ModelManager(StaticSource(entries), loader=loader, on_event=hook)  # type: ignore[arg-type]
    return m, loader


def test_scan_ignores_folders_being_written(tmp_path: Path) -> None:
    publish(tmp_path, 1)
    publish(tmp_path, 12)
    (tmp_path / "13" / "variables").mkdir(parents=True)  # no saved_model.pb yet
    (tmp_path / ".tmp-5f3a").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "7").write_text("a file, not a folder")
    assert sorted(scan_versions(tmp_path)) == [1, 12]
    assert scan_versions(tmp_path / "missing") == {}


def test_new_version_replaces_old_one(tmp_path: Path) -> None:
    events: list[tuple[str, str, int]] = []
    m, loader = manager([ModelEntry("m", tmp_path)], events)
    publish(tmp_path, 1)
    m.poll_once()
    first = m.resolve("m")
    assert first.version == 1

    publish(tmp_path, 2)
    m.poll_once()
    assert m.resolve("m").version == 2
    assert m.available_versions("m") == [2]
    # the old version is closed, and no longer addressable, but a request holding it keeps it
    assert first.closed and first.version == 1
    with pytest.raises(ServingError) as err:
        m.resolve("m", version=1)
    assert err.value.code == Code.NOT_FOUND
    assert err.value.message == "Servable not found for request: Specific(m, 1)"
    assert [(v, s.state) for v, s in m.status("m")] == [(2, "AVAILABLE"), (1, "END")]
    assert events == [("m", "loaded", 1), ("m", "loaded", 2), ("m", "unloaded", 1)]
    m.poll_once()  # nothing changed: nothing happens
    assert loader.loaded == [("m", 1), ("m", 2)]


def test_failed_version_keeps_the_old_one_and_is_retried_only_when_changed(
    tmp_path: Path,
) -> None:
    m, loader = manager([ModelEntry("m", tmp_path)])
    publish(tmp_path, 1)
    m.poll_once()
    publish(tmp_path, 2, b"broken")
    m.poll_once()
    m.poll_once()
    assert m.resolve("m").version == 1  # availability preserved
    status = dict(m.status("m"))
    assert status[2].state == "END" and status[2].error_code == Code.UNKNOWN
    assert "not a SavedModel" in status[2].error_message
    assert loader.loaded.count(("m", 2)) == 1  # not retried while unchanged

    publish(tmp_path, 2, b"fixed!")  # a different saved_model.pb (size changes)
    m.poll_once()
    assert m.resolve("m").version == 2
    assert m.available_versions("m") == [2]


def test_deleted_version_is_unloaded_even_without_a_replacement(tmp_path: Path) -> None:
    m, _ = manager([ModelEntry("m", tmp_path)])
    folder = publish(tmp_path, 1)
    m.poll_once()
    (folder / "saved_model.pb").unlink()
    folder.rmdir()
    m.poll_once()
    assert m.available_versions("m") == []
    with pytest.raises(ServingError, match=r"Latest\(m\)"):
        m.resolve("m")


def test_specific_versions_and_labels(tmp_path: Path) -> None:
    policy = VersionPolicy("specific", versions=frozenset({1, 3}))
    m, _ = manager([ModelEntry("m", tmp_path, policy, {"stable": 1, "canary": 3})])
    for v in (1, 2, 3):
        publish(tmp_path, v)
    m.poll_once()
    assert m.available_versions("m") == [1, 3]
    assert m.resolve("m", label="stable").version == 1
    assert m.resolve("m", label="canary").version == 3
    assert m.resolve("m").version == 3
    with pytest.raises(ServingError) as err:
        m.resolve("m", label="beta")
    assert err.value.code == Code.INVALID_ARGUMENT
    assert err.value.message == "Unrecognized servable version label: beta"
    assert [v for v, _ in m.status("m", label="stable")] == [1]


def test_status_errors() -> None:
    m, _ = manager([])
    m.poll_once()
    with pytest.raises(ServingError) as err:
        m.status("")
    assert err.value.code == Code.INVALID_ARGUMENT
    with pytest.raises(ServingError) as err:
        m.status("nope")
    assert err.value.message == "Could not find any versions of model nope"


def test_model_removed_from_the_config_is_unloaded(tmp_path: Path) -> None:
    source = StaticSource([ModelEntry("a", tmp_path / "a"), ModelEntry("b", tmp_path / "b")])
    m = ModelManager(source, loader=Loader())  # type: ignore[arg-type]
    publish(tmp_path / "a", 1)
    publish(tmp_path / "b", 1)
    m.poll_once()
    b = m.resolve("b")
    m.set_source(StaticSource([ModelEntry("a", tmp_path / "a")]))
    assert m.model_names() == ["a"] and b.closed
    with pytest.raises(ServingError, match=r"Latest\(b\)"):
        m.resolve("b")


def test_bad_config_at_runtime_keeps_serving(tmp_path: Path) -> None:
    from attune.serving.repository import ConfigFileSource

    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" }} }}'
    )
    publish(tmp_path / "m", 4)
    m = ModelManager(ConfigFileSource(config), loader=Loader())  # type: ignore[arg-type]
    m.poll_once(raise_errors=True)
    config.write_text("model_config_list { config { nam")  # someone is editing the file
    m.poll_once()
    assert m.resolve("m").version == 4
