"""Secrets must never reach a log: find every secret a run created and grep its files for them.

A run's secrets all live under ``<var>/secrets/`` (attune/secrets.py): the plain keys local
clients keep (``clients/*.key``), the pseudonym and profile keys (hex text), Airflow's admin
password and signing keys (JSON). The key stores themselves (``*_keys.yaml``) hold sha256 digests
only, which are not secrets. Everything else under ``<var>`` (logs, reports, run folders, Airflow's
task logs, the lake) is searched byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

SKIP_SUFFIXES = (".yaml", ".tmp")
MIN_LENGTH = 16  # shorter values would match by chance; every secret attune makes is longer


def run_secrets(var: Path) -> dict[str, str]:
    """``{where it came from: secret value}`` for every secret under ``var/secrets``."""
    found: dict[str, str] = {}
    root = var / "secrets"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.endswith(SKIP_SUFFIXES):
            continue
        name = str(path.relative_to(root))
        text = path.read_text().strip()
        if path.suffix == ".json":
            for key, value in json.loads(text).items():
                found[f"{name}:{key}"] = str(value)
        else:
            found[name] = text
    return {k: v for k, v in found.items() if len(v) >= MIN_LENGTH}


def file_leaks(var: Path, secrets: dict[str, str]) -> list[str]:
    """``"<file>: <secret name>"`` for each secret found in a file under ``var`` outside
    ``var/secrets``."""
    needles = {name: value.encode() for name, value in secrets.items()}
    out: list[str] = []
    for path in sorted(p for p in var.rglob("*") if p.is_file()):
        if (var / "secrets") in path.parents:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        out += [f"{path.relative_to(var)}: {n}" for n, v in needles.items() if v in data]
    return out


def text_leaks(label: str, text: str, secrets: dict[str, str]) -> list[str]:
    """``"<label>: <secret name>"`` for each secret in ``text`` (e.g. a captured console)."""
    return [f"{label}: {name}" for name, value in secrets.items() if value in text]
