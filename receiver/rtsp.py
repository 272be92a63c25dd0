"""Each camera's decoded video over RTSP (rtsp://HOST:PORT/CAMERA), for NVRs, VMSs and players.

The RTSP server is GStreamer's (GstRtspServer), which needs PyGObject: Debian ships it for the
system Python, not for the receiver's virtual environment, so it runs as a child process
(receiver/rtsp_child.py, under `rtsp.python`). It only packetizes: each camera is encoded once,
in this process, by its H.264 feed (receiver/h264feed.py), and only while the child has that
camera's media prepared (someone asked for it). One feed subscription serves every RTSP client of
a camera: GStreamer's shared media fans it out, and the subscription counts them as its watchers.

The pipe to the child never blocks the event loop: an access unit that would grow the pipe's
buffer past MAX_BUFFERED_BYTES is dropped, and the camera then waits for a keyframe, which it asks
the feed for. The child exiting while the receiver runs is logged and it is started again after
a growing pause; it not starting at all stops the receiver at start-up with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
from collections import Counter
from dataclasses import dataclass

from adaptcast.receiver import rtsp_wire
from adaptcast.receiver.h264feed import FeedClient, H264Feed
from adaptcast.receiver.rtsp_wire import HEADER, KEYFRAME
from adaptcast.receiver.stats import RTSP_REFUSALS, RtspStats
from adaptcast.shared import lifecycle, passwords
from adaptcast.shared.config import RtspConfig
from adaptcast.shared.errors import AdaptcastError
from adaptcast.shared.lifecycle import PARENT_PID_ENV
from adaptcast.shared.resources import resource_path

log = logging.getLogger(__name__)

CHILD_SCRIPT = resource_path("adaptcast.receiver", "rtsp_child.py")
PACKAGES = ("python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
            "gstreamer1.0-plugins-bad glib-networking")
"""What the child needs on Debian (h264parse is in -bad, rtph264pay in -good, TLS for rtsps in glib-networking)."""
START_TIMEOUT_SECONDS = 30.0
MAX_BUFFERED_BYTES = 1 << 20
"""Access units waiting in the pipe to the child, beyond which the newest is dropped (seconds of video)."""
RESTART_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Pauses before restarting a child that exited, growing with each exit in a row."""


class RtspUnavailable(AdaptcastError):
    """The RTSP server cannot start (its Python, PyGObject or GStreamer missing, or its port taken)."""


@dataclass
class _Child:
    """The running RTSP child and its pipes: settings and access units in, events out, log lines on stderr."""

    process: asyncio.subprocess.Process
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader


class _Mount:
    """One camera as the child serves it: the feed subscription while its media is prepared."""

    def __init__(self, index: int, feed: H264Feed) -> None:
        self.index = index
        self.feed = feed
        self.client: FeedClient | None = None
        self.pump: asyncio.Task | None = None
        self.viewers = 0
        self.frames_dropped = 0
        """Access units dropped because the pipe to the child was full."""

    def stop(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        if self.client is not None:
            self.client.close()
        self.client, self.pump, self.viewers = None, None, 0


class RtspServer:
    """The RTSP child for every camera's feed; `start` it, and `close` it with the daemon."""

    def __init__(self, config: RtspConfig, feeds: dict[str, H264Feed], accounts: dict[str, str]) -> None:
        """`accounts`: viewer name -> password hash (scrypt, as the configuration holds them)."""
        self.config = config
        self._mounts = [_Mount(index, feed) for index, feed in enumerate(feeds.values())]
        tls = {"cert_file": str(config.tls.cert_file), "key_file": str(config.tls.key_file)} if config.tls else None
        self._settings = {"host": config.host, "port": config.port, "cameras": list(feeds), "accounts": accounts,
                          "tls": tls}
        self._child: _Child | None = None
        self._supervisor: asyncio.Task | None = None
        self._stderr_logger: asyncio.Task | None = None
        """Copies the child's stderr into this log (held here: the loop keeps only weak references)."""
        self.port: int | None = None
        """The port the child listens on (config.port, or the one the system chose for port 0)."""
        self.refused: Counter[str] = Counter({reason: 0 for reason in RTSP_REFUSALS})
        """RTSP requests refused, by reason (as the child reported them)."""
        self.restarts = 0
        if not accounts:
            log.warning("rtsp: no viewer accounts: every RTSP request is refused (add `viewers:` to the configuration)")

    def stats(self) -> RtspStats:
        return RtspStats(refused={reason: self.refused[reason] for reason in RTSP_REFUSALS})

    async def start(self) -> None:
        """Start the child and wait until it listens; RtspUnavailable, saying why, when it cannot."""
        child = await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(child))
        log.info("rtsp: serving %d cameras at %s://%s:%d/CAMERA", len(self._mounts),
                 "rtsps" if self.config.tls else "rtsp", self.config.host, self.port)

    async def close(self) -> None:
        """Stop every subscription and the child (its input ends; killed if it does not exit in 5 s)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for mount in self._mounts:
            mount.stop()
        await self._stop_child()

    async def _spawn(self) -> _Child:
        try:
            process = await asyncio.create_subprocess_exec(
                self.config.python, str(CHILD_SCRIPT), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**_child_environment(), PARENT_PID_ENV: str(os.getpid())})
        except OSError as exc:
            raise RtspUnavailable(f"rtsp: cannot run {self.config.python} ({exc.strerror}): set rtsp.python to a "
                                  f"Python with PyGObject, or apt-get install {PACKAGES}") from None
        assert process.stdin and process.stdout and process.stderr, "all three were asked for as pipes"
        child = self._child = _Child(process, process.stdin, process.stdout, process.stderr)
        child.stdin.write(json.dumps(self._settings).encode() + b"\n")
        try:
            line = await asyncio.wait_for(child.stdout.readline(), START_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            line = b""
        event = _parse(line)
        if event.get("event") != "ready":
            errors = (await _read_all(child.stderr)).strip().splitlines()
            await self._stop_child()
            reason = event.get("message") or (errors[-1][:300] if errors else f"exit code {process.returncode}")
            raise RtspUnavailable(f"rtsp: the RTSP server did not start: {reason} (it needs {self.config.python} "
                                  f"with GStreamer's RTSP server: apt-get install {PACKAGES})")
        self.port = int(event["port"])
        self._stderr_logger = asyncio.create_task(_log_lines(child.stderr))
        return child

    async def _supervise(self, child: _Child) -> None:
        """Act on the events of `child`, the running child; restart it (after a pause) when it exits."""
        exits_in_a_row = 0
        while True:
            await self._follow(child)
            for mount in self._mounts:
                mount.stop()
            code = await child.process.wait()
            pause = RESTART_SECONDS[min(exits_in_a_row, len(RESTART_SECONDS) - 1)]
            log.error("rtsp: the RTSP server exited (code %s); restarting it in %g s", code, pause)
            while True:
                await asyncio.sleep(pause)
                exits_in_a_row += 1
                try:
                    child = await self._spawn()
                    break
                except RtspUnavailable as exc:
                    pause = RESTART_SECONDS[min(exits_in_a_row, len(RESTART_SECONDS) - 1)]
                    log.error("%s; trying again in %g s", exc, pause)
            self.restarts += 1
            log.info("rtsp: the RTSP server is back on port %d", self.port)

    async def _follow(self, child: _Child) -> None:
        """Every event of the child until its output ends."""
        while line := await child.stdout.readline():
            event = _parse(line)
            kind = event.get("event")
            if kind in ("media", "clients") and not 0 <= event.get("camera", -1) < len(self._mounts):
                log.error("rtsp: an event for no camera: %r", line[:200])
            elif kind == "media":
                self._media(self._mounts[event["camera"]], bool(event["on"]), child.stdin)
            elif kind == "clients":
                self._clients(self._mounts[event["camera"]], event)
            elif kind == "refused":
                self._refused(event)
            elif kind == "error":
                log.error("rtsp: %s", str(event.get("message"))[:300])

    def _media(self, mount: _Mount, on: bool, stdin: asyncio.StreamWriter) -> None:
        """The child prepared a camera's media (send it access units on `stdin`) or let it go (stop encoding)."""
        mount.stop()
        if on:
            mount.client = mount.feed.subscribe("rtsp")
            mount.client.watchers = 0
            mount.pump = asyncio.create_task(self._pump(mount, mount.client, stdin))

    def _clients(self, mount: _Mount, event: dict) -> None:
        mount.viewers = int(event["count"])
        if mount.client is not None:
            mount.client.watchers = mount.viewers
            if event.get("joined"):
                mount.client.request_keyframe()  # the newcomer's picture starts at the next keyframe
        log.info("camera %s: RTSP client %s %s (%d watching over RTSP)", mount.feed.camera,
                 str(event.get("address"))[:64], "started playing" if event.get("joined") else "left", mount.viewers)

    def _refused(self, event: dict) -> None:
        reason = str(event.get("reason"))
        if reason not in self.refused:
            return
        self.refused[reason] += 1
        if reason != "unauthorized":  # a player's first request has no credentials: normal
            log.warning("rtsp: refused %s from %s (%s)", repr(str(event.get("name", ""))[:64]),
                        str(event.get("address"))[:64], reason)

    async def _pump(self, mount: _Mount, client: FeedClient, stdin: asyncio.StreamWriter) -> None:
        """Write the camera's access units to the child, dropping rather than queueing behind a slow pipe."""
        waiting_for_keyframe = False
        while (frame := await client.next_frame()) is not None:
            if stdin.is_closing():
                return
            if waiting_for_keyframe and not frame.keyframe:
                continue
            if stdin.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
                mount.frames_dropped += 1
                waiting_for_keyframe = True
                client.request_keyframe()
                continue
            waiting_for_keyframe = False
            stdin.write(HEADER.pack(mount.index, KEYFRAME if frame.keyframe else 0, len(frame.data)) + frame.data)
            client.sent(len(frame.data) * client.watchers)

    async def _stop_child(self) -> None:
        child = self._child
        if child is None or child.process.returncode is not None:
            return
        child.stdin.close()
        try:
            await asyncio.wait_for(child.process.wait(), 5.0)
        except asyncio.TimeoutError:
            log.warning("rtsp: the RTSP server did not exit in 5 s; killing it")
            child.process.kill()
            await child.process.wait()


def unavailable_reason(python: str) -> str | None:
    """Why an RTSP server cannot run under `python` (None when it can), for a caller that would
    rather go without RTSP (the demo) than have the receiver refuse to start."""
    try:
        check = subprocess.run([python, str(CHILD_SCRIPT), "--check"], env=_child_environment(), capture_output=True,
                               text=True, timeout=START_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {python} ({exc})"
    if check.returncode != 0:
        last = (check.stdout.strip() or check.stderr.strip() or f"exit code {check.returncode}").splitlines()[-1]
        return f"{python}: {last[:300]}"
    return None


def _child_environment() -> dict[str, str]:
    """Where the child finds the standard-library-only modules of adaptcast that it loads."""
    modules = {module.__name__: module.__file__ for module in (rtsp_wire, passwords, lifecycle)}
    return {**os.environ, "ADAPTCAST_RTSP_MODULES": json.dumps(modules)}


def _parse(line: bytes) -> dict:
    """An event line of the child as a dict ({} for anything else)."""
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


async def _read_all(stream: asyncio.StreamReader) -> str:
    try:
        return (await asyncio.wait_for(stream.read(), 5.0)).decode(errors="replace")
    except asyncio.TimeoutError:
        return ""


async def _log_lines(stream: asyncio.StreamReader) -> None:
    """What the child writes on stderr (GStreamer's warnings, a traceback), into this log."""
    while line := await stream.readline():
        log.warning("rtsp server: %s", line.decode(errors="replace").rstrip()[:500])

