"""No process of ours outlives its parent: the demo stopped by SIGTERM or killed outright, a receiver
killed while one of its decode workers is stuck, and the start-up race of shared/lifecycle.py.

Real processes throughout; a process counts as gone when its pid no longer names the process it
named when recorded (same start time), or names a zombie.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from adaptcast.demo import ViewerLogin, free_port, spawn_daemon, wait_ready
from adaptcast.shared.lifecycle import PARENT_PID_ENV
from tests.conftest import REPO

GONE_WITHIN_SECONDS = 10.0


def _stat(pid: int) -> tuple[str, int, int] | None:
    """State, parent pid and start time of `pid`; None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name in parentheses may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Every process below `root`, as pid -> start time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if (stat := _stat(pid)) is not None:
            found[pid] = stat[2]
            todo.extend(children.get(pid, []))
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _alive(processes: dict[int, int]) -> dict[int, int]:
    return {pid: start for pid, start in processes.items()
            if (stat := _stat(pid)) is not None and stat[2] == start and stat[0] != "Z"}


def _survivors(processes: dict[int, int], since: float) -> dict[int, str]:
    """Those of `processes` still alive GONE_WITHIN_SECONDS after `since` (a time.monotonic())."""
    while (alive := _alive(processes)) and time.monotonic() < since + GONE_WITHIN_SECONDS:
        time.sleep(0.1)
    return {pid: _command(pid) for pid in alive}


def _kill_all(processes: dict[int, int]) -> None:
    """Leave nothing behind on a shared machine when a test fails."""
    for pid in _alive(processes):
        os.kill(pid, signal.SIGKILL)


def _start_demo(tmp_path: Path) -> tuple[subprocess.Popen, dict[int, int], Path]:
    """`adaptcast demo` once a frame reached its live view: the process, its descendants, its config folder."""
    log = open(tmp_path / "demo.log", "wb")
    demo = subprocess.Popen([sys.executable, "-m", "adaptcast", "demo", "--port", "0"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = dict(demo.stdout.readline().strip().split(": ", 1) for _ in range(6))
    viewer = ViewerLogin(lines["viewer name"], lines["viewer password"])
    deadline = time.monotonic() + 60
    frames = 0
    while frames < 1 and time.monotonic() < deadline and demo.poll() is None:
        try:
            frames = json.loads(viewer.get(lines["live view"] + "api/cameras", timeout=2))[0]["frames"]
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    if frames < 1:  # stop it (and its daemons) before failing, or they would stream on
        demo.terminate()
        demo.wait(30)
    assert frames >= 1, (tmp_path / "demo.log").read_text()
    processes = _descendants(demo.pid)
    commands = {pid: _command(pid) for pid in processes}
    receiver = [command for command in commands.values() if "adaptcast receiver" in command]
    assert len(receiver) == 1 and any("adaptcast sender" in c for c in commands.values()), commands
    assert any("multiprocessing.spawn" in c for c in commands.values()), commands  # a decode worker
    folder = Path(receiver[0].split("--config ")[1].strip()).parent
    assert folder.name.startswith("adaptcast-station-") and folder.is_dir()
    return demo, processes, folder


def test_a_demo_stopped_by_sigterm_stops_its_daemons_and_removes_its_folder(tmp_path):
    demo, processes, folder = _start_demo(tmp_path)
    try:
        demo.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert demo.wait(timeout=GONE_WITHIN_SECONDS) == 0
        assert not _survivors(processes, stopped)
        assert not folder.exists()
    finally:
        demo.kill()
        _kill_all(processes)


def test_a_killed_demo_takes_its_daemons_and_their_decode_workers_with_it(tmp_path):
    demo, processes, folder = _start_demo(tmp_path)
    try:
        demo.kill()
        killed = time.monotonic()
        demo.wait()
        assert not _survivors(processes, killed)
    finally:
        _kill_all(processes)
        shutil.rmtree(folder, ignore_errors=True)  # SIGKILL leaves no time to remove it


def test_a_decode_worker_stuck_when_its_receiver_is_killed_dies_with_it(tmp_path):
    """A worker that does not read its socket (stopped here, as one looping in a decode would be)
    never sees the receiver close it: its death signal must end it."""
    port = free_port(0)
    config = tmp_path / "receiver.yaml"
    config.write_text(yaml.safe_dump({"listen": {"host": "127.0.0.1", "port": port}, "threads_per_worker": 1,
                                      "cameras": [{"name": "gate", "token_env": "ADAPTCAST_TOKEN_GATE"}]}))
    receiver = spawn_daemon("receiver", config, {**os.environ, "ADAPTCAST_TOKEN_GATE": "t0ken-0123456789abcdef"},
                            quiet=True)
    processes: dict[int, int] = {}
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", receiver)
        processes = _descendants(receiver.pid)
        workers = [pid for pid in processes if "multiprocessing.spawn" in _command(pid)]
        assert workers, {pid: _command(pid) for pid in processes}
        os.kill(workers[0], signal.SIGSTOP)
        receiver.kill()
        killed = time.monotonic()
        receiver.wait()
        assert not _survivors(processes, killed)
    finally:
        receiver.kill()
        _kill_all(processes)


def _orphaned_child(parent_lingers: bool) -> tuple[int, subprocess.Popen]:
    """A parent that starts a child (PARENT_PID_ENV set to its own pid) which calls
    `die_with_parent_from_environment` then sleeps; the parent exits at once, or lingers until
    killed once the child has made the call. Returns the child's pid and the parent."""
    child = "from shared.lifecycle import die_with_parent_from_environment as d; d(); print(flush=True); " \
            "import time; time.sleep(60)"
    parent = textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {child!r}],
                                 stdout=subprocess.PIPE if {parent_lingers} else subprocess.DEVNULL,
                                 env={{**os.environ, {PARENT_PID_ENV!r}: str(os.getpid())}})
        print(child.pid, flush=True)
        if {parent_lingers}:
            child.stdout.readline()
            print("called", flush=True)
            time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child_pid = int(process.stdout.readline())
    if parent_lingers:
        assert process.stdout.readline() == "called\n"
    return child_pid, process


def test_a_child_whose_parent_dies_after_it_asked_is_signalled():
    child, parent = _orphaned_child(parent_lingers=True)
    processes = {child: _stat(child)[2]}
    try:
        parent.kill()
        killed = time.monotonic()
        parent.wait()
        assert not _survivors(processes, killed)
    finally:
        _kill_all(processes)


def test_a_child_whose_parent_died_before_it_asked_signals_itself():
    """The kernel signals nobody for a parent already dead when prctl is called: getppid() tells."""
    child, parent = _orphaned_child(parent_lingers=False)
    processes = {child: stat[2]} if (stat := _stat(child)) is not None else {}
    try:
        parent.wait()
        assert parent.returncode == 0
        assert not _survivors(processes, time.monotonic())
    finally:
        _kill_all(processes)


def test_the_fallback_without_prctl_signals_the_child_when_its_parent_dies():
    child = "import os; from shared.lifecycle import _watch_parent; print(os.getpid(), flush=True); " \
            "_watch_parent(os.getppid(), 15)"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child_pid = int(process.stdout.readline())
    processes = {child_pid: _stat(child_pid)[2]}
    try:
        process.kill()
        killed = time.monotonic()
        process.wait()
        assert not _survivors(processes, killed)
    finally:
        _kill_all(processes)
