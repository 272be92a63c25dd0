"""The command line as a new user meets it: `python -m adaptcast` in a fresh process, tiny inputs.

A user's mistake (an output that cannot be written, a missing reference or archive, a size the
codec refuses) is one line `adaptcast CMD: error: ...` and exit code 2, and leaves no file behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import adaptcast
from adaptcast.cli import comes_with_bench
from adaptcast.commands import ENTRY_POINT_GROUP, Command
from adaptcast.shared.data import BUNDLED_CLIP
from tests.conftest import REPO, run_cli

TINY = ("--size", "64x64", "--frames", "2")


def _assert_one_line_error(result: subprocess.CompletedProcess, command: str, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"adaptcast {command}: error:"), result.stderr
    for word in words:
        assert word in last, result.stderr


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_encode_to_an_output_it_cannot_write_is_one_line(where, tmp_path):
    output = tmp_path / "no" / "such" / "x.acs" if where == "missing folder" else tmp_path
    result = run_cli("encode", str(BUNDLED_CLIP), "-o", str(output), *TINY)
    _assert_one_line_error(result, "encode", "does not exist" if where == "missing folder" else "is a folder")


def test_decode_to_an_output_it_cannot_write_is_one_line(stream_file, model_file, tmp_path):
    result = run_cli("decode", str(stream_file), "--model", str(model_file), "-o", str(tmp_path / "no" / "x.mp4"))
    _assert_one_line_error(result, "decode", "does not exist")


def test_decode_with_a_missing_reference_leaves_no_output(stream_file, model_file, tmp_path):
    output = tmp_path / "out" / "x.y4m"
    output.parent.mkdir()
    result = run_cli("decode", str(stream_file), "--model", str(model_file), "-o", str(output),
                     "--reference", str(tmp_path / "missing.mp4"))
    _assert_one_line_error(result, "decode", "missing.mp4")
    assert not list(output.parent.iterdir())


def test_a_failed_encode_leaves_no_partial_stream(tmp_path):
    """The reconstruction's container is refused after the stream's file was opened: neither stays."""
    result = run_cli("encode", str(BUNDLED_CLIP), "-o", str(tmp_path / "x.acs"), "--reconstruction",
                     str(tmp_path / "r.avi"), *TINY, "--model", "ssf-small-q1", "--no-background", "--no-skip")
    _assert_one_line_error(result, "encode", "r.avi")
    assert not list(tmp_path.iterdir())


def test_a_successful_decode_writes_the_output_under_its_own_name(stream_file, model_file, tmp_path):
    output = tmp_path / "x.y4m"
    result = run_cli("decode", str(stream_file), "--model", str(model_file), "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["x.y4m"] and output.stat().st_size > 0


@pytest.mark.parametrize("size", ["2x2", "16x64", "64x30"])
def test_sizes_the_codec_does_not_code_are_refused_with_the_rule(size, tmp_path):
    result = run_cli("encode", str(BUNDLED_CLIP), "-o", str(tmp_path / "x.acs"), "--size", size)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--size" in result.stderr and "at least 32 pixels and even" in result.stderr
    assert not list(tmp_path.iterdir())


def test_export_of_a_missing_archive_says_the_folder_does_not_exist(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    result = run_cli("export", "--archive", str(missing), "--camera", "cam1", "-o", str(tmp_path / "x.mp4"))
    _assert_one_line_error(result, "export", f"archive folder {missing} does not exist")


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"adaptcast {adaptcast.__version__}"
    assert adaptcast.__version__ == metadata.version("adaptcast")


def test_a_runtime_command_loads_no_benchmark_module():
    """`adaptcast encode --help` in a fresh process: the bench commands' entry points stay unloaded."""
    probe = ("import runpy, sys\n"
             "sys.argv = ['adaptcast', 'encode', '--help']\n"
             "try:\n    runpy.run_module('adaptcast', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.startswith('adaptcast_bench') or m == 'torch'), "
             "file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0 and done.stderr.strip().splitlines()[-1] == "[]", done.stderr


def test_the_bench_commands_come_through_entry_points():
    points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    names = {point.name for point in points}
    assert {"bench", "bench-speed", "bench-capacity", "gpu-checks"} <= names
    for point in points:
        command = point.load()
        assert isinstance(command, Command) and command.name == point.name
        assert comes_with_bench(point.name)  # so that without them `adaptcast NAME` says where they come from


def test_without_the_bench_distribution_a_bench_command_says_how_to_install_it():
    """adaptcast-bench out of sight: importlib.metadata finds no entry points of the group."""
    probe = ("import importlib.metadata as m, sys\n"
             "m.entry_points = lambda **selection: m.EntryPoints(())\n"
             "from adaptcast.cli import main\n"
             "sys.exit(main(['bench', '--quick']))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["adaptcast: error: bench is a benchmark command: it comes with "
                                                "`pip install ./bench`"]


def _children(pid: int) -> dict[int, str]:
    """Command lines of the processes whose parent is `pid`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found[int(entry.name)] = command
    return found


def test_the_demo_reports_a_daemon_stopped_cleanly_as_a_stop(tmp_path):
    """The receiver stopped from outside (SIGTERM: exit code 0): the demo stops too, and says so
    without calling it an error."""
    log = open(tmp_path / "demo.log", "wb")
    demo = subprocess.Popen([sys.executable, "-m", "adaptcast", "demo", "--port", "0"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while not (line := demo.stdout.readline()).startswith("rtsp:"):  # the last URL: both daemons started
            assert line, (tmp_path / "demo.log").read_text()
        receiver = [pid for pid, command in _children(demo.pid).items() if "adaptcast receiver" in command]
        assert len(receiver) == 1
        os.kill(receiver[0], signal.SIGTERM)
        assert demo.wait(timeout=120) == 0
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
            demo.wait(timeout=60)
        log.close()
    output = (tmp_path / "demo.log").read_text()
    assert "the receiver stopped (exit code 0): the demo stops" in output
    assert "adaptcast demo: error" not in output
