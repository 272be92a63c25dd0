"""WebRTC playback of each camera (WHEP, draft-ietf-wish-whep): the playback sibling of WHIP.

    POST   /whep/{camera}        SDP offer in, 201 + Location + SDP answer out
    DELETE /whep/{camera}/{id}   end that session

A viewer offers one video section it receives (recvonly) and that takes H.264 (packetization
mode 1, baseline); the answer sends the camera's H.264 feed (receiver/h264feed.py), which is
encoded once for every RTSP and WHEP client: aiortc's RTP sender packetizes the encoded access
units as they are (it does not decode or encode them again when a track gives it av.Packet).
Anything else (audio, a data channel, no H.264) is refused with 400, so the live view falls back
to MJPEG.

These are viewer routes: ViewerGate (receiver/viewers.py) lets only a logged-in viewer (the page's
cookie, or HTTP Basic for a third-party WHEP player) reach them. A request that a browser sent from
another origin (its Origin header names another host) is refused too (403), so that no other site
can start or end sessions with a viewer's credentials. At most `max_sessions` sessions at once
(503 with Retry-After beyond). A session ends on DELETE, when its connection fails or closes, and
when its viewer sends no RTCP receiver report for `viewer_timeout_seconds` (a viewer that vanished
would otherwise hold it for the 30 s of ICE consent checks); its feed subscription ends with it.

aiortc does no trickle ICE: the offer must carry its candidates (a browser POSTs it once ICE
gathering completed), and browsers that hide host addresses behind mDNS names (.local) reach this
receiver only through other candidates (see docs/streaming.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import av
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import OperationError
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.sdp import MediaDescription, SessionDescription

from adaptcast.receiver.h264feed import TIME_BASE, FeedClient, H264Feed
from adaptcast.receiver.server import MAX_OFFER_BYTES, REFUSAL_LOG_INTERVAL_SECONDS
from adaptcast.receiver.stats import WHEP_REFUSALS, WhepStats
from adaptcast.shared.config import WhepConfig
from adaptcast.shared.wire.inbound_limits import InboundLimits, limit_datagram_queue

log = logging.getLogger(__name__)

H264_PROFILES = ("42e01f", "42001f")
"""What the answer may send, in order of preference: the feed is constrained baseline, which a
baseline decoder decodes too."""
RETRY_AFTER_SECONDS = 5
KEYFRAME_REQUEST_SECONDS = 1.0
"""A viewer's picture-loss reports force a keyframe at most this often."""
_WATCH_SECONDS = 1.0
"""How often each session checks that its viewer still sends receiver reports."""


def _h264_capabilities() -> list:
    """aiortc's H.264 codecs for H264_PROFILES (packetization mode 1), and its RTX."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    h264 = [codec for profile in H264_PROFILES for codec in codecs
            if codec.mimeType.lower() == "video/h264" and codec.parameters.get("profile-level-id") == profile]
    return h264 + [codec for codec in codecs if codec.mimeType.lower() == "video/rtx"]


def _offered_video(offer: str) -> MediaDescription | None:
    """The offer's one media section if the offer is what a WHEP viewer sends: exactly one video
    section that it receives (recvonly); None otherwise (unparsable, audio, a data channel, more)."""
    try:
        parsed = SessionDescription.parse(offer)
    except (ValueError, IndexError, KeyError):
        return None
    if len(parsed.media) != 1 or parsed.media[0].kind != "video" or parsed.media[0].direction != "recvonly":
        return None
    return parsed.media[0]


def _offers_h264(media: MediaDescription) -> bool:
    """Whether the section takes one of the H.264 forms the feed can be sent as."""
    return any(is_codec_compatible(ours, theirs) for theirs in media.rtp.codecs for ours in _h264_capabilities()
               if ours.mimeType.lower() == "video/h264")


class FeedTrack(MediaStreamTrack):
    """A camera's H.264 feed as a video track of already encoded frames (av.Packet, pts in 90 kHz).

    It subscribes to the feed only when aiortc first asks for a frame, that is once the connection
    is up: a session that never connects costs no encoding, and its queue does not fill meanwhile.
    """

    kind = "video"

    def __init__(self, feed: H264Feed) -> None:
        super().__init__()
        self._feed = feed
        self._client: FeedClient | None = None
        self.frames = 0
        """Frames handed to the RTP sender."""
        self._keyframe_requested_at = -math.inf

    async def recv(self) -> av.Packet:
        if self.readyState != "live" or self._feed.closed:
            raise MediaStreamError
        if self._client is None:
            self._client = self._feed.subscribe("whep")
        frame = await self._client.next_frame()
        if frame is None:
            self.stop()
            raise MediaStreamError
        packet = av.Packet(frame.data)
        packet.pts, packet.time_base = frame.pts, TIME_BASE
        self._client.sent(len(frame.data))
        self.frames += 1
        return packet

    def keyframe_requested(self) -> None:
        """The viewer lost a picture (RTCP PLI or FIR): a keyframe from the feed, at most one a
        KEYFRAME_REQUEST_SECONDS, since each costs every client of the camera a keyframe's bits."""
        now = time.monotonic()
        if self._client is not None and now - self._keyframe_requested_at >= KEYFRAME_REQUEST_SECONDS:
            self._keyframe_requested_at = now
            self._client.request_keyframe()

    def stop(self) -> None:
        """End the track and its feed subscription (the feed stops encoding with its last client)."""
        super().stop()
        if self._client is not None:
            self._client.close()


@dataclass
class WhepSession:
    """One viewer's WebRTC connection to one camera."""

    camera: str
    id: str
    pc: RTCPeerConnection
    track: FeedTrack
    address: str
    started: float = field(default_factory=time.monotonic)
    watchdog: asyncio.Task | None = None


class WhepServer:
    """The WHEP endpoint for every camera's feed (one per receiver)."""

    def __init__(self, feeds: dict[str, H264Feed], config: WhepConfig) -> None:
        self.feeds = feeds
        self.config = config
        self.sessions: dict[str, WhepSession] = {}
        """By session id: the sessions held now."""
        self.refused: Counter[str] = Counter({reason: 0 for reason in WHEP_REFUSALS})
        """WHEP requests refused, by reason (WHEP_REFUSALS)."""
        self._logged_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()

    def stats(self) -> WhepStats:
        return WhepStats(refused={reason: self.refused[reason] for reason in WHEP_REFUSALS})

    def add_routes(self, app: web.Application) -> None:
        """Serve WHEP on `app` if the configuration enables it (else /whep is unknown: 404, and the
        live view plays MJPEG); end every session when the app shuts down."""
        if not self.config.enabled:
            return
        app.router.add_post("/whep/{camera}", self._offer)
        app.router.add_delete("/whep/{camera}/{session}", self._delete)
        app.on_shutdown.append(self._shutdown)

    def sessions_of(self, camera: str) -> int:
        return sum(1 for session in self.sessions.values() if session.camera == camera)

    async def close(self) -> None:
        """End every session (the receiver is stopping)."""
        ending = list(self.sessions.values())
        await asyncio.gather(*(self._end(session, "the receiver is stopping") for session in ending))

    async def _shutdown(self, app: web.Application) -> None:
        await self.close()

    def _refuse(self, reason: str, camera: str, error: Callable[..., web.HTTPException], text: str,
                headers: dict[str, str] | None = None) -> web.HTTPException:
        self.refused[reason] += 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, -math.inf) >= REFUSAL_LOG_INTERVAL_SECONDS:
            self._logged_at[reason] = now
            log.warning("camera %r: WHEP request refused (%s; %d so far)", camera[:64], reason, self.refused[reason])
        return error(text=text + "\n", headers=headers)

    def _check_origin(self, request: web.Request, camera: str) -> None:
        """Refuse what a browser sent from a page of another origin: the viewer's cookie is SameSite
        and the methods need a CORS preflight this server never grants, but a check here does not
        depend on browsers getting either right. Clients that send no Origin (players) pass."""
        origin = request.headers.get("Origin")
        if origin is None:
            return
        if origin.partition("://")[2].lower() != request.host.lower():
            raise self._refuse("bad_origin", camera, web.HTTPForbidden, "cross-origin WHEP requests are refused")

    async def _offer(self, request: web.Request) -> web.Response:
        camera = request.match_info["camera"]
        self._check_origin(request, camera)
        feed = self.feeds.get(camera)
        if feed is None:
            raise self._refuse("unknown_camera", camera, web.HTTPNotFound, "unknown camera")
        if request.content_type != "application/sdp":
            raise self._refuse("bad_offer", camera, web.HTTPUnsupportedMediaType, "the offer must be application/sdp")
        offer = (await request.content.read(MAX_OFFER_BYTES + 1)).decode(errors="replace")
        if len(offer) > MAX_OFFER_BYTES:
            raise self._refuse("bad_offer", camera, web.HTTPRequestEntityTooLarge, "offer too large")
        media = _offered_video(offer)
        if media is None:
            raise self._refuse("bad_offer", camera, web.HTTPBadRequest, "the offer must hold exactly one media "
                               "section, video that the viewer receives (a=recvonly); no audio or data channel")
        if not _offers_h264(media):
            raise self._refuse("no_h264", camera, web.HTTPBadRequest, "the offer takes no H.264 "
                               f"(packetization-mode=1, profile-level-id {' or '.join(H264_PROFILES)}): this "
                               "receiver sends H.264 only; play the MJPEG stream instead")
        if len(self.sessions) >= self.config.max_sessions:
            raise self._refuse("too_many_sessions", camera, web.HTTPServiceUnavailable,
                               f"{self.config.max_sessions} WHEP sessions are playing already",
                               {"Retry-After": str(RETRY_AFTER_SECONDS)})
        session = WhepSession(camera, secrets.token_urlsafe(12), RTCPeerConnection(RTCConfiguration(iceServers=[])),
                              FeedTrack(feed), request.remote or "unknown")
        try:
            answer = await self._answer(session, offer)
        except (ValueError, TypeError, OperationError) as exc:  # aiortc refuses a malformed SDP with these
            await session.pc.close()
            raise self._refuse("bad_offer", camera, web.HTTPBadRequest, f"cannot use the offer: {exc}") from exc
        self.sessions[session.id] = session
        session.pc.on("connectionstatechange", lambda: self._state_changed(session))
        session.watchdog = asyncio.get_running_loop().create_task(self._watch(session))
        log.info("camera %s: WHEP viewer %s joined (session %s, %d WHEP sessions)", camera, session.address,
                 session.id, len(self.sessions))
        return web.Response(status=201, text=answer, content_type="application/sdp",
                            headers={"Location": f"/whep/{camera}/{session.id}"})

    async def _answer(self, session: WhepSession, offer: str) -> str:
        """Set up the session's connection for `offer` (H.264 only, sending the feed); its answer."""
        pc = session.pc
        transceiver: RTCRtpTransceiver = pc.addTransceiver(session.track, direction="sendonly")
        transceiver.setCodecPreferences(_h264_capabilities())
        # aiortc acts on a viewer's PLI or FIR only for frames it encodes itself: pass it to the feed (it has no
        # hook for this, so its method is replaced: hence the ignore)
        transceiver.sender._send_keyframe = session.track.keyframe_requested  # type: ignore[method-assign]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        # it receives only RTCP; bound what a flooding peer can queue below DTLS
        limit_datagram_queue(transceiver.sender.transport.transport, InboundLimits().max_queued_bytes)
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    def _state_changed(self, session: WhepSession) -> None:
        if session.pc.connectionState in ("failed", "closed") and session.id in self.sessions:
            why = f"connection {session.pc.connectionState}"
            task = asyncio.get_running_loop().create_task(self._end(session, why))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _watch(self, session: WhepSession) -> None:
        """End the session once its viewer sent no receiver report for `viewer_timeout_seconds`
        (or none since the session started)."""
        timeout = self.config.viewer_timeout_seconds
        sender = session.pc.getTransceivers()[0].sender
        while session.id in self.sessions:
            await asyncio.sleep(_WATCH_SECONDS)
            reports = [stats.timestamp for stats in (await sender.getStats()).values()
                       if stats.type == "remote-inbound-rtp"]
            if reports:
                silent = (datetime.now(timezone.utc) - max(reports)).total_seconds()
            else:
                silent = time.monotonic() - session.started
            if silent > timeout:
                await self._end(session, f"no receiver report from the viewer for {timeout:g} s")
                return

    async def _end(self, session: WhepSession, why: str) -> None:
        """End `session` once, whichever of DELETE, a failed connection or the watchdog comes first."""
        if self.sessions.pop(session.id, None) is None:
            return
        session.track.stop()
        if session.watchdog is not None and session.watchdog is not asyncio.current_task():
            session.watchdog.cancel()
        await session.pc.close()
        log.info("camera %s: WHEP session %s of %s ended (%s) after %d frames, %.0f s", session.camera, session.id,
                 session.address, why, session.track.frames, time.monotonic() - session.started)

    async def _delete(self, request: web.Request) -> web.Response:
        camera = request.match_info["camera"]
        self._check_origin(request, camera)
        session = self.sessions.get(request.match_info["session"])
        if session is None or session.camera != camera:
            raise web.HTTPNotFound(text="no such session\n")
        await self._end(session, "ended by the viewer")
        return web.Response(text="session ended\n")
