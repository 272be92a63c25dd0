"""A WHEP viewer made of aiortc, in place of a browser: in a test's own process, or as a process of
its own (`python -m tests.whep_client URL NAME PASSWORD`, which prints `playing` once it decoded a
frame and then plays until it is killed) so that a test can make a viewer vanish without a word."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field

import aiohttp
import av
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from yarl import URL


async def recvonly_offer(pc: RTCPeerConnection, codec: str = "video/H264") -> str:
    """The offer of a viewer that receives one video stream in `codec` (ICE candidates included)."""
    transceiver = pc.addTransceiver("video", direction="recvonly")
    transceiver.setCodecPreferences(
        [c for c in RTCRtpReceiver.getCapabilities("video").codecs if c.mimeType in (codec, "video/rtx")]
    )
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


@dataclass
class Viewer:
    """One WHEP session watched by aiortc, which decodes what it receives."""

    pc: RTCPeerConnection
    location: str
    sizes: list[tuple[int, int]] = field(default_factory=list)
    """Width and height of each frame decoded."""
    keyframes: int = 0
    """Frames decoded that were keyframes."""
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)
    _reading: asyncio.Task | None = None

    @classmethod
    async def start(cls, http: aiohttp.ClientSession, url: str) -> Viewer:
        """POST a recvonly H.264 offer to `url` (the camera's WHEP endpoint) and play the answer."""
        pc = RTCPeerConnection()
        offer = await recvonly_offer(pc)
        async with http.post(url, data=offer, headers={"Content-Type": "application/sdp"}) as response:
            if response.status != 201:
                await pc.close()
                raise AssertionError(f"WHEP answered {response.status}: {await response.text()}")
            assert response.content_type == "application/sdp"
            location, answer = response.headers["Location"], await response.text()
        viewer = cls(pc, str(response.url.join(URL(location))))
        tracks: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
        pc.on("track", tracks.put_nowait)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        viewer._reading = asyncio.get_running_loop().create_task(viewer._read(await tracks.get()))
        return viewer

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)
                self.sizes.append((frame.width, frame.height))
                self.keyframes += frame.key_frame
                self.first_frame.set()
        except MediaStreamError:
            pass

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        await self.pc.close()


async def _play_until_killed(url: str, name: str, password: str) -> None:
    async with aiohttp.ClientSession(auth=aiohttp.BasicAuth(name, password)) as http:
        viewer = await Viewer.start(http, url)
        await asyncio.wait_for(viewer.first_frame.wait(), 30)
        print("playing", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_play_until_killed(*sys.argv[1:4]))
