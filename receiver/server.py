"""The receiver's HTTP face: WHIP signaling (RFC 9725) per camera, health and readiness.

    POST   /whip/{camera}        SDP offer in, 201 + Location + SDP answer out
    DELETE /whip/{camera}/{id}   end that session
    GET    /healthz, /readyz

Each camera has its own bearer token, compared in constant time; a request without the
camera's token gets 401 and learns nothing about which cameras exist beyond that. A new
session for a camera replaces the one before (a sender that reconnects after a dead path
cannot DELETE the old one first).

What one peer can ask is bounded (`peer_limits` in the configuration): offers a second per remote
address (before the token is checked) and per camera (after), sessions per address, the offer's
size, an offer with exactly one media section, a data channel (aiortc would decode audio or
video into queues no one reads), and the data each session's SCTP association holds
(shared/wire/inbound_limits.py: past it the association is aborted and the session closed).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from adaptcast.receiver.ratelimit import RateLimiter
from adaptcast.receiver.session import CameraSession
from adaptcast.receiver.stats import WhipRefusal, WhipStats
from adaptcast.shared.config import PeerLimitsConfig
from adaptcast.shared.wire.inbound_limits import AbortReason, InboundLimits, limit_inbound

log = logging.getLogger(__name__)

MAX_OFFER_BYTES = 64 * 1024


REFUSAL_LOG_INTERVAL_SECONDS = 1.0
"""A refusal is logged at most this often for each reason (all are counted): a flood of requests
must not become a flood of log lines."""


def _offer_too_large(**kwargs: Any) -> web.HTTPRequestEntityTooLarge:
    """413, which aiohttp builds from the limit (the generic refusal would not give it one)."""
    return web.HTTPRequestEntityTooLarge(MAX_OFFER_BYTES, **kwargs)


def _offers_a_data_channel(offer: str) -> bool:
    """aiortc answers any text, even one without a single media section, and decodes audio or
    video sections into queues no one reads: check the offer holds what a sender sends, exactly
    one media section and that an SCTP data channel, before a connection is made for it."""
    try:
        parsed = SessionDescription.parse(offer)
    except (ValueError, IndexError, KeyError):
        return False
    return len(parsed.media) == 1 and parsed.media[0].kind == "application" \
        and parsed.media[0].profile.endswith("DTLS/SCTP") and parsed.media[0].fmt == ["webrtc-datachannel"]


class WhipServer:
    def __init__(self, sessions: dict[str, CameraSession], tokens: dict[str, str],
                 limits: PeerLimitsConfig = PeerLimitsConfig()) -> None:
        self.sessions = sessions
        self._tokens = tokens
        self.limits = limits
        self.ready = False
        """Set once the model is loaded and the listener is up (what /readyz reports)."""
        self.refused: Counter[WhipRefusal] = Counter()
        """Signaling requests refused, by reason (unauthorized, bad_offer, address_rate, camera_rate,
        address_sessions)."""
        self.sctp_aborts: dict[str, Counter[AbortReason]] = {camera: Counter() for camera in sessions}
        """By camera: SCTP associations aborted for holding too much (buffered_bytes, streams)."""
        self._camera_offers = RateLimiter(limits.offers_per_second, limits.offer_burst)
        self._address_offers = RateLimiter(limits.address_offers_per_second, limits.address_offer_burst)
        self._addresses: dict[str, str] = {}
        """Camera -> the remote address its latest session was offered from."""
        self._logged_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()

    def stats(self) -> WhipStats:
        return WhipStats(refused=dict(self.refused),
                         sctp_aborts={camera: dict(counts) for camera, counts in self.sctp_aborts.items()})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/whip/{camera}", self._offer)
        app.router.add_delete("/whip/{camera}/{session}", self._delete)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)

    def _authorized(self, request: web.Request, camera: str) -> bool:
        expected = self._tokens.get(camera)
        header = request.headers.get("Authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        # compare against a dummy for unknown cameras too, so timing does not reveal which exist
        ok = hmac.compare_digest(given.encode(), (expected or secrets.token_hex(16)).encode())
        return ok and expected is not None

    def _refuse(self, reason: WhipRefusal, camera: str, error: Callable[..., web.HTTPException], text: str,
                retry_after: float | None = None) -> web.HTTPException:
        self.refused[reason] += 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, -math.inf) >= REFUSAL_LOG_INTERVAL_SECONDS:
            self._logged_at[reason] = now
            log.warning("camera %r: signaling refused (%s; %d so far)", camera[:64], reason, self.refused[reason])
        headers = {}
        if error is web.HTTPUnauthorized:
            headers["WWW-Authenticate"] = 'Bearer realm="adaptcast"'
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return error(text=text, headers=headers or None)

    def _sessions_from(self, address: str, other_than: str) -> int:
        """Sessions held now by offers from `address`, not counting camera `other_than`'s (a new
        offer for a camera replaces its session)."""
        return sum(1 for camera, held_by in self._addresses.items()
                   if held_by == address and camera != other_than and self.sessions[camera].pc is not None)

    async def _offer(self, request: web.Request) -> web.Response:
        camera = request.match_info["camera"]
        address = request.remote or "unknown"
        if wait := self._address_offers.take(address):
            raise self._refuse("address_rate", camera, web.HTTPTooManyRequests,
                               "too many offers from this address", retry_after=wait)
        if not self._authorized(request, camera):
            raise self._refuse("unauthorized", camera, web.HTTPUnauthorized,
                               "a valid bearer token for this camera is required")
        if wait := self._camera_offers.take(camera):
            raise self._refuse("camera_rate", camera, web.HTTPTooManyRequests,
                               "too many offers for this camera", retry_after=wait)
        if request.content_type != "application/sdp":
            raise self._refuse("bad_offer", camera, web.HTTPUnsupportedMediaType, "the offer must be application/sdp")
        if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
            raise self._refuse("bad_offer", camera, _offer_too_large, "offer too large")
        offer = (await request.content.read(MAX_OFFER_BYTES + 1)).decode(errors="replace")
        if len(offer) > MAX_OFFER_BYTES:
            raise self._refuse("bad_offer", camera, _offer_too_large, "offer too large")
        if not _offers_a_data_channel(offer):
            raise self._refuse("bad_offer", camera, web.HTTPBadRequest,
                               "the offer must hold exactly one media section, a data channel (m=application "
                               "UDP/DTLS/SCTP webrtc-datachannel); audio and video are not accepted")
        if self._sessions_from(address, camera) >= self.limits.sessions_per_address:
            raise self._refuse("address_sessions", camera, web.HTTPTooManyRequests,
                               f"this address holds {self.limits.sessions_per_address} sessions already")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session_id = secrets.token_urlsafe(12)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            limit_inbound(pc, InboundLimits(max_buffered_bytes=self.limits.sctp_buffer_bytes),
                          lambda reason, detail: self._sctp_aborted(camera, session_id, reason, detail))
            await self.sessions[camera].attach(pc, session_id)
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, TypeError) as exc:  # aiortc refuses a malformed SDP with these
            await pc.close()
            raise self._refuse("bad_offer", camera, web.HTTPBadRequest, f"cannot use the offer: {exc}") from exc
        self._addresses[camera] = address
        location = f"/whip/{camera}/{session_id}"
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": location})

    def _sctp_aborted(self, camera: str, session_id: str, reason: AbortReason, detail: str) -> None:
        """The session's SCTP association held too much of the peer's data and was aborted: count
        it and end the session (in a task: this runs inside the connection's receive loop)."""
        self.sctp_aborts[camera][reason] += 1
        log.warning("camera %s: SCTP association aborted, peer data over the limit (%s: %s); closing session %s",
                    camera, reason, detail, session_id)
        task = asyncio.get_running_loop().create_task(self.sessions[camera].detach(session_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete(self, request: web.Request) -> web.Response:
        camera = request.match_info["camera"]
        if not self._authorized(request, camera):
            raise self._refuse("unauthorized", camera, web.HTTPUnauthorized,
                               "a valid bearer token for this camera is required")
        if not await self.sessions[camera].detach(request.match_info["session"]):
            raise web.HTTPNotFound(text="no such session")
        return web.Response(text="session ended")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            raise web.HTTPServiceUnavailable(text="starting")
        return web.Response(text="ready")
