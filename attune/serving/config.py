"""Which models the server serves: TF Serving's model config file, or the model repository.

The model config file is TensorFlow Serving's own format (a ``ModelServerConfig`` text proto,
parsed with the protos of tensorflow-serving-api), so one file drives both attune's server and the
official ``tensorflow/serving`` image (``--model_config_file``)::

    model_config_list {
      config {
        name: "retrieval"
        base_path: "/srv/models/retrieval"      # holds the version folders 1/, 2/, ...
        model_platform: "tensorflow"
        model_version_policy { latest { num_versions: 1 } }   # or: all {}, specific {versions: 3}
      }
      config {
        name: "ranking"
        base_path: "/srv/models/ranking"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 4 versions: 5 } }
        version_labels { key: "stable" value: 4 }
        version_labels { key: "canary" value: 5 }
      }
    }

A relative ``base_path`` is taken relative to the folder of the config file (TF Serving takes it
relative to its working directory: write absolute paths in files meant for both).

Without a config file the server serves the model repository (its format:
:mod:`attune.model_repository`): every model folder in it, each at the version the promotion gate
chose (``serving.json``), or at its latest version when nothing was promoted yet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from attune.config import ConfigError
from attune.model_repository import ModelRepository

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PolicyKind = Literal["latest", "all", "specific"]


@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's ``model_version_policy``: which of the versions on disk to serve."""

    kind: PolicyKind = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, on_disk: Iterable[int]) -> set[int]:
        """The versions to serve out of the (complete) versions found on disk."""
        present = sorted(set(on_disk), reverse=True)
        if self.kind == "all":
            return set(present)
        if self.kind == "specific":
            return {v for v in present if v in self.versions}
        return set(present[: self.num_versions])

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        if self.kind == "specific":
            return "specific " + ",".join(str(v) for v in sorted(self.versions))
        return "all"


@dataclass(frozen=True)
class ModelEntry:
    """One served model: its name, the folder of its versions, policy and labels."""

    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: Mapping[str, int] = field(default_factory=dict)


def _entries_from_proto(config: Any, origin: str, base_dir: Path) -> list[ModelEntry]:
    kind = config.WhichOneof("config")
    if kind is None:
        return []
    if kind != "model_config_list":
        raise ConfigError(
            f"{origin}: only model_config_list is supported (found {kind}); list the models as "
            "model_config_list { config { name: ... base_path: ... } }"
        )
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for i, model in enumerate(config.model_config_list.config):
        where = f"{origin}: config #{i + 1}"
        name = model.name
        if not name:
            raise ConfigError(f'{where} has no name; add name: "<model name>"')
        if not MODEL_NAME.match(name):
            raise ConfigError(
                f"{where}: invalid model name {name!r}; use letters, digits, '.', '-' and '_'"
            )
        if name in seen:
            raise ConfigError(f"{where}: model {name!r} is configured twice")
        seen.add(name)
        if not model.base_path:
            raise ConfigError(f"{where} ({name}) has no base_path; add the folder of its versions")
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(
                f"{where} ({name}): model_platform {model.model_platform!r} is not supported; "
                'this server loads TensorFlow SavedModels (model_platform: "tensorflow")'
            )
        base = Path(model.base_path)
        if not base.is_absolute():
            base = (base_dir / base).absolute()
        entries.append(
            ModelEntry(
                name=name,
                base_path=base,
                policy=_policy(model.model_version_policy, f"{where} ({name})"),
                labels=_labels(model.version_labels, f"{where} ({name})"),
            )
        )
    return entries


def _policy(proto: Any, where: str) -> VersionPolicy:
    choice = proto.WhichOneof("policy_choice")
    if choice is None:
        return VersionPolicy()  # TF Serving's default: the latest version
    if choice == "latest":
        # num_versions 0 (unset) means TF Serving's default of 1
        return VersionPolicy("latest", num_versions=max(1, int(proto.latest.num_versions)))
    if choice == "all":
        return VersionPolicy("all")
    versions = frozenset(int(v) for v in proto.specific.versions)
    if not versions:
        raise ConfigError(
            f"{where}: model_version_policy specific {{}} lists no versions; "
            "add versions: N (one line per version)"
        )
    if any(v < 0 for v in versions):
        raise ConfigError(f"{where}: versions must be >= 0, got {sorted(versions)}")
    return VersionPolicy("specific", versions=versions)


def _labels(proto_map: Any, where: str) -> dict[str, int]:
    labels: dict[str, int] = {}
    for label, version in proto_map.items():
        if not label or "/" in label or ":" in label:
            raise ConfigError(f"{where}: invalid version label {label!r}")
        labels[str(label)] = int(version)
    return labels


def parse_model_config(
    text: str, origin: str = "<model config>", base_dir: Path | None = None
) -> list[ModelEntry]:
    """Parse TF Serving model config text; relative base paths are taken under ``base_dir``."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(
            f"{origin}: not a valid TF Serving model config (ModelServerConfig text proto): {exc}"
        ) from None
    return _entries_from_proto(config, origin, (base_dir or Path.cwd()).absolute())


def entries_from_config_proto(config: Any, origin: str = "ReloadConfigRequest") -> list[ModelEntry]:
    """The entries of a ``ModelServerConfig`` message (a ``HandleReloadConfigRequest``)."""
    return _entries_from_proto(config, origin, Path.cwd())


def read_model_config_file(path: Path) -> list[ModelEntry]:
    """Read and validate a model config file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"model config file {path} does not exist (serving.model_config_file or "
            "--model-config-file)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read model config file {path}: {exc}") from None
    return parse_model_config(text, str(path), path.parent)


def render_model_config(entries: Iterable[ModelEntry]) -> str:
    """``entries`` as a model config file that TF Serving and attune both read."""
    out = ["model_config_list {"]
    for e in entries:
        out.append("  config {")
        out.append(f"    name: {_quote(e.name)}")
        out.append(f"    base_path: {_quote(str(e.base_path))}")
        out.append('    model_platform: "tensorflow"')
        p = e.policy
        if p.kind == "latest":
            policy = f"latest {{ num_versions: {p.num_versions} }}"
        elif p.kind == "all":
            policy = "all {}"
        else:
            policy = "specific { " + " ".join(f"versions: {v}" for v in sorted(p.versions)) + " }"
        out.append(f"    model_version_policy {{ {policy} }}")
        for label, version in sorted(e.labels.items()):
            out.append(f"    version_labels {{ key: {_quote(label)} value: {version} }}")
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def discover_models(root: Path) -> list[ModelEntry]:
    """Every model folder of the repository at ``root``, at its promoted or latest version.

    A model the promotion gate has promoted (``serving.json``) is served at exactly that version
    (so a version that failed the gate is never served); any other model folder at its latest
    version. Hidden folders (``.tmp-*``) are not models.
    """
    if not root.is_dir():
        return []
    try:
        promoted = ModelRepository(root).serving()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the promotions of {root}: {exc}") from None
    entries = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or not MODEL_NAME.match(child.name):
            continue
        pin = promoted.get(child.name)
        if isinstance(pin, dict) and isinstance(pin.get("version"), int):
            policy = VersionPolicy("specific", versions=frozenset({int(pin["version"])}))
        else:
            policy = VersionPolicy("latest", num_versions=1)
        entries.append(ModelEntry(child.name, child.absolute(), policy))
    return entries
