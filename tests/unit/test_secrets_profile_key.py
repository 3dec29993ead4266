"""The profile-encryption key of attune.secrets (traits are AES-256-GCM encrypted with it)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from attune.config import AttuneConfig, ConfigError, PathsConfig
from attune.secrets import profile_key


def _cfg(tmp_path: Path) -> AttuneConfig:
    return AttuneConfig(paths=PathsConfig(var_dir=tmp_path))


def test_profile_key_is_created_once_private_and_32_bytes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    key = profile_key(cfg)
    path = tmp_path / "secrets" / "profile.key"
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key.hex()  # stored as 64 hex digits
    assert profile_key(cfg) == key  # read back, not re-created


def test_a_bad_profile_key_file_is_reported(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    path = tmp_path / "secrets" / "profile.key"
    path.parent.mkdir(parents=True)
    path.write_text("zz" * 32)
    with pytest.raises(ConfigError, match="is not hex"):
        profile_key(cfg)
    path.write_text("ab" * 16)
    with pytest.raises(ConfigError, match="is 16 bytes; AES-256 needs 32"):
        profile_key(cfg)
