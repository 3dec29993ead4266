"""Secrets: the pseudonymization HMAC (published test vectors) and the write-key files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from attune.config import AttuneConfig, ConfigError, PathsConfig
from attune.secrets import (
    Pseudonymizer,
    WriteKeyIndex,
    create_write_key,
    ensure_write_key,
    load_write_keys,
    pseudonym_key,
)


@pytest.fixture
def tmp_cfg(tmp_path: Path) -> AttuneConfig:
    return AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var"))


def test_hmac_rfc4231_test_case_2() -> None:
    # RFC 4231 section 4.3: key "Jefe", data "what do ya want for nothing?",
    # HMAC-SHA-256 = 5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843.
    full = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert Pseudonymizer(b"Jefe", length=64)("what do ya want for nothing?") == full
    # The default pseudonym is the first 32 hex digits (128 bits).
    assert Pseudonymizer(b"Jefe")("what do ya want for nothing?") == full[:32]


def test_hmac_rfc4231_test_case_1() -> None:
    # RFC 4231 section 4.2: key = 20 bytes of 0x0b, data "Hi There".
    expected = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    assert Pseudonymizer(b"\x0b" * 20, length=64)("Hi There") == expected


def test_pseudonym_is_stable_and_cached() -> None:
    p = Pseudonymizer(b"Jefe")
    first = p("what do ya want for nothing?")
    assert p("what do ya want for nothing?") == first  # cache hit gives the same value
    assert p("someone else") != first


def test_pseudonym_key_created_private_and_reused(tmp_cfg: AttuneConfig) -> None:
    key = pseudonym_key(tmp_cfg)
    path = tmp_cfg.paths.resolve(tmp_cfg.privacy.pseudonym_key_file)
    assert len(key) == 64  # 32 random bytes as hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pseudonym_key(tmp_cfg) == key


def test_short_pseudonym_key_is_refused(tmp_cfg: AttuneConfig) -> None:
    path = tmp_cfg.paths.resolve(tmp_cfg.privacy.pseudonym_key_file)
    path.parent.mkdir(parents=True)
    path.write_text("too-short")
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        pseudonym_key(tmp_cfg)


def test_write_keys_create_load_and_look_up(tmp_cfg: AttuneConfig) -> None:
    assert load_write_keys(tmp_cfg) == {}
    web = create_write_key(tmp_cfg, "web")
    demo = ensure_write_key(tmp_cfg, "demo")
    assert ensure_write_key(tmp_cfg, "demo") == demo  # not rotated by a second call
    assert web.startswith("wk_") and web != demo
    path = tmp_cfg.paths.resolve(tmp_cfg.collector.write_keys_file)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    index = WriteKeyIndex(load_write_keys(tmp_cfg))
    assert index.source_for(web) == "web"
    assert index.source_for(demo) == "demo"
    assert index.source_for(web + "x") is None


def test_rotating_a_key_invalidates_the_old_one(tmp_cfg: AttuneConfig) -> None:
    old = create_write_key(tmp_cfg, "web")
    new = create_write_key(tmp_cfg, "web")
    index = WriteKeyIndex(load_write_keys(tmp_cfg))
    assert index.source_for(new) == "web"
    assert index.source_for(old) is None


def test_bad_source_name_is_refused(tmp_cfg: AttuneConfig) -> None:
    with pytest.raises(ConfigError, match="letters, digits"):
        create_write_key(tmp_cfg, "web app!")
