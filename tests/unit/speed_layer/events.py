"""Hand-made stored events for the speed layer's tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from attune.events import StoredEvent, spark_schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

T0 = datetime(2013, 3, 1, 12, 0, tzinfo=UTC)
"""12:00 UTC: a multiple of every slice length the tests use (5 min, 2 h)."""
T0_MS = 1362139200000  # 2013-03-01T12:00:00Z in epoch ms (date -d ... +%s, times 1000)


def minutes(m: float) -> datetime:
    return T0 + timedelta(minutes=m)


def stored(
    event_id: str,
    etype: str,
    at: datetime,
    items: list[str | dict[str, Any]] | None = None,
    *,
    user: str | None = "alice",
    personalization: bool = True,
    **fields: Any,
) -> StoredEvent:
    return StoredEvent.model_validate(
        {
            "event_id": event_id,
            "type": etype,
            "timestamp": at,
            "items": [{"item_id": i} if isinstance(i, str) else i for i in items or []],
            "user_id": user,
            "consent": {"analytics": True, "personalization": personalization, "marketing": False},
            "received_at": at + timedelta(seconds=1),
            "source": "tests",
            **fields,
        }
    )


def events_df(spark: SparkSession, events: list[StoredEvent]) -> DataFrame:
    """The events as a DataFrame with the columns of :func:`attune.events.spark_schema`."""
    return spark.createDataFrame([e.model_dump() for e in events], spark_schema())
