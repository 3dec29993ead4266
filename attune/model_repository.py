"""The model repository's format: versioned SavedModels, atomic publication, the served versions.

The models write the repository (:mod:`models.train` publishes, :mod:`models.repository`'s
promotion gate chooses what is served); the model server reads it
(:mod:`attune.serving.config`). Both go through this module, so the layout is written once.

Layout (the layout TF Serving watches, plus attune's bookkeeping)::

    <repository>/
      <name>/<version>/            SavedModel + attune_metadata.json, version = 1, 2, 3, ...
      <name>/.tmp-<random>/        a version being written (ignored by TF Serving)
      serving.json                 {name: {"version": v, ...}}: the version to serve per model
      models.config                TF Serving model config pinning the served versions
      promotions.jsonl             the promotion gate's decisions (:mod:`models.repository`)

A version is a folder named by an integer (:func:`version_folders`). It is written into a
temporary folder inside ``<name>/`` (same filesystem) and renamed to its number in one
``os.rename``, so a server never sees a half-written model; two concurrent publishers cannot take
the same number (renaming onto an existing folder fails, and the loser takes the next number).

Publishing is not serving: ``serving.json`` names the version to serve per model
(:meth:`ModelRepository.set_served`, written atomically, with ``models.config`` for the official
TF Serving server); a model without an entry is served at its latest version.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METADATA_FILE = "attune_metadata.json"
SERVING_FILE = "serving.json"
TF_SERVING_CONFIG = "models.config"


class RepositoryError(RuntimeError):
    """The repository is missing something or holds something unexpected."""


def utc_now() -> str:
    """The current time as the repository's files record it (ISO 8601, UTC, microseconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def version_folders(base_path: Path) -> dict[int, Path]:
    """The version folders of a model (``<name>/``): ``{version: folder}``.

    A version folder is a folder whose name is an integer; anything else (``.tmp-*`` folders
    being written, files) is not a version. Whether the folder holds a complete SavedModel is
    for the reader to check. A missing or unreadable ``base_path`` has no versions.
    """
    found: dict[int, Path] = {}
    try:
        children = list(base_path.iterdir())
    except OSError:
        return found
    for child in children:
        if child.name.isdigit() and child.is_dir():
            found.setdefault(int(child.name), child)
    return found


class ModelRepository:
    """A model repository at ``root`` (see the module docstring).

    ``serving_base_path`` is where the official TF Serving server sees ``root`` (in a container,
    say), written into ``models.config``; default: ``root``'s absolute path.
    """

    def __init__(self, root: Path, serving_base_path: str | None = None) -> None:
        self.root = Path(root)
        self.serving_base_path = serving_base_path

    # Versions ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        """The models with at least one published version, sorted (none when no repository)."""
        if not self.root.is_dir():
            return []
        return sorted(c.name for c in self.root.iterdir() if c.is_dir() and version_folders(c))

    def versions(self, name: str) -> list[int]:
        """The published versions of ``name``, ascending."""
        return sorted(version_folders(self.root / name))

    def path(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def metadata(self, name: str, version: int) -> dict[str, Any]:
        path = self.path(name, version) / METADATA_FILE
        if not path.exists():
            raise RepositoryError(f"{path} is missing: {name} version {version} is not published")
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded

    def publish(self, name: str, write: Callable[[Path], None], metadata: dict[str, Any]) -> int:
        """Write a new version of ``name`` with ``write(folder)`` and publish it atomically.

        ``metadata`` (data version, parameters, metrics, ...) is stored next to the SavedModel
        with ``name``, ``version`` and ``created_at`` added. Returns the new version number."""
        if not name or "/" in name or name.startswith("."):
            raise RepositoryError(f"invalid model name {name!r}: use letters, digits, - and _")
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{secrets.token_hex(6)}"
        try:
            write(tmp / "model")
            # TF Serving wants the SavedModel directly in the version folder.
            for child in (tmp / "model").iterdir():
                child.rename(tmp / child.name)
            (tmp / "model").rmdir()
            for _attempt in range(100):
                version = (max(self.versions(name), default=0)) + 1
                meta = dict(metadata, name=name, version=version, created_at=utc_now())
                (tmp / METADATA_FILE).write_text(
                    json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
                )
                try:
                    os.rename(tmp, folder / str(version))
                except OSError:
                    if (folder / str(version)).exists():
                        continue  # another publisher took this number; take the next
                    raise
                log.info("published %s version %d at %s", name, version, folder / str(version))
                return version
            raise RepositoryError(f"could not claim a version number for {name}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # Serving ----------------------------------------------------------------------------
    def serving(self) -> dict[str, Any]:
        """``serving.json``: ``{name: {"version": v, "path": ..., ...}}`` ({} when absent)."""
        path = self.root / SERVING_FILE
        if not path.exists():
            return {}
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded

    def served_version(self, name: str) -> int | None:
        entry = self.serving().get(name)
        return int(entry["version"]) if entry else None

    def set_served(self, name: str, version: int, details: dict[str, Any]) -> None:
        """Serve ``name`` at ``version`` from now on (``details`` are recorded with it)."""
        if version not in self.versions(name):
            raise RepositoryError(f"{name} has no published version {version}")
        self.root.mkdir(parents=True, exist_ok=True)
        serving = self.serving()
        serving[name] = {"version": version, "path": str(self.path(name, version)), **details}
        write_json_atomic(self.root / SERVING_FILE, serving)
        self._write_tf_serving_config(serving)

    def _write_tf_serving_config(self, serving: dict[str, Any]) -> None:
        """A TF Serving ``--model_config_file`` pinning each model to its served version, so the
        official server follows promotions (with ``--model_config_file_poll_wait_seconds``)."""
        base = self.serving_base_path or str(self.root.absolute())
        entries = []
        for name in sorted(serving):
            entries.append(
                "  config {\n"
                f'    name: "{name}"\n'
                f'    base_path: "{base.rstrip("/")}/{name}"\n'
                '    model_platform: "tensorflow"\n'
                "    model_version_policy { specific { versions: "
                f"{int(serving[name]['version'])} }} }}\n"
                "  }\n"
            )
        text = "model_config_list {\n" + "".join(entries) + "}\n"
        tmp = self.root / f".{TF_SERVING_CONFIG}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.root / TF_SERVING_CONFIG)
