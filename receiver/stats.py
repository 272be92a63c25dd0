"""What the receiver's components report to its metrics: frozen snapshots, taken at scrape time,
and the reasons their counters count by.

Each component (camera session, archive, decode pool, WHIP server, viewer gate, H.264 feed, RTSP
and WHEP servers) returns its own from a `stats()` method; receiver/metrics.py reads these types
and nothing else of the receiver, as MediaMTX's internal/metrics reads the data types of
internal/defs: the components keep their state to themselves. The reasons live here, not beside
the code that counts them, so that the metrics can give every known reason a sample from start-up
without importing that code; each component imports its own from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from adaptcast.shared.metrics import Histogram
from adaptcast.shared.wire.framing import WireReason
from adaptcast.shared.wire.inbound_limits import AbortReason

WorkerFailure = Literal["worker_crashed", "worker_hung"]
"""Why a decode worker's process was given up, as the reason its pending requests get."""
DecodeFailure = Literal[WorkerFailure, "bad_record", "wrong_model", "no_header", "no_background", "bad_background",
                        "decode", "internal", "quarantined", "closed"]
"""Why the decode pool did not use a record (`DecodeResult.reason`)."""
MalformedReason = Literal[WireReason, "text", "unexpected_type", "bad_record", "internal"]
MALFORMED_REASONS: tuple[MalformedReason, ...] = get_args(MalformedReason)
"""Why a message or record is refused by a camera session's checks: the framing's reasons (counted
by the reassembler or raised by the parser), a text message, a message type a sender does not send,
a record that does not parse, or a bug in the checks."""
DropReason = Literal[DecodeFailure, "queue_full", "late", "wrong_stream", "over_limits"]
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)
"""Why a well-formed record is not decoded: the decode pool's reasons, and the session's own."""
DeleteReason = Literal["age", "size"]
DELETE_REASONS: tuple[DeleteReason, ...] = get_args(DeleteReason)
"""The retention limit that deleted an archive file: max_age_hours or max_bytes."""
ArchiveDropReason = Literal["no_start", "queue_full", "file_cap", "disk_low"]
ARCHIVE_DROP_REASONS: tuple[ArchiveDropReason, ...] = get_args(ArchiveDropReason)
"""Why a received record is not archived (ArchiveStats.dropped)."""
WhipRefusal = Literal["unauthorized", "bad_offer", "address_rate", "camera_rate", "address_sessions"]
WHIP_REFUSALS: tuple[WhipRefusal, ...] = get_args(WhipRefusal)
"""Why a WHIP request is refused (WhipServer.refused)."""
ViewerRefusal = Literal["unauthorized", "login_failed", "rate_limited", "bad_host", "no_accounts"]
VIEWER_REFUSALS: tuple[ViewerRefusal, ...] = get_args(ViewerRefusal)
"""Why a live-view request or login is refused (ViewerGate.refused)."""
RtspRefusal = Literal["unauthorized", "login_failed", "rate_limited"]
RTSP_REFUSALS: tuple[RtspRefusal, ...] = get_args(RtspRefusal)
"""Why the RTSP child refused a client (as it reports them; RtspServer.refused)."""
WhepRefusal = Literal["bad_origin", "unknown_camera", "bad_offer", "no_h264", "too_many_sessions"]
WHEP_REFUSALS: tuple[WhepRefusal, ...] = get_args(WhepRefusal)
"""Why a WHEP request is refused (WhepServer.refused). Requests without a viewer login never get
there: ViewerGate refuses and counts them."""
Protocol = Literal["rtsp", "whep"]
PROTOCOLS: tuple[Protocol, ...] = get_args(Protocol)
"""How a client takes a camera's H.264 feed."""


@dataclass(frozen=True)
class WorkerStats:
    """One decode worker, as its metrics and health read it."""

    index: int
    pid: int | None
    """The worker process's (None while none is running)."""
    running: bool
    restarts: int
    """Times the process was replaced after a crash or a hang."""
    threads: int | None
    cameras: tuple[str, ...]
    in_flight: int
    """Requests sent to the process and not answered yet."""


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of the decode pool (`DecodePool.stats`)."""

    workers: tuple[WorkerStats, ...]
    cameras: Mapping[str, int]
    """Each camera's worker index."""
    quarantined: Mapping[str, int]
    """Per camera, times its record was in flight when its worker died or hung."""
    restarts: int
    """Worker restarts, all workers together."""


@dataclass(frozen=True)
class ArchiveStats:
    """A camera archive's figures at one moment (its disk thread updates them)."""

    stored_bytes: int | None
    """Bytes of the camera's finished files (None until retention first read the folder)."""
    write_errors: int
    """Disk errors: files that could not be written, and retention batches that failed."""
    deleted: Mapping[DeleteReason, int]
    """Files deleted by retention, by the limit that took them: age, size."""
    dropped: Mapping[ArchiveDropReason, int]
    """Records not archived, by reason: no_start (before a header and a segment start), queue_full
    (the disk thread fell behind), file_cap (past max_file_bytes), disk_low (below min_free_bytes)."""
    paused: bool
    """The free space was below min_free_bytes when last measured: no new file is started."""


@dataclass(frozen=True)
class SessionStats:
    """One camera's stream at the receiver, since start-up (over every connection)."""

    camera: str
    connected: bool
    """The camera has a WebRTC session now."""
    active: bool
    """Connected, and a message (at least a heartbeat) came recently."""
    received_bytes: int
    """Data-channel bytes, framing included."""
    messages: int
    malformed: Mapping[MalformedReason, int]
    """Messages or records refused by the checks, by reason."""
    dropped: Mapping[DropReason, int]
    """Well-formed records not decoded, by reason."""
    segments: int
    """Segments the decoder started."""
    frames: int
    """Frames decoded and shown."""
    skipped_frames: int
    """Frames shown that the sender skipped (the reference shown again)."""
    backgrounds: int
    background_bytes: int
    decode_seconds: Histogram
    latency: Histogram
    """Glass-to-glass latency of every timed frame."""
    fallbacks: Mapping[str, int]
    """Segments decoded with the base model although they named an adapter, by reason (FALLBACK_REASONS)."""
    rejections: Mapping[str, int]
    """Adapter updates refused, by reason (REJECTION_REASONS)."""
    adapter_swaps: int
    swap_seconds: Histogram
    adapter_version: int
    """The adapter version decoding the current segment (0: the base model)."""
    archive: ArchiveStats | None
    """None when the receiver keeps no archive."""


@dataclass(frozen=True)
class WhipStats:
    refused: Mapping[WhipRefusal, int]
    """Signaling requests refused, by reason."""
    sctp_aborts: Mapping[str, Mapping[AbortReason, int]]
    """By camera: SCTP associations aborted for holding too much of the peer's data, by reason."""


@dataclass(frozen=True)
class ViewerGateStats:
    refused: Mapping[ViewerRefusal, int]
    """Live-view requests and logins refused, by reason."""


@dataclass(frozen=True)
class FeedStats:
    """One camera's H.264 stream for RTSP and WHEP clients."""

    camera: str
    clients: Mapping[Protocol, int]
    """Clients taking the stream now, by protocol (an RTSP subscription counts every client it serves)."""
    sent_bytes: Mapping[Protocol, int]
    frames_dropped: Mapping[Protocol, int]
    """Encoded frames a client lost because it fell behind, by its protocol."""
    frames_encoded: int
    frames_skipped: int
    """Decoded frames not encoded because a newer one arrived while the encoder was busy."""
    encoded_bytes: int
    encode_seconds: Histogram


@dataclass(frozen=True)
class RtspStats:
    refused: Mapping[RtspRefusal, int]
    """RTSP clients refused, by reason (as the child reported them)."""


@dataclass(frozen=True)
class WhepStats:
    refused: Mapping[WhepRefusal, int]
    """WHEP requests refused, by reason."""
