"""`pip install .` as a user does it: the wheel of the repository holds one top-level package,
`adaptcast`, with its bundled files and no bench code, and the command line, a daemon and the
demo run from an installation of that wheel alone, away from the source tree."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from importlib.metadata import version
from pathlib import Path, PurePosixPath

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO

DIST_INFO = f"adaptcast-{version('adaptcast')}.dist-info"
BUILD_OUTPUTS = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache")
"""Left out of the copy the wheel is built from: setuptools reuses build/lib, where a module
that was moved or removed since an earlier build would still be found."""
BUNDLED = [
    "adaptcast/py.typed",
    "adaptcast/receiver/rtsp_child.py",  # run by another Python, from the file (receiver/rtsp.py)
    *(f"adaptcast/shared/models/{p.name}" for p in (REPO / "shared" / "models").glob("*.safetensors")),
    *(f"adaptcast/shared/data/{p.name}" for p in (REPO / "shared" / "data").glob("*.mp4")),
    *(f"adaptcast/receiver/static/{p.name}" for p in (REPO / "receiver" / "static").iterdir()),
]
FOREIGN_TOP_LEVEL = ("shared", "sender", "receiver", "adaptcast_bench")
DEMO_SECONDS = 120
"""At most (the test stops the demo at the first frame shown): the sender starts after the
receiver is ready, and on a busy machine each start takes seconds."""
DEMO_LINES = 7
"""What the demo prints first: the URLs and the viewer's login (app/demo.py)."""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip install .` would install, built offline from a copy of the repository."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    shutil.copytree(REPO, source, ignore=BUILD_OUTPUTS)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(folder), str(source)], check=True, capture_output=True, timeout=300)
    [built] = folder.glob("adaptcast-*.whl")
    return built


def test_the_wheel_holds_one_package_with_its_files_and_no_bench_code(wheel):
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    assert {PurePosixPath(name).parts[0] for name in names} == {"adaptcast", DIST_INFO}
    assert BUNDLED and not set(BUNDLED) - set(names), sorted(set(BUNDLED) - set(names))
    assert not [name for name in names if "bench" in name], names
    # nor a bench module under another name
    bench_modules = {p.read_bytes(): p.name for p in (REPO / "bench").glob("*.py") if p.stat().st_size}
    copied = [(name, bench_modules[archive.read(name)]) for name in names if archive.read(name) in bench_modules]
    assert not copied, copied


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh virtual environment with the wheel installed, and the environment to run it in.

    The third-party dependencies (torch alone is gigabytes) come from this interpreter's
    site-packages through a .pth file; adaptcast comes from the wheel only: a path listed in a .pth
    file is not scanned for .pth files itself, so the editable install's link to the source tree
    does not follow."""
    venv = tmp_path_factory.mktemp("install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    site_packages = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    # the development venv's site-packages (inside the checkout, as .ci/run makes it): its editable
    # install is a .pth file there, which is not read from a path that a .pth file lists
    dependencies = [path for path in sys.path if Path(path).name in ("site-packages", "dist-packages")]
    (Path(site_packages) / "dependencies.pth").write_text("\n".join(dependencies) + "\n")
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def _run(env: dict[str, str], cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_the_installed_package_runs_away_from_the_source_tree(installed, tmp_path):
    where = _run(installed, tmp_path, "python", "-c", "import adaptcast, adaptcast.shared; print(adaptcast.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(installed["VIRTUAL_ENV"]) in Path(where.stdout.strip()).parents, where.stdout
    for name in FOREIGN_TOP_LEVEL:
        found = _run(installed, tmp_path, "python", "-c", f"import {name}")
        assert found.returncode != 0 and f"No module named '{name}'" in found.stderr, (name, found.stderr)
    models = _run(installed, tmp_path, "adaptcast", "models")
    assert models.returncode == 0 and "(default)" in models.stdout, models.stderr


def test_the_installed_demo_streams_to_a_clean_end(installed, tmp_path):
    """The demo runs `python -m adaptcast receiver --config ...` and `... sender ...` of the
    installation: the receiver answers, the sender streams the bundled clip with the bundled model
    (frames shown), and SIGTERM, as the README says, stops the demo and both cleanly."""
    log = tmp_path / "demo.log"
    with open(log, "wb") as errors:
        demo = subprocess.Popen(["adaptcast", "demo", "--duration", str(DEMO_SECONDS), "--port", "0"], env=installed,
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        lines = dict(demo.stdout.readline().strip().split(": ", 1) for _ in range(DEMO_LINES))
        assert _get(lines["live view"] + "healthz") is not None, lines
        shown = 0
        while demo.poll() is None and shown == 0:
            shown = sum(_frames_shown(_get(lines["receiver metrics"]) or ""))
            time.sleep(0.5)
        assert shown > 0, f"the demo ended before its receiver showed a frame:\n{log.read_text()[-3000:]}"
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        demo.kill()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def _frames_shown(metrics: str) -> list[int]:
    return [int(sample.value) for family in text_string_to_metric_families(metrics) for sample in family.samples
            if sample.name == "adaptcast_receiver_frames_shown_total"]
