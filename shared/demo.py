"""`adaptcast demo`: a receiver and a sender on loopback, one camera, the bundled model.

The two daemons run as separate processes with generated configuration files, exactly as they
would on two machines (`adaptcast receiver --config`, `adaptcast sender --config`), so the
demo exercises the real signaling, transport and decoding. The camera's token is random and
travels to both through the environment, never through a file.
"""

from __future__ import annotations

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
from pathlib import Path

import yaml

from shared.data import BUNDLED_CLIP
from shared.errors import AdaptcastError

CAMERA = "demo"
TOKEN_ENV = "ADAPTCAST_TOKEN_DEMO"
SIZE = "320x180"
FPS = 10.0
READY_TIMEOUT_SECONDS = 120.0
SENDER_METRICS_PORT = 9101


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


def write_configs(folder: Path, source: str, port: int, metrics_port: int,
                  archive: Path | None) -> tuple[Path, Path]:
    receiver = {
        "listen": {"host": "127.0.0.1", "port": port},
        "cameras": [{"name": CAMERA, "token_env": TOKEN_ENV}],
    }
    if archive:
        receiver["archive"] = {"dir": str(archive)}
    sender = {
        "receiver": {"url": f"http://127.0.0.1:{port}"},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "cameras": [{"name": CAMERA, "source": source, "size": SIZE, "fps": FPS, "token_env": TOKEN_ENV}],
    }
    paths = folder / "receiver.yaml", folder / "sender.yaml"
    for path, config in zip(paths, (receiver, sender)):
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return paths


def _wait_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AdaptcastError(f"the receiver exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AdaptcastError(f"the receiver was not ready at {url} after {timeout:.0f} s")


def run_demo(source: str | None, duration: float | None, archive: str | None, port: int) -> int:
    source = source or str(BUNDLED_CLIP)
    if not source.startswith(("rtsp://", "rtsps://", "/dev/video")) and source != "testpattern" \
            and not Path(source).is_file():
        raise AdaptcastError(f"camera source {source} is not a file, an rtsp:// URL, a /dev/video device "
                             "or testpattern")
    if Path(source).is_file():
        source = str(Path(source).resolve())  # the config file lives elsewhere
    port = free_port(port)
    metrics_port = free_port(SENDER_METRICS_PORT)
    env = {**os.environ, TOKEN_ENV: secrets.token_urlsafe(24)}
    command = [sys.executable, "-m", "shared.cli"]
    with tempfile.TemporaryDirectory(prefix="adaptcast-demo-") as tmp:
        receiver_config, sender_config = write_configs(Path(tmp), source, port, metrics_port,
                                                       Path(archive).resolve() if archive else None)
        base = f"http://127.0.0.1:{port}"
        receiver = subprocess.Popen([*command, "receiver", "--config", str(receiver_config)], env=env)
        sender = None
        try:
            _wait_ready(f"{base}/readyz", receiver, READY_TIMEOUT_SECONDS)
            sender = subprocess.Popen([*command, "sender", "--config", str(sender_config)], env=env)
            print(f"live view: {base}/", flush=True)
            print(f"whip: {base}/whip/{CAMERA}", flush=True)
            print(f"receiver metrics: {base}/metrics", flush=True)
            print("sender metrics: http://127.0.0.1:9101/metrics", flush=True)
            started = time.monotonic()
            while duration is None or time.monotonic() - started < duration:
                for name, process in (("receiver", receiver), ("sender", sender)):
                    if process.poll() is not None:
                        raise AdaptcastError(f"the {name} exited with code {process.returncode}")
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for process in (sender, receiver):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in (sender, receiver):
                if process is not None:
                    try:
                        process.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        process.kill()
    return 0
