"""``attune privacy export`` without services: the document put together from hand-made
readings, Redis values, the model-vocabulary search over a fake repository, the traits decrypted
(local Spark), the profile key never created, bad input, wiring."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from attune.cli import build_parser, main
from attune.config import AttuneConfig
from spark.erasure import ERASABLE
from spark.privacy_export import (
    ENCRYPTED_COLUMNS,
    EXPERIMENT_TABLES,
    ID_FORM,
    ProfileKeyError,
    Reading,
    assemble_export,
    export_profile_key,
    plain_records,
    read_models,
    redis_value,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

NOW = datetime(2026, 12, 6, 18, 0, 5, 123456, tzinfo=UTC)


def test_assemble_export_states_every_store() -> None:
    consent = {"key": "att:u:{p1}:consent", "type": "string", "ttl_ms": None, "value": {"a": 1}}
    event = {"event_id": "e1", "user_id": "p1"}
    version = {"version": 2, "served": True, "pseudonym": "p1"}
    user = {"user": "p1", "traits": {"city": "Lyon"}}
    doc = assemble_export(
        NOW,
        "p1",
        ["a1", "p1"],  # the user's own pseudonym is not a linked one
        Reading("redis://h:1/0", [consent]),
        {
            "bronze": Reading("/lake/bronze", [event]),
            "silver_events": Reading("/lake/silver/events", note="no table yet"),
            "silver_users": Reading("/lake/silver/users", [user], decrypted={"traits": "how"}),
            "gold_experiment_users": Reading("/lake/gold/experiment_users", error="boom"),
            "gold_experiment_teams": Reading("/lake/gold/experiment_teams", []),
        },
        {
            "retrieval": Reading("/m/retrieval", [version], note="v1, v2"),
            "ranking": Reading("/m/ranking", [], note="v1"),
        },
    )
    # Worked by hand: 1 Redis key, 1 bronze row, 1 silver_users row (its traits decrypted) and
    # 1 model version found; silver_events (no table), experiment_teams (0 rows) and ranking
    # (0 versions) hold nothing; experiment_users failed, so the export is not complete.
    # Groups are sorted by name.
    expected = {
        "format": "attune.privacy.export/1",
        "exported_at": "2026-12-06T18:00:05+00:00",
        "subject": {
            "id_form_searched": ID_FORM,
            "user_pseudonym": "p1",
            "linked_anonymous_pseudonyms": ["a1"],
        },
        "complete": False,
        "decrypted": ["delta/silver_users.traits"],
        "summary": {
            "found": {
                "redis": 1,
                "delta/bronze": 1,
                "delta/silver_users": 1,
                "models/retrieval": 1,
            },
            "nothing held": [
                "delta/silver_events",
                "experiments/gold_experiment_teams",
                "models/ranking",
            ],
            "not reachable": {"experiments/gold_experiment_users": "boom"},
        },
        "stores": {
            "redis": {"where": "redis://h:1/0", "state": "found", "records": 1, "data": [consent]},
            "delta": {
                "bronze": {
                    "where": "/lake/bronze",
                    "state": "found",
                    "records": 1,
                    "data": [event],
                },
                "silver_events": {
                    "where": "/lake/silver/events",
                    "state": "nothing held",
                    "records": 0,
                    "note": "no table yet",
                },
                "silver_users": {
                    "where": "/lake/silver/users",
                    "state": "found",
                    "records": 1,
                    "data": [user],
                    "decrypted": {"traits": "how"},
                },
            },
            "experiments": {
                "gold_experiment_teams": {
                    "where": "/lake/gold/experiment_teams",
                    "state": "nothing held",
                    "records": 0,
                },
                "gold_experiment_users": {
                    "where": "/lake/gold/experiment_users",
                    "state": "not reachable",
                    "records": None,
                    "reason": "boom",
                },
            },
            "models": {
                "ranking": {
                    "where": "/m/ranking",
                    "state": "nothing held",
                    "records": 0,
                    "note": "v1",
                },
                "retrieval": {
                    "where": "/m/retrieval",
                    "state": "found",
                    "records": 1,
                    "data": [version],
                    "note": "v1, v2",
                },
            },
        },
    }
    assert doc == expected
    assert json.loads(json.dumps(doc)) == expected  # plain JSON, nothing to convert


def test_complete_when_every_store_answered() -> None:
    doc = assemble_export(NOW, "p1", [], Reading("r"), {"bronze": Reading("b")}, {})
    assert doc["complete"] is True and doc["decrypted"] == []
    assert doc["summary"] == {
        "found": {},
        "nothing held": ["redis", "delta/bronze"],
        "not reachable": {},
    }


def test_experiment_tables_come_from_the_erasable_list() -> None:
    assert EXPERIMENT_TABLES == ("gold_experiment_users", "gold_experiment_teams")
    assert set(EXPERIMENT_TABLES) <= set(ERASABLE)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"analytics": true}', {"analytics": True}),  # consent: JSON object
        (b"12", "12"),  # a number stays the text Redis holds
        (b"plain", "plain"),
        (b"\xff\x00", {"base64": "/wA="}),  # 0xff 0x00 -> base64 "/wA="
    ],
)
def test_redis_value(raw: bytes, expected: object) -> None:
    assert redis_value(raw) == expected


def test_read_models_searches_every_version_graph(tmp_path: Path) -> None:
    p1, other = "a" * 32, "b" * 32
    for name, version, graph in [
        ("retrieval", 1, f"..{p1}..{other}"),
        ("retrieval", 2, f"..{other}.."),
        ("ranking", 1, f"..{other}.."),
    ]:
        folder = tmp_path / name / str(version)
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(graph.encode())
    (tmp_path / "serving.json").write_text(json.dumps({"retrieval": {"version": 1}}))
    readings = read_models(tmp_path, {p1})
    # p1 only in retrieval v1, which serving.json serves; ranking (no entry) serves its latest
    assert readings["retrieval"].records == [{"version": 1, "served": True, "pseudonym": p1}]
    assert readings["retrieval"].note == "user vocabularies of versions 1, 2 searched (served: 1)"
    assert readings["ranking"].records == [] and readings["ranking"].error is None


def test_read_models_without_a_repository(tmp_path: Path) -> None:
    readings = read_models(tmp_path / "missing", {"p"})
    assert readings == {"repository": Reading(str(tmp_path / "missing"), note="no published model")}


def test_cli_wiring_and_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["privacy", "export", "--user", "u1", "--out", "x.json"])
    assert (args.user, args.out) == ("u1", "x.json")
    assert main(["privacy", "export", "--user", "  "]) == 2
    assert "--user ID" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: --user is required
        build_parser().parse_args(["privacy", "export"])
    assert exit_info.value.code == 2


def test_out_must_not_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["privacy", "export", "--user", "u1", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# Traits: exported decrypted

KEY = bytes(range(32))


def _users(spark: SparkSession, rows: list[tuple[str, str | None]]) -> DataFrame:
    """A silver/users-like frame: the JSON given by hand, encrypted as the batch encrypts it
    (:func:`spark.silver.encrypt_traits`, the user as associated data)."""
    from pyspark.sql import functions as F

    from spark.silver import encrypt_traits, with_traits_key

    plain = spark.createDataFrame(rows, "user STRING, traits_json STRING")
    return with_traits_key(plain, KEY).select(
        "user",
        encrypt_traits(F.col("traits_json"), F.col("user")).alias("traits_encrypted"),
    )


def test_traits_are_exported_in_plain_text_and_say_so(spark: SparkSession) -> None:
    users = _users(spark, [("p1", '{"city":"Lyon","plan":"pro"}'), ("a1", None)])
    records, decrypted = plain_records(users, lambda: KEY, "/k")
    # the values given above, back in clear; a user without traits has none
    assert sorted(records, key=lambda r: r["user"]) == [
        {"user": "a1"},  # toJSON leaves out a null map
        {"user": "p1", "traits": {"city": "Lyon", "plan": "pro"}},
    ]
    assert decrypted == {
        "traits": "traits_encrypted, decrypted (AES-256-GCM with the profile key "
        "(privacy.profile_key_file))"
    }
    assert ENCRYPTED_COLUMNS == {"silver_users": "traits"}


def test_no_ciphertext_needs_no_key(spark: SparkSession) -> None:
    def no_key() -> bytes:
        raise AssertionError("the key must not be read when nothing is encrypted")

    users = _users(spark, [("a1", None)])
    assert plain_records(users, no_key, "/k") == ([{"user": "a1"}], {})
    bare = spark.createDataFrame([("p1", 3)], "user STRING, events INT")
    assert plain_records(bare, no_key, "/k") == ([{"user": "p1", "events": 3}], {})


def test_a_wrong_key_is_a_clear_error(spark: SparkSession) -> None:
    users = _users(spark, [("p1", '{"city":"Lyon"}')])
    with pytest.raises(ProfileKeyError, match=r"do not decrypt with the profile key in /k/p\.key"):
        plain_records(users, lambda: bytes(32), "/k/p.key")


def test_a_missing_profile_key_is_never_created(cfg: AttuneConfig, tmp_path: Path) -> None:
    here = cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"var_dir": tmp_path})})
    key_file = tmp_path / "secrets" / "profile.key"
    with pytest.raises(ProfileKeyError, match="is missing: restore it from its backup"):
        export_profile_key(here)
    assert not key_file.exists()
    key_file.parent.mkdir()
    key_file.write_text(KEY.hex())
    assert export_profile_key(here) == KEY
