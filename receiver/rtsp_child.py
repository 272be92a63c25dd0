"""The receiver's RTSP server: GStreamer's RTSP server (GstRtspServer through PyGObject), run as a
child of the receiver by a Python that has PyGObject (Debian's /usr/bin/python3 with python3-gi and
gir1.2-gst-rtsp-server-1.0); receiver/rtsp.py starts it and is the only thing that talks to it.

It does not encode: the receiver encodes each camera once (receiver/h264feed.py) and writes the
access units here, where each camera's shared media only packetizes them (h264parse, rtph264pay)
for every RTSP client of that camera, over RTP on UDP or interleaved in the RTSP connection (TCP).

It imports only the standard library, gi, and three standard-library-only modules of adaptcast
(shared/passwords.py, shared/lifecycle.py, receiver/rtsp_wire.py), loaded from the files that the
receiver names in ADAPTCAST_RTSP_MODULES: this Python is not the one adaptcast is installed in, and
an editable install has no `adaptcast` folder that a PYTHONPATH could name.

The pipes, parent to child (stdin): one line of JSON with the settings ({"host", "port", "cameras":
[names], "accounts": {name: scrypt hash}, "tls": {"cert_file", "key_file"} or null}), then access
units (receiver/rtsp_wire.py). Child to parent (stdout): one JSON object a line, with an "event":
  ready                                listening; the parent may go on
  error, message                       it cannot serve (then it exits 2)
  media, camera, on                    a camera's media was prepared (on: send its access units) or ended
  clients, camera, count, address, joined   a client started or stopped playing a camera
  refused, reason, address, name       a request was refused: unauthorized, login_failed, rate_limited
It exits when its stdin ends (the receiver stopped or died) and with its parent
(ADAPTCAST_DIE_WITH_PARENT).
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import os
import secrets
import sys
import threading
import time
from collections import deque
from types import ModuleType

import gi

gi.require_version("Gio", "2.0")
gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

MODULES_ENV = "ADAPTCAST_RTSP_MODULES"


def _project_module(name: str) -> ModuleType:
    """The module `name` of adaptcast, from the file the receiver named for it."""
    spec = importlib.util.spec_from_file_location(name, json.loads(os.environ[MODULES_ENV])[name])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


_wire = _project_module("adaptcast.receiver.rtsp_wire")
_passwords = _project_module("adaptcast.shared.passwords")
HEADER, KEYFRAME, MAX_ACCESS_UNIT = _wire.HEADER, _wire.KEYFRAME, _wire.MAX_ACCESS_UNIT
FAILURE_WINDOW_SECONDS, MAX_FAILURES = _passwords.FAILURE_WINDOW_SECONDS, _passwords.MAX_FAILURES
hash_password, parse_password_hash, verify_password = (
    _passwords.hash_password, _passwords.parse_password_hash, _passwords.verify_password)
die_with_parent_from_environment = _project_module("adaptcast.shared.lifecycle").die_with_parent_from_environment

ROLE = "viewer"
REALM = "adaptcast"
MAX_NAME, MAX_PASSWORD = 64, 1024
LAUNCH = ("( appsrc name=src is-live=true do-timestamp=true format=time"
          " caps=video/x-h264,stream-format=byte-stream,alignment=au"
          " ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=0 )")
"""No queue anywhere: each access unit is packetized and sent as it arrives. config-interval=0: the
feed already puts SPS and PPS before every keyframe, and the payloader's own (-1) would put them
before each slice of a keyframe (x264 cuts one per thread), which makes a client split the picture
in two."""

_out = threading.Lock()


def say(event: str, **fields: object) -> None:
    """One event line to the parent (from any thread)."""
    with _out:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


class ViewerAuth(GstRtspServer.RTSPAuth):
    """HTTP Basic against the receiver's viewer accounts (scrypt hashes, so Digest cannot work).

    A header that verified is remembered (by its exact value: only right passwords get in, so
    the set stays as small as the accounts), so a client's every request does not pay a scrypt.
    Unknown names cost a check against a dummy hash, so that timing does not tell which exist.
    """

    def __init__(self, accounts: dict[str, str]) -> None:
        super().__init__()
        self.accounts = {name: parse_password_hash(text) for name, text in accounts.items()}
        self.dummy = parse_password_hash(hash_password(secrets.token_urlsafe(16)))
        self.verified: dict[str, str] = {}
        self.failures: dict[str, deque[float]] = {}
        self.token = GstRtspServer.RTSPToken()
        self.token.set_string("media.factory.role", ROLE)
        self.set_realm(REALM)

    def do_authenticate(self, ctx: GstRtspServer.RTSPContext) -> bool:
        result, header = ctx.request.get_header(GstRtsp.RTSPHeaderField.AUTHORIZATION, 0)
        address = ctx.conn.get_ip() if ctx.conn else "unknown"
        if result != GstRtsp.RTSPResult.OK or not header.startswith("Basic "):
            say("refused", reason="unauthorized", address=address, name="")
            return True  # no token: the check answers 401 with our challenge
        credentials = header[6:].strip()
        if credentials not in self.verified:
            name = self._verify(credentials, address)
            if name is None:
                return True
            self.verified[credentials] = name
        ctx.set_token(self.token)
        return True

    def _verify(self, credentials: str, address: str) -> str | None:
        """The viewer these Basic credentials name, if the password is right."""
        now = time.monotonic()
        recent = self.failures.setdefault(address, deque())
        while recent and recent[0] < now - FAILURE_WINDOW_SECONDS:
            recent.popleft()
        if len(recent) >= MAX_FAILURES:
            say("refused", reason="rate_limited", address=address, name="")
            return None
        try:
            name, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name, password = "", ""
        account = self.accounts.get(name) if len(name) <= MAX_NAME and len(password) <= MAX_PASSWORD else None
        if verify_password(password[:MAX_PASSWORD], account or self.dummy) and account is not None:
            return name
        recent.append(now)
        self.failures = {a: f for a, f in self.failures.items() if f}
        say("refused", reason="login_failed", address=address, name=name[:MAX_NAME])
        return None


class CameraMount:
    """One camera's shared media: the appsrc of its pipeline while one is prepared."""

    def __init__(self, index: int, name: str) -> None:
        self.index, self.name = index, name
        self.media: GstRtspServer.RTSPMedia | None = None
        self.source: Gst.Element | None = None
        self.factory = GstRtspServer.RTSPMediaFactory()
        self.factory.set_launch(LAUNCH)
        self.factory.set_shared(True)
        self.factory.set_latency(0)
        self.factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP | GstRtsp.RTSPLowerTrans.TCP)
        self.factory.add_role_from_structure(Gst.Structure.new_from_string(
            f"{ROLE}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
        self.factory.connect("media-configure", self._configure)

    def _configure(self, _factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        self.media, self.source = media, media.get_element().get_by_name_recurse_up("src")
        media.connect("unprepared", self._unprepared)
        say("media", camera=self.index, on=True)

    def _unprepared(self, _media: GstRtspServer.RTSPMedia) -> None:
        self.media, self.source = None, None
        say("media", camera=self.index, on=False)

    def push(self, data: bytes, keyframe: bool) -> None:
        source = self.source
        if source is None:
            return
        buffer = Gst.Buffer.new_wrapped_bytes(GLib.Bytes.new(data))  # a copy GStreamer owns
        if not keyframe:
            buffer.set_flags(Gst.BufferFlags.DELTA_UNIT)
        source.emit("push-buffer", buffer)


class Viewers:
    """Who plays which camera, from the clients' PLAY and TEARDOWN requests and closed connections."""

    def __init__(self, mounts: dict[str, CameraMount]) -> None:
        self.mounts = mounts
        self.playing: dict[int, set[GstRtspServer.RTSPClient]] = {mount.index: set() for mount in mounts.values()}

    def attach(self, _server: GstRtspServer.RTSPServer, client: GstRtspServer.RTSPClient) -> None:
        client.connect("play-request", self._play)
        client.connect("teardown-request", self._teardown)
        client.connect("closed", self._closed)

    def _mount(self, ctx: GstRtspServer.RTSPContext) -> CameraMount | None:
        path = ctx.uri.abspath if ctx.uri is not None else ""
        return self.mounts.get(path.rstrip("/"))

    def _play(self, client: GstRtspServer.RTSPClient, ctx: GstRtspServer.RTSPContext) -> None:
        mount = self._mount(ctx)
        if mount is not None and client not in self.playing[mount.index]:
            self.playing[mount.index].add(client)
            self._report(mount.index, client, joined=True)

    def _teardown(self, client: GstRtspServer.RTSPClient, ctx: GstRtspServer.RTSPContext) -> None:
        mount = self._mount(ctx)
        if mount is not None and client in self.playing[mount.index]:
            self.playing[mount.index].discard(client)
            self._report(mount.index, client, joined=False)

    def _closed(self, client: GstRtspServer.RTSPClient) -> None:
        for index, clients in self.playing.items():
            if client in clients:
                clients.discard(client)
                self._report(index, client, joined=False)

    def _report(self, index: int, client: GstRtspServer.RTSPClient, joined: bool) -> None:
        connection = client.get_connection()
        address = connection.get_ip() if connection is not None else "unknown"
        say("clients", camera=index, count=len(self.playing[index]), address=address, joined=joined)


def read_access_units(stream, mounts: list[CameraMount], loop: GLib.MainLoop) -> None:
    """Push every access unit from the parent to its camera's media; end the loop at the end of input."""
    try:
        while True:
            header = stream.read(HEADER.size)
            if len(header) < HEADER.size:
                break
            index, flags, length = HEADER.unpack(header)
            if index >= len(mounts) or length > MAX_ACCESS_UNIT:
                say("error", message=f"bad access unit header (camera {index}, {length} bytes)")
                break
            data = stream.read(length)
            if len(data) < length:
                break
            mounts[index].push(data, bool(flags & KEYFRAME))
    finally:
        GLib.idle_add(loop.quit)


REQUIRED_ELEMENTS = ("appsrc", "h264parse", "rtph264pay")
"""What LAUNCH needs: appsrc is in gstreamer1.0-plugins-base, h264parse in -bad, rtph264pay in -good."""


def missing_elements() -> list[str]:
    """The GStreamer elements LAUNCH needs that this installation lacks."""
    return [name for name in REQUIRED_ELEMENTS if Gst.ElementFactory.find(name) is None]


def main() -> int:
    Gst.init(None)
    if sys.argv[1:] == ["--check"]:  # receiver/rtsp.py's `unavailable_reason`: can a server run here?
        missing = missing_elements()
        print(f"GStreamer elements missing: {' '.join(missing)}" if missing else "ok")
        return 2 if missing else 0
    die_with_parent_from_environment()
    stdin = sys.stdin.buffer
    settings = json.loads(stdin.readline())
    if missing := missing_elements():
        say("error", message=f"GStreamer elements missing: {' '.join(missing)}")
        return 2
    mounts = {f"/{name}": CameraMount(index, name) for index, name in enumerate(settings["cameras"])}
    server = GstRtspServer.RTSPServer()
    server.set_address(settings["host"])
    server.set_service(str(settings["port"]))
    auth = ViewerAuth(settings["accounts"])
    if settings["tls"]:  # with a certificate GstRtspServer speaks TLS only (rtsps://)
        try:
            auth.set_tls_certificate(Gio.TlsCertificate.new_from_files(settings["tls"]["cert_file"],
                                                                       settings["tls"]["key_file"]))
        except GLib.Error as exc:
            say("error", message=f"cannot use the TLS certificate: {exc.message}")
            return 2
    server.set_auth(auth)
    for path, mount in mounts.items():
        server.get_mount_points().add_factory(path, mount.factory)
    viewers = Viewers(mounts)
    server.connect("client-connected", viewers.attach)
    loop = GLib.MainLoop()
    try:
        attached = server.attach(None)
    except GLib.Error as exc:
        attached, reason = 0, exc.message
    else:
        reason = "address in use?"
    if not attached:
        say("error", message=f"cannot listen on {settings['host']}:{settings['port']} ({reason})")
        return 2
    threading.Thread(target=read_access_units, args=(stdin, list(mounts.values()), loop), daemon=True).start()
    say("ready", port=server.get_bound_port())
    loop.run()
    # clients first, then every pipeline down, so that no GStreamer thread calls into Python at exit
    server.client_filter(lambda _server, _client: GstRtspServer.RTSPFilterResult.REMOVE)
    for mount in mounts.values():
        if mount.media is not None:
            mount.media.unprepare()
    return 0


if __name__ == "__main__":
    sys.exit(main())
