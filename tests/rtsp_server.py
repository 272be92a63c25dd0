"""A small real RTSP server for the tests: serves a video file, looped forever, as H.264 over RTSP
at rtsp://127.0.0.1:PORT/cam, through GStreamer's RTSP server (what many IP cameras run).

    /usr/bin/python3 tests/rtsp_server.py CLIP PORT

Run by the system Python, not the project's virtual environment: PyGObject and GStreamer come
from Debian packages (python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-base,
gstreamer1.0-plugins-good, gstreamer1.0-plugins-ugly for x264enc, gstreamer1.0-plugins-bad for
h264parse, gstreamer1.0-libav for avdec_h264). It imports nothing from the project.

The clip is decoded once, at start, to raw I420 frames in memory (the bundled clip is small);
each RTSP session gets its own pipeline whose appsrc plays those frames in a loop at the clip's
rate, timestamped continuously, so the stream never ends and never jumps back in time. Prints
"ready" on stdout once listening; exits 0 on SIGTERM or SIGINT, 2 when it cannot start.
"""

from __future__ import annotations

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402 - only after gi.require_version picks the versions

MOUNT = "/cam"


def decode(path: str) -> tuple[list[bytes], str, int, int]:
    """Every frame of the file as raw I420 bytes, with their caps and the frame rate."""
    pipeline = Gst.parse_launch(
        "filesrc name=file ! decodebin ! videoconvert ! video/x-raw,format=I420 ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("file").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames: list[bytes] = []
    caps = None
    try:
        while True:
            sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
            if sample is None:
                break
            caps = caps or sample.get_caps()
            buffer = sample.get_buffer()
            frames.append(buffer.extract_dup(0, buffer.get_size()))
        message = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
        if message is not None:
            raise RuntimeError(f"cannot decode {path}: {message.parse_error()[0].message}")
    finally:
        pipeline.set_state(Gst.State.NULL)
    if not frames or caps is None:
        raise RuntimeError(f"no video frames in {path}")
    structure = caps.get_structure(0)
    ok, num, den = structure.get_fraction("framerate")
    if not ok or num <= 0:
        num, den = 25, 1
    width, height = structure.get_value("width"), structure.get_value("height")
    raw_caps = f"video/x-raw,format=I420,width={width},height={height},framerate={num}/{den}"
    return frames, raw_caps, num, den


class LoopingFactory(GstRtspServer.RTSPMediaFactory):
    """One pipeline per client, playing the frames in a loop from the first one."""

    def __init__(self, frames: list[bytes], caps: str, num: int, den: int) -> None:
        super().__init__()
        self.frames = frames
        self.duration = Gst.util_uint64_scale_int(Gst.SECOND, den, num)
        self.set_launch(
            f"( appsrc name=src format=time is-live=true caps={caps} ! videoconvert"
            " ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10"
            " ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        self.set_shared(False)
        self.medias: list[GstRtspServer.RTSPMedia] = []
        self.stopping = False
        self.connect("media-configure", self._configure)

    def _configure(self, _factory, media) -> None:
        self.medias.append(media)
        source = media.get_element().get_by_name_recurse_up("src")
        state = {"n": 0}

        def need_data(src, _length) -> None:
            if self.stopping:
                src.emit("end-of-stream")
                return
            n = state["n"]
            buffer = Gst.Buffer.new_wrapped(self.frames[n % len(self.frames)])
            buffer.pts = buffer.dts = n * self.duration
            buffer.duration = self.duration
            state["n"] = n + 1
            src.emit("push-buffer", buffer)

        source.connect("need-data", need_data)


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: rtsp_server.py CLIP PORT", file=sys.stderr)
        return 2
    path, port = sys.argv[1], int(sys.argv[2])
    Gst.init(None)
    try:
        frames, caps, num, den = decode(path)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = LoopingFactory(frames, caps, num, den)
    server.get_mount_points().add_factory(MOUNT, factory)
    loop = GLib.MainLoop()
    try:
        attached = server.attach(None)
    except GLib.Error as exc:
        attached, reason = 0, exc.message
    else:
        reason = "address in use?"
    if not attached:
        print(f"cannot listen on 127.0.0.1:{port} ({reason})", file=sys.stderr)
        return 2

    def stop() -> bool:
        # Clients first, then every pipeline to NULL, so that no GStreamer thread calls back into
        # Python while the interpreter shuts down (that crashes it).
        factory.stopping = True
        server.client_filter(lambda _server, _client: GstRtspServer.RTSPFilterResult.REMOVE)
        for media in factory.medias:
            media.unprepare()
        loop.quit()
        return GLib.SOURCE_REMOVE

    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, stop)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
