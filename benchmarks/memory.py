"""Peak memory of named process trees while a benchmark runs, read from ``/proc``.

A benchmark names the processes it measures as :class:`ProcessGroup`\\ s (the API, the model
server, the Spark JVM with its Python workers, the Kafka broker ...), each a function that
returns its root pids (looked up again at every sample, so a restarted worker is followed),
whether the group is the roots *and their descendants* (a process tree) or the roots alone, and
whether the benchmark started it (only then is its high-water mark reset, see below).
:class:`PeakMemory` samples them from a background thread every ``interval_s`` (0.25 s) between
``start()`` and ``stop()`` (or as a ``with`` block) and keeps, per group:

* ``peak_rss_mb``: the peak of the group's **summed** RSS over the samples (every process of the
  tree, each counted once). This is the figure reported: what the group held at once, the number
  to size a machine by. Sampling can miss a spike shorter than the interval, so it is a lower
  bound of the true peak;
* ``processes``: each process's own peak, ``VmHWM`` of ``/proc/PID/status`` (the kernel's exact
  high-water mark of its RSS, no spike missed), the highest read while it was alive. It is exact
  per process but not summed: the processes' peaks need not coincide, so their sum,
  ``hwm_sum_mb``, is an upper bound of the tree's peak. The true summed peak lies between
  ``peak_rss_mb`` and ``hwm_sum_mb`` when the marks cover the window (below);
* ``samples``: how many samples saw the group (0: it never had a live process).

VmHWM counts from the process's start. For the processes a benchmark started itself
(``reset_hwm=True``) the mark is reset to the current RSS when sampling starts (writing ``5``
to ``/proc/PID/clear_refs``, Linux >= 4.0; processes found later are reset when first seen),
so it covers the measured window; for processes of the shared stack (Redis, Kafka) it is left
alone and covers their whole life, which the result says (``hwm_since``).

RSS includes shared pages (a forked worker's copy-on-write pages are counted in the parent and
the child), so a tree's sum overstates what it costs the machine by the shared part; PSS would
not, but reading ``smaps_rollup`` of a JVM at 4 Hz costs CPU that the benchmark measures.
One case is left out of the sums because it overstates by a whole JVM: a JVM child that is
itself still a JVM (:func:`jvm_forks`). Hadoop's local file system runs ``chmod`` and
``readlink`` as processes, many times a minute in a streaming query's checkpoints; between the
JVM's fork and the child's exec the child shows the JVM's whole RSS, and a sample that catches
one counted the speed layer's 1.6 GB JVM twice (a 5.5-minute window of the freshness benchmark
saw 440 such processes).

Pure ``/proc`` reads (no psutil), Linux only; a process that is gone or unreadable is skipped.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcessGroup:
    """A named set of processes: ``roots`` (pids, or a function returning them, called at every
    sample) and, with ``tree``, all their descendants."""

    name: str
    roots: Callable[[], Iterable[int | None]] | Sequence[int | None]
    tree: bool = True
    reset_hwm: bool = False  # True only for processes the benchmark started itself


def parents() -> dict[int, int]:
    """``{pid: parent pid}`` of every process (field 4 of ``/proc/PID/stat``).

    From the whole process table rather than ``/proc/PID/task/PID/children``: that file lists
    only the children forked by the main thread, and a JVM starts its Python workers from
    other threads."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(stat.parent.name)] = int(fields[1])
    return out


def descendants(pid: int, parent_of: dict[int, int] | None = None) -> list[int]:
    """Every process below ``pid`` (children, their children ...), not ``pid`` itself."""
    parent_of = parents() if parent_of is None else parent_of
    children: dict[int, list[int]] = {}
    for p, pp in parent_of.items():
        children.setdefault(pp, []).append(p)
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def status_kb(pid: int, *fields: str) -> dict[str, int]:
    """The named ``kB`` fields of ``/proc/PID/status`` (``VmRSS``, ``VmHWM`` ...); empty when the
    process is gone. A kernel thread or zombie has no ``Vm*`` lines: those are left out."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            out[key] = int(value.split()[0])
    return out


def executable(pid: int) -> str:
    """The program ``pid`` runs (``/proc/PID/exe``), "" when gone or unreadable."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def jvm_forks(
    pids: Iterable[int], parent_of: dict[int, int], exe_of: Callable[[int], str]
) -> set[int]:
    """The processes of ``pids`` that are a JVM's fork before its exec: their program is
    ``java``, the same as their parent's, which is in ``pids`` too. A JVM starts other programs
    this way (Hadoop's ``chmod``, ``readlink``); it never runs a second JVM as a bare fork."""
    members = set(pids)
    out = set()
    for pid in members:
        parent = parent_of.get(pid)
        if parent not in members:
            continue
        exe = exe_of(pid)
        if Path(exe).name == "java" and exe == exe_of(parent):
            out.add(pid)
    return out


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def reset_hwm(pid: int) -> bool:
    """Reset ``pid``'s VmHWM to its current RSS; False when not allowed or not supported."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Samples the groups' RSS in a background thread; :meth:`result` gives the peaks."""

    def __init__(self, groups: Iterable[ProcessGroup], interval_s: float = 0.25) -> None:
        self.groups = list(groups)
        self.interval_s = interval_s
        self._peak: dict[str, int] = {g.name: 0 for g in self.groups}  # kB
        self._samples: dict[str, int] = {g.name: 0 for g in self.groups}
        self._hwm: dict[str, dict[int, tuple[str, int]]] = {g.name: {} for g in self.groups}
        self._reset: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.started_at: float | None = None
        self.seconds = 0.0

    def _pids(self, group: ProcessGroup, parent_of: dict[int, int] | None) -> list[int]:
        try:
            found = group.roots() if callable(group.roots) else group.roots
            roots = [int(p) for p in found if p]
        except Exception:  # a lookup that fails (stack not up, pid file gone) is an empty group
            return []
        pids = set(roots)
        if group.tree and parent_of is not None:
            for root in roots:
                pids.update(descendants(root, parent_of))
        return sorted(pids)

    def sample(self) -> None:
        """One sample of every group (the thread calls this; tests may call it directly)."""
        parent_of = parents() if any(g.tree for g in self.groups) else None
        with self._lock:
            for group in self.groups:
                total, seen = 0, False
                pids = self._pids(group, parent_of)
                forks = jvm_forks(pids, parent_of, executable) if parent_of else set()
                for pid in pids:
                    if pid in forks:
                        continue
                    if group.reset_hwm and pid not in self._reset:
                        self._reset.add(pid)
                        reset_hwm(pid)
                    kb = status_kb(pid, "VmRSS", "VmHWM")
                    if "VmRSS" not in kb:
                        continue
                    seen = True
                    total += kb["VmRSS"]
                    hwm = max(kb.get("VmHWM", 0), kb["VmRSS"])
                    name, before = self._hwm[group.name].get(pid, (process_name(pid), 0))
                    self._hwm[group.name][pid] = (name, max(before, hwm))
                if seen:
                    self._samples[group.name] += 1
                    self._peak[group.name] = max(self._peak[group.name], total)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def start(self) -> PeakMemory:
        self.started_at = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, dict[str, Any]]:
        """Stops sampling (one last sample first) and returns :meth:`result`."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.sample()
        if self.started_at is not None:
            self.seconds = time.monotonic() - self.started_at
        return self.result()

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def result(self) -> dict[str, dict[str, Any]]:
        """Per group: ``peak_rss_mb`` (sampled summed peak, the reported figure),
        ``hwm_sum_mb`` (sum of the processes' VmHWM, an upper bound), ``processes``
        (``"pid name"`` -> VmHWM MB), ``samples`` and ``hwm_since`` (``window`` or
        ``process start``)."""
        with self._lock:
            out = {}
            for g in self.groups:
                hwm = self._hwm[g.name]
                out[g.name] = {
                    "peak_rss_mb": round(self._peak[g.name] / 1024, 1),
                    "hwm_sum_mb": round(sum(kb for _, kb in hwm.values()) / 1024, 1),
                    "processes": {
                        f"{pid} {name}": round(kb / 1024, 1)
                        for pid, (name, kb) in sorted(hwm.items())
                    },
                    "samples": self._samples[g.name],
                    "hwm_since": "window" if g.reset_hwm else "process start",
                }
            return out


def format_peaks(peaks: dict[str, dict[str, Any]]) -> str:
    """One line: ``name peak MB (VmHWM sum MB, n procs)`` per group, for the benchmarks'
    tables; ``-`` for a group never seen."""
    parts = []
    for name, p in peaks.items():
        if not p["samples"]:
            parts.append(f"{name} -")
            continue
        n = len(p["processes"])
        procs = f", {n} procs" if n > 1 else ""
        parts.append(f"{name} {p['peak_rss_mb']:.0f} MB (HWM {p['hwm_sum_mb']:.0f}{procs})")
    return "peak RSS: " + "; ".join(parts)
