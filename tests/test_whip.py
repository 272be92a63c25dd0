"""The receiver's signaling refuses what it must, with the right status, and counts it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from adaptcast.demo import free_port
from adaptcast.receiver.daemon import run_receiver
from adaptcast.receiver.server import MAX_OFFER_BYTES
from adaptcast.sender.transport import ReceiverUnreachable, SignalingError, WhipConnection, wait_until_ready
from adaptcast.shared.config import ReceiverConfig, load_receiver_config

TOKEN = "right-token-0123456789"
"""The camera gate's bearer token (at least MIN_TOKEN_CHARS, as the configuration asks)."""


async def _wait_ready(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):  # generous: start-up is slow on a loaded machine
            try:
                async with http.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{base} not ready in 60 s")


def _gate_receiver(tmp_path, monkeypatch, model_file, port: int, **settings) -> ReceiverConfig:
    """A receiver on loopback `port` for one camera, "gate", whose token is TOKEN."""
    monkeypatch.setenv("TOKEN_GATE", TOKEN)
    config_path = tmp_path / "receiver.yaml"
    config_path.write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": port}, "model": str(model_file), "device": "cpu",
        "cameras": [{"name": "gate", "token_env": "TOKEN_GATE"}], **settings,
    }))
    return load_receiver_config(config_path)


@contextlib.asynccontextmanager
async def _running_receiver(config: ReceiverConfig, base: str) -> AsyncIterator[None]:
    """`run_receiver(config)` on this event loop, ready at `base`; stopped, and awaited, on exit."""
    stop = asyncio.Event()
    server = asyncio.create_task(run_receiver(config, stop))
    try:
        await _wait_ready(base)
        yield
    finally:
        stop.set()
        await server


async def _connected(base: str) -> str:
    """The receiver's adaptcast_receiver_connected gauge for "gate", as /metrics writes it."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        text = await response.text()
    return re.search(r'adaptcast_receiver_connected\{camera="gate"\} (\S+)', text)[1]


def test_whip_refusals_health_and_metrics(tmp_path, monkeypatch, model_file):
    port = free_port(0)
    config = _gate_receiver(tmp_path, monkeypatch, model_file, port)
    base = f"http://127.0.0.1:{port}"

    async def scenario() -> None:
        stop = asyncio.Event()
        server = asyncio.create_task(run_receiver(config, stop))
        await _wait_ready(base)
        async with aiohttp.ClientSession() as http:
            sdp = {"Content-Type": "application/sdp"}
            cases = [
                ("/whip/gate", {}, "v=0", 401),  # no token
                ("/whip/gate", {"Authorization": "Bearer wrong"}, "v=0", 401),
                ("/whip/lobby", {"Authorization": f"Bearer {TOKEN}"}, "v=0", 401),  # not that camera's token
                ("/whip/gate", {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}, "v=0", 415),
                ("/whip/gate", {"Authorization": f"Bearer {TOKEN}", **sdp}, "not an offer", 400),
            ]
            for path, headers, body, status in cases:
                async with http.post(base + path, data=body, headers={**sdp, **headers}) as response:
                    assert response.status == status, (path, headers, await response.text())
                    if status == 401:
                        assert response.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.delete(f"{base}/whip/gate/nosuchsession",
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 404
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with http.get(f"{base}/metrics") as response:
                text = await response.text()
            assert 'adaptcast_receiver_signaling_refused_total{reason="unauthorized"} 3.0' in text
            assert 'adaptcast_receiver_signaling_refused_total{reason="bad_offer"} 2.0' in text
            assert 'adaptcast_receiver_connected{camera="gate"} 0.0' in text
        stop.set()
        await server

    asyncio.run(scenario())


def _tamper_fingerprints(sdp: str) -> str:
    """What an attacker on the signaling path would do: swap in their own certificate's
    fingerprints (here: each changed in its first digit)."""
    return re.sub(r"(a=fingerprint:\S+ )(\w)", lambda m: m[1] + ("A" if m[2] != "A" else "B"), sdp)


async def _man_in_the_middle(receiver: str, tamper: dict[str, str]) -> web.AppRunner:
    """A WHIP proxy in front of the receiver that rewrites the DTLS fingerprints in the offer
    (tamper["where"] == "offer"), in the answer ("answer"), or in neither ("none")."""

    async def forward(request: web.Request) -> web.Response:
        body = await request.text()
        if request.method == "POST" and tamper["where"] == "offer":
            body = _tamper_fingerprints(body)
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
        async with aiohttp.ClientSession() as http, http.request(
                request.method, receiver + request.path, data=body, headers=headers) as response:
            text = await response.text()
            if request.method == "POST" and tamper["where"] == "answer":
                text = _tamper_fingerprints(text)
            kept = {k: v for k, v in response.headers.items() if k in ("Location", "Content-Type")}
            return web.Response(status=response.status, text=text, headers=kept)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner


def test_a_certificate_other_than_the_signaled_one_is_refused_at_both_ends(tmp_path, monkeypatch, model_file):
    """DTLS is authenticated by the fingerprints in the signaling only: one changed on the way
    (the answer's: the sender's check; the offer's: the receiver's) fails the connection: the
    sender says so (at once when its own check failed), and the receiver drops the session. The same
    proxy without tampering connects, so it is the fingerprint that fails it."""
    port, proxy_port = free_port(0), free_port(0)
    config = _gate_receiver(tmp_path, monkeypatch, model_file, port, heartbeat_timeout_seconds=1)
    receiver = f"http://127.0.0.1:{port}"

    async def scenario() -> None:
        stop = asyncio.Event()
        server = asyncio.create_task(run_receiver(config, stop))
        tamper = {"where": "none"}
        proxy = await _man_in_the_middle(receiver, tamper)
        await web.TCPSite(proxy, "127.0.0.1", proxy_port).start()
        try:
            await _wait_ready(receiver)
            for where in ("answer", "offer"):
                tamper["where"] = where
                connection = WhipConnection(f"http://127.0.0.1:{proxy_port}/whip/gate", TOKEN, timeout=8)
                started = time.monotonic()
                with pytest.raises(SignalingError) as refused:
                    await connection.open()
                assert not isinstance(refused.value, ReceiverUnreachable)  # it answered: the backoff applies
                if where == "answer":  # the sender's own DTLS check fails: it knows at once
                    assert "certificate" in str(refused.value) and time.monotonic() - started < 5
                else:  # the receiver's check fails, and it tells the sender nothing: the open times out
                    assert "did not open within 8 s" in str(refused.value)
                for _ in range(50):  # the receiver lets the session go: failed, or silent past its timeout
                    if await _connected(receiver) == "0.0":
                        break
                    await asyncio.sleep(0.1)
                assert await _connected(receiver) == "0.0", where
            tamper["where"] = "none"
            connection = WhipConnection(f"http://127.0.0.1:{proxy_port}/whip/gate", TOKEN, timeout=8)
            await connection.open()
            assert connection.channel.readyState == "open"
            await connection.close()
        finally:
            await proxy.cleanup()
            stop.set()
            await server

    asyncio.run(scenario())


def test_a_receiver_that_does_not_answer_is_unreachable_and_waited_for_no_longer_than_asked():
    """The sender's reconnection tells "no answer" (watch /readyz until it is back) from "refused"
    (wait out the backoff); the watch gives up after the time it was given."""
    url = f"http://127.0.0.1:{free_port(0)}"

    async def scenario() -> None:
        with pytest.raises(ReceiverUnreachable):
            await WhipConnection(f"{url}/whip/gate", "token", timeout=2).open()
        started = time.monotonic()
        assert not await wait_until_ready(f"{url}/readyz", 1.5)
        assert 1.4 <= time.monotonic() - started <= 3.0

    asyncio.run(scenario())


def test_a_session_silent_past_the_heartbeat_timeout_is_closed(tmp_path, monkeypatch, model_file):
    """A sender that vanished without its DELETE (power cut, cable pulled) sends nothing more:
    the receiver lets its session go after `heartbeat_timeout_seconds`, so the camera shows
    disconnected, not connected forever. Here the connection opens and then says nothing."""
    port = free_port(0)
    config = _gate_receiver(tmp_path, monkeypatch, model_file, port, heartbeat_timeout_seconds=1)
    base = f"http://127.0.0.1:{port}"

    async def scenario() -> None:
        async with _running_receiver(config, base):
            connection = WhipConnection(f"{base}/whip/gate", TOKEN, timeout=8)
            await connection.open()
            assert await _connected(base) == "1.0"
            opened = time.monotonic()
            while await _connected(base) != "0.0" and time.monotonic() - opened < 5:
                await asyncio.sleep(0.1)
            assert time.monotonic() - opened < 3.5  # 1 s of silence (counted from the POST), then the next check
            await connection.close()

    asyncio.run(scenario())


async def _offer_with(*kinds: str) -> str:
    """An aiortc offer with a data channel and a transceiver of each of `kinds` (audio, video)."""
    pc = RTCPeerConnection()
    pc.createDataChannel("data")
    for kind in kinds:
        pc.addTransceiver(kind)
    await pc.setLocalDescription(await pc.createOffer())
    await pc.close()
    return pc.localDescription.sdp


def test_offers_other_than_one_data_channel_and_oversized_offers_are_refused(tmp_path, monkeypatch, model_file):
    """aiortc would decode an offered video or audio track into queues no one reads: an offer
    with any media section besides its data channel gets 400; an offer over 64 KiB gets 413,
    whether it says its length or not (chunked)."""
    port = free_port(0)
    config = _gate_receiver(tmp_path, monkeypatch, model_file, port)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/sdp"}

    async def chunked(body: bytes):
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    async def scenario() -> None:
        async with _running_receiver(config, base):
            async with aiohttp.ClientSession() as http:
                for kinds in (("video",), ("audio",)):
                    async with http.post(f"{base}/whip/gate", data=await _offer_with(*kinds),
                                         headers=headers) as response:
                        assert response.status == 400, kinds
                        assert "audio and video are not accepted" in await response.text()
                data_only = await _offer_with()
                too_large = (data_only + "a=x-padding:" + "x" * MAX_OFFER_BYTES + "\r\n").encode()
                for body in (too_large, chunked(too_large)):
                    async with http.post(f"{base}/whip/gate", data=body, headers=headers) as response:
                        assert response.status == 413
                async with http.post(f"{base}/whip/gate", data=data_only, headers=headers) as response:
                    assert response.status == 201  # the same offer without the video is taken
                    location = response.headers["Location"]
                async with http.delete(base + location, headers=headers):
                    pass
                async with http.get(f"{base}/metrics") as response:
                    text = await response.text()
            assert 'adaptcast_receiver_signaling_refused_total{reason="bad_offer"} 4.0' in text

    asyncio.run(scenario())


def test_offers_are_rate_limited_per_address_and_per_camera(tmp_path, monkeypatch, model_file):
    """A camera may make offer_burst offers at once and an address address_offer_burst, whatever
    the token: more get 429 with Retry-After. The address's bucket is taken before the token
    is checked (401s count), the camera's only after (no one without its token can spend it)."""
    port = free_port(0)
    config = _gate_receiver(tmp_path, monkeypatch, model_file, port, peer_limits={
        "offers_per_second": 0.01, "offer_burst": 2, "address_offers_per_second": 0.01, "address_offer_burst": 5,
    })
    base = f"http://127.0.0.1:{port}"
    token = {"Authorization": f"Bearer {TOKEN}"}

    async def scenario() -> None:
        async with _running_receiver(config, base):
            async with aiohttp.ClientSession() as http:
                cases = [("gate", {}, 401), ("gate", token, 400), ("gate", token, 400), ("gate", token, 429),
                         ("lobby", {}, 401), ("gate", token, 429)]
                for camera, headers, status in cases:
                    async with http.post(f"{base}/whip/{camera}", data="v=0",
                                         headers={"Content-Type": "application/sdp", **headers}) as response:
                        assert response.status == status, (camera, headers, await response.text())
                        if status == 429:
                            assert 90 <= int(response.headers["Retry-After"]) <= 100
                async with http.get(f"{base}/metrics") as response:
                    text = await response.text()
            for reason, n in (("unauthorized", 2), ("bad_offer", 2), ("camera_rate", 1), ("address_rate", 1)):
                assert f'adaptcast_receiver_signaling_refused_total{{reason="{reason}"}} {n}.0' in text, reason

    asyncio.run(scenario())


def test_an_address_holds_at_most_sessions_per_address_sessions(tmp_path, monkeypatch, model_file):
    """Each camera has one session, but an address with many cameras' tokens could hold many:
    past sessions_per_address a new camera's offer gets 429, while a camera that replaces its
    own session still connects."""
    port = free_port(0)
    monkeypatch.setenv("TOKEN_LOBBY", "lobby-token-0123456789")
    cameras = [{"name": "gate", "token_env": "TOKEN_GATE"}, {"name": "lobby", "token_env": "TOKEN_LOBBY"}]
    config = _gate_receiver(tmp_path, monkeypatch, model_file, port, cameras=cameras,
                            peer_limits={"sessions_per_address": 1})
    base = f"http://127.0.0.1:{port}"

    async def scenario() -> None:
        async with _running_receiver(config, base):
            gate = WhipConnection(f"{base}/whip/gate", TOKEN, timeout=8)
            await gate.open()
            lobby = WhipConnection(f"{base}/whip/lobby", "lobby-token-0123456789", timeout=8)
            with pytest.raises(SignalingError, match="429"):
                await lobby.open()
            again = WhipConnection(f"{base}/whip/gate", TOKEN, timeout=8)
            await again.open()  # replaces the gate's session: still one
            await gate.close()
            await again.close()
            lobby = WhipConnection(f"{base}/whip/lobby", "lobby-token-0123456789", timeout=8)
            await lobby.open()  # the address holds none now
            async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
                assert 'adaptcast_receiver_signaling_refused_total{reason="address_sessions"} 1.0' \
                    in await response.text()

    asyncio.run(scenario())


async def answer_offer(request: web.Request, peers: list[RTCPeerConnection], location: str) -> web.Response:
    """A hand-made WHIP endpoint's answer: a new aiortc peer (kept in `peers`) answers the offer."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peers.append(pc)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                        headers={"Location": location})


async def listen(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port(0)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def test_the_session_is_deleted_only_on_the_receivers_origin(caplog):
    """A WHIP answer's Location on another scheme, host or port is not followed: the sender's
    DELETE would hand its bearer token to whoever is there. A real aiortc peer answers the
    offers, with the Location each round names; a second server records what reaches it."""
    arrived: list[tuple[str, str, str]] = []
    peers: list[RTCPeerConnection] = []
    location = {"value": ""}

    async def record(request: web.Request) -> web.Response:
        arrived.append((request.method, request.path, request.headers.get("Authorization", "")))
        return web.Response(text="ok")

    async def answer(request: web.Request) -> web.Response:
        return await answer_offer(request, peers, location["value"])

    async def scenario() -> None:
        receiver_app, elsewhere_app = web.Application(), web.Application()
        receiver_app.router.add_post("/whip/gate", answer)
        receiver_app.router.add_delete("/{tail:.*}", record)
        elsewhere_app.router.add_route("*", "/{tail:.*}", record)
        receiver, base = await listen(receiver_app)
        elsewhere, foreign = await listen(elsewhere_app)
        try:
            other_scheme = "https" + base.removeprefix("http")
            for value in (f"{foreign}/whip/gate/s1", "//evil.example/whip/gate/s1", f"{other_scheme}/whip/gate/s1",
                          "/whip/gate/s2", f"{base}/whip/gate/s3"):
                location["value"] = value
                connection = WhipConnection(f"{base}/whip/gate", TOKEN, timeout=8)
                await connection.open()
                assert connection.channel.readyState == "open"
                await connection.close()
        finally:
            for pc in peers:
                await pc.close()
            await receiver.cleanup()
            await elsewhere.cleanup()

    asyncio.run(scenario())
    # the two Locations on the receiver's origin were deleted there; the other three reached nobody
    assert arrived == [("DELETE", "/whip/gate/s2", f"Bearer {TOKEN}"), ("DELETE", "/whip/gate/s3", f"Bearer {TOKEN}")]
    refused = [m for m in caplog.messages if "is not on its origin" in m]
    assert len(refused) == 3 and "//evil.example/whip/gate/s1" in refused[1]
