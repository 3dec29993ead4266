"""The model config file (TF Serving's format) and repository discovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attune.config import ConfigError
from attune.serving.config import (
    ModelEntry,
    VersionPolicy,
    discover_models,
    parse_model_config,
    read_model_config_file,
    render_model_config,
)

CONFIG = """
model_config_list {
  config {
    name: "retrieval"
    base_path: "/srv/models/retrieval"
    model_platform: "tensorflow"
  }
  config {
    name: "ranking"
    base_path: "ranking"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 4 versions: 5 } }
    version_labels { key: "stable" value: 4 }
    version_labels { key: "canary" value: 5 }
  }
  config {
    name: "two_latest"
    base_path: "/m/two"
    model_version_policy { latest { num_versions: 2 } }
  }
  config { name: "every" base_path: "/m/every" model_version_policy { all {} } }
}
"""


def test_parse_policies_labels_and_paths(tmp_path: Path) -> None:
    entries = {e.name: e for e in parse_model_config(CONFIG, "test", tmp_path)}
    assert list(entries) == ["retrieval", "ranking", "two_latest", "every"]
    assert entries["retrieval"].base_path == Path("/srv/models/retrieval")
    assert entries["retrieval"].policy == VersionPolicy("latest", 1)  # TF Serving's default
    # a relative base path is taken under the config file's folder
    assert entries["ranking"].base_path == tmp_path / "ranking"
    assert entries["ranking"].policy == VersionPolicy("specific", versions=frozenset({4, 5}))
    assert dict(entries["ranking"].labels) == {"stable": 4, "canary": 5}
    assert entries["two_latest"].policy == VersionPolicy("latest", 2)
    assert entries["every"].policy.kind == "all"


def test_policies_select_versions() -> None:
    on_disk = [1, 3, 7, 5]
    assert VersionPolicy("latest", 1).select(on_disk) == {7}
    assert VersionPolicy("latest", 2).select(on_disk) == {7, 5}
    assert VersionPolicy("all").select(on_disk) == {1, 3, 5, 7}
    # a specific version that is not on disk (yet) is simply not selected
    assert VersionPolicy("specific", versions=frozenset({3, 4})).select(on_disk) == {3}
    assert VersionPolicy("latest", 1).select([]) == set()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('model_config_list { config { nam: "a" } }', 'has no field named "nam"'),
        ('model_config_list { config { base_path: "/a" } }', "has no name"),
        ('model_config_list { config { name: "a" } }', "has no base_path"),
        (
            'model_config_list { config { name: "a" base_path: "/a" } '
            'config { name: "a" base_path: "/b" } }',
            "configured twice",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/a" model_platform: "onnx" } }',
            "model_platform 'onnx' is not supported",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/a" '
            "model_version_policy { specific { } } } }",
            "lists no versions",
        ),
        ('model_config_list { config { name: "a/b" base_path: "/a" } }', "invalid model name"),
        ('custom_model_config { type_url: "x" }', "only model_config_list is supported"),
    ],
)
def test_bad_config_says_what_and_where(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_model_config(text, "models.config", Path("/"))
    assert message in str(err.value)
    assert str(err.value).startswith("models.config")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_model_config_file(tmp_path / "nope.config")


def test_render_reads_back_the_same(tmp_path: Path) -> None:
    entries = [
        ModelEntry("a", Path("/x/a")),
        ModelEntry("b", Path('/x/"b"'), VersionPolicy("specific", versions=frozenset({2, 1}))),
        ModelEntry("c", Path("/x/c"), VersionPolicy("all"), {"stable": 3}),
        ModelEntry("d", Path("/x/d"), VersionPolicy("latest", 3)),
    ]
    text = render_model_config(entries)
    assert "model_version_policy { specific { versions: 1 versions: 2 } }" in text
    assert parse_model_config(text, "rendered", tmp_path) == entries


def _version(root: Path, name: str, version: int | str) -> None:
    folder = root / name / str(version)
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")


def test_discovery_serves_promoted_else_latest(tmp_path: Path) -> None:
    for name, version in (("retrieval", 1), ("retrieval", 2), ("ranking", 1), ("ranking", 3)):
        _version(tmp_path, name, version)
    (tmp_path / ".tmp-0a1b").mkdir()  # a version being published is not a model
    (tmp_path / "serving.json").write_text(json.dumps({"retrieval": {"version": 1}}))
    entries = {e.name: e for e in discover_models(tmp_path)}
    assert sorted(entries) == ["ranking", "retrieval"]
    # retrieval 2 did not pass the promotion gate: version 1 stays served
    assert entries["retrieval"].policy == VersionPolicy("specific", versions=frozenset({1}))
    assert entries["ranking"].policy == VersionPolicy("latest", 1)
    assert entries["ranking"].base_path == tmp_path / "ranking"
    assert discover_models(tmp_path / "missing") == []


def test_the_promotion_gates_config_file_is_read_as_written(tmp_path: Path) -> None:
    from attune.model_repository import ModelRepository

    _version(tmp_path, "ranking", 1)
    _version(tmp_path, "ranking", 2)
    ModelRepository(tmp_path, serving_base_path="/models").set_served("ranking", 2, {})
    (entry,) = read_model_config_file(tmp_path / "models.config")
    # the file the official image reads: container paths, the promoted version pinned
    assert entry == ModelEntry(
        "ranking", Path("/models/ranking"), VersionPolicy("specific", versions=frozenset({2}))
    )
