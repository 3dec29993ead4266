"""docs/models.md stays true: every ``attune`` command it shows parses with today's CLI, and the
columns it explains are the ones the evaluation table prints."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from attune.cli import build_parser

DOC = Path(__file__).resolve().parents[3] / "docs" / "models.md"


def _commands() -> list[str]:
    """``.venv/bin/attune ...`` lines of the doc's bash blocks, continuation lines joined."""
    text = DOC.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    out = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(".venv/bin/attune "):
                out.append(line.removeprefix(".venv/bin/attune "))
    return out


def test_the_doc_shows_commands() -> None:
    cmds = _commands()
    assert any(c.startswith("models evaluate-sessions") for c in cmds)
    assert any(c.startswith("models train --interactions") for c in cmds)
    assert any(c.startswith("serve models") for c in cmds)


@pytest.mark.parametrize("command", _commands())
def test_every_command_parses(command: str) -> None:
    argv = [a for a in shlex.split(command) if a != "..."]
    if any("..." in a for a in argv):
        pytest.skip("a placeholder command (FILE, ...)")
    build_parser().parse_args(argv)


def test_the_explained_columns_are_the_tables() -> None:
    from models.sessions import format_session_table

    text = DOC.read_text()
    table = text[text.index("The columns (all at k = 10") :]
    explained = set(re.findall(r"^\| ([^|]+?) \|", table, flags=re.M)) - {"column", "---"}
    printed = next(
        line for line in text.splitlines() if line.startswith("| model | Recall@10 | NDCG@10")
    )
    shown = {c.strip() for c in printed.strip("|").split("|")[1:]}
    # every printed column is explained (the two cold ones share a row)
    cold = {"cold Recall@10", "cold NDCG@10"}
    assert shown - cold <= explained
    assert "cold Recall@10, cold NDCG@10" in explained
    report = {
        "k": 20,
        "caveat": None,
        "models": {},
        "data": {"sessions": 1, "events": 2},
        "split": {
            "cutoff": "c",
            "train_events": 1,
            "test_cases": 1,
            "test_sessions": 1,
            "new_cases": 1,
            "repeat_cases": 0,
        },
    }
    assert format_session_table(report).splitlines()[0] in text
