"""Network faults measured for real (`adaptcast bench-network`): the sender and the receiver in
network namespaces of their own, joined by an emulated link that loses, delays, jitters and
rate-limits packets, and that can be cut (a partition) and healed mid-run.

The link is two TUN devices, one in each namespace, with this module's `run_link` forwarding
the IP packets between them in a process of its own. It does what `tc qdisc ... netem` would
do on a veth pair, because the kernels this project runs on (the development machines and CI)
are built without netem (CONFIG_NET_SCH_NETEM is not set, and they load no modules): loss is
drawn per packet, delay and jitter (uniform, so packets may be reordered, as with netem) are
added per packet, and a rate cap serialises packets at that rate behind a queue of at most
`queue_seconds` (tail drop beyond, as a router's buffer would). The same impairment applies in
both directions, and changes take effect at once for the packets that follow. The packets are
the daemons' own (WHIP over TCP, ICE, DTLS, SCTP), through each namespace's kernel stack.

The daemons are the real ones, `ip netns exec NS python -m adaptcast receiver|sender --config`
with generated configuration files; the harness reads their HTTP endpoints from threads that
entered their namespaces. Both namespaces share this machine's clock, so glass-to-glass
latency (capture at the sender to shown at the receiver) needs no clock synchronisation.

Creating namespaces and TUN devices needs root (CAP_NET_ADMIN), iproute2 and /dev/net/tun;
without them `check_available` raises NetworkFaultsUnavailable saying what is missing.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import json
import os
import random
import re
import secrets
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

from adaptcast.demo import (
    CAMERA,
    TOKEN_ENV,
    StationSettings,
    ViewerLogin,
    shared_box_decode_threads,
    stop_daemon,
)
from adaptcast.receiver.session import ON_TIME_SECONDS
from adaptcast.shared.adapters.mode import AdaptMode
from adaptcast.shared.config import METRICS_PORT, RECEIVER_PORT
from adaptcast.shared.data import BUNDLED_CLIP
from adaptcast.shared.errors import AdaptcastError

SENDER_ADDRESS = "10.77.0.1"
RECEIVER_ADDRESS = "10.77.0.2"
"""The link's two ends: a point-to-point pair, private, seen only inside the two namespaces."""
SAMPLE_SECONDS = 0.25
"""How often /api/cameras is read: stalls are measured to within this."""
STALL_SECONDS = 1.0
"""A gap longer than this between two frames shown is a stall."""
WARM_UP_FRAMES = 20
START_TIMEOUT_SECONDS = 120.0
"""Model loading, the first connection and the first frames, on a busy 2-core machine."""
STOP_TIMEOUT_SECONDS = 15.0

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class NetworkFaultsUnavailable(AdaptcastError):
    """This process may not create network namespaces or TUN devices here."""


@dataclass(frozen=True)
class Impairment:
    """What the link does to every packet, in each direction (netem's loss, delay, rate)."""

    loss: float = 0.0
    """Probability that a packet is lost (1.0: a partition)."""
    delay_seconds: float = 0.0
    jitter_seconds: float = 0.0
    """Each packet's delay is delay ± jitter, uniformly drawn: packets may be reordered."""
    rate_bits_per_second: float | None = None
    """Packets are serialised at this rate; None: no cap."""
    queue_seconds: float = 0.5
    """With a rate cap: a packet that would wait longer than this for the link is dropped."""

    def describe(self) -> str:
        if self.loss >= 1.0:
            return "partition (100% loss both ways)"
        parts = []
        if self.loss:
            parts.append(f"{self.loss:.0%} loss")
        if self.delay_seconds:
            parts.append(f"{self.delay_seconds * 1000:.0f} ± {self.jitter_seconds * 1000:.0f} ms delay")
        if self.rate_bits_per_second:
            parts.append(f"{self.rate_bits_per_second / 1000:g} kbit/s cap ({self.queue_seconds * 1000:.0f} ms queue)")
        return ", ".join(parts) or "none"


CLEAN = Impairment()
PARTITION = Impairment(loss=1.0)


# ---------------------------------------------------------------------------------------------
# The link: a process of its own forwarding packets between two TUN devices


def open_tun(name: str) -> int:
    """A TUN device (IP packets, no extra header) named `name`, in this thread's namespace; it
    lives while the returned descriptor is open, wherever the device is moved."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass
class _Direction:
    """One direction of the link: its rate queue and what happened to its packets."""

    out_fd: int
    free_at: float = 0.0
    """When the rate-capped link has sent everything queued before."""
    counts: Counter[str] = field(default_factory=Counter)


def run_link(first: str, second: str) -> None:
    """Forward packets between TUN devices `first` and `second`, impaired as the JSON lines on
    stdin say (each answered on stdout with the packet counts so far), until stdin closes.

    Runs under SCHED_FIFO when allowed, so that the daemons' CPU use (encoding, fitting,
    decoding on a 2-core machine) does not add its own delays to the link's."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except PermissionError:
        print("link: SCHED_FIFO refused; forwarding at normal priority", file=sys.stderr)
    first_fd, second_fd = open_tun(first), open_tun(second)
    directions = {first_fd: _Direction(second_fd), second_fd: _Direction(first_fd)}
    names = {first_fd: f"{first}->{second}", second_fd: f"{second}->{first}"}
    impairment = CLEAN
    pending: list[tuple[float, int, _Direction, bytes]] = []
    """(due, tie-breaker, direction, packet), a heap."""
    sequence = 0
    stdin = sys.stdin.fileno()
    print("ready", flush=True)
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
        readable, _, _ = select.select([stdin, first_fd, second_fd], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd == stdin:
                line = sys.stdin.readline()
                if not line:
                    return
                impairment = Impairment(**json.loads(line))
                print(json.dumps({names[d_fd]: dict(d.counts) for d_fd, d in directions.items()}), flush=True)
                continue
            packet = os.read(fd, 65536)
            direction = directions[fd]
            if random.random() < impairment.loss:
                direction.counts["lost"] += 1
                continue
            departs = now
            if impairment.rate_bits_per_second:
                start = max(now, direction.free_at)
                if start - now > impairment.queue_seconds:
                    direction.counts["queue_full"] += 1
                    continue
                direction.free_at = departs = start + len(packet) * 8 / impairment.rate_bits_per_second
            jitter = random.uniform(-impairment.jitter_seconds, impairment.jitter_seconds)
            sequence += 1
            heapq.heappush(pending, (departs + max(0.0, impairment.delay_seconds + jitter), sequence, direction,
                                     packet))
        while pending and pending[0][0] <= time.monotonic():
            _, _, direction, packet = heapq.heappop(pending)
            try:
                os.write(direction.out_fd, packet)
                direction.counts["forwarded"] += 1
            except OSError:  # the far end is down (being set up or torn down): the packet is lost
                direction.counts["undeliverable"] += 1


class Link:
    """The link process, started with `python -m adaptcast_bench.netfaults FIRST SECOND`."""

    def __init__(self, first: str, second: str, log: Path) -> None:
        self._log = log
        with open(log, "ab") as output:
            self.process = subprocess.Popen([sys.executable, "-m", "adaptcast_bench.netfaults", first, second],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=output,
                                            text=True, start_new_session=True)
        assert self.process.stdin and self.process.stdout, "both were asked for as pipes"
        self._requests, self._answers = self.process.stdin, self.process.stdout
        """Impairments to the process, one JSON line each; its packet counts back, likewise."""
        if self._answers.readline().strip() != "ready":
            self.process.wait()
            raise NetworkFaultsUnavailable(f"the link process could not open its TUN devices: {log.read_text()}")

    def impair(self, impairment: Impairment) -> dict[str, dict[str, int]]:
        """Apply `impairment` from now on, both ways; return the packet counts so far, by direction."""
        self._requests.write(json.dumps(asdict(impairment)) + "\n")
        self._requests.flush()
        answer = self._answers.readline()
        if not answer:
            raise AdaptcastError(f"the link process exited: {self._log.read_text()[-2000:]}")
        return json.loads(answer)

    def close(self) -> None:
        """Closing stdin ends the process, and with its descriptors the TUN devices."""
        self._requests.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------------------------------
# Namespaces


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise AdaptcastError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def enter_namespace(name: str) -> None:
    """Move the calling thread (only it) into network namespace `name`: the sockets it opens
    from now on are that namespace's."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {name}: {os.strerror(error)}")
    finally:
        os.close(fd)


class Namespace:
    """A network namespace of our own, deleted by `close`; `call` runs a function in a thread
    that entered it (to read a daemon's HTTP endpoints without a process per request)."""

    def __init__(self, name: str) -> None:
        _ip("netns", "add", name)
        self.name = name
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=enter_namespace, initargs=(name,))

    def call(self, function: Callable[..., T], *args: object) -> T:
        return self._thread.submit(function, *args).result()

    def close(self) -> None:
        self._thread.shutdown()
        _ip("netns", "delete", self.name)


def check_available() -> None:
    """Raise NetworkFaultsUnavailable, saying what is missing, unless this process can create
    network namespaces and TUN devices."""
    if shutil.which("ip") is None:
        raise NetworkFaultsUnavailable("network fault injection needs the `ip` command (iproute2)")
    try:
        os.close(open_tun(f"acprobe{secrets.token_hex(3)}"))
    except OSError as exc:
        raise NetworkFaultsUnavailable(
            f"network fault injection cannot create a TUN device ({exc.strerror}): it needs root or "
            "CAP_NET_ADMIN and /dev/net/tun") from None
    try:
        Namespace(f"adaptcast-probe-{secrets.token_hex(4)}").close()
    except AdaptcastError as exc:
        raise NetworkFaultsUnavailable(f"network fault injection cannot create a network namespace "
                                       f"(it needs root or CAP_NET_ADMIN): {exc}") from None


# ---------------------------------------------------------------------------------------------
# The station: a receiver and a sender in their own namespaces, joined by the link


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.read().decode()


class _FrameSampler(threading.Thread):
    """Reads the receiver's /api/cameras every SAMPLE_SECONDS from inside its namespace and keeps
    the time of the last frame shown: a gap between two frames shown longer than the sampling
    period is seen whole (the same value is read again until the next frame)."""

    def __init__(self, namespace: str, url: str, viewer: ViewerLogin) -> None:
        super().__init__(name=f"{namespace}-sampler", daemon=True)
        self._namespace = namespace
        self._url = url
        self._viewer = viewer
        self._done = threading.Event()
        self.frame_times: list[float] = []
        """Distinct `last_frame_at` values read, in order (the receiver's clock, time.time())."""

    def run(self) -> None:
        enter_namespace(self._namespace)
        while not self._done.wait(SAMPLE_SECONDS):
            try:
                shown = json.loads(self._viewer.get(self._url, timeout=2))[0]["last_frame_at"]
            except (OSError, ValueError, LookupError):
                continue  # the receiver was busy: the next read tells
            if shown is not None and (not self.frame_times or shown > self.frame_times[-1]):
                self.frame_times.append(shown)

    def stop(self) -> None:
        self._done.set()
        self.join()


class NetworkStation:
    """A receiver and a sender for one camera, each in a network namespace of its own, joined by
    an impairable link; a context manager that stops the daemons and removes the namespaces
    and the link on exit (Ctrl-C included). Configuration files and logs go to `folder`."""

    def __init__(self, folder: Path, settings: StationSettings) -> None:
        self.folder = folder
        self.settings = settings
        tag = secrets.token_hex(3)
        self._names = {"sender": f"adaptcast-s-{tag}", "receiver": f"adaptcast-r-{tag}"}
        self._devices = {"sender": f"acs{tag}", "receiver": f"acr{tag}"}
        self.url = f"http://{RECEIVER_ADDRESS}:{RECEIVER_PORT}"
        self.sender_metrics_url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        self.viewer = ViewerLogin.random()
        self.namespaces: dict[str, Namespace] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.link: Link | None = None
        self.sampler: _FrameSampler | None = None
        self._stack = ExitStack()

    def __enter__(self) -> NetworkStation:
        check_available()
        with ExitStack() as stack:
            for role, name in self._names.items():
                self.namespaces[role] = Namespace(name)
                stack.callback(self.namespaces[role].close)
            # closed before the namespaces are deleted: a TUN device leaving with its namespace
            # would fail the link's reads
            self.link = Link(self._devices["sender"], self._devices["receiver"], self.folder / "link.log")
            stack.callback(self.link.close)
            for role, (address, peer) in (("sender", (SENDER_ADDRESS, RECEIVER_ADDRESS)),
                                          ("receiver", (RECEIVER_ADDRESS, SENDER_ADDRESS))):
                namespace, device = self.namespaces[role], self._devices[role]
                _ip("link", "set", device, "netns", namespace.name)
                _ip("-n", namespace.name, "addr", "add", address, "peer", peer, "dev", device)
                _ip("-n", namespace.name, "link", "set", device, "up")
                _ip("-n", namespace.name, "link", "set", "lo", "up")
            receiver_config, sender_config = self._write_configs()
            env = {**os.environ, TOKEN_ENV: secrets.token_urlsafe(24)}
            stack.callback(self._stop_daemons)
            self._spawn("receiver", receiver_config, env)
            self._wait(lambda: self.namespaces["receiver"].call(_get, f"{self.url}/readyz") == "ready",
                       START_TIMEOUT_SECONDS, "the receiver to be ready")
            self._spawn("sender", sender_config, env)
            self.sampler = _FrameSampler(self._names["receiver"], f"{self.url}/api/cameras", self.viewer)
            self.sampler.start()
            stack.callback(self.sampler.stop)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def _write_configs(self) -> tuple[Path, Path]:
        settings = self.settings
        receiver: dict = {"listen": {"host": RECEIVER_ADDRESS, "port": RECEIVER_PORT},
                          "cameras": [{"name": CAMERA, "token_env": TOKEN_ENV}],
                          "threads_per_worker": shared_box_decode_threads(),
                          "viewers": [self.viewer.config()]}
        if settings.archive:
            receiver["archive"] = {"dir": str(settings.archive.resolve())}
        source = str(Path(settings.source).resolve()) if Path(settings.source).is_file() else settings.source
        sender = {
            # plain HTTP across the namespaces' own veth link, which nothing else reaches
            "receiver": {"url": self.url, "insecure": True},
            "metrics": {"host": "127.0.0.1", "port": METRICS_PORT},
            "cameras": [{"name": CAMERA, "source": source, "loop": settings.loop, "size": settings.size,
                         "fps": settings.fps, "mode": settings.mode.value, "segment_seconds": settings.segment_seconds,
                         "token_env": TOKEN_ENV}],
        }
        paths = self.folder / "receiver.yaml", self.folder / "sender.yaml"
        for path, config in zip(paths, (receiver, sender)):
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        return paths

    def _spawn(self, role: str, config: Path, env: dict[str, str]) -> None:
        with open(self.folder / f"{role}.log", "ab") as log:
            self.processes[role] = subprocess.Popen(
                ["ip", "netns", "exec", self._names[role], sys.executable, "-m", "adaptcast", role,
                 "--config", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _stop_daemons(self) -> None:
        """SIGTERM, sender first (it says goodbye to the receiver), then SIGKILL what lingers."""
        for role in ("sender", "receiver"):
            process = self.processes.get(role)
            if process is not None:
                stop_daemon(process, STOP_TIMEOUT_SECONDS)

    def check_alive(self) -> None:
        for role, process in self.processes.items():
            if process.poll() is not None:
                raise AdaptcastError(f"the {role} exited with code {process.returncode}:\n{self.logs()}")

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if condition():
                    return
            except (OSError, ValueError, LookupError):
                pass  # not answering yet
            time.sleep(0.2)
        raise AdaptcastError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def camera(self) -> dict:
        """The camera's entry in the receiver's /api/cameras."""
        return json.loads(self.namespaces["receiver"].call(self.viewer.get, f"{self.url}/api/cameras", 2.0))[0]

    def wait_for_frames(self, frames: int, timeout: float = START_TIMEOUT_SECONDS) -> None:
        self._wait(lambda: self.camera()["frames"] >= frames, timeout, f"{frames} frames shown")

    def receiver_metrics(self) -> str:
        return self.namespaces["receiver"].call(_get, f"{self.url}/metrics")

    def sender_metrics(self) -> str:
        return self.namespaces["sender"].call(_get, self.sender_metrics_url)

    def impair(self, impairment: Impairment) -> dict[str, dict[str, int]]:
        assert self.link is not None, "a station is used inside its with block"
        return self.link.impair(impairment)

    def frames_shown_between(self, start: float, end: float) -> list[float]:
        """When frames were shown (time.time()) between `start` and `end`, as sampled."""
        assert self.sampler is not None, "a station is used inside its with block"
        return [t for t in self.sampler.frame_times if start < t <= end]

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}"
                         for path in sorted(self.folder.glob("*.log")))


# ---------------------------------------------------------------------------------------------
# Scenarios and what they measure


@dataclass(frozen=True)
class Scenario:
    name: str
    phases: tuple[tuple[Impairment, float], ...]
    """(impairment, seconds) applied one after the other, all measured; a phase after a
    partition is when the link healed, and the time to the next frame shown is measured."""


def standard_scenarios(seconds: float, partition_seconds: float) -> list[Scenario]:
    """Loss, delay with jitter, a rate cap below the stream's (about 64 kbit/s on the wire:
    docs/capacity.md), and a partition that heals."""
    return [
        Scenario("clean", ((CLEAN, seconds),)),
        Scenario("loss 1%", ((Impairment(loss=0.01), seconds),)),
        Scenario("loss 5%", ((Impairment(loss=0.05), seconds),)),
        Scenario("loss 10%", ((Impairment(loss=0.10), seconds),)),
        Scenario("delay 50 ± 20 ms", ((Impairment(delay_seconds=0.05, jitter_seconds=0.02), seconds),)),
        Scenario("delay 200 ± 50 ms", ((Impairment(delay_seconds=0.2, jitter_seconds=0.05), seconds),)),
        Scenario("rate 40 kbit/s", ((Impairment(rate_bits_per_second=40e3), seconds),)),
        Scenario(f"partition {partition_seconds:g} s, healed", ((PARTITION, partition_seconds), (CLEAN, seconds))),
    ]


@dataclass
class NetworkScenarioResult:
    scenario: str
    impairments: list[str]
    seconds: float
    frames_sent: int
    """Frames the sender coded for the receiver (frames_captured) less those it dropped as stale."""
    frames_shown: int
    frames_on_time: int
    """Shown within ON_TIME_SECONDS of capture (the receiver's latency histogram)."""
    stalls: int
    """Gaps of over STALL_SECONDS between frames shown (sampled every SAMPLE_SECONDS)."""
    longest_gap_seconds: float
    recovery_seconds: float | None
    """Partition: from healing to the first frame shown again (None: no partition, or never)."""
    fallbacks: int
    sender_drops: dict[str, int]
    receiver_drops: dict[str, int]
    """Records the receiver did not decode, by reason (late: it fell behind), `decode` aside."""
    reconnects: int
    decoded_wrong: int
    """Records the decoder refused (records_dropped{reason="decode"}: symbol checksum or order)."""
    link_packets: dict[str, int]
    """What the emulated link did to the packets, both directions together."""
    load_average: float
    """This machine's 1-minute load average at the end: the daemons share its cores with anything else running."""


def _samples(metrics_text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(metrics_text)
            for s in family.samples]


def _total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(value for n, sample_labels, value in samples
               if n == name and all(sample_labels.get(k) == v for k, v in labels.items()))


def _by_reason(samples: list[tuple[str, dict[str, str], float]], name: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for n, labels, value in samples:
        if n == name:
            counts[labels["reason"]] += int(value)
    return counts


def _on_time(samples: list[tuple[str, dict[str, str], float]]) -> float:
    return sum(value for n, labels, value in samples if n == "adaptcast_receiver_latency_seconds_bucket"
               and float(labels["le"]) == ON_TIME_SECONDS)


def _link_counts(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for direction, counts in after.items():
        total.update(Counter(counts) - Counter(before.get(direction, {})))
    return dict(total)


def measure_scenario(station: NetworkStation, scenario: Scenario) -> NetworkScenarioResult:
    """Run `scenario`'s phases on a station whose stream is warm; figures are over the phases."""
    sender_before, receiver_before = _samples(station.sender_metrics()), _samples(station.receiver_metrics())
    started = time.time()
    link_before: dict[str, dict[str, int]] | None = None
    healed_at: float | None = None
    previous = CLEAN
    for impairment, seconds in scenario.phases:
        counts = station.impair(impairment)
        if link_before is None:
            link_before = counts
        if previous.loss >= 1.0 and impairment.loss < 1.0:
            healed_at = time.time()
        previous = impairment
        phase_end = time.monotonic() + seconds
        while time.monotonic() < phase_end:
            station.check_alive()
            time.sleep(0.5)
    link_after = station.impair(CLEAN)
    assert link_before is not None, "a scenario has phases: the first one's impair gave the counts before"
    ended = time.time()
    sender_after, receiver_after = _samples(station.sender_metrics()), _samples(station.receiver_metrics())

    def sender(name: str, **labels: str) -> int:
        return int(_total(sender_after, name, **labels) - _total(sender_before, name, **labels))

    def receiver(name: str, **labels: str) -> int:
        return int(_total(receiver_after, name, **labels) - _total(receiver_before, name, **labels))

    shown_at = station.frames_shown_between(started, ended)
    gaps = [b - a for a, b in zip([started, *shown_at], [*shown_at, ended])]
    after_heal = [t - healed_at for t in shown_at if t > healed_at] if healed_at is not None else []
    """Seconds from the heal to each frame shown after it."""
    drops = _by_reason(sender_after, "adaptcast_sender_frames_dropped_total")
    drops.subtract(_by_reason(sender_before, "adaptcast_sender_frames_dropped_total"))
    receiver_drops = _by_reason(receiver_after, "adaptcast_receiver_records_dropped_total")
    receiver_drops.subtract(_by_reason(receiver_before, "adaptcast_receiver_records_dropped_total"))
    return NetworkScenarioResult(
        scenario=scenario.name, impairments=[i.describe() for i, _ in scenario.phases], seconds=ended - started,
        frames_sent=sender("adaptcast_sender_frames_captured_total") - drops["stale"],
        frames_shown=receiver("adaptcast_receiver_frames_shown_total"),
        frames_on_time=int(_on_time(receiver_after) - _on_time(receiver_before)),
        stalls=sum(gap > STALL_SECONDS for gap in gaps), longest_gap_seconds=max(gaps),
        recovery_seconds=after_heal[0] if after_heal else None,
        fallbacks=receiver("adaptcast_receiver_fallback_segments_total"),
        sender_drops={reason: n for reason, n in sorted(drops.items()) if n},
        receiver_drops={reason: n for reason, n in sorted(receiver_drops.items()) if n and reason != "decode"},
        reconnects=sender("adaptcast_sender_connections_total"),
        decoded_wrong=receiver_drops["decode"],
        link_packets=_link_counts(link_before, link_after), load_average=os.getloadavg()[0],
    )


def run_scenarios(scenarios: list[Scenario], settings: StationSettings, log_folder: Path | None = None,
                  ) -> list[NetworkScenarioResult]:
    """Each scenario on a fresh station (warmed up on a clean link), so none inherits another's
    backlog or backoff; daemon logs are kept under `log_folder` (one folder per scenario) when given."""
    results = []
    with tempfile.TemporaryDirectory(prefix="adaptcast-netfaults-") as scratch:
        for index, scenario in enumerate(scenarios):
            folder = (log_folder or Path(scratch)) / f"{index}-{re.sub(r'[^a-z0-9]+', '-', scenario.name.lower())}"
            folder.mkdir(parents=True, exist_ok=True)
            with NetworkStation(folder, settings) as station:
                station.wait_for_frames(WARM_UP_FRAMES)
                results.append(measure_scenario(station, scenario))
            result = results[-1]
            print(f"{scenario.name}: {result.frames_shown} / {result.frames_sent} frames shown, "
                  f"{result.frames_on_time} on time, {result.stalls} stalls, {result.reconnects} reconnects",
                  file=sys.stderr)
    return results


def markdown_table(results: list[NetworkScenarioResult]) -> str:
    def recovery(r: NetworkScenarioResult) -> str:
        if not any(i.startswith("partition") for i in r.impairments):
            return "-"
        return f"{r.recovery_seconds:.1f} s" if r.recovery_seconds is not None else "never"

    def share(part: int, whole: int) -> str:
        return f"{part / whole:.0%}" if whole else "-"

    lines = [
        "| scenario | seconds | frames shown / sent | on time (≤ 300 ms) | stalls (> 1 s) | longest gap "
        "| recovery after healing | fallbacks | dropped at the sender | dropped at the receiver | reconnects "
        "| decoded wrong | packets lost / forwarded by the link | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        link = r.link_packets
        lost = link.get("lost", 0) + link.get("queue_full", 0)
        lines.append(
            f"| {r.scenario} | {r.seconds:.0f} | {r.frames_shown} / {r.frames_sent} "
            f"({share(r.frames_shown, r.frames_sent)}) | {r.frames_on_time} ({share(r.frames_on_time, r.frames_sent)}) "
            f"| {r.stalls} | {r.longest_gap_seconds:.1f} s | {recovery(r)} | {r.fallbacks} "
            f"| {r.sender_drops or 'none'} | {r.receiver_drops or 'none'} | {r.reconnects} | {r.decoded_wrong} "
            f"| {lost} / {link.get('forwarded', 0)} | {r.load_average:.1f} |")
    lines += [
        "",
        "Sender and receiver run as separate processes in network namespaces of their own, joined by "
        "an emulated link (bench/netfaults.py: two TUN devices and a forwarding process; the "
        "kernel here has no netem) that applies each impairment to both directions. Each scenario "
        "starts a fresh pair, warms it up on a clean link, then applies the impairment for the time "
        "given. Frames sent: captured and coded by the sender less those it dropped as stale (the "
        "counters are read at the scenario's start and end, so frames in flight at either edge "
        "can make shown exceed sent by a few); on "
        "time: shown within 300 ms of capture (one clock); stalls: gaps of over 1 s between frames "
        "shown, sampled every 0.25 s; recovery: from healing to the first frame shown; reconnects: "
        "connections the sender made during the scenario; decoded wrong: records the decoder "
        "refused (symbol checksum or order); load: the machine's 1-minute load average at the end "
        "(2 cores: above 2, the daemons were short of CPU).",
    ]
    return "\n".join(lines)


def default_settings() -> StationSettings:
    """The camera of `adaptcast bench-network`: the bundled clip looped, 320x240 at 10 fps, live mode."""
    return StationSettings(source=str(BUNDLED_CLIP), size="320x240", fps=10.0, mode=AdaptMode.LIVE, segment_seconds=2.0)


if __name__ == "__main__":  # the link process: python -m adaptcast_bench.netfaults FIRST SECOND
    try:
        run_link(sys.argv[1], sys.argv[2])
    except KeyboardInterrupt:
        pass
