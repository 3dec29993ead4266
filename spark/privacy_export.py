"""The right of access: ``attune privacy export --user ID``, everything attune holds about a user.

A data-subject request needs a complete answer: every store that can hold the user's data
appears in the document with its state, so "nothing" is a statement, not an omission.

Whose data. The collector pseudonymizes ids before anything is stored (:mod:`attune.ingest`):
every store holds the HMAC of the app's user id (:class:`attune.secrets.Pseudonymizer`, key
``privacy.pseudonym_key_file``), never the raw id. The export takes the raw id the user knows,
pseudonymizes it with the same key and searches that pseudonym; the document says so
(``subject.id_form_searched``) and holds the pseudonym, not the raw id. Anonymous (visitor)
ids linked to the user, as erasure links them (:func:`spark.erasure.linked_requests`: seen on
the same events in bronze; and ``silver/users.anonymous_ids``), are searched too and listed.

Where. The stores, each with one of three states (``found`` with the records, ``nothing held``,
``not reachable`` with the reason):

``redis``
    Every key of the user's pseudonyms in the online store (features, recent items, session,
    precomputed recommendations, suppressions, message caps, consent), enumerated as erasure
    enumerates them (:func:`attune.online_store.user_key_names`: the fixed key names of
    :mod:`attune.keys` plus a SCAN of the user's own prefix only), with type, value and TTL.
``delta``
    Every lake table holding user ids: the tables erasure deletes from
    (:data:`spark.erasure.ERASABLE`, the single list), matched with the same conditions, every
    matching row in full. Columns the lake keeps encrypted are exported decrypted
    (:data:`ENCRYPTED_COLUMNS`: the profile ``traits`` of ``silver/users``, AES-256-GCM with
    ``privacy.profile_key_file``): the document is for the user, who is owed the values, not
    ciphertext. The store's section says so (``decrypted``) and the document lists every
    decrypted column (``decrypted``). Without the key (the file is missing, or does not decrypt
    the rows) that table is ``not reachable`` with the reason: a new key is never created for an
    export, it could not read what the old one encrypted.
``experiments``
    The experiment tables of that list (``gold/experiment_users``, ``gold/experiment_teams``),
    reported apart because a data subject asks about experiments separately.
``models``
    Whether the user's pseudonym is in the user vocabulary of a model in the repository
    (``models.repository_dir``). The vocabulary is compiled into each SavedModel's graph (the
    ``StringLookup`` constants in ``saved_model.pb``: :mod:`models.export` ships the
    preprocessing inside the model), not written beside it, so each version's graph is searched
    for the pseudonym's bytes, without loading TensorFlow. Every published version is checked
    (an old version can be rolled back to); the record says which one is served.

Exit codes: 0 the document is written and complete; 2 bad input (nothing written); 1 a store
could not be read (the document is still written, with that store ``not reachable`` and why).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attune.progress import progress_lines
from spark.erasure import ERASABLE

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from attune.config import AttuneConfig
    from spark.tables import Lake

FORMAT = "attune.privacy.export/1"
FOUND = "found"
NOTHING = "nothing held"
UNREACHABLE = "not reachable"
EXPERIMENT_TABLES = tuple(name for name in ERASABLE if name.startswith("gold_experiment_"))
"""The experiment tables among the erasable ones (reported under ``experiments``)."""
ID_FORM = (
    "pseudonym: the HMAC-SHA256 of the given user id with the collector's key "
    "(privacy.pseudonym_key_file), the only form in which attune stores ids; the raw id is "
    "stored nowhere, this document included"
)
ENCRYPTED_COLUMNS: dict[str, str] = {"silver_users": "traits"}
"""``{erasable table: column}``: the columns the lake stores encrypted (``traits`` as
``traits_encrypted``), which the export decrypts."""
DECRYPTION = "AES-256-GCM with the profile key (privacy.profile_key_file)"


# ----------------------------------------------------------------------------------------
# The document (pure)


@dataclass(frozen=True)
class Reading:
    """What one store (Redis, a Delta table, a model) holds about the subject.

    ``records``: what it holds (empty: nothing); ``error``: why it could not be read (the
    records are then unknown); ``note``: anything a reader should know (no table yet, the
    versions checked); ``decrypted``: ``{plain column: what it was decrypted from}`` for the
    columns stored encrypted and exported in plain text."""

    where: str
    records: Sequence[Any] = ()
    error: str | None = None
    note: str | None = None
    decrypted: Mapping[str, str] | None = None


def store_section(reading: Reading) -> dict[str, Any]:
    """One store in the document: its state, where it is, and what it holds."""
    section: dict[str, Any] = {"where": reading.where}
    if reading.error is not None:
        section.update(state=UNREACHABLE, records=None, reason=reading.error)
    else:
        section.update(state=FOUND if reading.records else NOTHING, records=len(reading.records))
        if reading.records:
            section["data"] = list(reading.records)
    if reading.note:
        section["note"] = reading.note
    if reading.decrypted:
        section["decrypted"] = dict(reading.decrypted)
    return section


def assemble_export(
    exported_at: datetime,
    pseudonym: str,
    linked: Iterable[str],
    redis: Reading,
    tables: Mapping[str, Reading],
    models: Mapping[str, Reading],
) -> dict[str, Any]:
    """The export document (see the module docstring).

    ``tables``: ``{erasable table: reading}``, split into ``delta`` and ``experiments``;
    ``models``: ``{model name: reading}``. ``summary`` lists each store by path
    (``group/name``) under its state; ``complete`` is false when a store was not reachable."""
    stores: dict[str, Any] = {
        "redis": store_section(redis),
        "delta": {
            n: store_section(r) for n, r in sorted(tables.items()) if n not in EXPERIMENT_TABLES
        },
        "experiments": {
            n: store_section(r) for n, r in sorted(tables.items()) if n in EXPERIMENT_TABLES
        },
        "models": {n: store_section(r) for n, r in sorted(models.items())},
    }
    flat = {"redis": stores["redis"]}
    for group in ("delta", "experiments", "models"):
        flat.update({f"{group}/{n}": s for n, s in stores[group].items()})
    return {
        "format": FORMAT,
        "exported_at": exported_at.isoformat(timespec="seconds"),
        "subject": {
            "id_form_searched": ID_FORM,
            "user_pseudonym": pseudonym,
            "linked_anonymous_pseudonyms": sorted(set(linked) - {pseudonym}),
        },
        "complete": all(s["state"] != UNREACHABLE for s in flat.values()),
        "decrypted": sorted(
            f"{p}.{column}" for p, s in flat.items() for column in s.get("decrypted") or {}
        ),
        "summary": {
            FOUND: {p: s["records"] for p, s in flat.items() if s["state"] == FOUND},
            NOTHING: [p for p, s in flat.items() if s["state"] == NOTHING],
            UNREACHABLE: {p: s["reason"] for p, s in flat.items() if s["state"] == UNREACHABLE},
        },
        "stores": stores,
    }


def redis_value(raw: bytes) -> Any:
    """A Redis string as JSON: parsed JSON when it is JSON (consent), else text, else (binary,
    a HyperLogLog) ``{"base64": ...}``."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        return text
    return parsed if isinstance(parsed, dict | list) else text


class ProfileKeyError(Exception):
    """The profile key cannot decrypt what the lake holds (missing, or not the right key)."""


def plain_records(
    rows: DataFrame, key: Callable[[], bytes], key_file: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The rows of a ``silver/users``-like frame as JSON objects, ``traits_encrypted`` replaced
    by ``traits`` in clear (:func:`spark.silver.decrypt_traits`: AES-256-GCM bound to the
    user), and ``{"traits": what it came from}`` when a row was decrypted (else ``{}``).

    ``key`` is called only when a row holds ciphertext. Raises :class:`ProfileKeyError`, naming
    ``key_file`` and the fix, when the key is missing or does not decrypt the rows."""
    from pyspark.sql import functions as F

    from spark.silver import decrypt_traits

    encrypted = "traits_encrypted"
    if encrypted not in rows.columns:
        return [json.loads(r) for r in rows.toJSON().collect()], {}
    if not rows.where(F.col(encrypted).isNotNull()).limit(1).count():
        return [json.loads(r) for r in rows.drop(encrypted).toJSON().collect()], {}
    plain = decrypt_traits(rows, key()).drop(encrypted)
    try:
        records = [json.loads(r) for r in plain.toJSON().collect()]
    except Exception as exc:  # Spark's aes_decrypt fails the query on a wrong key
        raise ProfileKeyError(
            f"the user's traits do not decrypt with the profile key in {key_file} "
            f"({reason_of(exc)[:160]}): it is not the key that encrypted them (restored from "
            "the wrong backup, or replaced) or a row was altered; restore the right key and "
            "export again"
        ) from None
    return records, {"traits": f"{encrypted}, decrypted ({DECRYPTION})"}


def export_profile_key(cfg: AttuneConfig) -> bytes:
    """The profile key, read but never created (:func:`attune.secrets.profile_key` creates a
    missing one, which could not decrypt what the lost one encrypted)."""
    from attune.secrets import profile_key

    path = cfg.paths.resolve(cfg.privacy.profile_key_file)
    if not path.exists():
        raise ProfileKeyError(
            f"the user's traits are stored encrypted and the profile key "
            f"(privacy.profile_key_file: {path}) is missing: restore it from its backup and "
            "export again (without it the traits cannot be read)"
        )
    return profile_key(cfg)


def reason_of(exc: BaseException) -> str:
    """``exc`` in one line, for a ``not reachable`` store."""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------------
# Reading the stores (I/O)


def read_redis(cfg: AttuneConfig, pseudonyms: Iterable[str]) -> Reading:
    """Every Redis key of ``pseudonyms``: ``{key, type, ttl_ms, value}`` (ttl_ms None: no
    expiry)."""
    import redis

    from attune.keys import Keys
    from attune.online_store import user_key_names
    from attune.redis_connect import connect

    where = f"redis://{cfg.redis.host}:{cfg.redis.port}/{cfg.redis.db}"
    keys = Keys.from_config(cfg)
    client = connect(
        cfg.redis,
        socket_connect_timeout=5,
        socket_timeout=30,
    )
    records: list[dict[str, Any]] = []
    try:
        for p in sorted(set(pseudonyms)):
            for name in sorted(user_key_names(client, p, keys)):
                kind = client.type(name).decode()
                if kind == "none":
                    continue
                value: Any
                if kind == "string":
                    value = redis_value(client.get(name) or b"")
                elif kind == "hash":
                    value = {
                        k.decode(errors="replace"): redis_value(v)
                        for k, v in sorted(client.hgetall(name).items())
                    }
                elif kind == "zset":
                    value = [
                        [m.decode(errors="replace"), s]
                        for m, s in client.zrange(name, 0, -1, withscores=True)
                    ]
                elif kind == "list":
                    value = [redis_value(v) for v in client.lrange(name, 0, -1)]
                elif kind == "set":
                    value = sorted(redis_value(v) for v in client.smembers(name))
                else:
                    value = f"({kind}: not exported)"
                ttl = int(client.pttl(name))
                records.append(
                    {"key": name, "type": kind, "ttl_ms": ttl if ttl >= 0 else None, "value": value}
                )
    except redis.RedisError as exc:
        return Reading(
            where,
            error=f"{reason_of(exc)}; check that Redis answers (`attune stack status`, "
            "redis.host/port) and export again",
        )
    finally:
        client.close()
    return Reading(where, records)


def linked_pseudonyms(spark: SparkSession, lake: Lake, pseudonym: str, now: datetime) -> set[str]:
    """Anonymous ids linked to the user, as erasure links them: seen on the user's events in
    bronze (:func:`spark.erasure.linked_requests`) or in ``silver/users.anonymous_ids``."""
    from pyspark.sql import functions as F

    from spark.erasure import ErasureRequest, linked_requests
    from spark.tables import is_table, read_table

    found: set[str] = set()
    if is_table(spark, lake.bronze):
        request = ErasureRequest("export", pseudonym, "user", now)
        found |= {r.pseudonym for r in linked_requests(read_table(spark, lake.bronze), [request])}
    if is_table(spark, lake.silver_users):
        rows = (
            read_table(spark, lake.silver_users)
            .where(F.col("user") == pseudonym)
            .select(F.explode("anonymous_ids"))
            .collect()
        )
        found |= {r[0] for r in rows if r[0]}
    return found - {pseudonym}


def read_tables(
    spark: SparkSession,
    lake: Lake,
    pseudonyms: Iterable[str],
    now: datetime,
    profile_key: Callable[[], bytes],
    key_file: str = "privacy.profile_key_file",
    say: Callable[[str], None] | None = None,
) -> dict[str, Reading]:
    """Every row of every erasable table that erasure of ``pseudonyms`` at ``now`` would
    delete (the same conditions, :data:`spark.erasure.ERASABLE`), as JSON objects; the
    columns of :data:`ENCRYPTED_COLUMNS` decrypted with ``profile_key()``. ``say``: progress
    lines (tables read, rate, ETA; one Spark query per table)."""
    from spark.erasure import REQUESTS_DDL, _sql_path
    from spark.tables import is_table

    paths = lake.tables()
    view = f"_export_{uuid.uuid4().hex[:8]}"
    spark.createDataFrame(
        [("export", p, "user", now) for p in sorted(set(pseudonyms))], REQUESTS_DDL
    ).createOrReplaceTempView(view)
    readings: dict[str, Reading] = {}
    try:
        tables = progress_lines(
            ERASABLE.items(), "privacy export", unit="tables", say=say or (lambda _: None)
        )
        for name, condition in tables:
            path = paths[name]
            try:
                if not is_table(spark, path):
                    readings[name] = Reading(path, note="no table yet")
                    continue
                rows = spark.sql(
                    f"SELECT t.* FROM {_sql_path(path)} AS t LEFT SEMI JOIN {view} AS r "
                    f"ON {condition}"
                )
                if name in ENCRYPTED_COLUMNS:
                    records, decrypted = plain_records(rows, profile_key, key_file)
                    readings[name] = Reading(path, records, decrypted=decrypted)
                else:
                    readings[name] = Reading(path, [json.loads(r) for r in rows.toJSON().collect()])
            except ProfileKeyError as exc:
                readings[name] = Reading(path, error=str(exc))
            except Exception as exc:  # one unreadable table must not hide the others
                readings[name] = Reading(
                    path,
                    error=f"{reason_of(exc)}; read the log above, fix the table and export again",
                )
    finally:
        spark.catalog.dropTempView(view)
    return readings


def versions_holding(
    repo: Any, name: str, pseudonyms: Iterable[str], *, missing_ok: bool = False
) -> dict[int, list[str]]:
    """``{version: the pseudonyms in its user vocabulary}`` for every published version of
    ``name`` in ``repo`` (a :class:`attune.model_repository.ModelRepository`): the vocabulary
    is a lookup table inside the graph, so each version's ``saved_model.pb`` is searched for
    the pseudonyms' bytes. Raises ``OSError`` when a graph cannot be read (a version without
    one holds nothing when ``missing_ok``)."""
    wanted = sorted(set(pseudonyms))
    held: dict[int, list[str]] = {}
    for v in repo.versions(name):
        graph_file = repo.path(name, v) / "saved_model.pb"
        skip = not wanted or (missing_ok and not graph_file.exists())
        graph = b"" if skip else graph_file.read_bytes()
        held[v] = [p for p in wanted if p.encode() in graph]
    return held


def read_models(root: Path, pseudonyms: Iterable[str]) -> dict[str, Reading]:
    """``{model: reading}``: the published versions whose user vocabulary holds one of
    ``pseudonyms`` (see the module docstring), ``{version, served, pseudonym}`` each."""
    from attune.model_repository import ModelRepository

    repo = ModelRepository(root)
    names = repo.names()
    if not names:
        return {"repository": Reading(str(root), note="no published model")}
    try:
        served = {n: int(e["version"]) for n, e in repo.serving().items() if "version" in e}
    except (OSError, ValueError) as exc:
        return {"repository": Reading(str(root), error=f"serving.json: {reason_of(exc)}")}
    readings: dict[str, Reading] = {}
    for name in names:
        versions = repo.versions(name)
        current = served.get(name, max(versions))
        try:
            held = versions_holding(repo, name, pseudonyms)
        except OSError as exc:
            readings[name] = Reading(str(root / name), error=reason_of(exc))
            continue
        records = [
            {"version": v, "served": v == current, "pseudonym": p}
            for v, found in held.items()
            for p in found
        ]
        readings[name] = Reading(
            str(root / name),
            records,
            note=f"user vocabularies of versions {', '.join(map(str, versions))} searched "
            f"(served: {current})",
        )
    return readings


def write_document(document: Mapping[str, Any], path: Path) -> None:
    """Write ``document`` to ``path``, readable by its owner only (it holds personal data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
# attune privacy export


def cmd_export(cfg: AttuneConfig, args: argparse.Namespace) -> int:
    """``attune privacy export --user ID [--out PATH]``: 0 written and complete, 2 bad input,
    1 a store could not be read (the document is written and says which)."""
    from attune.config import ConfigError
    from attune.secrets import Pseudonymizer, pseudonym_key
    from spark.command import batch_session, setup_logging
    from spark.tables import Lake

    user = (args.user or "").strip()
    if not user:
        raise ConfigError(
            "say whose data to export: --user ID, the app's user id as the user knows it"
        )
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.is_dir():
        raise ConfigError(f"--out {out} is a folder: give a file path, e.g. {out / 'export.json'}")
    setup_logging()
    pseudonym = Pseudonymizer(pseudonym_key(cfg))(user)
    now = datetime.now(UTC)  # when the export was made: a fact, not business logic
    lake = Lake.from_config(cfg)
    linked: set[str] = set()
    try:
        with batch_session(cfg, "attune-privacy-export") as spark:
            linked = linked_pseudonyms(spark, lake, pseudonym, now)
            tables = read_tables(
                spark,
                lake,
                {pseudonym, *linked},
                now,
                lambda: export_profile_key(cfg),
                str(cfg.paths.resolve(cfg.privacy.profile_key_file)),
                say=lambda m: print(m, file=sys.stderr, flush=True),
            )
    except Exception as exc:
        reason = f"Spark could not read the lake: {reason_of(exc)}; see the log above"
        paths = lake.tables()
        tables = {name: Reading(paths[name], error=reason) for name in ERASABLE}
    redis = read_redis(cfg, {pseudonym, *linked})
    models = read_models(cfg.paths.resolve(cfg.models.repository_dir), {pseudonym, *linked})
    document = assemble_export(now, pseudonym, linked, redis, tables, models)
    path = out or cfg.paths.resolve("reports/privacy") / (
        f"export-{pseudonym[:12]}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    )
    try:
        write_document(document, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}; give a writable --out PATH") from exc
    found = document["summary"][FOUND]
    print(
        f"privacy export: {sum(found.values())} record(s) in {len(found)} store(s) "
        f"({', '.join(sorted(found)) or 'none'}); {len(document['summary'][NOTHING])} "
        f"store(s) hold nothing; searched by pseudonym{' and ' if linked else ''}"
        f"{f'{len(linked)} linked anonymous id(s)' if linked else ''}"
    )
    print(path)
    missing = document["summary"][UNREACHABLE]
    if missing:
        print(
            "attune privacy export: INCOMPLETE: "
            + "; ".join(f"{p}: {r}" for p, r in sorted(missing.items()))
            + f". The document ({path}) says so; fix the store and export again",
            file=sys.stderr,
        )
        return 1
    return 0
