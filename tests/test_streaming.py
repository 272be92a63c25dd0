"""The streaming system end to end: a real receiver and a real sender, separate processes,
WebRTC on loopback, the bundled clip (cut from ../shared/data/clips/parking-aisle.mp4) as the
camera, adaptation on."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from adaptcast.demo import ViewerLogin, free_port
from adaptcast.receiver.archive import list_archive
from adaptcast.shared.codec.bitstream import SegmentStart, read_records
from adaptcast.shared.frames import FrameSize, psnr
from adaptcast.shared.video import read_frames
from tests.conftest import REPO, run_cli

SIZE, FPS, SEGMENT_SECONDS, STEPS = "160x96", 10.0, 1.0, 5
TOKEN_ENV = "ADAPTCAST_TOKEN_CAM1"


class Station:
    """A receiver and a sender for one camera, as processes with their own config files."""

    def __init__(self, tmp: Path, source: Path | str, loop: bool, env: dict[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port(0)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._context = ssl.create_default_context(cafile=str(tls[0])) if tls else None
        self.archive = tmp / "archive"
        self.viewer = ViewerLogin.random()
        self.env = {**os.environ, TOKEN_ENV: "test-token-1-0123456789", "OMP_NUM_THREADS": "1", **(env or {})}
        receiver: dict = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "archive": {"dir": str(self.archive)},
            "cameras": [{"name": "cam1", "token_env": TOKEN_ENV}],
            "viewers": [self.viewer.config()],
        }
        link: dict = {"url": self.url}
        if tls:
            receiver["tls"] = {"cert_file": str(tls[0]), "key_file": str(tls[1])}
            link["ca_file"] = str(tls[0])
        (tmp / "receiver.yaml").write_text(yaml.safe_dump(receiver))
        (tmp / "sender.yaml").write_text(yaml.safe_dump({
            "receiver": link,
            "metrics": {"port": 0},
            "cameras": [{"name": "cam1", "source": str(source), "loop": loop, "size": SIZE, "fps": FPS,
                         "segment_seconds": SEGMENT_SECONDS, "mode": "live", "fit_steps": STEPS,
                         # every fitted adapter is sent (these tests follow adapter versions), and
                         # no refinement (its steps follow the machine's speed: offline coding cannot
                         # match them)
                         "adapter_gate": False, "refine_share": 0, "token_env": TOKEN_ENV}],
        }))
        self.receiver: subprocess.Popen | None = None
        self.sender: subprocess.Popen | None = None

    def _spawn(self, role: str) -> subprocess.Popen:
        log = open(self.tmp / f"{role}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "adaptcast", role, "--config", str(self.tmp / f"{role}.yaml")],
                                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def start_receiver(self) -> None:
        self.receiver = self._spawn("receiver")
        self.wait_for(lambda: self._get("/readyz") == "ready", 60, "receiver ready")

    def start_sender(self) -> None:
        self.sender = self._spawn("sender")

    def camera(self) -> dict:
        return json.loads(self._get("/api/cameras") or "[{}]")[0]

    def _get(self, path: str) -> str | None:
        try:
            request = urllib.request.Request(self.url + path, headers=self.viewer.headers)
            with urllib.request.urlopen(request, timeout=2, context=self._context) as response:
                return response.read().decode()
        except OSError:
            return None

    def wait_for(self, condition, timeout: float, what: str) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if condition():
                return time.monotonic() - started
            for process in (self.receiver, self.sender):
                if process is not None and process.poll() not in (None, 0):
                    pytest.fail(f"a daemon died while waiting for {what}:\n{self.logs()}")
            time.sleep(0.2)
        pytest.fail(f"timed out after {timeout} s waiting for {what} (camera: {self.camera()}):\n{self.logs()}")

    def stop(self, process: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("*.log")))


@pytest.fixture
def station_factory(tmp_path):
    stations: list[Station] = []

    def make(**kwargs) -> Station:
        stations.append(Station(tmp_path, **kwargs))
        return stations[-1]

    yield make
    for station in stations:
        station.stop(station.sender, signal.SIGKILL)
        station.stop(station.receiver, signal.SIGKILL)


SENDER_END = re.compile(r"source ended after \d+ frames; dropped before sending: (\{.*\}); sender: (\{.*\}); "
                        r"encoder: (\{.*\})")
"""The sender's last line for a camera whose file ended: what it dropped, and its encoder's counts."""
SHED_WORK = ("fit_shed", "fit_skipped", "frame_shed", "frame_thinned", "snapshot_late", "segment_dropped")
"""Encoder counts of work left undone because frames were late (sender/encoder.py): an offline
encode does all of it, so a stream with any of them is not the offline encoder's stream."""


@dataclass(frozen=True)
class SenderEnd:
    """What a sender that played its file once left out because the machine was busy (nothing on
    an idle one)."""

    dropped: dict[str, int]
    """Frames dropped before or while sending, by reason (not the adapter updates a test drops
    on purpose: "fault")."""
    shed: dict[str, int]
    """Encoder work left undone (SHED_WORK)."""

    @classmethod
    def read(cls, station: Station) -> SenderEnd:
        found = SENDER_END.search((station.tmp / "sender.log").read_text())
        if found is None:
            pytest.fail(f"the sender did not report the end of its source:\n{station.logs()}")
        before, sending, encoder = (ast.literal_eval(group) for group in found.groups())
        dropped = Counter(before) + Counter(sending)
        del dropped["fault"]
        return cls(dropped=dict(dropped),
                   shed={name: count for name, count in encoder.items() if name in SHED_WORK})

    def skip_if_busy(self, what: str) -> None:
        """Skip the rest of the test when the sender did less than an offline encode does: its
        stream then differs by design, and `what` cannot be checked on it."""
        if self.dropped or self.shed:
            pytest.skip(f"the machine was too busy for the sender to do all its work (dropped {self.dropped}, "
                        f"shed {self.shed}): {what} not checked")

    @contextmanager
    def excusing(self, what: str) -> Iterator[None]:
        """Assertions that hold of a sender that did all its work: one that fails where the sender
        shed some is skipped (`skip_if_busy`), so an idle machine checks them all and a busy one
        as many as its stream allows."""
        try:
            yield
        except AssertionError as failed:
            self.skip_if_busy(f"{what} (here: {str(failed).splitlines()[0][:200]})")
            raise


def _receiver_accounted(station: Station) -> int:
    """Frames of cam1 the receiver has done with: shown, or archived without decoding because they
    waited too long in its queue (a busy machine; the StreamEnd record may be among them)."""
    done = 0
    for family in text_string_to_metric_families(station._get("/metrics") or ""):
        for sample in family.samples:
            if sample.labels.get("camera") == "cam1" and (
                    sample.name == "adaptcast_receiver_frames_shown_total"
                    or sample.name == "adaptcast_receiver_records_dropped_total" and sample.labels["reason"] == "late"):
                done += int(sample.value)
    return done


def _stream_clip_once(station: Station, frames: int) -> tuple[dict, SenderEnd]:
    """Play the clip once through the station; return the receiver's view of the camera once it
    has done with every frame sent, and what the sender left out.

    On a busy machine the receiver skips frames that waited too long (archived, not shown), so
    the wait is for every frame accounted for, not every frame shown."""
    station.start_receiver()
    station.start_sender()
    station.wait_for(lambda: station.sender.poll() == 0, 120, "the sender to play the clip once")
    sender = SenderEnd.read(station)
    sent = frames - sum(sender.dropped.values())
    station.wait_for(lambda: _receiver_accounted(station) >= sent, 60, "every frame sent shown or skipped as late")
    camera = station.camera()
    station.stop(station.receiver)
    return camera, sender


def _mean_psnr(source: list[np.ndarray], video: Path) -> float:
    shown = list(read_frames(video))
    assert len(shown) == len(source)
    return float(np.mean([psnr(a, b) for a, b in zip(source, shown)]))


def test_streamed_archive_exports_what_an_offline_encode_gives(station_factory, clip, tmp_path):
    source = list(read_frames(clip, FrameSize.parse(SIZE), FPS))
    station = station_factory(source=clip, loop=False)
    camera, sender = _stream_clip_once(station, len(source))
    assert camera["fallbacks"] == 0, camera
    if sender.dropped:
        sender.skip_if_busy("an archive of the whole clip")
    files = list_archive(station.archive, "cam1")
    starts = [r for f in files for r in read_records(open(f.path, "rb")) if isinstance(r, SegmentStart)]
    assert len(starts) == len(source) // 10, starts

    exported = tmp_path / "export.y4m"
    done = run_cli("export", "--archive", str(station.archive), "--camera", "cam1", "-o", str(exported))
    assert done.returncode == 0, done.stderr
    # random access: the last file, alone in an archive of its own, exports the same frames
    alone = tmp_path / "alone" / "cam1"
    alone.mkdir(parents=True)
    (alone / files[-1].path.name).write_bytes(files[-1].path.read_bytes())
    done = run_cli("export", "--archive", str(alone.parent), "--camera", "cam1", "-o", str(tmp_path / "alone.y4m"))
    assert done.returncode == 0, done.stderr
    whole, last = list(read_frames(exported)), list(read_frames(tmp_path / "alone.y4m"))
    assert len(whole) == len(source)
    assert len(last) == 10 and all(np.array_equal(a, b) for a, b in zip(whole[-10:], last, strict=True))

    with sender.excusing("the adapters, the background and the offline encoder's quality"):
        versions = [r.adapter_version for r in starts]
        assert camera["adapter_version"] > 0 and len(set(versions) - {0}) >= 3, versions  # adapters were swapped
        assert all(r.background for r in starts[-3:]), starts  # segments start from the background once it is sent
        assert camera["skipped_frames"] > 0, camera
        offline, offline_video = tmp_path / "offline.acs", tmp_path / "offline.y4m"
        done = run_cli("encode", str(clip), "-o", str(offline), "--size", SIZE, "--fps", str(FPS), "--segment-frames",
                       str(int(FPS * SEGMENT_SECONDS)), "--adapt", "--mode", "live", "--steps", str(STEPS),
                       "--no-adapter-gate", threads=1)
        assert done.returncode == 0, done.stderr
        done = run_cli("decode", str(offline), "-o", str(offline_video), threads=1)
        assert done.returncode == 0, done.stderr
        streamed, expected = _mean_psnr(source, exported), _mean_psnr(source, offline_video)
        assert abs(streamed - expected) <= 0.1, (streamed, expected)


def test_a_lost_adapter_update_costs_one_segment(station_factory, clip):
    source = list(read_frames(clip, FrameSize.parse(SIZE), FPS))
    station = station_factory(source=clip, loop=False, env={"ADAPTCAST_FAULT_DROP_ADAPTER_VERSIONS": "3"})
    camera, sender = _stream_clip_once(station, len(source))
    versions = [r.adapter_version for f in list_archive(station.archive, "cam1")
                for r in read_records(open(f.path, "rb")) if isinstance(r, SegmentStart)]
    # a busy sender fits fewer versions, or the next one on version 3 before it hears of the loss
    with sender.excusing("one fallback for the lost version 3 and adapted decoding after it"):
        assert camera["fallbacks"] == 1, station.logs()  # the segment that needed version 3, and only it
        assert max(versions) > 3, versions  # adapted decoding resumed after the fallback


def test_sender_reconnects_after_the_receiver_restarts(station_factory):
    station = station_factory(source=Path(REPO / "shared" / "data" / "parking-aisle-10s.mp4"), loop=True)
    station.start_receiver()
    station.start_sender()
    station.wait_for(lambda: station.camera().get("frames", 0) >= 20, 60, "frames before the restart")
    station.stop(station.receiver, signal.SIGKILL)  # a crash: no goodbye to the sender
    station.start_receiver()
    resumed = station.wait_for(lambda: station.camera().get("frames", 0) >= 5, 30, "frames after the restart")
    assert resumed <= 10, station.logs()


def test_after_a_long_outage_the_stream_resumes_as_soon_as_the_receiver_is_ready(station_factory):
    """The sender's backoff grows while the receiver is unreachable (0.5 s, doubling); it watches
    the receiver's /readyz meanwhile, so the stream does not wait for the backoff to end."""
    station = station_factory(source=Path(REPO / "shared" / "data" / "parking-aisle-10s.mp4"), loop=True)
    station.start_sender()
    station.wait_for(lambda: "within 16.0 s" in (station.tmp / "sender.log").read_text(), 60,
                     "the sender's backoff to reach 16 s")
    station.start_receiver()
    resumed = station.wait_for(lambda: station.camera().get("frames", 0) >= 1, 30, "the first frame")
    assert resumed <= 6, station.logs()  # waiting out the backoff would take 16 s less the receiver's start


def test_a_killed_sender_restarts_and_the_archive_keeps_only_whole_segments(station_factory, tmp_path):
    station = station_factory(source=Path(REPO / "shared" / "data" / "parking-aisle-10s.mp4"), loop=True)
    station.start_receiver()
    station.start_sender()
    station.wait_for(lambda: station.camera().get("frames", 0) >= 25, 60, "frames before the kill")
    station.stop(station.sender, signal.SIGKILL)  # mid-segment, without a DELETE
    before = station.camera()["frames"]
    station.start_sender()
    resumed = station.wait_for(lambda: station.camera().get("frames", 0) >= before + 5, 30, "frames after the restart")
    assert resumed <= 15, station.logs()  # the new sender's start-up (model, first connection) included
    station.stop(station.sender)
    station.stop(station.receiver)
    files = list_archive(station.archive, "cam1")
    assert len(files) >= 3
    exported = tmp_path / "all.mp4"
    done = run_cli("export", "--archive", str(station.archive), "--camera", "cam1", "-o", str(exported), threads=1)
    assert done.returncode == 0 and "corrupt" not in done.stderr.lower(), done.stderr
    assert len(list(read_frames(exported))) >= before


def test_demo_prints_its_urls_and_streams(tmp_path):
    demo = subprocess.Popen([sys.executable, "-m", "adaptcast", "demo", "--duration", "25", "--port", "0",
                             "--archive", str(tmp_path / "archive")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        lines = dict(demo.stdout.readline().strip().split(": ", 1) for _ in range(7))
        assert set(lines) == {"live view", "viewer name", "viewer password", "whip", "receiver metrics",
                              "sender metrics", "rtsp"}
        assert lines["rtsp"].startswith(("rtsp://127.0.0.1:", "off (")), lines["rtsp"]
        cameras_url = lines["live view"] + "api/cameras"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(cameras_url, timeout=2)
        viewer = ViewerLogin(lines["viewer name"], lines["viewer password"])
        deadline = time.monotonic() + 20
        frames = 0
        while time.monotonic() < deadline and frames < 20:
            frames = json.loads(viewer.get(cameras_url, timeout=2))[0]["frames"]
            time.sleep(0.5)
        assert frames >= 20
        for name in ("receiver metrics", "sender metrics"):
            with urllib.request.urlopen(lines[name], timeout=2) as response:
                assert b'camera="demo"' in response.read()
        assert demo.wait(timeout=60) == 0
    finally:
        demo.kill()
    assert list_archive(tmp_path / "archive", "demo")


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA), as a station with a private CA would have."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "adaptcast test receiver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "receiver.crt", folder / "receiver.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Leaves a redirect to the caller (as an HTTPError), with its headers."""

    def redirect_request(self, *args: object) -> None:
        return None


def test_signaling_over_https_with_a_private_ca(station_factory, tmp_path):
    station = station_factory(source="testpattern", loop=True, tls=_self_signed_certificate(tmp_path))
    station.start_receiver()
    with pytest.raises(urllib.error.URLError):  # a client without the CA refuses the receiver
        urllib.request.urlopen(station.url + "/healthz", timeout=2)
    # under TLS the login cookie is Secure: a browser never sends it over plain HTTP
    login = urllib.parse.urlencode({"name": station.viewer.name, "password": station.viewer.password}).encode()
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=station._context), _NoRedirects())
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(station.url + "/login", data=login, timeout=10)
    assert answer.value.code == 303 and "Secure" in answer.value.headers["Set-Cookie"].split("; ")
    station.start_sender()
    station.wait_for(lambda: station.camera().get("frames", 0) >= 10, 60, "frames over HTTPS signaling")
