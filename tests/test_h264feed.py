"""Each camera's H.264 feed: encoded once for all its clients, decodable by any of them, keyframes
where a client needs one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np

from adaptcast.receiver.h264feed import CLIENT_QUEUE_FRAMES, EncodedFrame, FeedClient, H264Feed
from adaptcast.shared.config import H264Config
from adaptcast.shared.frames import FrameSize, psnr
from adaptcast.shared.video import read_frames

SIZE = FrameSize(320, 240)


def decode(frames: list[EncodedFrame]) -> list[np.ndarray]:
    """What a client's decoder shows for these access units (FFmpeg's H.264 decoder)."""
    decoder = av.CodecContext.create("h264", "r")
    pictures = []
    for frame in frames:
        pictures += [picture.to_ndarray(format="rgb24") for picture in decoder.decode(av.Packet(frame.data))]
    pictures += [picture.to_ndarray(format="rgb24") for picture in decoder.decode(None)]
    return pictures


async def drain(client: FeedClient) -> list[EncodedFrame]:
    frames = []
    while not client._frames.empty():
        frame = await client.next_frame()
        assert frame is not None
        frames.append(frame)
    return frames


async def publish(feed: H264Feed, pictures: list[np.ndarray], first: int = 0) -> None:
    """Publish one picture at a time, as the decoder does, letting each be encoded; picture i was
    captured at 1 s + i us."""
    for index, picture in enumerate(pictures, first):
        feed.publish(picture, captured_us=1_000_000 + index, fps=10.0)
        while feed._encoding is not None:
            await asyncio.sleep(0.001)


def test_one_encode_serves_every_client_and_each_starts_on_a_keyframe(clip: Path) -> None:
    pictures = list(read_frames(clip, SIZE, fps=10.0, max_frames=30))

    async def scenario() -> None:
        feed = H264Feed("cam", H264Config(bitrate_kbps=1500))
        await publish(feed, pictures[:3])
        assert feed.frames_encoded == 0, "nobody watches: nothing is encoded"
        first = feed.subscribe("rtsp")
        second = feed.subscribe("whep")
        await publish(feed, pictures[:20])
        late = feed.subscribe("rtsp")
        await publish(feed, pictures[20:], 20)
        assert feed.frames_encoded == 30 and feed.frames_skipped == 0
        assert (feed.clients("rtsp"), feed.clients("whep")) == (2, 1)
        received = [await drain(client) for client in (first, second, late)]
        assert received[0] == received[1], "both clients get the same, single encoding"
        assert len(received[0]) == 30 and received[0][0].keyframe
        assert received[2] and received[2][0].keyframe, "a client joining late starts on a keyframe forced for it"
        assert len(received[2]) == 10 and received[0][-10:] == received[2]
        assert [frame.captured_us for frame in received[0]] == [1_000_000 + i for i in range(30)]
        assert all(a.pts < b.pts for a, b in zip(received[0], received[0][1:]))
        shown = decode(received[0])
        assert len(shown) == 30
        quality = [psnr(a, b) for a, b in zip(pictures, shown)]
        assert min(quality) > 38, quality
        first.close()
        second.close()
        late.close()
        assert feed._encoder is None, "the encoder goes with the last client"
        await feed.close()

    asyncio.run(scenario())


def test_a_client_that_falls_behind_resumes_at_a_keyframe(clip: Path) -> None:
    pictures = list(read_frames(clip, SIZE, fps=10.0, max_frames=CLIENT_QUEUE_FRAMES + 12))

    async def scenario() -> None:
        feed = H264Feed("cam", H264Config(keyframe_interval_seconds=60))
        slow, fast = feed.subscribe("whep"), feed.subscribe("rtsp")
        await publish(feed, pictures[: CLIENT_QUEUE_FRAMES + 2])
        assert feed.frames_dropped["whep"] == 2
        kept = await drain(slow)
        assert len(kept) == CLIENT_QUEUE_FRAMES
        await drain(fast)
        await publish(feed, pictures[CLIENT_QUEUE_FRAMES + 2:], CLIENT_QUEUE_FRAMES + 2)
        resumed = await drain(slow)
        assert resumed[0].keyframe, "after losing frames the slow client starts again at a keyframe"
        assert len(decode(kept + resumed)) == len(kept) + len(resumed)
        assert len(await drain(fast)) == 10
        await feed.close()
        assert await slow.next_frame() is None

    asyncio.run(scenario())
