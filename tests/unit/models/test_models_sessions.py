"""Session-based next-item evaluation: steps, split, metric and the baselines, values by hand."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from attune.config import AttuneConfig
from models.data import DataError
from models.sessions import (
    NextItemCase,
    SessionCooccurrence,
    SessionHistory,
    SessionPopularity,
    cmd_evaluate_sessions,
    collapse_repeats,
    cooccurrence_neighbours,
    format_session_table,
    load_otto,
    next_item_metrics,
    run_session_evaluation,
    session_baskets,
    split_sessions,
    time_cutoff,
    to_interactions,
)


def events(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    """Session events (session, item, ts_ms) as :class:`models.sessions.Sessions` holds them."""
    frame = pd.DataFrame(rows, columns=["session", "item_id", "ts_ms"])
    frame["type"] = "clicks"
    frame["event_type"] = "click"
    return frame.sort_values("ts_ms", kind="stable").reset_index(drop=True)


def case(prefix: str, target: str) -> NextItemCase:
    return NextItemCase("s", tuple(prefix), target, 0, 0)


def test_collapse_repeats_keeps_returns() -> None:
    # a click then a cart of "a" is one step; going back to "a" after "b" is a new one
    assert collapse_repeats(["a", "a", "b", "a"]) == [0, 2, 3]
    assert collapse_repeats([]) == []


def test_time_cutoff() -> None:
    # 10 times, 20% test: position floor(10 * 0.8) = 8 of the sorted times, i.e. 9
    assert time_cutoff([10, 1, 2, 3, 4, 5, 6, 7, 8, 9], 0.2) == 9
    with pytest.raises(ValueError, match="between 0 and 1"):
        time_cutoff([1, 2], 1.0)


def test_split_sessions_by_hand() -> None:
    ev = events(
        [
            ("s1", "a", 1),
            ("s1", "a", 2),
            ("s1", "b", 3),
            ("s2", "x", 7),
            ("s1", "c", 8),
            ("s1", "c", 9),
            ("s2", "y", 9),
            ("s1", "a", 10),
        ]
    )
    split = split_sessions(ev, 0.25)
    # 8 sorted times 1,2,3,7,8,9,9,10; position floor(8 * 0.75) = 6 -> cutoff 9
    assert split.cutoff_ms == 9
    # training: the 5 events before 9
    assert split.train["ts_ms"].tolist() == [1, 2, 3, 7, 8]
    # s1 steps: a@1, b@3, c@8 (c@9 is the same step), a@10 -> the case a@10 after (a, b, c);
    # s2 steps: x@7, y@9 -> the case y@9 after (x,). In time order: y, then a.
    assert [(c.session, c.prefix, c.target, c.ts_ms) for c in split.cases] == [
        ("s2", ("x",), "y", 9),
        ("s1", ("a", "b", "c"), "a", 10),
    ]
    assert [c.repeat for c in split.cases] == [False, True]
    # the target rows point at the events: y@9 is row 6, a@10 row 7
    assert [c.row for c in split.cases] == [6, 7]
    d = split.describe()
    assert (d["test_cases"], d["new_cases"], d["repeat_cases"], d["test_sessions"]) == (2, 1, 1, 2)


def test_next_item_metrics_by_hand() -> None:
    cases = [case("x", "y"), case("abc", "a")]
    # case 1 (new): y at rank 2 -> hit, 1/2; case 2 (a return): a missing -> 0
    m = next_item_metrics([["q", "y"], ["b", "c"]], cases, 2)
    assert m["recall"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert m["mrr"] == pytest.approx(0.25)  # (1/2 + 0) / 2
    assert (m["recall_new"], m["mrr_new"], m["recall_repeat"]) == (1.0, 0.5, 0.0)
    assert (m["cases"], m["new_cases"], m["repeat_cases"]) == (2, 1, 1)
    # at k = 1 the list is cut to "q": no hit
    assert next_item_metrics([["q", "y"], ["b", "c"]], cases, 1)["recall"] == 0.0
    with pytest.raises(ValueError, match="1 ranked lists for 2 cases"):
        next_item_metrics([["q"]], cases, 1)


def test_cooccurrence_neighbours_gold_formula() -> None:
    baskets = [["a", "b", "c"], ["a", "b"], ["c", "d"]]
    # support a 2, b 2, c 2, d 1; together: ab 2, ac 1, bc 1, cd 1
    # a-b 2/sqrt(2*2) = 1; a-c 1/sqrt(4) = 0.5; b-c 0.5; c-d 1/sqrt(2*1) = 0.7071
    n = cooccurrence_neighbours(baskets, min_count=1, top_k=5)
    assert n["a"] == [("b", 1.0), ("c", 0.5)]
    assert [(i, round(s, 4)) for i, s in n["c"]] == [("d", 0.7071), ("a", 0.5), ("b", 0.5)]
    assert [(i, round(s, 4)) for i, s in n["d"]] == [("c", 0.7071)]
    # min_count 2 keeps only the pair seen in two baskets
    assert cooccurrence_neighbours(baskets, min_count=2, top_k=5) == {
        "a": [("b", 1.0)],
        "b": [("a", 1.0)],
    }
    assert cooccurrence_neighbours(baskets, min_count=1, top_k=1)["c"] == [("d", 1 / 2**0.5)]


def test_session_baskets_latest_distinct_items() -> None:
    ev = events([("s1", "a", 1), ("s1", "b", 2), ("s1", "a", 3), ("s1", "c", 4), ("s2", "z", 5)])
    # s1 latest times: c 4, a 3, b 2 -> latest two: [c, a]; s2 has one item: no basket
    assert session_baskets(ev, 2) == [["c", "a"]]
    assert session_baskets(ev, 20) == [["c", "a", "b"]]


def test_cooccurrence_recommend_sums_seeds_then_popularity() -> None:
    model = SessionCooccurrence(max_session_items=20, min_count=1, top_k=5, seeds=2)
    model.neighbours = {
        "a": [("b", 1.0), ("c", 0.5)],
        "c": [("d", 0.7), ("a", 0.5), ("b", 0.5)],
    }
    model.popular = ["z", "b"]
    # seeds (latest first) c, a: b 0.5 + 1.0 = 1.5, d 0.7, a 0.5, c 0.5 (the last item: out);
    # then popularity: z (b is in already)
    assert model.recommend([case("ac", "x")], 4) == [["b", "d", "a", "z"]]
    # one seed: only c's neighbours (d 0.7, a 0.5, b 0.5; ties by id), cut at k = 2
    model.seeds = 1
    assert model.recommend([case("ac", "x")], 2) == [["d", "a"]]


def test_history_and_popularity() -> None:
    train = events([("s", "a", 1), ("s", "c", 2), ("t", "a", 3), ("t", "c", 4), ("u", "b", 5)])
    train = pd.concat([train, events([("u", "a", 6), ("u", "c", 7)])], ignore_index=True)
    # counts: a 3, c 3, b 1 -> a, c (tie: id), b
    pop = SessionPopularity().fit(train)
    assert pop.ranking == ["a", "c", "b"]
    assert pop.recommend([case("xa", "q")], 5) == [["c", "b"]]  # a is the last item: out
    hist = SessionHistory().fit(train)
    # own items latest first: c, a, b (a once), c is the last item: out; then a, c, b popular
    assert hist.recommend([case("bac", "q")], 3) == [["a", "b"]]


def test_load_otto_sample(cfg: AttuneConfig) -> None:
    sample = load_otto(cfg.paths.data_dir / "otto-sample")
    d = sample.describe()
    # data/README.md: 20 sessions, 862 click / cart / order events
    assert (d["sessions"], d["events"]) == (20, 862)
    assert sum(d["event_types"].values()) == 862
    assert sample.events["ts_ms"].is_monotonic_increasing
    assert set(sample.events["event_type"]) <= {"click", "add_to_cart", "purchase"}
    inter = to_interactions(sample.events)
    assert inter["user_id"].tolist() == sample.events["session"].tolist()
    assert inter["item_id"].tolist() == sample.events["item_id"].tolist()
    assert (
        (load_otto(cfg.paths.data_dir / "otto-sample", max_sessions=2).describe()["sessions"]) == 2
    )


def test_load_otto_errors_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"folder holding train\.jsonl"):
        load_otto(tmp_path / "nowhere")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"session": 1, "events": [{"aid": 1, "ts": 5, "type": "likes"}]}\n')
    with pytest.raises(DataError, match="unknown event type 'likes'"):
        load_otto(bad)
    bad.write_text("not json\n")
    with pytest.raises(DataError, match="not an OTTO session line"):
        load_otto(bad)


def test_run_on_the_sample_says_it_is_anecdotal(cfg: AttuneConfig, tmp_path: Path) -> None:
    sample = load_otto(cfg.paths.data_dir / "otto-sample")
    report = run_session_evaluation(
        cfg,
        sample,
        models=["popularity", "session-cooccurrence", "session-history"],
        say=lambda _line: None,
    )
    assert report["caveat"] is not None and "20 sessions, 862 events" in report["caveat"]
    table = format_session_table(report)
    assert table.startswith("NOTE: tiny sample: 20 sessions, 862 events")
    assert set(report["models"]) == {"popularity", "session-cooccurrence", "session-history"}
    m = report["models"]["session-history"]
    assert m["cases"] == report["split"]["test_cases"] > 0
    # the history model ranks every item of the prefix first: it finds returns, and on new
    # items it is popularity
    assert m["recall_repeat"] > 0.5
    assert m["recall_new"] == report["models"]["popularity"]["recall_new"]

    args = argparse.Namespace(
        data=str(cfg.paths.data_dir / "otto-sample"),
        max_sessions=None,
        test_fraction=0.2,
        k=20,
        seed=None,
        models="popularity,session-history",
        min_count=1,
        json=str(tmp_path / "s.json"),
        plot=None,
        no_progress=True,
    )
    assert cmd_evaluate_sessions(cfg, args) == 0
    written = json.loads((tmp_path / "s.json").read_text())
    assert written["data"]["sessions"] == 20 and (tmp_path / "s.png").exists()
    args.models = "popularity,gru4rec"
    assert cmd_evaluate_sessions(cfg, args) == 2


def test_load_otto_says_megabytes_read_with_rate_and_eta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    import models.sessions as sessions_module
    from attune.progress import RateEta

    ticks = iter(range(100))  # a fake clock: one second per reading

    def clock() -> float:
        return float(next(ticks))

    monkeypatch.setattr(
        sessions_module,
        "RateEta",
        functools.partial(RateEta, clock=clock, every=0.0, min_seconds=0.0),
    )
    head = '{"session": 1, "events": [{"aid": 7, "ts": 1661200010000, "type": "clicks"}]}'
    line = head.ljust(99) + "\n"  # 100 bytes a line, 30,000 lines: 3,000,000 bytes
    (tmp_path / "train.jsonl").write_text(line * 30_000)
    lines: list[str] = []
    sessions_module.load_otto(tmp_path, max_sessions=1, say=lines.append)
    # clock: 0 at the start; lines 10,000 and 20,000 at 1 s and 2 s, the end at 3 s (no line:
    # complete), the closing line at 5 s (the last set() read 4). 1,000,000 bytes = 0.954 MB
    # of 2.86 MB in 1 s: 0.954 MB/s, 2/3 left at that rate = 2 s; at 2 s: 1.91 MB, still
    # 0.954 MB/s, 1/3 left = 1 s; 2.86 MB in 5 s = 0.572 MB/s.
    assert lines == [
        "reading train.jsonl: 0.954/2.86 MB, 0.954 MB/s, ETA 2 s",
        "reading train.jsonl: 1.91/2.86 MB, 0.954 MB/s, ETA 1 s",
        "reading train.jsonl: 2.86/2.86 MB, 0.572 MB/s, done in 5 s",
    ]
