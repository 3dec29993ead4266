"""The training-data contract of the models, and loaders that honour it.

The batch layer's gold tables are what training reads in production:

``gold/training_examples`` (one row per user-item interaction,
:data:`attune.lake.INTERACTION_FIELDS`)
    ``user_id`` (pseudonymized), ``item_id``, ``timestamp`` (event time, UTC), ``event_type``
    (an :data:`attune.events.EVENT_TYPES` name), ``rating`` (explicit rating 0-10, null when the
    event has none), and the request context the speed layer also sees: ``device``,
    ``placement``, and the user's ``segment`` at that time (all nullable).

``gold/items`` (one row per catalog item, :data:`attune.lake.ITEM_FIELDS`)
    ``item_id``, ``title``, ``genres`` (list of category names), ``year``, ``price``
    (all but the id nullable).

Until those tables exist, and for evaluation on any interactions file, the loaders below turn a
MovieTweetings snapshot or any CSV (through a column mapping) into exactly the same columns, so
everything after loading is one code path. The contract itself lives in :mod:`attune.lake` (the
batch layer writes it, the models read it); :func:`interaction_schema` and :func:`item_schema`
give it as pyarrow schemas. Ids, labels and a title's year are cleaned and parsed by the rules of
:mod:`attune.features`, the ones the batch layer applies to the catalog.

Every loaded :class:`Dataset` carries a :class:`DataVersion` saying what was read: the Delta
table version, or the SHA-256 of the files, which ends up in the model's metadata.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from attune.events import EVENT_TYPES
from attune.features import RECENT_TYPES, TITLE_YEAR, clean_labels, clean_text
from attune.lake import INTERACTION_FIELDS, ITEM_FIELDS, ContractField

if TYPE_CHECKING:
    from attune.config import AttuneConfig


class DataError(ValueError):
    """Input data does not fit the contract; the message says what is wrong and how to fix it."""


_ARROW_TYPES: dict[str, pa.DataType] = {
    "STRING": pa.string(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "DOUBLE": pa.float64(),
    "INT": pa.int32(),
    "ARRAY<STRING>": pa.list_(pa.string()),
}
"""The contract's Spark SQL types as pyarrow types (what Spark's Arrow transfer produces)."""


def _arrow_schema(fields: Sequence[ContractField]) -> pa.Schema:
    return pa.schema([pa.field(f.name, _ARROW_TYPES[f.type], nullable=f.nullable) for f in fields])


INTERACTION_COLUMNS: tuple[str, ...] = tuple(f.name for f in INTERACTION_FIELDS)
ITEM_COLUMNS: tuple[str, ...] = tuple(f.name for f in ITEM_FIELDS)
CONTEXT_COLUMNS: tuple[str, ...] = ("device", "placement", "segment")

# What counts as an interaction is the online features' definition of a user's recent items, so
# that the sequences models train on are the lists the online store serves (one definition).
INTERACTION_EVENT_TYPES = frozenset(RECENT_TYPES)
# Interactions that are positives without a rating (a rating is positive above the threshold).
IMPLICIT_POSITIVE_EVENT_TYPES = INTERACTION_EVENT_TYPES - {"rating"}


def interaction_schema() -> pa.Schema:
    """The gold ``training_examples`` table as a pyarrow schema."""
    return _arrow_schema(INTERACTION_FIELDS)


def item_schema() -> pa.Schema:
    """The gold ``items`` table as a pyarrow schema."""
    return _arrow_schema(ITEM_FIELDS)


@dataclass(frozen=True)
class DataVersion:
    """What a training or evaluation run read, recorded in model metadata."""

    kind: Literal["delta", "file"]
    interactions: str
    items: str | None
    version: str
    rows: int
    users: int
    items_count: int
    min_time: str
    max_time: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Dataset:
    """Interactions and item metadata in the contract's columns, plus where they came from.

    ``interactions`` is sorted by time (ties keep file order). ``items`` has one row per item id,
    including every interacted item (with empty content when the item file does not know it).
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    version: DataVersion

    @property
    def catalog(self) -> np.ndarray:
        """All item ids, sorted: the candidates every model ranks."""
        return np.asarray(self.items["item_id"].to_numpy(dtype=object))

    def head(self, n: int) -> Dataset:
        """The first ``n`` interactions in time, with the same items (for quick runs)."""
        inter = self.interactions.iloc[:n].reset_index(drop=True)
        return Dataset(inter, self.items, _describe(self.version, inter, note=f"first {n} rows"))


# ----------------------------------------------------------------------------------------
# Positives


def positive_mask(interactions: pd.DataFrame, threshold: float) -> np.ndarray:
    """Which interactions are positives: a rating >= ``threshold``; or, for events without a
    rating, an interaction such as a view, click or purchase (impressions and dismissals
    never), unless the user rated that item: explicit feedback decides for its pair (a replayed
    rating arrives as an ``item_view`` plus a ``rating``; a 3/10 must not count as positive)."""
    rating = interactions["rating"].to_numpy(dtype=float, na_value=np.nan)
    etype = interactions["event_type"].astype(str)
    rated = ~np.isnan(rating)
    implicit = etype.isin(IMPLICIT_POSITIVE_EVENT_TYPES).to_numpy()
    if rated.any() and implicit.any():
        pair = interactions["user_id"].astype(str) + "\x1f" + interactions["item_id"].astype(str)
        rated_pairs = set(pair[rated])
        implicit &= ~pair.isin(rated_pairs).to_numpy()
    with np.errstate(invalid="ignore"):
        return np.where(rated, rating >= threshold, implicit)


def interaction_mask(interactions: pd.DataFrame) -> np.ndarray:
    """Rows that show interest in an item (any rating, view, click, purchase, ...), as opposed to
    impressions and rejections: what a user's history and recent-item sequence are made of
    (:data:`attune.features.RECENT_TYPES`)."""
    return np.asarray(interactions["event_type"].astype(str).isin(INTERACTION_EVENT_TYPES))


# ----------------------------------------------------------------------------------------
# Column mappings


INTERACTION_KEYS = {
    "user": "user_id",
    "item": "item_id",
    "rating": "rating",
    "timestamp": "timestamp",
    "event_type": "event_type",
    "device": "device",
    "placement": "placement",
    "segment": "segment",
}
ITEM_KEYS = {
    "item": "item_id",
    "title": "title",
    "genres": "genres",
    "year": "year",
    "price": "price",
}


def parse_column_mapping(text: str | None, allowed: Mapping[str, str]) -> dict[str, str]:
    """``"user=u,item=i"`` -> ``{"user_id": "u", "item_id": "i"}`` (contract name -> file column).

    Keys are the short names in ``allowed`` (``user``, ``item``, ...) or the contract names.
    """
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise DataError(
                f"column mapping entry {part!r} has no '=': write KEY=COLUMN, e.g. user=customer_id"
            )
        key, column = (s.strip() for s in part.split("=", 1))
        target = allowed.get(key) or (key if key in allowed.values() else None)
        if target is None:
            raise DataError(
                f"unknown column mapping key {key!r}: expected one of {', '.join(allowed)}"
            )
        if not column:
            raise DataError(f"column mapping {key}= names no column")
        out[target] = column
    return out


# ----------------------------------------------------------------------------------------
# Conforming frames to the contract


def _to_utc(values: pd.Series, origin: str) -> pd.Series:
    """Unix seconds, milliseconds or microseconds (by magnitude), or ISO 8601 text -> UTC."""
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
    else:
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all():
            top = float(numeric.abs().max()) if len(numeric) else 0.0
            unit = "s" if top < 1e11 else "ms" if top < 1e14 else "us"
            ts = pd.to_datetime(numeric, unit=unit, utc=True)
        else:
            try:
                ts = pd.to_datetime(values, utc=True, format="ISO8601")
            except (ValueError, TypeError) as exc:
                bad = values[numeric.isna()].iloc[0]
                raise DataError(
                    f"{origin}: cannot read timestamp {bad!r}: use Unix seconds (or ms) or "
                    "ISO 8601 text such as 2013-02-28T14:38:27Z"
                ) from exc
    return ts.astype("datetime64[us, UTC]")


def _string_column(values: pd.Series) -> pd.Series:
    out = values.astype(object).where(values.notna(), None)
    return out.map(clean_text).astype(object)


def conform_interactions(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """``frame`` (contract column names, possibly partial) checked and typed as the contract.

    Missing optional columns are added empty; ``event_type`` defaults to ``rating`` when a rating
    is present and ``item_view`` otherwise. Rows are sorted by time, ties keeping input order.
    """
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in frame.columns]
    if missing:
        raise DataError(
            f"{origin}: no {', '.join(missing)} column; map the file's columns with "
            "--columns user=COL,item=COL,rating=COL,timestamp=COL"
        )
    out = pd.DataFrame(index=frame.index)
    for col in ("user_id", "item_id"):
        out[col] = _string_column(frame[col])
        nulls = int(out[col].isna().sum())
        if nulls:
            raise DataError(f"{origin}: {nulls} rows have an empty {col}; drop or fill them")
    if frame["timestamp"].isna().any():
        raise DataError(
            f"{origin}: {int(frame['timestamp'].isna().sum())} rows have no timestamp; "
            "drop or fill them"
        )
    out["timestamp"] = _to_utc(frame["timestamp"], origin)
    if "rating" in frame.columns:
        rating = pd.to_numeric(frame["rating"], errors="coerce")
        bad = frame["rating"].notna() & rating.isna()
        if bad.any():
            raise DataError(
                f"{origin}: rating {frame['rating'][bad].iloc[0]!r} is not a number; "
                "ratings must be numeric (or empty)"
            )
        out["rating"] = rating.astype("float64")
    else:
        out["rating"] = np.nan
    if "event_type" in frame.columns:
        etype = _string_column(frame["event_type"])
        unknown = sorted(set(etype.dropna()) - set(EVENT_TYPES))
        if unknown:
            raise DataError(
                f"{origin}: unknown event type {unknown[0]!r}: expected one of "
                f"{', '.join(EVENT_TYPES)}"
            )
    else:
        etype = pd.Series(None, index=frame.index, dtype=object)
    default_type = np.where(out["rating"].notna(), "rating", "item_view")
    out["event_type"] = etype.where(etype.notna(), pd.Series(default_type, index=frame.index))
    for col in CONTEXT_COLUMNS:
        out[col] = _string_column(frame[col]) if col in frame.columns else None
    out = out[list(INTERACTION_COLUMNS)]
    order = np.lexsort((np.arange(len(out)), out["timestamp"].to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def _genres_column(values: pd.Series, sep: str) -> pd.Series:
    def norm(v: Any) -> tuple[str, ...]:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ()
        parts = list(v) if isinstance(v, (list, tuple, np.ndarray)) else str(v).split(sep)
        return clean_labels(parts)

    return values.map(norm).astype(object)


def conform_items(frame: pd.DataFrame, origin: str, genre_sep: str = "|") -> pd.DataFrame:
    """Item metadata checked and typed as the contract; the year is taken from a trailing
    ``(YYYY)`` in the title when there is no year column. One row per item id (first wins)."""
    if "item_id" not in frame.columns:
        raise DataError(
            f"{origin}: no item id column; map it with --item-columns item=COL,title=COL,..."
        )
    out = pd.DataFrame(index=frame.index)
    out["item_id"] = _string_column(frame["item_id"])
    if out["item_id"].isna().any():
        raise DataError(f"{origin}: {int(out['item_id'].isna().sum())} items have an empty id")
    out["title"] = _string_column(frame["title"]) if "title" in frame.columns else None
    out["genres"] = (
        _genres_column(frame["genres"], genre_sep)
        if "genres" in frame.columns
        else pd.Series([()] * len(frame), index=frame.index, dtype=object)
    )
    if "year" in frame.columns:
        year = pd.to_numeric(frame["year"], errors="coerce")
    elif "title" in frame.columns:
        year = pd.to_numeric(
            out["title"].map(lambda t: m.group(1) if t and (m := TITLE_YEAR.search(t)) else None),
            errors="coerce",
        )
    else:
        year = pd.Series(np.nan, index=frame.index)
    out["year"] = year.astype("Int32")
    out["price"] = (
        pd.to_numeric(frame["price"], errors="coerce").astype("float64")
        if "price" in frame.columns
        else np.nan
    )
    out = out.drop_duplicates("item_id", keep="first")
    return out[list(ITEM_COLUMNS)].reset_index(drop=True)


def complete_items(items: pd.DataFrame | None, interactions: pd.DataFrame) -> pd.DataFrame:
    """Items sorted by id, with a metadata-less row for every interacted item the file lacks."""
    known = items if items is not None else conform_items(pd.DataFrame({"item_id": []}), "-")
    extra = sorted(set(interactions["item_id"]) - set(known["item_id"]))
    if extra:
        add = pd.DataFrame(
            {
                "item_id": extra,
                "title": None,
                "genres": [()] * len(extra),
                "year": pd.array([pd.NA] * len(extra), dtype="Int32"),
                "price": np.nan,
            }
        )
        known = pd.concat([known, add], ignore_index=True) if len(known) else add
    known = known.astype({"year": "Int32", "price": "float64"})
    return known.sort_values("item_id", kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------
# Loaders


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(
    base: DataVersion | None,
    interactions: pd.DataFrame,
    *,
    kind: Literal["delta", "file"] | None = None,
    source: str | None = None,
    items: str | None = None,
    version: str | None = None,
    details: dict[str, Any] | None = None,
    note: str | None = None,
) -> DataVersion:
    ts = interactions["timestamp"]
    info = dict(base.details if base else {}, **(details or {}))
    if note:
        info["subset"] = note
    return DataVersion(
        kind=kind or (base.kind if base else "file"),
        interactions=source or (base.interactions if base else ""),
        items=items if items is not None else (base.items if base else None),
        version=version or (base.version if base else ""),
        rows=len(interactions),
        users=int(interactions["user_id"].nunique()),
        items_count=int(interactions["item_id"].nunique()),
        min_time=str(ts.min()) if len(ts) else "",
        max_time=str(ts.max()) if len(ts) else "",
        details=info,
    )


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} {p} does not exist")
    return p


def _read_text_table(path: Path, sep: str, names: Sequence[str] | None, what: str) -> pd.DataFrame:
    try:
        if len(sep) > 1:  # MovieTweetings' '::' needs the python engine
            return pd.read_csv(
                path,
                sep=re.escape(sep),
                engine="python",
                names=names,
                header=None,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding="utf-8",
            )
        return pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8",
            names=names,
            header=None if names else "infer",
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {what} {path}: {exc}") from exc


def load_movietweetings(
    ratings: str | Path, movies: str | Path | None = None, limit: int | None = None
) -> Dataset:
    """A MovieTweetings snapshot: ``ratings.dat`` (``user::item::rating::unix_ts``) and, when
    given, ``movies.dat`` (``item::title (year)::genre|genre``). ``ratings`` may be the folder."""
    rpath = _existing(ratings, "ratings file")
    if rpath.is_dir():
        movies = movies or (rpath / "movies.dat" if (rpath / "movies.dat").exists() else None)
        rpath = _existing(rpath / "ratings.dat", "ratings file")
    raw = _read_text_table(rpath, "::", ["user_id", "item_id", "rating", "timestamp"], "ratings")
    if raw.shape[1] != 4 or raw["timestamp"].isna().any():
        raise DataError(
            f"{rpath} is not in MovieTweetings format (user::item::rating::unix_ts); "
            "for other files use --format csv with --columns"
        )
    inter = conform_interactions(raw, str(rpath))
    items = None
    mpath = None
    if movies is not None:
        mpath = _existing(movies, "movies file")
        m = _read_text_table(mpath, "::", ["item_id", "title", "genres"], "movies")
        items = conform_items(m, str(mpath))
    return _finish(inter, items, rpath, mpath, limit, {"format": "movietweetings"})


def load_csv(
    interactions: str | Path,
    items: str | Path | None = None,
    columns: Mapping[str, str] | None = None,
    item_columns: Mapping[str, str] | None = None,
    sep: str = ",",
    genre_sep: str = "|",
    limit: int | None = None,
) -> Dataset:
    """Any delimited interactions file with a header, mapped to the contract by ``columns``
    (contract name -> file column, see :func:`parse_column_mapping`); unmapped contract columns
    are looked up under their own names. ``items`` is an optional item-metadata file."""
    rpath = _existing(interactions, "interactions file")
    raw = _read_text_table(rpath, sep, None, "interactions")
    frame = _rename(raw, columns or {}, INTERACTION_COLUMNS, str(rpath))
    inter = conform_interactions(frame, str(rpath))
    item_frame = None
    mpath = None
    if items is not None:
        mpath = _existing(items, "items file")
        m = _read_text_table(mpath, sep, None, "items")
        item_frame = conform_items(
            _rename(m, item_columns or {}, ITEM_COLUMNS, str(mpath)), str(mpath), genre_sep
        )
    return _finish(inter, item_frame, rpath, mpath, limit, {"format": "csv"})


def _rename(
    raw: pd.DataFrame, mapping: Mapping[str, str], contract: Sequence[str], origin: str
) -> pd.DataFrame:
    absent = [col for col in mapping.values() if col not in raw.columns]
    if absent:
        raise DataError(
            f"{origin}: mapped column {absent[0]!r} is not in the file; its columns are "
            f"{', '.join(map(str, raw.columns))}"
        )
    out = pd.DataFrame(index=raw.index)
    for name in contract:
        source = mapping.get(name, name)
        if source in raw.columns:
            out[name] = raw[source]
    return out


def _finish(
    inter: pd.DataFrame,
    items: pd.DataFrame | None,
    rpath: Path,
    mpath: Path | None,
    limit: int | None,
    details: dict[str, Any],
) -> Dataset:
    if limit is not None:
        inter = inter.iloc[:limit].reset_index(drop=True)
    if inter.empty:
        raise DataError(f"{rpath} holds no interactions")
    digest = _sha256(rpath)
    version = f"sha256:{digest[:16]}"
    info = dict(details, interactions_sha256=digest)
    if mpath is not None:
        info["items_sha256"] = _sha256(mpath)
        version += f"+{info['items_sha256'][:16]}"
    if limit is not None:
        info["subset"] = f"first {limit} rows"
    dv = _describe(
        None,
        inter,
        kind="file",
        source=str(rpath.absolute()),
        items=str(mpath.absolute()) if mpath else None,
        version=version,
        details=info,
    )
    return Dataset(inter, complete_items(items, inter), dv)


def is_delta_table(path: str | Path) -> bool:
    return "://" in str(path) or (Path(path) / "_delta_log").is_dir()


def load_delta(
    cfg: AttuneConfig,
    interactions: str,
    items: str | None = None,
    version: int | None = None,
    limit: int | None = None,
    say: Callable[[str], None] | None = None,
) -> Dataset:
    """The gold tables as Delta: ``interactions`` (training examples) and optional ``items``.

    Reads one pinned table version (the latest unless ``version`` is given) and records it, so
    the model metadata says exactly which snapshot it was trained on. ``say``: while it reads
    (a Spark session and a collect: no known total), a line every 10 s with the elapsed time
    and the running Spark tasks.
    """
    from attune.progress import Heartbeat, spark_tasks
    from attune.spark_session import build_spark_session

    session: list[Any] = []
    beat = Heartbeat(
        "reading the gold tables",
        say or (lambda _: None),
        every=10.0,
        detail=lambda: spark_tasks(session[0]) if session else "starting Spark",
    )
    with beat if say is not None else nullcontext():
        session.append(
            build_spark_session(
                cfg, "attune-models-load", {"spark.sql.execution.arrow.pyspark.enabled": "true"}
            )
        )
        return _load_delta(session[0], interactions, items, version, limit)


def _load_delta(
    spark: Any, interactions: str, items: str | None, version: int | None, limit: int | None
) -> Dataset:
    inter_version, inter_sdf = _read_delta(spark, interactions, version, "training examples")
    wanted = [c for c in INTERACTION_COLUMNS if c in inter_sdf.columns]
    inter_pdf = inter_sdf.select(*wanted).toPandas()
    inter = conform_interactions(inter_pdf, f"Delta table {interactions}@v{inter_version}")
    item_frame = None
    item_version = None
    if items is not None:
        item_version, item_sdf = _read_delta(spark, items, None, "items")
        wanted_items = [c for c in ITEM_COLUMNS if c in item_sdf.columns]
        item_frame = conform_items(
            item_sdf.select(*wanted_items).toPandas(), f"Delta table {items}@v{item_version}"
        )
    if limit is not None:
        inter = inter.iloc[:limit].reset_index(drop=True)
    if inter.empty:
        raise DataError(f"Delta table {interactions}@v{inter_version} holds no rows")
    label = f"delta:{inter_version}" + (f"+{item_version}" if item_version is not None else "")
    details: dict[str, Any] = {"format": "delta", "interactions_version": inter_version}
    if item_version is not None:
        details["items_version"] = item_version
    dv = _describe(
        None, inter, kind="delta", source=interactions, items=items, version=label, details=details
    )
    return Dataset(inter, complete_items(item_frame, inter), dv)


def _read_delta(spark: Any, path: str, version: int | None, what: str) -> tuple[int, Any]:
    if not is_delta_table(path):
        raise DataError(f"{what}: {path} is not a Delta table (no _delta_log folder)")
    from delta.tables import DeltaTable

    head = DeltaTable.forPath(spark, path).history(1).select("version").first()
    if head is None:
        raise DataError(f"{what}: {path} has no commits")
    latest = int(head[0])
    v = latest if version is None else version
    if v > latest or v < 0:
        raise DataError(f"{what}: {path} has versions 0..{latest}, not {v}")
    return v, spark.read.format("delta").option("versionAsOf", v).load(path)


def load_dataset(
    fmt: str,
    interactions: str | Path,
    items: str | Path | None = None,
    columns: str | Mapping[str, str] | None = None,
    item_columns: str | Mapping[str, str] | None = None,
    cfg: AttuneConfig | None = None,
    sep: str = ",",
    genre_sep: str = "|",
    limit: int | None = None,
) -> Dataset:
    """One entry point for every source: ``fmt`` is ``movietweetings``, ``csv`` or ``delta``."""
    cols = parse_column_mapping(columns, INTERACTION_KEYS) if isinstance(columns, str) else columns
    icols = (
        parse_column_mapping(item_columns, ITEM_KEYS)
        if isinstance(item_columns, str)
        else item_columns
    )
    if fmt == "movietweetings":
        if cols:
            raise DataError("--columns applies to --format csv; MovieTweetings has fixed columns")
        return load_movietweetings(interactions, items, limit=limit)
    if fmt == "csv":
        return load_csv(interactions, items, cols, icols, sep=sep, genre_sep=genre_sep, limit=limit)
    if fmt == "delta":
        if cfg is None:
            raise DataError("reading Delta tables needs the configuration (Spark session)")
        return load_delta(
            cfg, str(interactions), str(items) if items is not None else None, limit=limit
        )
    raise DataError(f"unknown data format {fmt!r}: expected movietweetings, csv or delta")


# ----------------------------------------------------------------------------------------
# What counts as relevant: defaults that fit the data

SMALL_SCALE_MAX = 5.0
"""Ratings whose largest value is at most this are on a small scale (1-5 stars, 0.5-5, 1-3):
people rate what they chose to watch or buy, so by default every rating there is relevant."""
WIDE_SCALE_SHARE = 0.7
"""On a wider scale (0-10, 1-10, 0-100) a rating is relevant from this share of the top value
up: 7 on MovieTweetings' 0-10 (the convention of the papers that use it)."""


@dataclass(frozen=True)
class Positives:
    """Which interactions are relevant (positives) in a dataset, and why.

    ``feedback`` is ``explicit`` (every interaction has a rating), ``implicit`` (none has: every
    interaction event counts, views, clicks, purchases; impressions and dismissals never) or
    ``mixed`` (ratings decide for rated pairs, the other interactions count as implicit).
    ``threshold`` applies to ratings only (``rating >= threshold``); ``source`` says whether it
    was given (``option``, ``config``) or chosen from the data (``auto``); ``reason`` is the
    sentence the CLI prints and the report records.
    """

    threshold: float
    source: Literal["option", "config", "auto"]
    feedback: Literal["explicit", "implicit", "mixed"]
    rating_min: float | None
    rating_max: float | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_positives(
    interactions: pd.DataFrame,
    threshold: float | None,
    source: Literal["option", "config"] = "option",
) -> Positives:
    """The positive rule for ``interactions``: ``threshold`` when given, else a default that fits
    the ratings found (pure; see :data:`SMALL_SCALE_MAX` and :data:`WIDE_SCALE_SHARE`):

    * no ratings (implicit events): every interaction event is relevant;
    * ratings only 0 and 1 (a like/dislike label): a 1 is relevant;
    * a small scale (largest rating <= 5, e.g. 1-5 stars): every rating is relevant;
    * a wider scale: ratings >= 0.7 x the largest rating (7 on a 0-10 scale).
    """
    rating = pd.to_numeric(interactions["rating"], errors="coerce").dropna()
    rated = len(rating)
    feedback: Literal["explicit", "implicit", "mixed"] = (
        "implicit" if rated == 0 else "explicit" if rated == len(interactions) else "mixed"
    )
    lo = float(rating.min()) if rated else None
    hi = float(rating.max()) if rated else None
    scale = f"ratings {lo:g}-{hi:g}" if rated else "no ratings"
    implicit_part = (
        "; events without a rating (views, clicks, purchases, ...) are relevant"
        if feedback == "mixed"
        else ""
    )
    if threshold is not None:
        if hi is not None and threshold > hi:
            raise DataError(
                f"positive threshold {threshold:g} is above every rating ({scale}): no rating "
                f"would be relevant; pass a --positive-threshold between {lo:g} and {hi:g}, or "
                "leave it out (models.positive_threshold: null) to choose from the data"
            )
        if feedback == "implicit":
            reason = (
                f"no ratings: every interaction event is relevant (the threshold {threshold:g} "
                "applies to ratings only)"
            )
        else:
            given = "--positive-threshold" if source == "option" else "models.positive_threshold"
            reason = f"{scale}: ratings >= {threshold:g} are relevant ({given}){implicit_part}"
        return Positives(float(threshold), source, feedback, lo, hi, reason)
    if lo is None or hi is None:
        return Positives(
            0.0,
            "auto",
            "implicit",
            None,
            None,
            "no ratings (implicit feedback): every interaction event is relevant "
            "(views, clicks, purchases, ...; impressions and dismissals never)",
        )
    values = set(rating.unique().tolist())
    if values == {0.0, 1.0}:
        chosen, why = 1.0, "a 0/1 label: a 1 is relevant, a 0 is not"
    elif hi <= SMALL_SCALE_MAX:
        chosen, why = lo, f"a small scale (top <= {SMALL_SCALE_MAX:g}): every rating is relevant"
    else:
        chosen = round(WIDE_SCALE_SHARE * hi, 2)
        why = (
            f"a wide scale: ratings >= {chosen:g} ({WIDE_SCALE_SHARE:g} x the top {hi:g}) "
            "are relevant"
        )
    reason = f"{scale}, {why}{implicit_part}; set --positive-threshold to change it"
    return Positives(chosen, "auto", feedback, lo, hi, reason)
