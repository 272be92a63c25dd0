"""The receiver's metrics, read at scrape time from its components' stats snapshots
(receiver/stats.py: the only part of the receiver this module knows). docs/metrics.md lists them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from adaptcast.receiver.stats import (
    ARCHIVE_DROP_REASONS,
    DELETE_REASONS,
    DROP_REASONS,
    MALFORMED_REASONS,
    PROTOCOLS,
    RTSP_REFUSALS,
    VIEWER_REFUSALS,
    WHEP_REFUSALS,
    WHIP_REFUSALS,
    FeedStats,
    PoolStats,
    Protocol,
    RtspStats,
    SessionStats,
    ViewerGateStats,
    WhepStats,
    WhipStats,
)
from adaptcast.shared.adapters.store import FALLBACK_REASONS
from adaptcast.shared.adapters.update import REJECTION_REASONS
from adaptcast.shared.codec.modelfile import ModelInfo
from adaptcast.shared.metrics import Reason, build_info, by_reason, counter, gauge, histogram, with_zeros
from adaptcast.shared.wire.inbound_limits import ABORT_REASONS

SessionsStats = Callable[[], list[SessionStats]]
"""Every camera session's stats, taken now."""
FeedsStats = Callable[[], list[FeedStats]]
"""Every camera's H.264 feed's stats, taken now."""


class ReceiverCollector(Collector):
    """The decoding side: sessions, signaling, viewers, decode workers, archive. Counters whose
    reasons are known in advance have a sample, 0 until counted, for every reason (and camera)."""

    def __init__(self, sessions: SessionsStats, whip: Callable[[], WhipStats], viewers: Callable[[], ViewerGateStats],
                 pool: Callable[[], PoolStats], model: ModelInfo) -> None:
        self.sessions = sessions
        self.whip = whip
        self.viewers = viewers
        self.pool = pool
        self.model = model

    def collect(self) -> Iterator[Metric]:
        sessions = sorted(self.sessions(), key=lambda s: s.camera)  # one snapshot a scrape: every family agrees
        whip, pool = self.whip(), self.pool()
        yield build_info("receiver", self.model.name, self.model.sha256)
        yield from _traffic(sessions)
        yield from _decoding(sessions)
        yield from _archive(sessions)
        yield gauge("adaptcast_receiver_active_streams", "Cameras with a session that delivered a message in the "
                    "last 2 s.", [], [([], float(sum(s.active for s in sessions)))])
        yield counter("adaptcast_receiver_decode_worker_restarts", "Decode worker processes restarted after a crash "
                      "or a hang.", ["worker"], [([str(w.index)], float(w.restarts)) for w in pool.workers])
        yield counter("adaptcast_receiver_camera_quarantined", "Times the camera's record was in flight when its "
                      "decode worker died or hung, each followed by a quarantine of its records.", ["camera"],
                      [([camera], float(n)) for camera, n in sorted(pool.quarantined.items())])
        yield counter("adaptcast_receiver_signaling_refused", "WHIP requests refused, by reason.", ["reason"],
                      [([reason], float(n)) for reason, n in with_zeros(whip.refused, WHIP_REFUSALS).items()])
        yield counter("adaptcast_receiver_viewer_refused", "Live-view requests and logins refused, by reason.",
                      ["reason"], [([reason], float(n))
                                   for reason, n in with_zeros(self.viewers().refused, VIEWER_REFUSALS).items()])
        yield counter("adaptcast_receiver_sctp_aborts", "SCTP associations aborted for holding more of the peer's "
                      "data than the limit, by reason.", ["camera", "reason"],
                      [sample for name, counts in sorted(whip.sctp_aborts.items())
                       for sample in by_reason(name, counts, ABORT_REASONS)])


def _traffic(sessions: list[SessionStats]) -> Iterator[Metric]:
    yield counter("adaptcast_receiver_received_bytes", "Bytes received on the data channel, framing included.",
                  ["camera"], [([s.camera], float(s.received_bytes)) for s in sessions])
    yield counter("adaptcast_receiver_messages", "Data-channel messages received.", ["camera"],
                  [([s.camera], float(s.messages)) for s in sessions])
    yield counter("adaptcast_receiver_malformed_messages", "Messages or records refused by the checks, by reason.",
                  ["camera", "reason"],
                  [sample for s in sessions for sample in by_reason(s.camera, s.malformed, MALFORMED_REASONS)])
    yield counter("adaptcast_receiver_records_dropped", "Well-formed records not decoded, by reason.",
                  ["camera", "reason"],
                  [sample for s in sessions for sample in by_reason(s.camera, s.dropped, DROP_REASONS)])
    yield gauge("adaptcast_receiver_connected", "1 while the camera has a WebRTC session.", ["camera"],
                [([s.camera], float(s.connected)) for s in sessions])


def _decoding(sessions: list[SessionStats]) -> Iterator[Metric]:
    yield counter("adaptcast_receiver_segments_decoded", "Segments started by the decoder.", ["camera"],
                  [([s.camera], float(s.segments)) for s in sessions])
    yield counter("adaptcast_receiver_frames_shown", "Frames decoded and published to the live view and archive.",
                  ["camera"], [([s.camera], float(s.frames)) for s in sessions])
    yield counter("adaptcast_receiver_skipped_frames", "Frames shown that the sender skipped (its reference "
                  "shown again).", ["camera"], [([s.camera], float(s.skipped_frames)) for s in sessions])
    yield counter("adaptcast_receiver_backgrounds", "Background pictures received and decoded.", ["camera"],
                  [([s.camera], float(s.backgrounds)) for s in sessions])
    yield counter("adaptcast_receiver_background_bytes", "Bytes of the background pictures decoded.", ["camera"],
                  [([s.camera], float(s.background_bytes)) for s in sessions])
    yield histogram("adaptcast_receiver_decode_seconds", "Time a decode worker spent on one frame.", ["camera"],
                    [([s.camera], s.decode_seconds) for s in sessions])
    yield histogram("adaptcast_receiver_latency_seconds", "Glass-to-glass latency: capture at the sender to "
                    "decoded frame here (the two clocks must agree: NTP).", ["camera"],
                    [([s.camera], s.latency) for s in sessions])
    yield counter("adaptcast_receiver_fallback_segments",
                  "Segments decoded with the base model although they named an adapter, by reason.",
                  ["camera", "reason"],
                  [sample for s in sessions for sample in by_reason(s.camera, s.fallbacks, FALLBACK_REASONS)])
    yield counter("adaptcast_receiver_adapter_rejections", "Adapter updates refused, by reason.",
                  ["camera", "reason"],
                  [sample for s in sessions for sample in by_reason(s.camera, s.rejections, REJECTION_REASONS)])
    yield counter("adaptcast_receiver_adapter_swaps", "Segments that switched to another adapter version.",
                  ["camera"], [([s.camera], float(s.adapter_swaps)) for s in sessions])
    yield histogram("adaptcast_receiver_adapter_swap_seconds", "Time the decode worker took to install a new "
                    "adapter's weights at a segment boundary.", ["camera"],
                    [([s.camera], s.swap_seconds) for s in sessions])
    yield gauge("adaptcast_receiver_adapter_version", "Adapter version decoding the current segment (0: base).",
                ["camera"], [([s.camera], float(s.adapter_version)) for s in sessions])


def _archive(sessions: list[SessionStats]) -> Iterator[Metric]:
    archives = [(s.camera, s.archive) for s in sessions if s.archive is not None]
    yield gauge("adaptcast_receiver_archive_bytes", "Bytes of the camera's finished archive files.", ["camera"],
                [([name], float(a.stored_bytes)) for name, a in archives if a.stored_bytes is not None])
    yield counter("adaptcast_receiver_archive_segments_deleted", "Archive files deleted by retention, by limit.",
                  ["camera", "reason"],
                  [sample for name, a in archives for sample in by_reason(name, a.deleted, DELETE_REASONS)])
    yield counter("adaptcast_receiver_archive_write_errors", "Archive files that could not be written.",
                  ["camera"], [([name], float(a.write_errors)) for name, a in archives])
    yield counter("adaptcast_receiver_archive_records_dropped", "Records not archived, by reason.",
                  ["camera", "reason"],
                  [sample for name, a in archives for sample in by_reason(name, a.dropped, ARCHIVE_DROP_REASONS)])
    yield gauge("adaptcast_receiver_archive_paused", "1 while the archive's disk has less free space than "
                "archive.min_free_bytes: no new file is started.", ["camera"],
                [([name], float(a.paused)) for name, a in archives])


class RepublishCollector(Collector):
    """Each camera's re-publication to RTSP and WHEP clients, read from its H.264 feed, and the
    clients the RTSP and WHEP servers refused. A server that is off (None) has refused no one,
    and shows 0 for every reason."""

    def __init__(self, feeds: FeedsStats, rtsp: Callable[[], RtspStats] | None = None,
                 whep: Callable[[], WhepStats] | None = None) -> None:
        self.feeds = feeds
        self.rtsp = rtsp
        self.whep = whep

    def collect(self) -> Iterator[Metric]:
        feeds = sorted(self.feeds(), key=lambda f: f.camera)
        yield gauge("adaptcast_receiver_h264_clients", "RTSP and WHEP clients taking the camera's H.264 stream now.",
                    ["camera", "protocol"], [([f.camera, p], float(f.clients[p])) for f in feeds for p in PROTOCOLS])
        yield counter("adaptcast_receiver_h264_sent_bytes", "Bytes of the camera's H.264 stream sent to clients, by "
                      "protocol.", ["camera", "protocol"],
                      [([f.camera, p], float(f.sent_bytes[p])) for f in feeds for p in PROTOCOLS])
        yield counter("adaptcast_receiver_h264_frames_dropped", "Encoded frames a client lost because it fell "
                      "behind (it resumes at a keyframe), by protocol.", ["camera", "protocol"],
                      [([f.camera, p], float(f.frames_dropped[p])) for f in feeds for p in PROTOCOLS])
        yield counter("adaptcast_receiver_h264_frames_encoded", "Decoded frames encoded to H.264 (once for all the "
                      "camera's clients).", ["camera"], [([f.camera], float(f.frames_encoded)) for f in feeds])
        yield counter("adaptcast_receiver_h264_frames_skipped", "Decoded frames not encoded because a newer one "
                      "arrived while the encoder was busy.", ["camera"],
                      [([f.camera], float(f.frames_skipped)) for f in feeds])
        yield counter("adaptcast_receiver_h264_encoded_bytes", "Bytes of H.264 the camera's encoder produced.",
                      ["camera"], [([f.camera], float(f.encoded_bytes)) for f in feeds])
        yield histogram("adaptcast_receiver_h264_encode_seconds", "Time libx264 took to encode one frame.",
                        ["camera"], [([f.camera], f.encode_seconds) for f in feeds])
        yield _refused("rtsp", self.rtsp().refused if self.rtsp else {}, RTSP_REFUSALS)
        yield _refused("whep", self.whep().refused if self.whep else {}, WHEP_REFUSALS)


def _refused(protocol: Protocol, counts: Mapping[Reason, int], known: tuple[Reason, ...]) -> Metric:
    return counter(f"adaptcast_receiver_{protocol}_refused", f"{protocol.upper()} clients refused, by reason.",
                   ["reason"], [([reason], float(n)) for reason, n in with_zeros(counts, known).items()])
