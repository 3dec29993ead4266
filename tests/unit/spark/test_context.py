"""The run context and the stage contract: the date window, input checks, the import graph."""

from __future__ import annotations

import ast
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from attune.config import AttuneConfig
from spark.context import RunContext, Stage, StageInputs, StageOutputs, window_start
from spark.job import PIPELINE, STAGES
from spark.tables import Lake
from tests.unit.spark.fixtures import at

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPARK_DIR = Path(__file__).resolve().parents[3] / "spark"


def test_window_start_covers_late_days_or_an_earlier_from() -> None:
    day = at(10).date()
    assert window_start(day, 3, None) == at(7).date()
    assert window_start(day, 3, at(1).date()) == at(1).date()
    assert window_start(day, 3, at(9).date()) == at(7).date()  # never narrower than the window


def test_the_pipeline_is_one_stage_per_stage_name_in_run_order() -> None:
    assert STAGES == ("quality", "silver", "gold", "views", "maintenance")
    assert [s.name for s in PIPELINE] == list(STAGES)
    assert {s.name: s.needs for s in PIPELINE} == {
        "quality": ("bronze",),
        "silver": ("bronze",),
        "gold": ("silver_events", "silver_items"),
        "views": ("gold_user_features", "gold_item_cooccurrence"),
        "maintenance": (),
    }


def test_a_stage_gets_its_existing_inputs_or_says_what_to_run(
    spark: SparkSession, tmp_path: Path
) -> None:
    cfg = AttuneConfig.model_validate({"lake": {"root": str(tmp_path / "lake")}})
    ctx = RunContext(cfg, spark, Lake.from_config(cfg), date(2013, 3, 5), say=lambda m: None)
    seen: list[StageInputs] = []

    def run(ctx: RunContext, inputs: StageInputs) -> StageOutputs:
        seen.append(inputs)
        return {"ok": True}

    stage = Stage("t", run, needs=("silver_items",), missing="no table at {path}: run silver")
    with pytest.raises(RuntimeError, match=r"no table at .*/lake/silver/items: run silver"):
        stage.inputs(ctx)
    spark.createDataFrame([("i1",)], "item_id STRING").write.format("delta").save(
        ctx.lake.silver_items
    )
    assert stage.run(ctx, stage.inputs(ctx)) == {"ok": True}
    assert seen == [{"silver_items": ctx.lake.silver_items}]


def _spark_imports(path: Path) -> set[str]:
    """The spark.* modules ``path`` imports, at module level, in functions or for type checks."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if (SPARK_DIR.parent / (n.replace(".", "/") + ".py")).exists()}
    return found - {f"spark.{path.stem}"}


def test_no_import_cycle_among_the_spark_modules_and_no_stage_imports_the_job() -> None:
    graph = {f"spark.{p.stem}": _spark_imports(p) for p in SPARK_DIR.glob("*.py")}
    assert not [m for m, deps in graph.items() if "spark.job" in deps]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
