"""The model repository: versioned SavedModels, atomic publication and the promotion gate.

Layout (the layout TF Serving watches, plus attune's bookkeeping)::

    <repository>/
      <name>/<version>/            SavedModel + attune_metadata.json, version = 1, 2, 3, ...
      <name>/.tmp-<random>/        a version being written (ignored by TF Serving)
      serving.json                 {name: {"version": v, ...}}: the version to serve per model
      promotions.jsonl             one line per gate decision, promoted or not, with the numbers
      models.config                TF Serving model config pinning the served versions

A version is written into a temporary folder inside ``<name>/`` (same filesystem) and renamed to
its number in one ``os.rename``, so a server never sees a half-written model; two concurrent
publishers cannot take the same number (renaming onto an existing folder fails, and the loser
takes the next number).

Publishing is not serving: a version becomes the served one only through :func:`gate`, which
promotes it if it beats the served version on the configured metric by the configured margin
(relative: ``new >= served * (1 + margin)``; the first version of a model is promoted as there is
nothing to beat). Every decision is logged and appended to ``promotions.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METADATA_FILE = "attune_metadata.json"
SERVING_FILE = "serving.json"
PROMOTIONS_FILE = "promotions.jsonl"
TF_SERVING_CONFIG = "models.config"


class RepositoryError(RuntimeError):
    """The repository is missing something or holds something unexpected."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class Decision:
    """One promotion-gate decision."""

    model: str
    version: int
    promoted: bool
    metric: str
    candidate: float | None
    served_version: int | None
    served: float | None
    margin: float
    reason: str
    decided_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelRepository:
    def __init__(self, root: Path, serving_base_path: str | None = None) -> None:
        self.root = Path(root)
        self.serving_base_path = serving_base_path

    # Versions ---------------------------------------------------------------------------
    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

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
                meta = dict(metadata, name=name, version=version, created_at=_now())
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
        path = self.root / SERVING_FILE
        if not path.exists():
            return {}
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded

    def served_version(self, name: str) -> int | None:
        entry = self.serving().get(name)
        return int(entry["version"]) if entry else None

    def set_served(self, name: str, version: int, details: dict[str, Any]) -> None:
        if version not in self.versions(name):
            raise RepositoryError(f"{name} has no published version {version}")
        self.root.mkdir(parents=True, exist_ok=True)
        serving = self.serving()
        serving[name] = {"version": version, "path": str(self.path(name, version)), **details}
        _write_json_atomic(self.root / SERVING_FILE, serving)
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

    def promotions(self) -> list[dict[str, Any]]:
        path = self.root / PROMOTIONS_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def record(self, decision: Decision) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / PROMOTIONS_FILE).open("a") as fh:
            fh.write(json.dumps(decision.as_dict(), sort_keys=True) + "\n")


def decide(candidate: float | None, served: float | None, margin: float) -> tuple[bool, str]:
    """The gate rule alone: promote when there is no served value, or when
    ``candidate >= served * (1 + margin)`` and ``candidate > served``."""
    if candidate is None or candidate != candidate:  # NaN: nothing was measured
        return False, "the candidate has no value for the metric"
    if served is None or served != served:
        return True, "no served version to beat"
    needed = served * (1.0 + margin)
    if candidate > served and candidate >= needed:
        return True, f"{candidate:.6f} >= {needed:.6f} (served {served:.6f} x (1 + {margin}))"
    return False, f"{candidate:.6f} < {needed:.6f} needed (served {served:.6f} x (1 + {margin}))"


def gate(
    repo: ModelRepository,
    name: str,
    version: int,
    metric: str,
    margin: float,
    candidate_value: float | None,
    served_value: Callable[[int], float | None],
) -> Decision:
    """Promote ``name`` ``version`` if it beats the served version; log and record the decision.

    ``served_value(v)`` measures the served version ``v`` on the same data the candidate was
    measured on (called only when a version is served)."""
    served_v = repo.served_version(name)
    served = served_value(served_v) if served_v is not None and served_v != version else None
    if served_v == version:
        promoted, reason = False, "this version is already served"
    else:
        promoted, reason = decide(candidate_value, served, margin)
    decision = Decision(
        model=name,
        version=version,
        promoted=promoted,
        metric=metric,
        candidate=candidate_value,
        served_version=served_v,
        served=served,
        margin=margin,
        reason=reason,
        decided_at=_now(),
    )
    if promoted:
        repo.set_served(
            name, version, {"metric": metric, "value": candidate_value, "promoted_at": _now()}
        )
    repo.record(decision)
    log.info(
        "promotion gate %s v%d: %s (%s: candidate %s, served v%s %s): %s",
        name,
        version,
        "PROMOTED" if promoted else "kept served version",
        metric,
        candidate_value,
        served_v,
        served,
        reason,
    )
    return decision
