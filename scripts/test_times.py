"""The suite's time by test module, from the JUnit XML that scripts/test.sh has pytest write.

    .venv/bin/python scripts/test_times.py [var/log/junit.xml ...] [--top 15]

pytest's ``--durations`` lists single tests; this sums every test's setup, call and teardown
(the XML's ``time``) by module, which is where a suite over its time budget is cut.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def module_times(*paths: Path) -> dict[str, tuple[float, int]]:
    """Module -> (seconds, tests): the ``testcase`` elements' ``time`` summed by ``classname``'s
    module part (pytest writes ``tests.unit.x.test_y`` or ``tests.unit.x.test_y.Class``), over
    the files of every lane the suite ran in."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    cases = (case for path in paths for case in ET.parse(path).getroot().iter("testcase"))
    for case in cases:
        parts = case.get("classname", "").split(".")
        module = ".".join(p for p in parts if not p[:1].isupper()) or "?"
        out[module][0] += float(case.get("time", 0.0))
        out[module][1] += 1
    return {m: (t, int(n)) for m, (t, n) in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("xml", nargs="*", type=Path, default=[Path("var/log/junit.xml")])
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.xml if not p.exists()]
    if missing:
        print(
            f"test_times: {', '.join(missing)} not found: run the suite (make test) first",
            file=sys.stderr,
        )
        return 2
    times = module_times(*args.xml)
    total = sum(t for t, _ in times.values())
    lanes = (
        f", {len(args.xml)} lanes: the tests' time, not the wall clock" if len(args.xml) > 1 else ""
    )
    print(f"test time by module ({len(times)} modules, {total:.0f} s in tests{lanes}):")
    for module, (t, n) in sorted(times.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {t:7.1f} s {100 * t / total:5.1f} %  {n:4d} tests  {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
