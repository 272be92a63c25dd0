"""The receiver's HTTP face: WHIP signaling (RFC 9725) per camera, health and readiness.

    POST   /whip/{camera}        SDP offer in, 201 + Location + SDP answer out
    DELETE /whip/{camera}/{id}   end that session
    GET    /healthz, /readyz

Each camera has its own bearer token, compared in constant time; a request without the
camera's token gets 401 and learns nothing about which cameras exist beyond that. A new
session for a camera replaces the one before (a sender that reconnects after a dead path
cannot DELETE the old one first).
"""

from __future__ import annotations

import hmac
import logging
import secrets

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from receiver.session import CameraSession

log = logging.getLogger(__name__)

MAX_OFFER_BYTES = 64 * 1024


def _offers_a_data_channel(offer: str) -> bool:
    """aiortc answers any text, even one without a single media section: check the offer
    carries what a sender sends (an SCTP data channel) before a connection is made for it."""
    try:
        parsed = SessionDescription.parse(offer)
    except (ValueError, IndexError, KeyError):
        return False
    return any(media.kind == "application" for media in parsed.media)


class WhipServer:
    def __init__(self, sessions: dict[str, CameraSession], tokens: dict[str, str]) -> None:
        self.sessions = sessions
        self._tokens = tokens
        self.ready = False
        """Set once the model is loaded and the listener is up (what /readyz reports)."""
        self.refused: dict[str, int] = {}
        """Signaling requests refused, by reason (unauthorized, bad_offer, ...)."""

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

    def _refuse(self, reason: str, camera: str, error: type[web.HTTPException], text: str) -> web.HTTPException:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        log.warning("camera %r: signaling refused (%s)", camera[:64], reason)  # the name is the requester's
        headers = {"WWW-Authenticate": 'Bearer realm="adaptcast"'} if error is web.HTTPUnauthorized else None
        return error(text=text, headers=headers)

    async def _offer(self, request: web.Request) -> web.Response:
        camera = request.match_info["camera"]
        if not self._authorized(request, camera):
            raise self._refuse("unauthorized", camera, web.HTTPUnauthorized, "a valid bearer token for this camera is required")
        if request.content_type != "application/sdp":
            raise self._refuse("bad_offer", camera, web.HTTPUnsupportedMediaType, "the offer must be application/sdp")
        if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
            raise self._refuse("bad_offer", camera, web.HTTPRequestEntityTooLarge, "offer too large")
        offer = (await request.content.read(MAX_OFFER_BYTES + 1)).decode(errors="replace")
        if len(offer) > MAX_OFFER_BYTES:
            raise self._refuse("bad_offer", camera, web.HTTPRequestEntityTooLarge, "offer too large")
        if not _offers_a_data_channel(offer):
            raise self._refuse("bad_offer", camera, web.HTTPBadRequest,
                               "the offer must be an SDP offer with a data channel (m=application)")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session_id = secrets.token_urlsafe(12)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await self.sessions[camera].attach(pc, session_id)
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, TypeError) as exc:  # aiortc refuses a malformed SDP with these
            await pc.close()
            raise self._refuse("bad_offer", camera, web.HTTPBadRequest, f"cannot use the offer: {exc}")
        location = f"/whip/{camera}/{session_id}"
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": location})

    async def _delete(self, request: web.Request) -> web.Response:
        camera = request.match_info["camera"]
        if not self._authorized(request, camera):
            raise self._refuse("unauthorized", camera, web.HTTPUnauthorized, "a valid bearer token for this camera is required")
        if not await self.sessions[camera].detach(request.match_info["session"]):
            raise web.HTTPNotFound(text="no such session")
        return web.Response(text="session ended")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            raise web.HTTPServiceUnavailable(text="starting")
        return web.Response(text="ready")
