"""The data scientists' notebook runs end to end on a small subset."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from attune.config import AttuneConfig

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOK = ROOT / "notebooks" / "02_train_and_evaluate.ipynb"
# The plots the run drew, kept for a person to look at (var/ is git-ignored).
ARTEFACTS = ROOT / "var" / "test-artefacts" / "notebooks"


def test_notebook_executes(cfg: AttuneConfig, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    params[0].source = "\n".join(
        [
            'DATA = "movietweetings-mini"',
            'FORMAT = "csv"',
            'INTERACTIONS = "ratings.csv"',
            'ITEMS = "movies.csv"',
            "LIMIT = 2500",
            'SPLIT = "temporal"',
            'MODELS = ["popularity", "recent-popularity", "item-knn", "tfrs-retrieval", '
            '"tfrs-retrieval+ranking"]',
            f'REPOSITORY = "{tmp_path / "repo"}"',
        ]
    )
    # the kernel inherits the environment: small, fast models
    monkeypatch.setenv("ATTUNE__MODELS__RETRIEVAL__EPOCHS", "1")
    monkeypatch.setenv("ATTUNE__MODELS__RANKING__EPOCHS", "1")
    monkeypatch.setenv("ATTUNE__PATHS__VAR_DIR", str(tmp_path / "var"))
    client = NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "| tfrs-retrieval |" in text
    images = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert images
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images, 1):
        (ARTEFACTS / f"{NOTEBOOK.stem}-{i}.png").write_bytes(base64.b64decode(image))
    assert (tmp_path / "repo" / "retrieval" / "1" / "saved_model.pb").exists()
