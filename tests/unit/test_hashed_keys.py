"""Read and admin keys hashed at rest (:mod:`attune.secrets`): the files hold only digests, an
old plain-text read-keys file is rewritten hashed and keeps working."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import yaml

from attune.api.keys import ReadKeys, create_read_key, load_read_keys
from attune.config import AttuneConfig, ConfigError, PathsConfig
from attune.secrets import (
    HashedKeys,
    KeyDigestIndex,
    WriteKeyIndex,
    admin_keys_path,
    admin_refusal,
    create_admin_key,
    create_write_key,
    ensure_admin_key,
    ensure_write_key,
    hash_plain_keys,
    key_digest,
    load_write_keys,
    presented_key,
)

# sha256("abc"), the FIPS 180-2 test vector
ABC = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.fixture
def cfg(tmp_path: Path) -> AttuneConfig:
    return AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var"))


def test_key_digest_is_sha256_hex() -> None:
    assert key_digest("abc") == ABC


def test_hash_plain_keys_leaves_digests_alone() -> None:
    digests, plain = hash_plain_keys({"old": "abc", "new": ABC})
    assert digests == {"old": ABC, "new": ABC}
    assert plain == ["old"]


def test_the_keys_files_never_hold_the_plain_keys(cfg: AttuneConfig) -> None:
    write = create_write_key(cfg, "ios")
    read = create_read_key(cfg, "web")
    admin = create_admin_key(cfg, "prometheus")
    write_file = cfg.paths.resolve(cfg.collector.write_keys_file)
    read_file = cfg.paths.resolve(cfg.api.read_keys_file)
    admin_file = admin_keys_path(cfg)
    for path, key, name in (
        (write_file, write, "ios"),
        (read_file, read, "web"),
        (admin_file, admin, "prometheus"),
    ):
        text = path.read_text()
        assert key not in text and key[3:] not in text  # neither the key nor its random part
        stored = yaml.safe_load(text)
        assert stored == {name: "sha256:" + hashlib.sha256(key.encode()).hexdigest()}
        assert path.stat().st_mode & 0o777 == 0o600
    assert (write[:3], read[:3], admin[:3]) == ("wk_", "rk_", "ak_")


def test_an_old_plain_read_keys_file_is_migrated(
    cfg: AttuneConfig, caplog: pytest.LogCaptureFixture
) -> None:
    path = cfg.paths.resolve(cfg.api.read_keys_file)
    path.parent.mkdir(parents=True)
    path.write_text("web: rk_old-web-key\nios: abc\n")  # the format before hashing
    with caplog.at_level(logging.WARNING, logger="attune.secrets"):
        keys = ReadKeys(cfg)
    # the keys of the old file still work
    assert keys.name_for("rk_old-web-key") == "web"
    assert keys.name_for("abc") == "ios"
    text = path.read_text()
    assert "rk_old-web-key" not in text and "abc\n" not in text
    assert yaml.safe_load(text)["ios"] == ABC
    assert path.stat().st_mode & 0o777 == 0o600
    assert "rewrote 2 plain-text read key(s)" in caplog.text and "ios, web" in caplog.text
    assert "rk_old-web-key" not in caplog.text  # names are logged, never keys
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="attune.secrets"):
        assert load_read_keys(cfg)["ios"] == ABC  # already hashed: no second rewrite
    assert caplog.text == ""


def test_a_broken_digest_names_the_key_and_the_fix(cfg: AttuneConfig) -> None:
    path = cfg.paths.resolve(cfg.api.read_keys_file)
    path.parent.mkdir(parents=True)
    path.write_text("web: 'sha256:1234'\n")
    with pytest.raises(ConfigError, match="web must be 'sha256:' and 64 hex digits"):
        load_read_keys(cfg)


def test_admin_keys_index_and_client_file(cfg: AttuneConfig) -> None:
    key = ensure_admin_key(cfg, "dashboard")
    assert ensure_admin_key(cfg, "dashboard") == key  # kept in its client file
    index = HashedKeys(admin_keys_path(cfg), "admin")
    assert index.name_for(key) == "dashboard"
    assert index.name_for("ak_wrong") is None
    with pytest.raises(ConfigError, match="admin key name 'a b'"):
        create_admin_key(cfg, "a b")


def test_key_digest_index() -> None:
    index = KeyDigestIndex({"ios": ABC})
    assert index.name_for("abc") == "ios"
    assert index.name_for("abd") is None
    assert len(index) == 1


def test_presented_key() -> None:
    assert presented_key({"x-admin-key": "k1"}, "x-admin-key") == "k1"
    assert presented_key({"authorization": "Bearer k2"}, "x-admin-key") == "k2"
    assert presented_key({"authorization": "Basic k3"}, "x-admin-key") is None
    assert presented_key({}, "x-admin-key") is None


def test_admin_refusal() -> None:
    admins = {"ak": "prometheus"}.get
    reads = {"rk": "web"}.get
    assert admin_refusal("ak", admins, reads, "read") is None
    assert admin_refusal(None, admins, reads, "read") == (
        401,
        "missing admin key: send 'Authorization: Bearer <admin key>' or 'X-Admin-Key'; "
        "create one with `attune keys create-admin NAME`",
    )
    status, message = admin_refusal("rk", admins, reads, "read") or (0, "")
    assert status == 403 and message.startswith("a read key cannot read admin endpoints")
    status, message = admin_refusal("nope", admins, reads, "read") or (0, "")
    assert status == 401 and message.startswith("unknown admin key")


def test_an_old_plain_write_keys_file_is_migrated(cfg: AttuneConfig) -> None:
    path = cfg.paths.resolve(cfg.collector.write_keys_file)
    path.parent.mkdir(parents=True)
    path.write_text("ios: abc\n")  # the format before hashing
    assert load_write_keys(cfg) == {"ios": ABC}
    assert WriteKeyIndex(load_write_keys(cfg)).source_for("abc") == "ios"
    assert "abc\n" not in path.read_text()
    # the demo keeps its own plain key beside the file, not in it
    demo = ensure_write_key(cfg, "demo")
    assert ensure_write_key(cfg, "demo") == demo and demo not in path.read_text()
    client = path.parent / "clients" / "write_keys.demo.key"
    assert client.read_text() == demo + "\n" and client.stat().st_mode & 0o777 == 0o600
