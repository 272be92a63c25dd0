"""Every metric docs/metrics.md promises is on /metrics of a running sender and receiver, with
live values where the stream has had time to make them."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from shared.demo import CAMERA, LoopbackStation, StationSettings
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
    families = {}
    for family in text_string_to_metric_families(_get(url)):
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
    from shared.demo import free_port, spawn_daemon, wait_ready

    port = free_port(0)
    config = tmp_path / "sender.yaml"
    config.write_text(json.dumps({
        "receiver": {"url": f"http://127.0.0.1:{free_port(0)}"},  # nothing listens there
        "metrics": {"host": "127.0.0.1", "port": port},
        "cameras": [{"name": "gate", "source": "testpattern", "token_env": "ADAPTCAST_TOKEN_GATE"}],
    }))
    sender = spawn_daemon("sender", config, {**os.environ, "ADAPTCAST_TOKEN_GATE": "t0ken-0123456789abcdef"}, quiet=True)
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
