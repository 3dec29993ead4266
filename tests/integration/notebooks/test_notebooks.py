"""The lake notebooks run end to end on the small lake of ``conftest.py``.

Each notebook runs in a fresh kernel (nbclient) with its ``parameters`` cell replaced, so it
opens its own Spark session on the test's lake, as a person's notebook would. The plots it drew
are kept under var/test-artefacts/notebooks/ for a person to look at (var/ is git-ignored).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.integration.notebooks.conftest import SmallLake

# a Spark session in the kernel besides the fixture's: generous on a loaded 2-core machine
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOKS = ROOT / "notebooks"
ARTEFACTS = ROOT / "var" / "test-artefacts" / "notebooks"


def run_notebook(name: str, parameters: dict[str, Any]) -> tuple[str, int]:
    """Execute ``notebooks/<name>`` with ``parameters`` (Python values) assigned after its
    parameters cell's defaults; return what it printed and how many plots it drew (saved as
    PNGs)."""
    import nbformat
    from nbclient import NotebookClient

    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    params[0].source += "".join(f"\n{key} = {value!r}" for key, value in parameters.items())
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o.get("output_type") == "error"]
    assert not errors
    images = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images, 1):
        (ARTEFACTS / f"{path.stem}-{i}.png").write_bytes(base64.b64decode(image))
    # only what the notebook printed itself (Spark's log lines go to the same stream)
    printed = "".join(
        line
        for o in outputs
        if o.get("output_type") == "stream"
        for line in o.get("text", "").splitlines(keepends=True)
        if " WARN " not in line
    )
    return printed, len(images)


def test_explore_events_notebook(small_lake: SmallLake) -> None:
    printed, plots = run_notebook(
        "01_explore_events.ipynb", {"CONFIG": str(small_lake.config_file), "TOP": 5}
    )
    assert f"lake: {small_lake.cfg.lake_root}" in printed
    # 101 item views + 160 impressions + 16 + 24 rec_clicks + 10 ratings (u00, u03, ..., u27)
    # + 6 purchases (u00, u05, ..., u25) = 317; no duplicates or bots, so silver keeps all
    assert "bronze: 317 rows; silver: 317 events" in printed
    # engagements per item (views + rec_clicks on the first item shown + purchases), worked out
    # from the click rule in conftest.py: i1 30 + 8 + 6 = 44, i2 15 + 10 = 25, i3 10 + 8 = 18,
    # i5 6 + 8 = 14, i4 7 + 6 = 13; in all 101 + 40 + 6 = 147. The top 20% of 20 items are
    # those 4 first: (44 + 25 + 18 + 14) / 147 = 69%; the top 1% is i1 alone: 44 / 147 = 30%.
    assert "20 items: the top 20% hold 69% of the events, the top 1% 30%" in printed
    assert "40 users: the top 20% hold" in printed
    # 101 views + 320 items shown (160 impressions x 2) + 40 clicks + 10 ratings + 6 purchases
    assert "477 examples" in printed
    # events per day and type, the long tail, users per segment, examples per day
    assert plots == 4


def test_experiment_analysis_notebook(small_lake: SmallLake) -> None:
    printed, plots = run_notebook(
        "03_experiment_analysis.ipynb",
        {"CONFIG": str(small_lake.config_file), "EXPERIMENT": "recs", "BASELINE": "control"},
    )
    # the latest date gold was built for; recs has traffic on it
    assert "report date 2013-03-05: recs" in printed
    assert "8 rows: 1 experiment(s), 4 day(s)" in printed
    # control: 16 clicks / 80 impressions = 0.2. Wilson, z = 1.96, z² = 3.8416, n = 80:
    # center (0.2 + 0.024010) / 1.048020 = 0.213746, margin 1.96·sqrt(0.002 + 0.000150) /
    # 1.048020 = 0.086719 -> [12.70%, 30.05%]
    assert "recs/control (baseline): CTR 20.00% [12.70%, 30.05%] on 80 impressions" in printed
    # ranked: 24 / 80 = 0.3: center 0.309163, margin 1.96·sqrt(0.002625 + 0.000150) / 1.048020
    # = 0.098519 -> [21.06%, 40.77%]. Difference +0.1, Newcombe:
    # low  0.1 - sqrt((0.3 - 0.210644)² + (0.300465 - 0.2)²) = 0.1 - 0.134450 = -3.45%
    # high 0.1 + sqrt((0.407682 - 0.3)² + (0.2 - 0.127027)²) = 0.1 + 0.130077 = +23.01%
    assert (
        "recs/ranked: CTR 30.00% [21.06%, 40.77%]; +10.00% vs control [-3.45%, +23.01%], "
        "relative lift +50%"
    ) in printed
    # impressions and CTR per day, CTR per variant with its interval
    assert plots == 2
