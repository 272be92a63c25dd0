"""`adaptcast demo`: a receiver and a sender on loopback, one camera, the bundled model.

The two daemons run as separate processes with generated configuration files, exactly as they
would on two machines (`adaptcast receiver --config`, `adaptcast sender --config`), so the
demo exercises the real signaling, transport and decoding. The camera's token is random and
travels to both through the environment, never through a file. The viewer account that opens
the live view is made up too: its password is printed, and only its hash is written.

The demo leaves nothing behind: SIGTERM stops it as Ctrl-C does (the sender, then the receiver,
each given STOP_GRACE_SECONDS before it is killed, then the folder of generated configuration
files is removed) and it exits with 0, a stop asked for being a clean stop. A daemon stopped from
outside (exit code 0) stops the demo as cleanly; one that fails makes it an error. The daemons die with
the demo when it is killed outright (shared/lifecycle.py); only the configuration folder, which
holds no secret, then stays in the temporary directory.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import yaml

from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.config import METRICS_PORT, RECEIVER_PORT, RTSP_PORT
from adaptcast.shared.data import BUNDLED_CLIP
from adaptcast.shared.device import usable_cores
from adaptcast.shared.errors import AdaptcastError
from adaptcast.shared.lifecycle import PARENT_PID_ENV
from adaptcast.shared.passwords import hash_password

log = logging.getLogger("adaptcast.demo")

CAMERA = "demo"
TOKEN_ENV = "ADAPTCAST_TOKEN_DEMO"
SIZE = "320x180"
FPS = 10.0
READY_TIMEOUT_SECONDS = 120.0
VIEWER = "viewer"
STOP_GRACE_SECONDS = 4.0
"""Time a daemon gets to stop after SIGTERM before it is killed. The receiver takes about a second;
a sender first waits for a running adapter fit, which on a busy CPU may not end in time, and the
demo keeps nothing of it that a kill would lose."""


def free_port(preferred: int) -> int:
    """`preferred` when nothing listens there, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise AdaptcastError("no free TCP port on 127.0.0.1")


def shared_box_decode_threads() -> int:
    """Torch threads for a receiver's decoding when a sender runs on the same box.

    The sender takes half the cores (sender/daemon.py); a decoder with all of them would make
    the OpenMP pools add up to more threads than cores, and every frame would wait on the other
    pool: on 2 cores that multiplied the live latency by ten.
    """
    return max(1, usable_cores() // 2)


@dataclass(frozen=True)
class ViewerLogin:
    """A viewer account made up for a receiver on this machine, and reads with it (HTTP Basic)."""

    name: str
    password: str

    @classmethod
    def random(cls) -> ViewerLogin:
        return cls(VIEWER, secrets.token_urlsafe(12))

    def config(self) -> dict[str, str]:
        """The receiver's `viewers:` entry for this account."""
        return {"name": self.name, "password_hash": hash_password(self.password)}

    @property
    def headers(self) -> dict[str, str]:
        """HTTP Basic with this account, as scripts send it."""
        credentials = base64.b64encode(f"{self.name}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {credentials}"}

    def get(self, url: str, timeout: float = 5.0) -> str:
        """The body of a viewer route (/api/cameras, a picture) read as this viewer."""
        with urllib.request.urlopen(urllib.request.Request(url, headers=self.headers), timeout=timeout) as response:
            return response.read().decode()


@dataclass(frozen=True)
class StationSettings:
    """One camera streamed from a sender to a receiver on this machine."""

    source: str = str(BUNDLED_CLIP)
    size: str = SIZE
    fps: float = FPS
    mode: AdaptMode = AdaptMode.LIVE
    segment_seconds: float = 2.0
    adapter_gate: bool = True
    """False sends every fitted adapter version, paying or not (to watch adapters at work)."""
    loop: bool = True
    archive: Path | None = None
    port: int = RECEIVER_PORT
    """Receiver port (a free one is taken if it is busy)."""
    timecode: bool = False
    """Burn the capture time into the frames (shared/timecode.py), to measure latency at the clients."""
    rtsp_port: int | None = None
    """Re-publish the camera over RTSP on this port (0: a free one); None: no RTSP."""


class LoopbackStation:
    """A receiver and a sender as separate processes with generated configuration files,
    exactly as two machines would run them; a context manager that stops both on exit."""

    def __init__(self, settings: StationSettings, quiet: bool = False) -> None:
        self.settings = settings
        self.port = free_port(settings.port)
        self.metrics_port = free_port(METRICS_PORT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.rtsp_port = free_port(settings.rtsp_port or RTSP_PORT) if settings.rtsp_port is not None else None
        self.sender_metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.viewer = ViewerLogin.random()
        self._quiet = quiet
        self._tmp = tempfile.TemporaryDirectory(prefix="adaptcast-station-")
        self.receiver: subprocess.Popen | None = None
        self.sender: subprocess.Popen | None = None

    def __enter__(self) -> LoopbackStation:
        env = {**os.environ, TOKEN_ENV: secrets.token_urlsafe(24)}
        receiver_config, sender_config = self._write_configs(Path(self._tmp.name))
        try:
            self.receiver = spawn_daemon("receiver", receiver_config, env, self._quiet)
            wait_ready(f"{self.url}/readyz", self.receiver)
            self.sender = spawn_daemon("sender", sender_config, env, self._quiet)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:  # the sender first: it ends its stream while the receiver still listens
            for process in (self.sender, self.receiver):
                if process is not None:
                    stop_daemon(process)
        finally:
            self._tmp.cleanup()

    def check_alive(self) -> None:
        for process in (self.receiver, self.sender):
            check_alive(process)

    def _write_configs(self, folder: Path) -> tuple[Path, Path]:
        settings = self.settings
        source = str(Path(settings.source).resolve()) if Path(settings.source).is_file() else settings.source
        receiver = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "cameras": [{"name": CAMERA, "token_env": TOKEN_ENV}],
            "threads_per_worker": shared_box_decode_threads(),
            "viewers": [self.viewer.config()],
        }
        if settings.archive:
            receiver["archive"] = {"dir": str(settings.archive.resolve())}
        if settings.rtsp_port is not None:
            receiver["rtsp"] = {"enabled": True, "host": "127.0.0.1", "port": self.rtsp_port}
        camera = {"name": CAMERA, "source": source, "loop": settings.loop, "size": settings.size, "fps": settings.fps,
                  "mode": settings.mode.value, "segment_seconds": settings.segment_seconds,
                  "adapter_gate": settings.adapter_gate, "timecode": settings.timecode, "token_env": TOKEN_ENV}
        sender = {
            "receiver": {"url": self.url},
            "metrics": {"host": "127.0.0.1", "port": self.metrics_port},
            "cameras": [camera],
        }
        paths = folder / "receiver.yaml", folder / "sender.yaml"
        for path, config in zip(paths, (receiver, sender)):
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        return paths


def spawn_daemon(role: str, config: Path, env: dict[str, str], quiet: bool) -> subprocess.Popen:
    """`adaptcast sender|receiver --config FILE` as a child process, as a machine would run it, except
    that it dies with this process (PARENT_PID_ENV): call it from a thread that lives as long."""
    output = subprocess.DEVNULL if quiet else None
    return subprocess.Popen([sys.executable, "-m", "adaptcast", role, "--config", str(config)],
                            env={**env, PARENT_PID_ENV: str(os.getpid())}, stdout=output, stderr=output)


def stop_daemon(process: subprocess.Popen, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM, then SIGKILL if `process` has not exited after `grace_seconds`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class DaemonStopped(AdaptcastError):
    """A daemon exited with code 0: it stopped cleanly (a SIGTERM from outside), it did not fail."""


def check_alive(process: subprocess.Popen | None) -> None:
    """Raise if a daemon started by `spawn_daemon` has exited: DaemonStopped when it stopped cleanly,
    AdaptcastError with its exit code when it failed."""
    if process is None or process.poll() is None:
        return
    role = cast(list[str], process.args)[3]  # spawn_daemon's [python, -m, adaptcast, ROLE, ...]
    if process.returncode == 0:
        raise DaemonStopped(f"the {role} stopped")
    raise AdaptcastError(f"the {role} exited with code {process.returncode}")


def wait_ready(url: str, process: subprocess.Popen) -> None:
    """Wait until `url` (a /readyz) answers 200, while `process` lives."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        check_alive(process)
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AdaptcastError(f"{url} was not ready after {READY_TIMEOUT_SECONDS:.0f} s")


def run_demo(source: str | None, duration: float | None, archive: str | None, port: int) -> int:
    source = source or str(BUNDLED_CLIP)
    if not source.startswith(("rtsp://", "rtsps://", "/dev/video")) and source != "testpattern" \
            and not Path(source).is_file():
        raise AdaptcastError(f"camera source {source} is not a file, an rtsp:// URL, a /dev/video device "
                             "or testpattern")
    from adaptcast.receiver.rtsp import PACKAGES, unavailable_reason
    from adaptcast.shared.config import RtspConfig

    rtsp_missing = unavailable_reason(RtspConfig().python)
    settings = StationSettings(source=source, archive=Path(archive) if archive else None, port=port,
                               rtsp_port=RtspConfig().port if rtsp_missing is None else None)
    try:
        signal.signal(signal.SIGTERM, _stop_requested)
        with LoopbackStation(settings) as station:
            print(f"live view: {station.url}/", flush=True)
            print(f"viewer name: {station.viewer.name}", flush=True)
            print(f"viewer password: {station.viewer.password}", flush=True)
            print(f"whip: {station.url}/whip/{CAMERA}", flush=True)
            print(f"receiver metrics: {station.url}/metrics", flush=True)
            print(f"sender metrics: {station.sender_metrics_url}", flush=True)
            if station.rtsp_port is not None:
                print(f"rtsp: rtsp://127.0.0.1:{station.rtsp_port}/{CAMERA}", flush=True)
            else:
                print(f"rtsp: off ({rtsp_missing}; apt-get install {PACKAGES})", flush=True)
            started = time.monotonic()
            while duration is None or time.monotonic() - started < duration:
                station.check_alive()
                time.sleep(0.5)
    except (KeyboardInterrupt, StopRequested):
        pass
    except DaemonStopped as stopped:  # stopped from outside, as the demo is stopped: not an error
        log.info("%s (exit code 0): the demo stops", stopped)
    return 0


class StopRequested(BaseException):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt (and, like it, not an
    Exception that a handler could swallow), so that the same `with` block stops the daemons and
    removes the temporary folder."""


def _stop_requested(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise StopRequested()
