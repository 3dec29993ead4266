"""The benchmarks' peak-memory sampler (``benchmarks/memory.py``) on child processes that
allocate a known amount.

Each child is a fresh Python that fills a ``bytes`` object of a stated size (``b"x" * n``
writes every page, so all of it is resident) and then waits for a line on stdin. The expected
peaks are the sizes the test allocates; the bounds allow for the interpreter itself (a bare
``python -c`` is about 10 MiB resident, well under the 80 MiB of slack allowed per process).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.unit.benchmark_modules import load_benchmark

MiB = 2**20
SLACK_MB = 80  # a bare interpreter's RSS, generously

# Allocates ARGV[1] MiB, optionally frees it again (ARGV[2] == "free"), optionally starts a
# child doing the same with ARGV[3] MiB (from a second thread when ARGV[5] == "thread", as a
# JVM starts its Python workers), says "ready" (and the child's pid), then holds until stdin
# closes.
CHILD = r"""
import subprocess, sys, threading
mb, mode = int(sys.argv[1]), sys.argv[2]
block = b"x" * (mb * 2**20)
if mode == "free":
    del block
kid, spawned, done = None, threading.Event(), threading.Event()
def start_kid():
    global kid
    kid = subprocess.Popen(
        [sys.executable, "-c", sys.argv[4], sys.argv[3], "hold"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert kid.stdout.readline().startswith("ready")
def spawn():  # the spawning thread lives on: Linux lists the child under it, not under main
    start_kid()
    spawned.set()
    done.wait()
if len(sys.argv) > 5 and sys.argv[5] == "thread":
    threading.Thread(target=spawn).start()
    spawned.wait()
elif len(sys.argv) > 5:
    start_kid()
print("ready", kid.pid if kid else "", flush=True)
sys.stdin.readline()
done.set()
if kid:
    kid.stdin.close()
    kid.wait()
"""


@pytest.fixture(scope="module")
def memory() -> ModuleType:
    return load_benchmark("memory")


class Child:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        words = self.proc.stdout.readline().split()
        assert words[0] == "ready"
        self.pid = self.proc.pid
        self.kid = int(words[1]) if len(words) > 1 else None

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture
def child() -> Iterator[type[Child]]:
    started: list[Child] = []

    class Tracked(Child):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for c in started:
        c.close()


def test_one_process_holding_200_mib(memory: ModuleType, child: type[Child]) -> None:
    c = child("200", "hold")
    peaks = memory.PeakMemory([memory.ProcessGroup("p", lambda: [c.pid])]).start().stop()
    p = peaks["p"]
    assert p["samples"] >= 2  # the first sample and the last
    assert 200 <= p["peak_rss_mb"] <= 200 + SLACK_MB
    assert [int(k.split()[0]) for k in p["processes"]] == [c.pid]
    (hwm,) = p["processes"].values()
    assert 200 <= hwm <= 200 + SLACK_MB
    assert p["hwm_since"] == "process start"


@pytest.mark.parametrize("spawned_from", ["main", "thread"])
def test_tree_sums_parent_and_child_and_roots_alone_do_not(
    memory: ModuleType, child: type[Child], spawned_from: str
) -> None:
    # parent holds 100 MiB, its child 150 MiB: the tree holds >= 250 MiB at once; a child
    # forked by another thread than the main one is found too
    c = child("100", "hold", "150", CHILD, spawned_from)
    assert c.kid is not None
    groups = [
        memory.ProcessGroup("tree", lambda: [c.pid]),
        memory.ProcessGroup("parent only", lambda: [c.pid], tree=False),
    ]
    peaks = memory.PeakMemory(groups).start().stop()
    tree, alone = peaks["tree"], peaks["parent only"]
    assert 250 <= tree["peak_rss_mb"] <= 250 + 2 * SLACK_MB
    assert {int(k.split()[0]) for k in tree["processes"]} == {c.pid, c.kid}
    assert 250 <= tree["hwm_sum_mb"] <= 250 + 2 * SLACK_MB
    assert 100 <= alone["peak_rss_mb"] <= 100 + SLACK_MB
    assert list(alone["processes"]) == [k for k in tree["processes"] if int(k.split()[0]) == c.pid]


def test_sampling_catches_a_peak_that_is_gone_by_the_end(
    memory: ModuleType, tmp_path: Path
) -> None:
    # holds 200 MiB for 1.5 s (six samples at 0.25 s), then frees it and idles
    script = "import time; b = b'x' * (200 * 2**20); time.sleep(1.5); del b; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        mem = memory.PeakMemory([memory.ProcessGroup("p", lambda: [proc.pid])]).start()
        time.sleep(3.0)
        peaks = mem.stop()
        assert 200 <= peaks["p"]["peak_rss_mb"] <= 200 + SLACK_MB
        now = memory.status_kb(proc.pid, "VmRSS")["VmRSS"] / 1024
        assert now < 100  # freed: the peak is not simply the RSS at the end
    finally:
        proc.kill()
        proc.wait()


def test_vmhwm_keeps_a_freed_peak_and_reset_starts_it_at_the_window(
    memory: ModuleType, child: type[Child]
) -> None:
    # the child allocated and freed 200 MiB before it said "ready": its RSS is small, its
    # high-water mark is not
    c = child("200", "free")
    since_start = memory.PeakMemory([memory.ProcessGroup("p", lambda: [c.pid])]).start().stop()
    p = since_start["p"]
    assert p["peak_rss_mb"] < 100
    (hwm,) = p["processes"].values()
    assert 200 <= hwm <= 200 + SLACK_MB
    if not memory.reset_hwm(c.pid):
        pytest.skip("this kernel does not allow resetting VmHWM (/proc/PID/clear_refs)")
    windowed = memory.PeakMemory([memory.ProcessGroup("p", lambda: [c.pid], reset_hwm=True)])
    w = windowed.start().stop()["p"]
    assert w["hwm_since"] == "window"
    (hwm,) = w["processes"].values()
    assert hwm < 100


def test_a_group_that_never_has_a_process(memory: ModuleType) -> None:
    def gone() -> list[int]:
        raise FileNotFoundError("no pid file")

    peaks = memory.PeakMemory(
        [memory.ProcessGroup("none", lambda: []), memory.ProcessGroup("gone", gone)]
    )
    out = peaks.start().stop()
    assert (
        out["none"]
        == out["gone"]
        == {
            "peak_rss_mb": 0.0,
            "hwm_sum_mb": 0.0,
            "processes": {},
            "samples": 0,
            "hwm_since": "process start",
        }
    )
    assert memory.format_peaks(out) == "peak RSS: none -; gone -"


def test_format_peaks(memory: ModuleType) -> None:
    peaks = {
        "API": {"peak_rss_mb": 312.4, "hwm_sum_mb": 330.0, "processes": {"1 a": 330.0},
                "samples": 5, "hwm_since": "window"},
        "JVM": {"peak_rss_mb": 1500.6, "hwm_sum_mb": 1620.2,
                "processes": {"2 java": 1400.0, "3 python3": 220.2}, "samples": 9,
                "hwm_since": "window"},
    }  # fmt: skip
    assert memory.format_peaks(peaks) == (
        "peak RSS: API 312 MB (HWM 330); JVM 1501 MB (HWM 1620, 2 procs)"
    )


def test_a_jvms_fork_before_its_exec_is_left_out_but_its_other_children_are_not(
    memory: ModuleType,
) -> None:
    # 10 the speed layer's Python driver, 11 its JVM; 12 a fork of the JVM not yet exec'd
    # (Hadoop running chmod), 13 one that has exec'd chmod, 14 a Python worker; 21 a JVM child of
    # a process outside the group (only forks whose parent is in the group are dropped)
    java, python = "/usr/lib/jvm/java-17/bin/java", "/work/.venv/bin/python3.11"
    exe = {10: python, 11: java, 12: java, 13: "/usr/bin/chmod", 14: python, 21: java, 20: java}
    parent_of = {11: 10, 12: 11, 13: 11, 14: 11, 21: 20}
    assert memory.jvm_forks([10, 11, 12, 13, 14, 21], parent_of, exe.__getitem__) == {12}
    # a Python worker forked by Python (pyspark's daemon) stays: it is a real process
    assert memory.jvm_forks([10, 14], {14: 10}, exe.__getitem__) == set()
