"""Process supervision: start a program, know when it is ready, find it again, stop it.

attune runs long-lived programs beside its CLI: the Kafka broker and Redis of the local stack,
the speed layer, and (for the demo, the tests and the benchmarks) the collector, the model
server and the personalization API. Every one of them is started, watched and stopped with the
few ideas of this module, so each behaves the same way and fails with the same kind of message.

**Spawning.** :func:`spawn` starts a child with stdin closed and stdout + stderr appended to a
log file, and returns a :class:`Child`. An *attached* child stays in the caller's session: it is
stopped by whoever started it (:func:`running` is the context manager the tests and the demo
use) and a Ctrl-C of the terminal reaches it too. A *detached* child gets its own session (and
process group), so it outlives the command that started it (``attune stack up`` returns, the
broker keeps running) and a Ctrl-C of that command does not reach it.

**Pid record.** A detached child is found again by a later command through a pid file,
``var/run/NAME.pid``, holding a :class:`PidRecord`: the pid, the command line it was started
with, the address it serves and when it started, as one JSON object. The file is written to a
temporary name and renamed into place, so a reader never sees half a record.

**Command-line check.** A pid alone proves nothing: the process may have exited and the kernel
may have handed its pid to another program (after a reboot, or on a busy machine). A recorded
pid is *ours* only while it is alive (a zombie is not) and its ``/proc/PID/cmdline`` satisfies
the caller's check. The check is a predicate rather than an equality because some programs
rewrite their title (``redis-server`` shows ``redis-server 127.0.0.1:6379``). :func:`live_record`
removes a record that fails it, so stale files do not accumulate.

**Readiness probe.** A process running is not a process ready. A probe is a callable that
returns ``None`` when the service is ready, or a short reason why it is not yet ("port not
open yet", "503 loading"); :func:`tcp_probe` and :func:`http_probe` cover the usual cases, and
a probe raises :class:`GaveUp` when waiting longer is pointless (the program reported a failure).
:func:`wait_ready` polls a probe until a deadline. When the process dies first it fails at once,
with the exit code, and every failure carries the last lines of the log, since that is where
the reason is.

**Graceful stop.** :func:`stop` sends SIGTERM, waits a grace period, then sends SIGKILL, and
reports which of the two ended the process (:class:`Stopped`). For a detached child the SIGKILL
goes to its whole process group, and what is left of the group once the leader has exited is
killed too (a Python driver's Spark JVM, say), so stopping a detached child leaves nothing
behind.

This module is part of the core: it imports the standard library and :mod:`attune.config` only.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from attune.config import CONFIG_ENV, ENV_PREFIX, AttuneConfig, write_config

if TYPE_CHECKING:
    import urllib.request

LOG_TAIL_LINES = 30
PROGRESS_EVERY_S = 3.0
# After SIGKILL, how long to wait for the kernel to reap the process before giving up on it.
KILL_WAIT_S = 10.0

Probe = Callable[[], str | None]
"""A readiness probe: ``None`` when ready, else a short reason why not yet."""

Say = Callable[[str], None]
"""Where progress lines go (the stack prints them prefixed ``stack:``); None = silent."""


class ProcessError(RuntimeError):
    """A child could not be started or made ready; the message says why and shows its log."""


class NotReady(ProcessError):
    """:func:`wait_ready` gave up: the process died, the deadline passed, or the probe gave up."""

    def __init__(self, message: str, *, reason: str, exit_code: int | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


class GaveUp(Exception):
    """Raised by a probe when the service will never become ready (it reported a failure)."""


# ----------------------------------------------------------------------------------------
# Is a pid alive, and what does it run?


# The Popen objects of the children this Python process started, so that they are reaped: a
# stopped child would otherwise linger as a zombie and still look alive to kill(pid, 0).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (not a zombie); reaps our own exited children."""
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # the state is the first field after the parenthesised command name; Z = zombie
    return stat.rpartition(")")[2].split()[0] != "Z"


def exit_code(pid: int) -> int | None:
    """The exit code of our child ``pid`` once it has exited (None while it runs, or when
    ``pid`` was not started by this process: only a parent learns its child's exit code)."""
    child = _CHILDREN.get(pid)
    return child.poll() if child is not None else None


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ("" if it is gone).

    It reads as empty for a moment while the process is in exec (just after it was spawned),
    so an empty answer is retried briefly.
    """
    for _ in range(20):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return ""
        if raw:
            return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.01)
    return ""


# ----------------------------------------------------------------------------------------
# Pid records


@dataclass(frozen=True)
class PidRecord:
    """A detached process attune started, as its pid file records it."""

    pid: int
    address: str = ""  # what it serves, e.g. "127.0.0.1:9092" ("" if nothing)
    cmdline: tuple[str, ...] = ()  # as started
    started_at: str = ""  # ISO 8601, UTC

    @classmethod
    def of_this_process(cls, address: str = "") -> PidRecord:
        """The record of the calling process (a foreground server recording itself)."""
        return cls(os.getpid(), address, tuple(sys.orig_argv), _now())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_record(path: Path, record: PidRecord) -> None:
    """Write ``record`` to ``path`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = asdict(record)
    data["cmdline"] = list(record.cmdline)
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


def read_record(path: Path) -> PidRecord | None:
    """The record in ``path``, or None if there is none or it is unreadable.

    Also reads the plain ``PID [ADDRESS]`` line that attune wrote before records were JSON,
    so processes started by an earlier version are still found (and stopped) by this one.
    """
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        try:
            return PidRecord(
                pid=int(data["pid"]),
                address=str(data.get("address", "")),
                cmdline=tuple(str(a) for a in data.get("cmdline", ())),
                started_at=str(data.get("started_at", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None
    fields = text.split()
    try:
        return PidRecord(int(fields[0]), fields[1] if len(fields) > 1 else "")
    except (ValueError, IndexError):
        return None


def live_record(path: Path, matches: Callable[[str], bool]) -> PidRecord | None:
    """The record in ``path`` if its process is alive and its command line ``matches``.

    A record that fails (process gone, or its pid reused by another program) is stale and the
    file is removed. The check depends on nothing but the record and the running process, so
    a caller with another configuration cannot disown a live process.
    """
    record = read_record(path)
    if record is not None and pid_alive(record.pid) and matches(cmdline(record.pid)):
        return record
    path.unlink(missing_ok=True)
    return None


# ----------------------------------------------------------------------------------------
# Logs and probes


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the log ``path``, indented and marked for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"  ({path} does not exist)"
    return "\n".join("  | " + line for line in text[-lines:]) or f"  ({path} is empty)"


def local_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` of a server bound to ``host`` as a client on this machine reaches
    it: a server listening on every interface (``0.0.0.0``, ``::``) is reached at 127.0.0.1."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def tcp_probe(host: str, port: int) -> Probe:
    """Ready when ``host:port`` accepts a TCP connection."""
    return lambda: None if port_open(host, port) else f"{host}:{port} not open yet"


class NoAnswer(OSError):
    """No HTTP answer from a URL: connection refused or reset, timed out, or not HTTP."""


@functools.cache
def _http_opener() -> urllib.request.OpenerDirector:
    import urllib.request

    # Readiness checks talk to this machine: an http_proxy in the environment must not apply.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(
    url: str, timeout_s: float = 2.0, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """``GET url`` (with ``headers``, e.g. an admin key): (status, body) for any HTTP answer,
    error statuses included; raises :class:`NoAnswer` saying why when there is none."""
    # imported here: the CLI imports this module, and `attune --help` should stay quick
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _http_opener().open(request, timeout=timeout_s) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        cause: BaseException = exc
        if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
            cause = exc.reason  # "ConnectionRefusedError: ..." rather than urllib's wrapper
        raise NoAnswer(f"{type(cause).__name__}: {cause}") from exc


def http_answers(url: str, timeout_s: float = 1.0) -> bool:
    """Whether anything answers HTTP at ``url`` (any status): a port already taken."""
    try:
        http_get(url, timeout_s)
    except NoAnswer:
        return False
    return True


def http_probe(url: str, timeout_s: float = 2.0) -> Probe:
    """Ready when ``GET url`` answers 200 (a ``/readyz`` endpoint)."""

    def probe() -> str | None:
        try:
            status, body = http_get(url, timeout_s)
        except NoAnswer as exc:
            return str(exc)
        return None if status == 200 else f"{status} {body[:200]}"

    return probe


def http_workers_probe(url: str, workers: int, timeout_s: float = 2.0) -> Probe:
    """Ready when ``workers`` distinct worker processes have answered ``GET url`` with 200.

    For a server of N worker processes sharing one listening socket (uvicorn ``--workers``):
    the first worker to answer is not the server being ready, and load sent then lands on the
    workers that happen to be up. The endpoint names its worker in a JSON ``worker_pid``; each
    probe opens a new connection, which the kernel hands to a worker waiting in accept.
    """
    ready_pids: set[int] = set()

    def probe() -> str | None:
        for _ in range(4 * workers):  # a few connections per poll, so waiting stays short
            try:
                status, body = http_get(url, timeout_s)
            except NoAnswer as exc:
                return str(exc)
            if status != 200:
                return f"{status} {body[:200]}"
            try:
                ready_pids.add(int(json.loads(body)["worker_pid"]))
            except (ValueError, KeyError, TypeError):
                return f"no worker_pid in the answer of {url}: {body[:200]}"
            if len(ready_pids) >= workers:
                return None
        return f"{len(ready_pids)} of {workers} worker processes ready"

    return probe


# ----------------------------------------------------------------------------------------
# Waiting for readiness


def wait_ready(
    what: str,
    probe: Probe,
    timeout_s: float,
    *,
    pid: int | None = None,
    logs: Iterable[Path] = (),
    say: Say | None = None,
    poll_s: float = 0.25,
) -> float:
    """Poll ``probe`` until it answers None (ready); returns the seconds waited.

    ``pid`` is the process that should become ready: if it dies first, this fails at once
    (with its exit code when it is our child). With ``say``, a progress line every few
    seconds. Raises :class:`NotReady` naming ``what`` and the probe's last reason, followed by
    the last lines of each of ``logs``.
    """
    start = time.monotonic()
    next_note = start + PROGRESS_EVERY_S
    code: int | None = None
    while True:
        try:
            reason = probe()
        except GaveUp as exc:
            reason = str(exc)
            failure = f"{what}: {reason}"
            break
        elapsed = time.monotonic() - start
        if reason is None:
            return elapsed
        if pid is not None and not pid_alive(pid):
            code = exit_code(pid)
            exited = "exited" if code is None else f"exited with code {code}"
            failure = f"{what}: the process {exited} during start-up ({reason})"
            break
        if elapsed > timeout_s:
            failure = f"{what}: not ready after {timeout_s:.0f}s ({reason})"
            break
        if say is not None and time.monotonic() >= next_note:
            say(f"waiting for {what}: {reason} ({elapsed:.0f}s of at most {timeout_s:.0f}s)")
            next_note = time.monotonic() + PROGRESS_EVERY_S
        time.sleep(poll_s)
    details = "\n".join(f"last lines of {p}:\n{tail(p)}" for p in logs)
    message = f"{failure}\n{details}" if details else failure
    raise NotReady(message, reason=reason, exit_code=code)


# ----------------------------------------------------------------------------------------
# Stopping


class Stopped(enum.Enum):
    """How :func:`stop` ended a process."""

    NOT_RUNNING = "not running"  # it had already exited
    TERMINATED = "terminated"  # it exited on SIGTERM within the grace period
    KILLED = "killed"  # it ignored SIGTERM for the grace period and got SIGKILL


def _signal(pid: int, sig: int, group: bool) -> bool:
    """Send ``sig`` to ``pid`` (or its process group); False if there is no such process."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def stop(
    pid: int,
    name: str,
    timeout_s: float,
    *,
    group: bool = False,
    say: Say | None = None,
    poll_s: float = 0.1,
) -> Stopped:
    """SIGTERM ``pid``, wait up to ``timeout_s`` for it to exit, then SIGKILL it.

    With ``group`` (``pid`` leads its own process group: a detached child), SIGKILL goes to
    the whole group, and whatever is left of the group once the leader has exited is killed
    too. With ``say``, progress lines while waiting and a last line saying it stopped.
    """
    start = time.monotonic()
    outcome = Stopped.TERMINATED
    if not pid_alive(pid) or not _signal(pid, signal.SIGTERM, group=False):
        outcome = Stopped.NOT_RUNNING
    next_note = start + PROGRESS_EVERY_S
    while outcome is not Stopped.NOT_RUNNING and pid_alive(pid):
        now = time.monotonic()
        if now - start > timeout_s:
            if say is not None:
                say(f"{name} (pid {pid}) did not stop within {timeout_s:.0f}s; sending SIGKILL")
            outcome = Stopped.KILLED
            if _signal(pid, signal.SIGKILL, group):
                deadline = time.monotonic() + KILL_WAIT_S
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(poll_s)
            break
        if say is not None and now >= next_note:
            say(f"waiting for {name} (pid {pid}) to stop... {now - start:.0f}s")
            next_note = now + PROGRESS_EVERY_S
        time.sleep(poll_s)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # what the leader left behind
    _CHILDREN.pop(pid, None)
    if say is not None and outcome is not Stopped.NOT_RUNNING:
        say(f"{name} stopped (pid {pid}, {time.monotonic() - start:.1f}s)")
    return outcome


# ----------------------------------------------------------------------------------------
# Children


class Child:
    """A process this one started with :func:`spawn`."""

    def __init__(
        self, proc: subprocess.Popen[bytes], name: str, log: Path, *, detached: bool, url: str
    ) -> None:
        self.proc = proc
        self.name = name
        self.log = log
        self.detached = detached
        self.url = url  # where it serves, if it is a server ("" if not)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(
        self,
        probe: Probe,
        timeout_s: float,
        *,
        say: Say | None = None,
        poll_s: float = 0.25,
    ) -> float:
        """:func:`wait_ready` for this child, its log included in a failure."""
        return wait_ready(
            self.name, probe, timeout_s, pid=self.pid, logs=[self.log], say=say, poll_s=poll_s
        )

    def stop(self, timeout_s: float = 20.0, *, say: Say | None = None) -> Stopped:
        """:func:`stop` this child (its group too when detached) and reap it."""
        outcome = stop(self.pid, self.name, timeout_s, group=self.detached, say=say)
        self.proc.poll()
        return outcome

    def kill(self) -> None:
        """SIGKILL at once (its group when detached): the way a crash looks to its clients."""
        if self.alive():
            _signal(self.pid, signal.SIGKILL, self.detached)
            self.proc.wait(timeout=KILL_WAIT_S)
        _CHILDREN.pop(self.pid, None)


def spawn(
    cmd: Sequence[str],
    *,
    name: str,
    log: Path,
    detached: bool = False,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    pid_file: Path | None = None,
    address: str = "",
    url: str = "",
) -> Child:
    """Start ``cmd``: stdin closed, stdout and stderr appended to ``log``.

    ``detached`` gives it its own session (it outlives the caller and its Ctrl-C). With
    ``pid_file``, a :class:`PidRecord` naming ``address`` is written there, so that a later
    command finds it (:func:`live_record`). ``name`` is how messages call it ("Kafka", "the
    collector at http://..."); ``url`` is kept on the :class:`Child` for its users.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=detached,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    if pid_file is not None:
        write_record(pid_file, PidRecord(proc.pid, address, tuple(cmd), _now()))
    return Child(proc, name, log, detached=detached, url=url)


def start(
    cmd: Sequence[str],
    *,
    name: str,
    log: Path,
    ready: Probe,
    ready_timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    url: str = "",
) -> Child:
    """:func:`spawn` an attached child and wait until ``ready`` says so; a child that does not
    become ready is stopped again, and :class:`NotReady` raised with its log."""
    child = spawn(cmd, name=name, log=log, env=env, cwd=cwd, url=url)
    try:
        child.wait_ready(ready, ready_timeout_s)
    except BaseException:
        child.stop()
        raise
    return child


@contextlib.contextmanager
def running(
    cmd: Sequence[str],
    *,
    name: str,
    log: Path,
    ready: Probe,
    ready_timeout_s: float,
    stop_timeout_s: float = 20.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    url: str = "",
) -> Iterator[Child]:
    """:func:`start` an attached child for the length of a ``with`` block; stop it on exit."""
    child = start(
        cmd,
        name=name,
        log=log,
        ready=ready,
        ready_timeout_s=ready_timeout_s,
        env=env,
        cwd=cwd,
        url=url,
    )
    try:
        yield child
    finally:
        child.stop(stop_timeout_s)


def attune_command(
    cfg: AttuneConfig, args: Sequence[str], config_name: str
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``attune ARGS`` in a child with exactly
    ``cfg``, the caller's configuration (file, environment overrides and changes made in code).

    ``cfg`` is written to ``<run_dir>/<config_name>.yaml`` (absolute paths, so the child may
    run elsewhere) and passed with ``--config``; ``ATTUNE__*`` overrides and ``ATTUNE_CONFIG``
    are left out of the child's environment, so nothing applies twice.
    """
    config_file = write_config(cfg, cfg.run_dir / f"{config_name}.yaml")
    cmd = [sys.executable, "-m", "attune.cli", "--config", str(config_file), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != CONFIG_ENV}
    return cmd, env
