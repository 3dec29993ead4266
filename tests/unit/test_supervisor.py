"""attune.supervisor against real child processes (small ``python -c`` programs), no services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attune import supervisor
from attune.config import AttuneConfig, free_port, load_config
from attune.supervisor import NotReady, PidRecord, Stopped


def _python(code: str, *marker: str) -> list[str]:
    return [sys.executable, "-c", code, *marker]


SLEEPER = "import time; time.sleep(60)"


def _exited_pid() -> int:
    """The pid of a process that has exited (and been reaped), started outside the supervisor."""
    done = subprocess.run(
        _python("import os; print(os.getpid())"), check=True, capture_output=True, text=True
    )
    return int(done.stdout)


def _running_with(marker: str) -> list[int]:
    """The pids of the processes whose command line holds ``marker``."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


# ----------------------------------------------------------------------------------------
# Spawning and readiness


def test_spawn_then_wait_until_the_port_opens(tmp_path: Path) -> None:
    port = free_port()
    # listens only after 0.5 s: the first probes find the port closed
    code = (
        "import socket, time; time.sleep(0.5); s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); print('listening', flush=True); "
        "time.sleep(60)"
    )
    log = tmp_path / "server.log"
    child = supervisor.spawn(_python(code), name="server", log=log)
    try:
        probe = supervisor.tcp_probe("127.0.0.1", port)
        assert probe() == f"127.0.0.1:{port} not open yet"
        waited = child.wait_ready(probe, timeout_s=30)
        assert 0.4 < waited < 30
        assert supervisor.port_open("127.0.0.1", port)
    finally:
        assert child.stop(10) is Stopped.TERMINATED
    assert log.read_text() == "listening\n"  # its output went to the log


def test_http_probe_until_200(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    # nothing answers yet: NoAnswer names the refusal
    with pytest.raises(supervisor.NoAnswer, match="ConnectionRefusedError"):
        supervisor.http_get(url)
    assert not supervisor.http_answers(url)
    cmd = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    with supervisor.running(
        cmd,
        name="web",
        log=tmp_path / "web.log",
        ready=supervisor.http_probe(url),
        ready_timeout_s=30,
        cwd=tmp_path,
    ) as child:
        assert child.alive()
        assert supervisor.http_probe(url)() is None
        status, body = supervisor.http_get(f"{url}missing")
        assert status == 404 and "404" in body  # an error status is an answer, not a failure
        assert supervisor.http_answers(url)
    assert not child.alive()  # stopped when the block ended


# Two worker processes accepting on one listening socket, like uvicorn --workers 2; each
# answers {"worker_pid": <its pid>}. The parent prints the port, then waits for its workers.
TWO_WORKERS = """
import json, os, socket, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Answer(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"worker_pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(16)
print(sock.getsockname()[1], flush=True)
for _ in range(2):
    if os.fork() == 0:
        server = HTTPServer(sock.getsockname(), Answer, bind_and_activate=False)
        server.socket = sock
        server.serve_forever()
os.wait()
"""


def test_a_multi_worker_server_is_ready_once_every_worker_answered() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", TWO_WORKERS], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}/readyz"
        # the two workers answer with their own pids: both must be seen for 2 of 2
        two = supervisor.http_workers_probe(url, workers=2)
        deadline = time.monotonic() + 20
        while (reason := two()) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reason is None
        # a third worker never answers: the probe says how many are ready, never None
        three = supervisor.http_workers_probe(url, workers=3)
        answers = [three() for _ in range(20)]
        assert None not in answers
        assert answers[-1] == "2 of 3 worker processes ready"
    finally:
        supervisor.stop(proc.pid, "two workers", 5, group=True)  # the workers too


def test_a_child_that_dies_before_ready_fails_at_once_with_exit_code_and_log(
    tmp_path: Path,
) -> None:
    code = "import sys\nfor i in range(40): print('line', i)\nsys.exit(3)"
    log = tmp_path / "dying.log"
    child = supervisor.spawn(_python(code), name="dying", log=log)
    start = time.monotonic()
    with pytest.raises(NotReady) as err:
        child.wait_ready(lambda: "no answer", timeout_s=60)
    assert time.monotonic() - start < 30  # not the 60 s deadline
    message = str(err.value)
    assert message.startswith("dying: the process exited with code 3 during start-up (no answer)")
    assert f"last lines of {log}:" in message
    # 40 lines printed, the last 30 shown: lines 10..39
    assert "  | line 39" in message and "  | line 10" in message
    assert "line 9\n" not in message
    assert err.value.exit_code == 3 and err.value.reason == "no answer"


def test_running_stops_a_child_that_never_becomes_ready(tmp_path: Path) -> None:
    marker = f"attune-test-never-ready-{os.getpid()}"
    with (
        pytest.raises(NotReady, match=r"^never: not ready after 1s \(still starting\)"),
        supervisor.running(
            _python(SLEEPER, marker),
            name="never",
            log=tmp_path / "never.log",
            ready=lambda: "still starting",
            ready_timeout_s=0.6,
        ),
    ):
        pytest.fail("the block must not run")
    # the child was stopped before the error reached us: no process runs the marker any more
    assert _running_with(marker) == []


def test_a_probe_that_gives_up_ends_the_wait_at_once(tmp_path: Path) -> None:
    log = tmp_path / "failing.log"
    log.write_text("query failed: boom\n")

    def probe() -> str | None:
        raise supervisor.GaveUp("it reported a failure")

    with pytest.raises(NotReady) as err:
        supervisor.wait_ready("failing", probe, timeout_s=60, logs=[log])
    assert str(err.value) == (
        f"failing: it reported a failure\nlast lines of {log}:\n  | query failed: boom"
    )


def test_progress_lines_every_three_seconds() -> None:
    lines: list[str] = []
    answers = iter(["starting"] * 13 + [None])  # 13 polls of 0.25 s: ready after about 3.25 s
    waited = supervisor.wait_ready("thing", lambda: next(answers), 30, say=lines.append)
    assert 3.0 < waited < 10
    assert lines == ["waiting for thing: starting (3s of at most 30s)"]


# ----------------------------------------------------------------------------------------
# Stopping


def test_stop_a_child_that_exits_on_sigterm(tmp_path: Path) -> None:
    child = supervisor.spawn(_python(SLEEPER), name="polite", log=tmp_path / "p.log")
    start = time.monotonic()
    assert child.stop(10) is Stopped.TERMINATED
    assert time.monotonic() - start < 5
    assert not supervisor.pid_alive(child.pid)
    assert child.exit_code == -15  # killed by the signal SIGTERM (15): Popen says -15


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(60)"
    )
    log = tmp_path / "stubborn.log"
    child = supervisor.spawn(_python(code), name="stubborn", log=log, detached=True)
    # wait until the handler is installed, or SIGTERM would still end it
    child.wait_ready(lambda: None if log.read_text() else "no handler yet", 30)
    said: list[str] = []
    start = time.monotonic()
    outcome = supervisor.stop(child.pid, "stubborn", 1.0, say=said.append)
    elapsed = time.monotonic() - start
    assert outcome is Stopped.KILLED
    assert 1.0 <= elapsed < 6  # the 1 s grace period, then SIGKILL at once
    assert not supervisor.pid_alive(child.pid)
    assert child.exit_code == -9
    assert said[0] == f"stubborn (pid {child.pid}) did not stop within 1s; sending SIGKILL"
    assert said[-1].startswith(f"stubborn stopped (pid {child.pid}, ")


def test_stopping_a_process_that_is_gone_says_so() -> None:
    assert supervisor.stop(_exited_pid(), "gone", 1.0) is Stopped.NOT_RUNNING


def test_stopping_a_detached_child_also_ends_what_it_left_in_its_group(tmp_path: Path) -> None:
    # the child starts a grandchild in its process group (as a Python driver starts its Spark
    # JVM), records its pid and exits on SIGTERM without stopping it
    grandchild_file = tmp_path / "grandchild"
    code = (
        "import pathlib, subprocess, sys, time\n"
        f"g = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}])\n"
        f"pathlib.Path({str(grandchild_file)!r}).write_text(str(g.pid))\n"
        "time.sleep(60)"
    )
    child = supervisor.spawn(_python(code), name="driver", log=tmp_path / "d.log", detached=True)
    child.wait_ready(lambda: None if grandchild_file.exists() else "no grandchild yet", 30)
    grandchild = int(grandchild_file.read_text())
    assert supervisor.pid_alive(grandchild)
    assert child.stop(10) is Stopped.TERMINATED
    deadline = time.monotonic() + 10
    while supervisor.pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not supervisor.pid_alive(grandchild)


# ----------------------------------------------------------------------------------------
# Pid records and the command-line check


def test_a_pid_record_is_written_at_spawn_and_read_back(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "sleeper.pid"
    cmd = _python(SLEEPER, "attune-test-sleeper")
    child = supervisor.spawn(
        cmd, name="sleeper", log=tmp_path / "s.log", pid_file=pid_file, address="127.0.0.1:7001"
    )
    try:
        data = json.loads(pid_file.read_text())
        assert data["pid"] == child.pid and data["address"] == "127.0.0.1:7001"
        assert data["cmdline"] == cmd
        record = supervisor.read_record(pid_file)
        assert record == PidRecord(child.pid, "127.0.0.1:7001", tuple(cmd), data["started_at"])
        assert supervisor.live_record(pid_file, lambda c: "attune-test-sleeper" in c) == record
        assert not list(pid_file.parent.glob(".*.tmp"))  # the temporary file was renamed
    finally:
        child.stop(10)


def test_records_of_earlier_versions_are_read(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    path.write_text("123 127.0.0.1:9092\n")  # the stack's old "PID ADDRESS"
    assert supervisor.read_record(path) == PidRecord(123, "127.0.0.1:9092")
    path.write_text("456")  # the speed layer's old "PID"
    assert supervisor.read_record(path) == PidRecord(456, "")
    path.write_text("garbage")
    assert supervisor.read_record(path) is None
    assert supervisor.read_record(tmp_path / "missing.pid") is None


def test_a_stale_pid_file_is_not_ours_and_is_removed(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    supervisor.write_record(pid_file, PidRecord(_exited_pid(), "127.0.0.1:1"))
    assert supervisor.live_record(pid_file, lambda cmd: True) is None
    assert not pid_file.exists()


def test_a_recycled_pid_running_another_program_is_not_ours(tmp_path: Path) -> None:
    # the recorded pid is alive, but runs something else than what attune started: as when
    # the kernel has given the pid of a stopped broker to another program
    other = supervisor.spawn(_python(SLEEPER, "some-other-program"), name="o", log=tmp_path / "o")
    try:
        pid_file = tmp_path / "kafka.pid"
        supervisor.write_record(pid_file, PidRecord(other.pid, "127.0.0.1:9092"))
        assert supervisor.pid_alive(other.pid)
        assert supervisor.live_record(pid_file, lambda cmd: "kafka.Kafka" in cmd) is None
        assert not pid_file.exists()
        assert other.alive()  # and it was left alone
    finally:
        other.stop(10)


def test_the_record_of_this_process(tmp_path: Path) -> None:
    record = PidRecord.of_this_process("127.0.0.1:1")
    assert record.pid == os.getpid() and record.cmdline == tuple(sys.orig_argv)
    path = tmp_path / "self.pid"
    supervisor.write_record(path, record)
    assert supervisor.live_record(path, lambda cmd: cmd == " ".join(sys.orig_argv)) == record


# ----------------------------------------------------------------------------------------
# Children of attune itself


def test_attune_command_hands_over_the_exact_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTUNE__REDIS__DB", "5")
    cfg = load_config(None)
    monkeypatch.setenv("ATTUNE_CONFIG", "/nowhere.yaml")  # the child must not read it
    cfg = cfg.model_copy(
        update={"paths": cfg.paths.model_copy(update={"var_dir": tmp_path / "var"})}
    )
    cmd, env = supervisor.attune_command(cfg, ["speed", "status"], "child")
    config_file = tmp_path / "var" / "run" / "child.yaml"
    assert cmd == [
        *(sys.executable, "-m", "attune.cli", "--config", str(config_file)),
        *("speed", "status"),
    ]
    # the overrides are in the file, and not in the environment to apply a second time
    assert "ATTUNE__REDIS__DB" not in env and "ATTUNE_CONFIG" not in env
    assert env["PATH"] == os.environ["PATH"]
    loaded = load_config(config_file, environ={})
    assert isinstance(loaded, AttuneConfig) and loaded.redis.db == 5
    assert loaded.paths.var_dir == tmp_path / "var"


def test_local_addresses() -> None:
    assert supervisor.local_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert supervisor.local_url("::", 1) == "http://127.0.0.1:1"
    assert supervisor.local_url("10.0.0.2", 8080) == "http://10.0.0.2:8080"
