"""The receiver's metrics, read from its camera sessions at scrape time (docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from receiver.server import WhipServer
from receiver.session import CameraSession
from receiver.viewers import ViewerGate
from receiver.workers import DecodePool
from shared.codec.modelfile import ModelInfo
from shared.metrics import build_info, by_reason, counter, gauge, histogram


class ReceiverCollector(Collector):
    def __init__(self, sessions: dict[str, CameraSession], whip: WhipServer, viewers: ViewerGate, pool: DecodePool,
                 model: ModelInfo) -> None:
        self.sessions = sessions
        self.whip = whip
        self.viewers = viewers
        self.pool = pool
        self.model = model

    def collect(self) -> Iterator[Metric]:
        yield build_info("receiver", self.model.name, self.model.sha256)
        yield from self._traffic()
        yield from self._decoding()
        yield from self._archive()
        yield gauge("adaptcast_receiver_active_streams", "Cameras with a session that delivered a message in the "
                    "last 2 s.", [], [([], float(sum(s.active for s in self.sessions.values())))])
        yield counter("adaptcast_receiver_decode_worker_restarts", "Decode worker processes restarted after a crash "
                      "or a hang.", ["worker"],
                      [([str(w["index"])], float(w["restarts"])) for w in self.pool.stats()["workers"]])
        yield counter("adaptcast_receiver_camera_quarantined", "Times the camera's record was in flight when its "
                      "decode worker died or hung, each followed by a quarantine of its records.", ["camera"],
                      [([camera], float(n)) for camera, n in sorted(self.pool.stats()["quarantined"].items())])
        yield counter("adaptcast_receiver_signaling_refused", "WHIP requests refused, by reason.", ["reason"],
                      [([reason], float(n)) for reason, n in sorted(self.whip.refused.items())])
        yield counter("adaptcast_receiver_viewer_refused", "Live-view requests and logins refused, by reason.",
                      ["reason"], [([reason], float(n)) for reason, n in sorted(self.viewers.refused.items())])
        yield counter("adaptcast_receiver_sctp_aborts", "SCTP associations aborted for holding more of the peer's "
                      "data than the limit, by reason.", ["camera", "reason"],
                      [sample for name, counts in sorted(self.whip.sctp_aborts.items())
                       for sample in by_reason(name, counts)])

    def _traffic(self) -> Iterator[Metric]:
        sessions = sorted(self.sessions.items())
        yield counter("adaptcast_receiver_received_bytes", "Bytes received on the data channel, framing included.",
                      ["camera"], [([name], float(s.received_bytes)) for name, s in sessions])
        yield counter("adaptcast_receiver_messages", "Data-channel messages received.", ["camera"],
                      [([name], float(s.messages)) for name, s in sessions])
        yield counter("adaptcast_receiver_malformed_messages", "Messages or records refused by the checks, by reason.",
                      ["camera", "reason"],
                      [sample for name, s in sessions for sample in by_reason(name, s.malformed_counts())])
        yield counter("adaptcast_receiver_records_dropped", "Well-formed records not decoded, by reason.",
                      ["camera", "reason"], [sample for name, s in sessions for sample in by_reason(name, s.dropped)])
        yield gauge("adaptcast_receiver_connected", "1 while the camera has a WebRTC session.", ["camera"],
                    [([name], float(s.pc is not None)) for name, s in sessions])

    def _decoding(self) -> Iterator[Metric]:
        sessions = sorted(self.sessions.items())
        yield counter("adaptcast_receiver_segments_decoded", "Segments started by the decoder.", ["camera"],
                      [([name], float(s.segments)) for name, s in sessions])
        yield counter("adaptcast_receiver_frames_shown", "Frames decoded and published to the live view and archive.",
                      ["camera"], [([name], float(s.frames)) for name, s in sessions])
        yield counter("adaptcast_receiver_skipped_frames", "Frames shown that the sender skipped (its reference "
                      "shown again).", ["camera"], [([name], float(s.skipped_frames)) for name, s in sessions])
        yield counter("adaptcast_receiver_backgrounds", "Background pictures received and decoded.", ["camera"],
                      [([name], float(s.backgrounds)) for name, s in sessions])
        yield counter("adaptcast_receiver_background_bytes", "Bytes of the background pictures decoded.", ["camera"],
                      [([name], float(s.background_bytes)) for name, s in sessions])
        yield histogram("adaptcast_receiver_decode_seconds", "Time a decode worker spent on one frame.", ["camera"],
                        [([name], s.decode_seconds) for name, s in sessions])
        yield histogram("adaptcast_receiver_latency_seconds", "Glass-to-glass latency: capture at the sender to "
                        "decoded frame here (the two clocks must agree: NTP).", ["camera"],
                        [([name], s.latency) for name, s in sessions])
        yield counter("adaptcast_receiver_fallback_segments",
                      "Segments decoded with the base model although they named an adapter, by reason.",
                      ["camera", "reason"],
                      [sample for name, s in sessions for sample in by_reason(name, s.adapter_events("fallback"))])
        yield counter("adaptcast_receiver_adapter_rejections", "Adapter updates refused, by reason.",
                      ["camera", "reason"],
                      [sample for name, s in sessions for sample in by_reason(name, s.adapter_events("rejected"))])
        yield counter("adaptcast_receiver_adapter_swaps", "Segments that switched to another adapter version.",
                      ["camera"], [([name], float(s.adapter_swaps)) for name, s in sessions])
        yield histogram("adaptcast_receiver_adapter_swap_seconds", "Time the decode worker took to install a new "
                        "adapter's weights at a segment boundary.", ["camera"],
                        [([name], s.swap_seconds) for name, s in sessions])
        yield gauge("adaptcast_receiver_adapter_version", "Adapter version decoding the current segment (0: base).",
                    ["camera"], [([name], float(s.adapter_version)) for name, s in sessions])

    def _archive(self) -> Iterator[Metric]:
        archives = [(name, s.archive.counts()) for name, s in sorted(self.sessions.items()) if s.archive]
        yield gauge("adaptcast_receiver_archive_bytes", "Bytes of the camera's finished archive files.", ["camera"],
                    [([name], float(a.stored_bytes)) for name, a in archives if a.stored_bytes is not None])
        yield counter("adaptcast_receiver_archive_segments_deleted", "Archive files deleted by retention, by limit.",
                      ["camera", "reason"], [sample for name, a in archives for sample in by_reason(name, a.deleted)])
        yield counter("adaptcast_receiver_archive_write_errors", "Archive files that could not be written.",
                      ["camera"], [([name], float(a.write_errors)) for name, a in archives])
        yield counter("adaptcast_receiver_archive_records_dropped", "Records not archived, by reason.",
                      ["camera", "reason"], [sample for name, a in archives for sample in by_reason(name, a.dropped)])
        yield gauge("adaptcast_receiver_archive_paused", "1 while the archive's disk has less free space than "
                    "archive.min_free_bytes: no new file is started.", ["camera"],
                    [([name], float(a.paused)) for name, a in archives])
