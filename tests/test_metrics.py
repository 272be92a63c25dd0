"""Every metric docs/metrics.md promises is on /metrics of a running sender and receiver, with
live values where the stream has had time to make them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.error
import urllib.request

import aiohttp
import numpy as np
import pytest
import torch
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adaptcast.demo import CAMERA, LoopbackStation, StationSettings, free_port
from adaptcast.receiver.daemon import run_receiver
from adaptcast.receiver.h264feed import CLIENT_QUEUE_FRAMES, H264Feed
from adaptcast.receiver.metrics import RepublishCollector
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
    RtspStats,
)
from adaptcast.shared.adapters.store import FALLBACK_REASONS
from adaptcast.shared.adapters.update import REJECTION_REASONS
from adaptcast.shared.config import H264Config, load_receiver_config
from adaptcast.shared.metrics import daemon_registry
from adaptcast.shared.wire.inbound_limits import ABORT_REASONS
from tests.conftest import REPO


def documented_metrics() -> dict[str, str]:
    """Metric name -> type, from the tables of docs/metrics.md."""
    rows = re.findall(r"^\| `(adaptcast_\w+)` \| (\w+)", (REPO / "docs/metrics.md").read_text(), re.MULTILINE)
    return dict(rows)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _families(url: str) -> dict[str, list]:
    """Samples by metric family; counters are named as documented, with `_total`."""
    return _parse(_get(url))


def _parse(text: str) -> dict[str, list]:
    families = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        families[name] = family.samples
    return families


def _value(samples: list, suffix: str = "", **labels: str) -> float:
    """The sum of the samples whose name ends with `suffix` and that carry `labels`."""
    return sum(s.value for s in samples if s.name.endswith(suffix) and labels.items() <= s.labels.items())


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory) -> dict[str, dict[str, list]]:
    archive = tmp_path_factory.mktemp("archive")
    # every fit sent, so that adapter versions and swaps happen whatever the gate would decide
    settings = StationSettings(size="160x96", segment_seconds=1.0, archive=archive, port=0, adapter_gate=False)
    with LoopbackStation(settings, quiet=True) as station:
        deadline = time.monotonic() + 120
        while True:  # segments decoded with an adapter: fits, swaps and archive files happened
            station.check_alive()
            camera = json.loads(station.viewer.get(f"{station.url}/api/cameras"))[0]
            if camera["frames"] >= 40 and camera["adapter_version"] >= 2:
                break
            assert time.monotonic() < deadline, f"the stream did not get going: {camera}"
            time.sleep(0.5)
        return {"sender": _families(station.sender_metrics_url), "receiver": _families(f"{station.url}/metrics")}


def test_every_documented_metric_is_served(scrapes):
    served = {**scrapes["sender"], **scrapes["receiver"]}
    expected = set(documented_metrics())
    if not torch.cuda.is_available():
        expected.discard("adaptcast_sender_gpu_memory_bytes")  # served only where torch has a GPU
    assert not expected - set(served), f"documented but not served: {sorted(expected - set(served))}"
    undocumented = {name for name in served if name.startswith("adaptcast_")} - set(documented_metrics())
    assert not undocumented, f"served but not in docs/metrics.md: {sorted(undocumented)}"


def test_both_daemons_serve_the_process_and_python_collectors(scrapes):
    """prometheus-client's standard families, which dashboards and alerts expect of an exporter."""
    for role in ("sender", "receiver"):
        m = scrapes[role]
        assert _value(m["process_resident_memory_bytes"]) > 50 * 2**20, role
        assert _value(m["process_open_fds"]) > 0, role
        assert m["python_info"][0].labels["implementation"] == "CPython", role
        assert "python_gc_collections_total" in m, role


def test_the_sender_metrics_are_live(scrapes):
    m = scrapes["sender"]
    assert _value(m["adaptcast_build_info"], role="sender") == 1
    assert _value(m["adaptcast_sender_frames_captured_total"], camera=CAMERA) >= 40
    assert _value(m["adaptcast_sender_camera_up"], camera=CAMERA) == 1
    assert _value(m["adaptcast_sender_segments_encoded_total"], camera=CAMERA, outcome="adapted") >= 1
    assert _value(m["adaptcast_sender_fit_duration_seconds"], "_count", camera=CAMERA) >= 2
    assert _value(m["adaptcast_sender_fit_steps_total"], camera=CAMERA) >= 2
    assert 0 < _value(m["adaptcast_sender_fit_realtime_factor"], camera=CAMERA)
    assert _value(m["adaptcast_sender_sent_bytes_total"], camera=CAMERA, kind="latent") > 0
    assert _value(m["adaptcast_sender_sent_bytes_total"], camera=CAMERA, kind="adapter") > 0
    assert 0 < _value(m["adaptcast_sender_bits_per_pixel"], camera=CAMERA) < 24
    for model in ("base", "adapted"):
        assert 10 < _value(m["adaptcast_sender_psnr_db"], camera=CAMERA, model=model) < 100
    assert _value(m["adaptcast_sender_data_channel_state"], camera=CAMERA, state="open") == 1
    assert _value(m["adaptcast_sender_connections_total"], camera=CAMERA) == 1
    assert _value(m["adaptcast_sender_adapter_version"], camera=CAMERA) >= 1


def test_the_receiver_metrics_are_live(scrapes):
    m = scrapes["receiver"]
    assert _value(m["adaptcast_build_info"], role="receiver") == 1
    sender_sha = {s.labels["model_sha256"] for s in scrapes["sender"]["adaptcast_build_info"]}
    assert {s.labels["model_sha256"] for s in m["adaptcast_build_info"]} == sender_sha
    assert _value(m["adaptcast_receiver_messages_total"], camera=CAMERA) > 40
    assert _value(m["adaptcast_receiver_received_bytes_total"], camera=CAMERA) > 0
    assert _value(m["adaptcast_receiver_frames_shown_total"], camera=CAMERA) >= 40
    assert _value(m["adaptcast_receiver_segments_decoded_total"], camera=CAMERA) >= 4
    assert _value(m["adaptcast_receiver_decode_seconds"], "_count", camera=CAMERA) >= 40
    assert _value(m["adaptcast_receiver_latency_seconds"], "_count", camera=CAMERA) >= 40
    assert _value(m["adaptcast_receiver_adapter_swaps_total"], camera=CAMERA) >= 1
    assert _value(m["adaptcast_receiver_adapter_swap_seconds"], "_count", camera=CAMERA) >= 1
    assert _value(m["adaptcast_receiver_adapter_version"], camera=CAMERA) >= 1
    assert _value(m["adaptcast_receiver_active_streams"]) == 1
    assert _value(m["adaptcast_receiver_connected"], camera=CAMERA) == 1
    assert _value(m["adaptcast_receiver_archive_bytes"], camera=CAMERA) > 0
    assert _value(m["adaptcast_receiver_malformed_messages_total"]) == 0
    assert _value(m["adaptcast_receiver_fallback_segments_total"]) == 0


def test_a_sender_that_has_not_reached_its_receiver_serves_its_metrics(tmp_path):
    """Before the first connection (no capture yet, no data channel) the metrics are still whole."""
    from adaptcast.demo import free_port, spawn_daemon, wait_ready

    port = free_port(0)
    config = tmp_path / "sender.yaml"
    config.write_text(json.dumps({
        "receiver": {"url": f"http://127.0.0.1:{free_port(0)}"},  # nothing listens there
        "metrics": {"host": "127.0.0.1", "port": port},
        "cameras": [{"name": "gate", "source": "testpattern", "token_env": "ADAPTCAST_TOKEN_GATE"}],
    }))
    sender = spawn_daemon("sender", config, {**os.environ, "ADAPTCAST_TOKEN_GATE": "t0ken-0123456789abcdef"},
                          quiet=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", sender)
        m = _families(f"http://127.0.0.1:{port}/metrics")
        assert _value(m["adaptcast_sender_data_channel_state"], camera="gate", state="closed") == 1
        assert _value(m["adaptcast_sender_camera_up"], camera="gate") == 0
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(f"http://127.0.0.1:{port}/readyz")
        assert refused.value.code == 503
    finally:
        sender.terminate()
        sender.wait(timeout=30)


KNOWN_REASONS = {
    "adaptcast_receiver_malformed_messages_total": MALFORMED_REASONS,
    "adaptcast_receiver_records_dropped_total": DROP_REASONS,
    "adaptcast_receiver_fallback_segments_total": FALLBACK_REASONS,
    "adaptcast_receiver_adapter_rejections_total": REJECTION_REASONS,
    "adaptcast_receiver_archive_segments_deleted_total": DELETE_REASONS,
    "adaptcast_receiver_archive_records_dropped_total": ARCHIVE_DROP_REASONS,
    "adaptcast_receiver_sctp_aborts_total": ABORT_REASONS,
}
"""Per-camera counters by reason, and the reasons their code counts by."""
KNOWN_REASONS_ALONE = {
    "adaptcast_receiver_signaling_refused_total": WHIP_REFUSALS,
    "adaptcast_receiver_viewer_refused_total": VIEWER_REFUSALS,
    "adaptcast_receiver_rtsp_refused_total": RTSP_REFUSALS,
    "adaptcast_receiver_whep_refused_total": WHEP_REFUSALS,
}
"""Counters by reason without a camera label."""


def test_a_fresh_receiver_has_a_sample_for_every_counter_and_known_reason(tmp_path, monkeypatch, model_file):
    """Before any sender connects, every counter family has samples, and a counter by reason has
    one, 0, for each reason and camera: dashboards and rate() alerts see zeros, not "no data"."""
    cameras = ("gate", "lobby")
    port = free_port(0)
    monkeypatch.setenv("TOKEN_ANY", "right-token-0123456789")
    config_path = tmp_path / "receiver.yaml"
    config_path.write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": port}, "model": str(model_file), "device": "cpu",
        "archive": {"dir": str(tmp_path / "archive")},
        "cameras": [{"name": name, "token_env": "TOKEN_ANY"} for name in cameras],
    }))
    base = f"http://127.0.0.1:{port}"

    async def scrape() -> str:
        stop = asyncio.Event()
        server = asyncio.create_task(run_receiver(load_receiver_config(config_path), stop))
        try:
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 120  # generous: workers start slowly on a loaded machine
                while True:
                    assert not server.done(), server.result()
                    try:
                        async with http.get(f"{base}/readyz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline, "the receiver did not get ready"
                    await asyncio.sleep(0.2)
                async with http.get(f"{base}/metrics") as response:
                    return await response.text()
        finally:
            stop.set()
            await server

    text = asyncio.run(scrape())
    families = {family.name: family for family in text_string_to_metric_families(text)}
    empty = sorted(name for name, family in families.items()
                   if family.type == "counter" and name.startswith("adaptcast_") and not family.samples)
    assert not empty, f"counters with no sample on a fresh receiver: {empty}"
    m = _parse(text)
    for name, reasons in KNOWN_REASONS.items():
        have = {(s.labels["camera"], s.labels["reason"]) for s in m[name] if s.name == name}
        missing = {(camera, reason) for camera in cameras for reason in reasons} - have
        assert not missing, f"{name}: no sample for {sorted(missing)}"
        assert _value(m[name]) == 0, name
    for name, reasons in KNOWN_REASONS_ALONE.items():
        have = {s.labels["reason"] for s in m[name] if s.name == name}
        assert not set(reasons) - have, f"{name}: no sample for {sorted(set(reasons) - have)}"
    for name in ("adaptcast_receiver_h264_clients", "adaptcast_receiver_h264_sent_bytes_total",
                 "adaptcast_receiver_h264_frames_dropped_total"):
        have = {(s.labels["camera"], s.labels["protocol"]) for s in m[name]}
        assert have == {(camera, protocol) for camera in cameras for protocol in PROTOCOLS}, name
    for name in ("adaptcast_receiver_h264_frames_encoded_total", "adaptcast_receiver_h264_encode_seconds"):
        assert {s.labels["camera"] for s in m[name]} == set(cameras), name


def test_republish_metrics_follow_each_cameras_h264_feed():
    """Clients by protocol (an RTSP subscription standing for several clients counts them all), bytes
    sent, frames encoded and lost by a client that does not read, encode time, refusals by reason."""
    picture = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)

    async def scenario() -> dict[str, list]:
        gate, lobby = H264Feed("gate", H264Config()), H264Feed("lobby", H264Config())
        rtsp = gate.subscribe("rtsp")
        rtsp.watchers = 3  # GStreamer's shared media: one subscription for three RTSP clients
        stalled = gate.subscribe("whep")  # never reads: its queue fills and it loses frames
        received = 0

        async def read() -> None:
            nonlocal received
            while (frame := await rtsp.next_frame()) is not None:
                rtsp.sent(len(frame.data))
                received += 1

        reader = asyncio.create_task(read())
        first = None
        for _ in range(CLIENT_QUEUE_FRAMES + 10):
            gate.publish(picture, captured_us=1, fps=10.0)
            while gate._encoding is not None:
                await asyncio.sleep(0.001)
            first = first or gate.stats()
        await asyncio.sleep(0.05)
        # a snapshot keeps the figures of its moment while the feed counts on
        assert first.frames_encoded == sum(first.encode_seconds.counts) == 1 and first.frames_dropped["whep"] == 0
        assert first.clients == {"rtsp": 3, "whep": 1}
        rtsp_refused = RtspStats(refused={"unauthorized": 2})
        text = generate_latest(daemon_registry(RepublishCollector(lambda: [gate.stats(), lobby.stats()],
                                                                  rtsp=lambda: rtsp_refused)))
        stalled.close()
        await gate.close()
        await reader
        await lobby.close()
        assert received == CLIENT_QUEUE_FRAMES + 10
        return _parse(text.decode())

    m = asyncio.run(scenario())
    frames = CLIENT_QUEUE_FRAMES + 10
    assert _value(m["adaptcast_receiver_h264_clients"], camera="gate", protocol="rtsp") == 3
    assert _value(m["adaptcast_receiver_h264_clients"], camera="gate", protocol="whep") == 1
    assert _value(m["adaptcast_receiver_h264_clients"], camera="lobby") == 0
    assert _value(m["adaptcast_receiver_h264_frames_encoded_total"], camera="gate") == frames
    assert _value(m["adaptcast_receiver_h264_encode_seconds"], "_count", camera="gate") == frames
    assert _value(m["adaptcast_receiver_h264_encode_seconds"], "_sum", camera="gate") > 0
    encoded = _value(m["adaptcast_receiver_h264_encoded_bytes_total"], camera="gate")
    assert encoded > 0
    assert _value(m["adaptcast_receiver_h264_sent_bytes_total"], camera="gate", protocol="rtsp") == encoded
    assert _value(m["adaptcast_receiver_h264_sent_bytes_total"], camera="gate", protocol="whep") == 0
    assert _value(m["adaptcast_receiver_h264_frames_dropped_total"], camera="gate", protocol="whep") >= 1
    assert _value(m["adaptcast_receiver_h264_frames_dropped_total"], camera="gate", protocol="rtsp") == 0
    assert _value(m["adaptcast_receiver_h264_frames_skipped_total"], camera="gate") == 0
    assert _value(m["adaptcast_receiver_rtsp_refused_total"], reason="unauthorized") == 2
    assert {s.labels["reason"]: s.value for s in m["adaptcast_receiver_whep_refused_total"]
            if s.name.endswith("_total")} == dict.fromkeys(WHEP_REFUSALS, 0.0)
