"""Small rendering helpers shared by the pages: empty states, badges, tables with coloured rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from dashboards import data
from dashboards.data import Missing

RED = "background-color: #fde2e1; color: #8a1c1c"
GREEN = "background-color: #e3f6e8; color: #14532d"
GREEN_TEXT = "color: #15803d; font-weight: 600"
RED_TEXT = "color: #b91c1c; font-weight: 600"


def empty(missing: Missing) -> None:
    """The "no data yet" state: what is missing and the command that makes it."""
    st.info(f"**{missing.what}**\n\n{missing.hint}", icon=":material/hourglass_empty:")


def not_running(what: str, address: str, start: str, detail: str | None = None) -> None:
    """A service that does not answer: where it was looked for and how to start it."""
    extra = f" ({detail})" if detail else ""
    st.warning(
        f"**{what}: not running** at {address}{extra} — start it with `{start}`",
        icon=":material/power_off:",
    )


def badge(label: str, colour: str, icon: str | None = None) -> None:
    st.badge(label, color=colour, icon=icon)  # type: ignore[arg-type]


def experiment_badges(s: data.ExperimentSummary, report_date: str | None = None) -> None:
    """Status, verdict, type and layer of an experiment (and the report's date), as one row."""
    with st.container(horizontal=True, gap="small"):
        badge(*data.status_badge(s.status), icon=":material/radio_button_checked:")
        badge(*data.verdict_badge(s.verdict), icon=":material/gavel:")
        badge(s.type, "violet")
        if s.layer:
            badge(f"layer {s.layer}", "gray")
        if report_date is not None:
            badge(f"report {report_date}", "gray")


def table(
    rows: Sequence[Mapping[str, Any]],
    *,
    row_style: Callable[[Mapping[str, Any]], str | None] | None = None,
    cell_styles: Mapping[str, Callable[[Mapping[str, Any]], str | None]] | None = None,
    hide: Sequence[str] = (),
    column_config: Mapping[str, Any] | None = None,
    key: str | None = None,
) -> None:
    """``rows`` as a dataframe without index; ``row_style(row)`` colours whole rows (breached
    guardrails, failed checks), ``cell_styles[column](row)`` single cells; ``hide`` columns are
    used for styling but not shown. Tall tables get enough height to show every row."""
    frame = pd.DataFrame(list(rows))
    shown = [c for c in frame.columns if c not in hide]
    data: Any = frame
    if row_style is not None or cell_styles:
        records = frame.to_dict("records")

        def style(row: pd.Series) -> list[str]:
            record = records[int(str(row.name))]
            whole = (row_style(record) if row_style else None) or ""
            out = []
            for column in row.index:
                cell = cell_styles.get(column) if cell_styles else None
                out.append(((cell(record) if cell else None) or "") + ";" + whole)
            return out

        data = frame.style.apply(style, axis=1)
    st.dataframe(
        data,
        hide_index=True,
        column_order=shown,
        column_config=dict(column_config or {}),
        height="auto" if len(frame) <= 12 else min(38 + 35 * len(frame), 700),
        key=key,
    )
