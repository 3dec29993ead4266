"""Interleaving vs A/B: how many users each needs to find the better of two rankers.

    .venv/bin/python benchmarks/interleaving_vs_ab.py [--lift 0.05] [--power 0.8] [--sims 1000]
        [--ab-sims 4000] [--seed 12] [--out PATH]

Simulated users (:mod:`attune.experiments.simulate_interleaving`: position-based clicks, users
who differ in how much they click, ranker B better than A on part of the requests) with B
calibrated so that its A/B click rate (share of users who click at least once) is ``1 + lift``
times A's. For each method, the number of users at which it detects B with the given power at
alpha 0.05 (two-sided): the A/B test with a two-proportion z-test over users split in half, the
interleaving test with team-draft merges and the t-test of the users' preferences.

Needs no services. Prints the users each method needs and their ratio, and writes the JSON to
``<var_dir>/reports/experiments/interleaving_vs_ab.json`` (or ``--out``). The unit test
``tests/unit/experiments/test_simulate_interleaving.py`` runs the same comparison with fewer
simulations.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attune.config import load_config  # noqa: E402
from attune.experiments.simulate_interleaving import compare_methods  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--lift", type=float, default=0.05, help="relative click-rate lift of B")
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--sims", type=int, default=1000, help="interleaving runs per point")
    parser.add_argument("--ab-sims", type=int, default=4000, help="A/B runs per point")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.sims < 300 or args.ab_sims < 300:
        parser.error("use at least 300 simulations per point (--sims, --ab-sims)")

    out = args.out or load_config(None).paths.resolve("reports/experiments/interleaving_vs_ab.json")
    start = time.perf_counter()
    result = compare_methods(
        lift=args.lift,
        power=args.power,
        alpha=args.alpha,
        sims=args.sims,
        ab_sims=args.ab_sims,
        seed=args.seed,
    )
    elapsed = time.perf_counter() - start
    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "seconds": round(elapsed, 1),
        **result.to_json(),
    }
    print(
        f"B lifts the A/B click rate {result.click_rate_a:.4f} -> {result.click_rate_b:.4f} "
        f"(+{args.lift:.0%}; B differs from A on {result.improved_share:.1%} of requests)"
    )
    print(f"users for {args.power:.0%} power at alpha {args.alpha}:")
    print(f"  A/B test (two-proportion z, both arms): {result.ab.users:10,.0f}")
    print(f"  team-draft interleaving:                {result.interleaving.users:10,.0f}")
    print(f"  ratio: interleaving needs {result.ratio:.1f}x fewer users ({elapsed:.0f} s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
