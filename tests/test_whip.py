"""The receiver's signaling refuses what it must, with the right status, and counts it."""

from __future__ import annotations

import asyncio

import aiohttp
import yaml

from receiver.daemon import run_receiver
from shared.config import load_receiver_config
from shared.demo import free_port


def test_whip_refusals_health_and_metrics(tmp_path, monkeypatch, model_file):
    monkeypatch.setenv("TOKEN_GATE", "right-token")
    port = free_port(0)
    config_path = tmp_path / "receiver.yaml"
    config_path.write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": port}, "model": str(model_file), "device": "cpu",
        "cameras": [{"name": "gate", "token_env": "TOKEN_GATE"}],
    }))
    config = load_receiver_config(config_path)
    base = f"http://127.0.0.1:{port}"

    async def scenario() -> None:
        stop = asyncio.Event()
        server = asyncio.create_task(run_receiver(config, stop))
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"{base}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            sdp = {"Content-Type": "application/sdp"}
            cases = [
                ("/whip/gate", {}, "v=0", 401),  # no token
                ("/whip/gate", {"Authorization": "Bearer wrong"}, "v=0", 401),
                ("/whip/lobby", {"Authorization": "Bearer right-token"}, "v=0", 401),  # not that camera's token
                ("/whip/gate", {"Authorization": "Bearer right-token", "Content-Type": "text/plain"}, "v=0", 415),
                ("/whip/gate", {"Authorization": "Bearer right-token", **sdp}, "not an offer", 400),
            ]
            for path, headers, body, status in cases:
                async with http.post(base + path, data=body, headers={**sdp, **headers}) as response:
                    assert response.status == status, (path, headers, await response.text())
                    if status == 401:
                        assert response.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.delete(f"{base}/whip/gate/nosuchsession",
                                   headers={"Authorization": "Bearer right-token"}) as response:
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
