"""What every part of the local stack shares: its error, status record, messages, addresses,
and the stack's policy over pid records (one process per address and data folder)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from attune import supervisor

STOP_TIMEOUT_S = 30.0


class StackError(RuntimeError):
    """A component could not be started, stopped or checked; the message says what to do."""


@dataclass(frozen=True)
class ComponentStatus:
    """Health of one part of the stack, as ``attune stack status`` shows it."""

    component: str
    address: str
    healthy: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def say(message: str) -> None:
    print(f"stack: {message}", flush=True)


def resolve_ip(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def same_endpoint(a: tuple[str, int], b: tuple[str, int]) -> bool:
    return a[1] == b[1] and resolve_ip(a[0]) == resolve_ip(b[0])


def started_by(pid: int | None) -> str:
    return f"started by attune (pid {pid})" if pid is not None else "not started by attune"


# ----------------------------------------------------------------------------------------
# The processes the stack started


def owned_pid(pid_file: Path, program: Callable[[str], bool], address: str) -> int | None:
    """The pid of the live ``program`` attune started to serve ``address``, else None."""
    record = supervisor.live_record(pid_file, program)
    return record.pid if record is not None and record.address == address else None


def recorded_for(
    pid_file: Path, program: Callable[[str], bool], address: str, name: str
) -> int | None:
    """Like :func:`owned_pid`, but a live process recorded for another address is an error:
    starting a second one would share its data folder."""
    record = supervisor.live_record(pid_file, program)
    if record is None:
        return None
    if record.address != address:
        raise StackError(
            f"{pid_file} records a {name} attune started for {record.address} (pid "
            f"{record.pid}), but the config now says {address}. Stop it with the config it "
            "was started with (`attune stack down`), or give this config its own paths.var_dir"
        )
    return record.pid


def wait_until(
    what: str,
    probe: supervisor.Probe,
    timeout_s: float,
    pid: int,
    logs: Iterable[Path],
) -> float:
    """:func:`attune.supervisor.wait_ready` with the stack's progress lines and error."""
    try:
        return supervisor.wait_ready(what, probe, timeout_s, pid=pid, logs=logs, say=say)
    except supervisor.NotReady as exc:
        raise StackError(str(exc)) from None


def stop(pid: int, name: str) -> supervisor.Stopped:
    """Stop a component the stack started (SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``)."""
    return supervisor.stop(pid, name, STOP_TIMEOUT_S, say=say)


def stop_component(
    name: str,
    pid_file: Path,
    program: Callable[[str], bool],
    address: str,
    external_marker: Path,
) -> supervisor.Stopped | None:
    """Stop the ``name`` process the stack started to serve ``address``; leave any other alone.

    Returns how it stopped, or None when there was nothing of ours to stop: a process recorded
    for another address (another config's; it shares nothing with this one), one that attune
    found already running and did not start (``external_marker``), or none at all.
    """
    pid = owned_pid(pid_file, program, address)
    if pid is None:
        other = supervisor.live_record(pid_file, program)
        if other is not None:
            say(
                f"the {name} attune started (pid {other.pid}) serves {other.address}, not "
                f"{address}; leaving it running (stop it with its own config)"
            )
        elif external_marker.exists():
            say(f"{name} was not started by attune; leaving it running")
            external_marker.unlink(missing_ok=True)
        else:
            say(f"{name} is not running (no live pid in {pid_file})")
        return None
    say(f"stopping {name} (pid {pid})")
    return stop(pid, name)
