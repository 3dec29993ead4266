"""The retraining run's pure rules and the steps that need no services (gate, publish with
nothing passed, await-serving against a small HTTP server in the test)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from attune.config import AttuneConfig, free_port
from models.data import load_csv
from models.repository import decide_with_baseline
from models.retrain import (
    EXIT_FAILED,
    EXIT_NOTHING_PASSED,
    EXIT_OK,
    RetrainError,
    final_decisions,
    gate_decisions,
    load_saved_dataset,
    ordered_steps,
    run_steps,
    save_dataset,
    smoke_history,
    smoke_problem,
    smoke_rows,
    training_cutoff,
    unseen_holdout,
    version_state,
)
from tests.unit.models.conftest import frame

# ----------------------------------------------------------------------------------------
# The gate rule with the baseline floor


def test_the_floor_applies_after_the_served_comparison() -> None:
    # nothing served; floor 0.118 x 0.9 = 0.1062: 0.12 passes, 0.05 does not
    assert decide_with_baseline(0.12, None, 0.01, 0.118, 0.9)[0] is True
    promoted, reason = decide_with_baseline(0.05, None, 0.01, 0.118, 0.9, "recent-popularity")
    assert not promoted
    assert reason == (
        "0.050000 < 0.106200 needed to be worth serving (recent-popularity 0.118000 x 0.9)"
    )
    # beats the served 0.10 by far (needs 0.101) but not the floor 0.25 x 0.9 = 0.225
    assert decide_with_baseline(0.20, 0.10, 0.01, 0.25, 0.9)[0] is False
    # needs 0.100 x 1.01 = 0.101 and 0.05 x 0.9 = 0.045: both met
    promoted, reason = decide_with_baseline(0.102, 0.100, 0.01, 0.05, 0.9, "popularity")
    assert promoted
    assert reason == (
        "0.102000 >= 0.101000 (served 0.100000 x (1 + 0.01)); "
        "0.102000 >= 0.045000 (popularity 0.050000 x 0.9)"
    )
    # decide's semantics are kept: better than served, but not by the margin
    promoted, reason = decide_with_baseline(0.1005, 0.100, 0.01, 0.01, 0.9)
    assert not promoted and reason == "0.100500 < 0.101000 needed (served 0.100000 x (1 + 0.01))"
    assert decide_with_baseline(0.100, 0.100, 0.0, 0.01, 0.9)[0] is False  # a tie is kept
    # exactly on the floor passes: 0.2 x 0.5 = 0.1
    assert decide_with_baseline(0.1, None, 0.01, 0.2, 0.5)[0] is True


def test_floor_zero_unmeasured_baseline_and_unmeasured_candidate() -> None:
    assert decide_with_baseline(0.001, None, 0.01, 0.5, 0.0) == (
        True,
        "no served version to beat; no baseline floor (min_baseline_ratio 0)",
    )
    promoted, reason = decide_with_baseline(0.2, None, 0.01, None, 0.9)
    assert not promoted and "no baseline was measured" in reason
    assert decide_with_baseline(0.2, None, 0.01, float("nan"), 0.9)[0] is False
    assert decide_with_baseline(float("nan"), None, 0.01, 0.1, 0.9)[0] is False
    assert decide_with_baseline(None, 0.1, 0.01, 0.1, 0.9)[0] is False


def _evaluation(**inputs: dict[str, Any]) -> dict[str, Any]:
    return {"metric": "ndcg@10", "gate_inputs": inputs, "unscorable": None}


def test_gate_decisions_per_model() -> None:
    evaluation = _evaluation(
        ranking={
            "candidate": 0.09,
            "served_version": 1,
            "served": 0.10,
            "baseline": 0.118,
            "baseline_name": "recent-popularity",
        },
        retrieval={
            "candidate": 0.12,
            "served_version": 1,
            "served": 0.10,
            "baseline": 0.118,
            "baseline_name": "recent-popularity",
        },
    )
    decisions = gate_decisions(evaluation, margin=0.01, min_baseline_ratio=0.9)
    assert list(decisions) == ["retrieval", "ranking"]  # the models' order, not the file's
    # retrieval: 0.12 >= 0.10 x 1.01 = 0.101 and >= 0.118 x 0.9 = 0.1062
    assert decisions["retrieval"]["passed"] is True
    assert decisions["retrieval"]["served_version"] == 1
    assert decisions["retrieval"]["min_baseline_ratio"] == 0.9
    # ranking: 0.09 < 0.101
    assert decisions["ranking"]["passed"] is False
    assert decisions["ranking"]["reason"].startswith("0.090000 < 0.101000 needed")
    # a margin of 10 needs 0.10 x 11 = 1.1: nothing passes
    strict = gate_decisions(evaluation, margin=10.0, min_baseline_ratio=0.9)
    assert not any(d["passed"] for d in strict.values())
    # nothing unseen to score on: nothing passes, and the reason says why
    empty = dict(evaluation, unscorable="no holdout interaction is newer than ...")
    for d in gate_decisions(empty, 0.0, 0.0).values():
        assert d["passed"] is False and d["reason"] == "no holdout interaction is newer than ..."


# ----------------------------------------------------------------------------------------
# The holdout the served versions did not train on


def test_training_cutoff_from_the_metadata() -> None:
    utc = pd.Timestamp
    assert training_cutoff(
        {
            "holdout": {"cutoff": "2013-08-17 21:50:12+00:00"},
            "data": {"max_time": "2013-09-01 00:00:00+00:00"},
            "created_at": "2024-05-01T10:00:00.000000Z",
        }
    ) == (utc("2013-08-17 21:50:12", tz="UTC"), "holdout cutoff")
    assert training_cutoff(
        {"data": {"max_time": "2013-09-01 00:00:00+00:00"}, "created_at": "2024-05-01T10:00:00Z"}
    ) == (utc("2013-09-01", tz="UTC"), "newest training data")
    assert training_cutoff({"created_at": "2024-05-01T10:00:00.000000Z"}) == (
        utc("2024-05-01 10:00", tz="UTC"),
        "creation time",
    )
    assert training_cutoff({})[0] is None


def test_unseen_holdout_keeps_what_is_strictly_newer_than_the_cutoff() -> None:
    holdout = frame(
        [("u1", "a", 8, 100), ("u2", "b", 8, 200), ("u1", "c", 8, 300), ("u3", "d", 8, 400)]
    )
    # cutoff at t = 200 s: the rows at 300 and 400 s were not trained on; 200 s may have been
    cutoff = pd.Timestamp(200, unit="s", tz="UTC")
    assert list(unseen_holdout(holdout, cutoff)["item_id"]) == ["c", "d"]
    assert list(unseen_holdout(holdout, None)["item_id"]) == ["a", "b", "c", "d"]
    assert unseen_holdout(holdout, pd.Timestamp(400, unit="s", tz="UTC")).empty


# ----------------------------------------------------------------------------------------
# The smoke test's pieces


def test_smoke_history_is_the_users_last_distinct_items() -> None:
    rows = frame(
        [
            ("u1", "a", 8, 1),
            ("u1", "b", None, 2),
            ("u1", "a", 6, 3),  # a again: counts at t = 3 s
            ("u1", "c", None, 4),
            ("u2", "x", 9, 5),
        ]
    )
    # most recent first: c (4 s, a view: no rating), a (3 s, rated), then b
    assert smoke_history(rows, "u1", 2) == [["c", 4000, "item_view"], ["a", 3000, "rating"]]
    assert [h[0] for h in smoke_history(rows, "u1", 5)] == ["c", "a", "b"]
    assert smoke_history(rows, "nobody", 5) == []


def test_smoke_rows_are_recent_item_updates_only() -> None:
    assert smoke_rows("p1", [["c", 4000, "item_view"]], "run1") == [
        (
            "p1",
            4000,
            "attune-smoke-run1-0#0",
            '{"i":"attune-smoke-run1-0#0","t":4000,"y":"item_view","it":"c","r":1}',
        )
    ]


def test_version_state_and_smoke_problem() -> None:
    body = json.dumps(
        {
            "model_version_status": [
                {"version": "2", "state": "AVAILABLE", "status": {"error_message": ""}},
                {"version": "3", "state": "END", "status": {"error_message": "boom"}},
            ]
        }
    )
    assert version_state(body, 2) == ("AVAILABLE", "")
    assert version_state(body, 3) == ("END", "boom")
    assert version_state(body, 4) == (None, "")
    assert version_state("not json", 2) == (None, "")

    assert smoke_problem(200, {"source": "model", "items": [{"item_id": "a"}]}) is None
    assert (
        smoke_problem(
            200, {"source": "popular", "degraded": "retrieval unavailable", "items": [{}]}
        )
        == "the API answered from 'popular', not the model (retrieval unavailable)"
    )
    assert smoke_problem(200, {"source": "model", "degraded": "ranking timeout", "items": [{}]})
    assert smoke_problem(200, {"source": "model", "items": []}) == (
        "the model answered with no items"
    )
    assert (smoke_problem(503, {"detail": "x"}) or "").startswith("HTTP 503")


# ----------------------------------------------------------------------------------------
# What is recorded


def _gate(passed: dict[str, bool]) -> dict[str, Any]:
    return {
        "models": {
            name: {
                "passed": ok,
                "reason": "ok" if ok else "too low",
                "metric": "ndcg@10",
                "candidate": 0.12,
                "served_version": 1,
                "served": 0.10,
                "baseline": 0.11,
                "baseline_name": "recent-popularity",
                "margin": 0.01,
                "min_baseline_ratio": 0.9,
            }
            for name, ok in passed.items()
        }
    }


def test_final_decisions_tell_what_happened_after_the_gate() -> None:
    gate = _gate({"retrieval": True, "ranking": False})
    publish = {"retrieval": {"version": 2, "previous_served": 1}}
    ok = final_decisions(
        gate,
        publish,
        {"ok": True, "models": {"retrieval": {"seconds": 3.5}}},
        {"ok": True, "latency_ms": 42.0},
        {"retrieval": 2, "ranking": 1},
        {"retrieval_run": "/runs/x"},
        "2024-01-01T00:00:00Z",
    )
    retrieval, ranking = ok
    assert retrieval.promoted and retrieval.version == 2 and retrieval.served_version == 1
    assert retrieval.reason == (
        "gate: ok; published v2 (served before: v1); AVAILABLE on the model server after 3.5 s; "
        "smoke test passed (42.0 ms)"
    )
    assert retrieval.details == {"retrieval_run": "/runs/x", "gate_passed": True}
    assert retrieval.baseline == 0.11 and retrieval.min_baseline_ratio == 0.9
    assert not ranking.promoted and ranking.version is None and ranking.reason == "gate: too low"

    failed = final_decisions(
        gate,
        publish,
        {"ok": True, "models": {"retrieval": {"seconds": 3.5}}},
        {
            "ok": False,
            "error": "the API answered from 'popular'",
            "rolled_back": {"retrieval": {"from": 2, "to": 1}},
        },
        {"retrieval": 1, "ranking": 1},
        {},
        "2024-01-01T00:00:00Z",
    )[0]
    assert not failed.promoted and failed.version == 2
    assert failed.reason.endswith(
        "smoke test failed: the API answered from 'popular'; served again: v1"
    )
    # the steps after publish did not run (a DAG whose later tasks were skipped)
    unchecked = final_decisions(gate, publish, None, None, {"retrieval": 2}, {}, "t")[0]
    assert unchecked.promoted
    assert unchecked.reason.endswith(
        "the model server's pick-up was not checked; smoke test not run"
    )


# ----------------------------------------------------------------------------------------
# The run folder and the steps that need no services


def test_the_saved_dataset_reads_back_unchanged(mini_dir: Path, tmp_path: Path) -> None:
    dataset = load_csv(mini_dir / "ratings.csv", mini_dir / "movies.csv")
    save_dataset(dataset, tmp_path / "data")
    loaded = load_saved_dataset(tmp_path / "data")
    pd.testing.assert_frame_equal(loaded.interactions, dataset.interactions)
    pd.testing.assert_frame_equal(loaded.items, dataset.items)
    assert loaded.version == dataset.version


def test_steps_run_in_order_and_need_what_earlier_steps_wrote(
    cfg: AttuneConfig, tmp_path: Path
) -> None:
    assert ordered_steps(["record", "train"]) == ["train", "record"]
    assert ordered_steps(None)[0] == "train" and ordered_steps(None)[-1] == "record"
    with pytest.raises(RetrainError, match="unknown step 'deploy'"):
        ordered_steps(["deploy"])
    with pytest.raises(RetrainError, match="the evaluate step has not run") as info:
        run_steps(cfg, tmp_path, ["gate"], say=lambda s: None)
    assert f"--run-dir {tmp_path} --step evaluate" in str(info.value)


def _config(cfg: AttuneConfig, tmp_path: Path, **models: Any) -> AttuneConfig:
    return cfg.model_copy(
        update={
            "models": cfg.models.model_copy(update={"repository_dir": tmp_path / "repo", **models})
        }
    )


def test_gate_step_exit_codes_and_nothing_to_publish(cfg: AttuneConfig, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    evaluation = _evaluation(
        retrieval={"candidate": 0.12, "served_version": None, "served": None, "baseline": 0.1},
        ranking={"candidate": 0.05, "served_version": None, "served": None, "baseline": 0.1},
    )
    (run_dir / "evaluate.json").write_text(json.dumps(evaluation))
    said: list[str] = []
    easy = _config(cfg, tmp_path, promotion_margin=0.01)
    easy = easy.model_copy(
        update={
            "models": easy.models.model_copy(
                update={"gate": easy.models.gate.model_copy(update={"min_baseline_ratio": 0.9})}
            )
        }
    )
    code, results = run_steps(easy, run_dir, ["gate"], say=said.append)
    # retrieval: nothing served, 0.12 >= 0.1 x 0.9; ranking: 0.05 < 0.09
    assert code == EXIT_OK
    assert results["gate"]["passed"] == ["retrieval"]
    assert said == [
        "gate: retrieval passed: no served version to beat; 0.120000 >= 0.090000 "
        "(best baseline 0.100000 x 0.9)",
        "gate: ranking not promoted: 0.050000 < 0.090000 needed to be worth serving "
        "(best baseline 0.100000 x 0.9)",
    ]
    assert json.loads((run_dir / "gate.json").read_text())["passed"] == ["retrieval"]

    strict = easy.model_copy(
        update={
            "models": easy.models.model_copy(
                update={"gate": easy.models.gate.model_copy(update={"min_baseline_ratio": 2.0})}
            )
        }
    )
    said.clear()
    code, _ = run_steps(
        strict, run_dir, ["gate", "publish", "await-serving", "smoke"], say=said.append
    )
    assert code == EXIT_NOTHING_PASSED
    assert said[2:] == [
        "gate: no model passed; the served versions stay",
        "publish: the gate passed no model: nothing to publish",
        "await-serving: nothing was published: nothing to wait for",
        "smoke: nothing was published: nothing to test",
    ]
    assert not (tmp_path / "repo").exists()  # nothing published, nothing served


# ----------------------------------------------------------------------------------------
# await-serving against a small HTTP server standing in for the model server


class _StatusServer:
    """Answers ``GET /v1/models/<name>`` with the next of ``states`` (the last one repeats)."""

    def __init__(self, states: list[tuple[str, str]]) -> None:
        self.states = states
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                state, error = outer.states[min(outer.calls, len(outer.states) - 1)]
                outer.calls += 1
                body = json.dumps(
                    {
                        "model_version_status": [
                            {"version": "1", "state": state, "status": {"error_message": error}}
                        ]
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def published_run(tmp_path: Path) -> Iterator[Path]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "publish.json").write_text(
        json.dumps({"retrieval": {"version": 1, "previous_served": None}})
    )
    yield run_dir


def _served_at(cfg: AttuneConfig, url: str | None, timeout: float) -> AttuneConfig:
    api = cfg.api.model_copy(
        update={"model_server": cfg.api.model_server.model_copy(update={"rest_url": url})}
    )
    models = cfg.models.model_copy(
        update={"retrain": cfg.models.retrain.model_copy(update={"serving_timeout_s": timeout})}
    )
    return cfg.model_copy(update={"api": api, "models": models})


def test_await_serving_waits_until_the_version_is_available(
    cfg: AttuneConfig, published_run: Path
) -> None:
    server = _StatusServer([("LOADING", ""), ("LOADING", ""), ("AVAILABLE", "")])
    try:
        code, results = run_steps(
            _served_at(cfg, server.url, 30), published_run, ["await-serving"], say=lambda s: None
        )
    finally:
        server.close()
    assert code == EXIT_OK and server.calls == 3  # polled until the third answer
    assert results["await-serving"]["models"]["retrieval"]["state"] == "AVAILABLE"


def test_await_serving_fails_when_the_server_cannot_load_the_version(
    cfg: AttuneConfig, published_run: Path
) -> None:
    server = _StatusServer([("LOADING", ""), ("END", "SavedModel is corrupt")])
    said: list[str] = []
    try:
        code, _ = run_steps(
            _served_at(cfg, server.url, 30), published_run, ["await-serving"], say=said.append
        )
    finally:
        server.close()
    assert code == EXIT_FAILED
    assert said == [
        "await-serving: FAILED: the model server could not load retrieval v1: SavedModel is corrupt"
    ]
    written = json.loads((published_run / "await-serving.json").read_text())
    assert written["ok"] is False and "corrupt" in written["error"]


def test_await_serving_says_how_to_start_an_absent_model_server(
    cfg: AttuneConfig, published_run: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RetrainError, match="start it with `attune serve models`") as info:
        run_steps(_served_at(cfg, url, 1.0), published_run, ["await-serving"], say=lambda s: None)
    assert str(info.value).startswith(f"the model server at {url} does not answer")


def test_a_run_that_published_cannot_train_evaluate_or_gate_again(
    cfg: AttuneConfig, published_run: Path
) -> None:
    for step in ("train", "evaluate", "gate"):
        with pytest.raises(RetrainError, match="has published or recorded already"):
            run_steps(cfg, published_run, [step], say=lambda s: None)
    assert (published_run / "publish.json").exists()  # nothing was removed
