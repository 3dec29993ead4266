"""``attune privacy export`` on a real (tiny) lake and real Redis: one user's data, all of it,
and nothing of anyone else's.

Alice browses as visitor anon-1, logs in (the identify event links the two), browses, and is
in an experiment; Bob browses and is in the experiment too. Alice set her city in her profile:
silver/users holds it encrypted, as the batch writes it, and the export gives it back in clear.
Both have Redis keys; a fake model repository has Alice's pseudonym in one version's graph. The
other erasable tables do not exist and must appear as holding nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from attune.config import AttuneConfig
from attune.keys import Keys
from attune.secrets import Pseudonymizer, profile_key, pseudonym_key
from spark.privacy_export import cmd_export
from spark.silver import cleanse_events, users_dimension
from spark.tables import Lake
from tests.integration.spark.conftest import redis_client
from tests.unit.spark.fixtures import at, bronze_frame, ev, write_bronze

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def lakeside(
    world: AttuneConfig, spark: SparkSession, tmp_path_factory: Any
) -> tuple[AttuneConfig, dict[str, str]]:
    var = tmp_path_factory.mktemp("export-var")
    cfg = world.model_copy(
        update={
            "paths": world.paths.model_copy(update={"var_dir": var}),
            "spark": world.spark.model_copy(
                update={"jars_dir": world.paths.resolve(world.spark.jars_dir)}
            ),
        }
    )
    pseudonymize = Pseudonymizer(pseudonym_key(cfg))
    ids = {n: pseudonymize(n) for n in ("alice", "anon-1", "bob")}
    a, n, b = ids["alice"], ids["anon-1"], ids["bob"]
    lake = Lake.from_config(cfg)
    write_bronze(
        spark,
        lake.bronze,
        [
            ev("e1", "item_view", None, at(1, 9), ["i1"], anonymous=n),  # before logging in
            ev("e2", "identify", a, at(1, 10), anonymous=n),  # links anon-1 to alice
            ev("e3", "item_view", a, at(1, 11), ["i2"]),
            ev("e4", "item_view", b, at(1, 12), ["i1"]),
        ],
    )
    # silver/users as the batch builds it: alice's traits encrypted with the profile key
    profile = [
        ev("e2", "identify", a, at(1, 10), anonymous=n),
        ev("e5", "profile_update", a, at(1, 13), traits={"city": "Lyon"}),
        ev("e4", "item_view", b, at(1, 12), ["i1"]),
    ]
    events = cleanse_events(bronze_frame(spark, profile), None, 100, 100).events
    users_dimension(events, profile_key(cfg)).write.format("delta").save(lake.silver_users)
    spark.createDataFrame(
        [("exp1", "a", a, at(1, 11)), ("exp1", "b", b, at(1, 12))],
        "experiment STRING, variant STRING, user STRING, first_exposure TIMESTAMP",
    ).write.format("delta").save(lake.gold_experiment_users)
    keys = Keys.from_config(cfg)
    client = redis_client(cfg)
    try:
        client.set(keys.consent(a), json.dumps({"analytics": True}))
        client.zadd(keys.user_key(a, "recent"), {"i2": 1000})
        client.zadd(keys.message_cap(a, "promo-7"), {"m1": 5})  # found by the prefix SCAN
        client.set(keys.consent(b), json.dumps({"analytics": False}))
        client.zadd(keys.user_key(b, "recent"), {"i1": 2000})
    finally:
        client.close()
    repo = cfg.paths.resolve(cfg.models.repository_dir)
    for version, graph in [(1, f"vocab {b}"), (2, f"vocab {a} {b}")]:
        folder = repo / "retrieval" / str(version)
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(graph.encode())
    return cfg, ids


def test_export_holds_the_user_and_nobody_else(
    lakeside: tuple[AttuneConfig, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, ids = lakeside
    out = cfg.paths.var_dir / "alice.json"
    assert cmd_export(cfg, argparse.Namespace(user="alice", out=str(out))) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    text = out.read_text()
    doc = json.loads(text)
    a, n, b = ids["alice"], ids["anon-1"], ids["bob"]
    assert doc["complete"] is True
    assert doc["subject"]["user_pseudonym"] == a
    assert doc["subject"]["linked_anonymous_pseudonyms"] == [n]
    assert b not in text and "alice" not in text  # no one else's data; no raw id either
    stores = doc["stores"]
    # bronze: e1 (anon-1), e2 (both), e3 (alice); not bob's e4
    bronze = stores["delta"]["bronze"]
    assert bronze["state"] == "found"
    assert sorted(r["event_id"] for r in bronze["data"]) == ["e1", "e2", "e3"]
    # silver/users: alice's row (linked to anon-1 by e2), her traits in clear and said so
    users = stores["delta"]["silver_users"]
    assert [(r["user"], r["anonymous_ids"]) for r in users["data"]] == [(a, [n])]
    assert users["data"][0]["traits"] == {"city": "Lyon"}
    assert "traits_encrypted" not in users["data"][0]
    assert users["decrypted"]["traits"].startswith("traits_encrypted, decrypted (AES-256-GCM")
    assert doc["decrypted"] == ["delta/silver_users.traits"]
    assert stores["experiments"]["gold_experiment_users"]["records"] == 1
    assert stores["experiments"]["gold_experiment_users"]["data"][0]["variant"] == "a"
    assert stores["experiments"]["gold_experiment_teams"]["state"] == "nothing held"
    assert stores["delta"]["silver_events"] == {
        "where": Lake.from_config(cfg).silver_events,
        "state": "nothing held",
        "records": 0,
        "note": "no table yet",
    }
    keys = Keys.from_config(cfg)
    redis = {r["key"]: r for r in stores["redis"]["data"]}
    assert sorted(redis) == sorted(
        [keys.consent(a), keys.user_key(a, "recent"), keys.message_cap(a, "promo-7")]
    )
    assert redis[keys.consent(a)]["value"] == {"analytics": True}
    assert redis[keys.user_key(a, "recent")]["value"] == [["i2", 1000.0]]
    # alice is in version 2 only; no serving.json, so the latest (2) is the served one
    assert stores["models"]["retrieval"]["data"] == [{"version": 2, "served": True, "pseudonym": a}]
    assert out.stat().st_mode & 0o777 == 0o600


def test_export_says_which_store_it_could_not_read(
    lakeside: tuple[AttuneConfig, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, ids = lakeside
    closed = cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"port": 1})})
    assert cmd_export(closed, argparse.Namespace(user="bob", out=None)) == 1
    captured = capsys.readouterr()
    assert "INCOMPLETE: redis:" in captured.err
    path = Path(captured.out.strip().splitlines()[-1])
    assert path.parent == cfg.paths.resolve("reports/privacy")
    doc = json.loads(path.read_text())
    assert doc["complete"] is False
    assert doc["stores"]["redis"]["state"] == "not reachable"
    assert "attune stack status" in doc["stores"]["redis"]["reason"]
    # the lake was still read: bob's one event
    assert [r["event_id"] for r in doc["stores"]["delta"]["bronze"]["data"]] == ["e4"]
    assert doc["subject"]["user_pseudonym"] == ids["bob"]


def test_export_without_the_profile_key_says_so_and_creates_none(
    lakeside: tuple[AttuneConfig, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _ = lakeside
    key_file = cfg.paths.resolve(cfg.privacy.profile_key_file)
    kept = key_file.with_name("profile.key.kept")
    key_file.rename(kept)
    try:
        out = cfg.paths.var_dir / "alice-no-key.json"
        assert cmd_export(cfg, argparse.Namespace(user="alice", out=str(out))) == 1
        err = capsys.readouterr().err
        assert "INCOMPLETE: delta/silver_users: the user's traits are stored encrypted" in err
        assert f"(privacy.profile_key_file: {key_file}) is missing" in err
        doc = json.loads(out.read_text())
        assert doc["stores"]["delta"]["silver_users"]["state"] == "not reachable"
        assert doc["decrypted"] == []
        # the other stores were still read
        assert doc["stores"]["delta"]["bronze"]["records"] == 3
        assert not key_file.exists()  # no new key: it could not decrypt the old traits
    finally:
        kept.rename(key_file)
