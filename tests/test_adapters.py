"""Adapters (LoRA and full fine-tuning): exactness of the untrained adapter, update coding,
increments, the store."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from adaptcast.shared.adapters.lora import AdapterLayout, AdapterSpec, adapted_weights
from adaptcast.shared.adapters.store import AdapterStore
from adaptcast.shared.adapters.update import AdapterRejected, AdapterUpdate, decode_update, encode_update
from adaptcast.shared.codec.framecodec import FrameDecoder, FrameEncoder
from adaptcast.shared.codec.modelfile import load_model_file
from adaptcast.shared.frames import FrameSize
from adaptcast.shared.video import read_frames


@pytest.fixture(scope="module")
def loaded(model_file):
    return load_model_file(model_file)


@pytest.fixture(scope="module", params=["lora", "full"])
def layout(loaded, request):
    spec = AdapterSpec(seed=11) if request.param == "lora" else AdapterSpec.full()
    return AdapterLayout(loaded.model, spec)


def _random_symbols(layout: AdapterLayout, seed: int, density: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-6, 7, (layout.size,), generator=g, dtype=torch.int32)
    return values * (torch.rand(layout.size, generator=g) < density)


def test_untrained_adapter_decodes_bit_for_bit_like_the_base(loaded, layout, clip):
    weights = adapted_weights(loaded.model, layout, torch.zeros(layout.size, dtype=torch.int32))
    params = dict(loaded.model.named_parameters())
    assert all(torch.equal(w, params[name]) for name, w in weights.items())
    size = FrameSize(96, 64)
    frames = list(read_frames(clip, size, max_frames=3))
    base = FrameEncoder(loaded.model, size, torch.device("cpu"))
    adapted = FrameEncoder(loaded.model, size, torch.device("cpu"))
    adapted.weights = weights
    for i, rgb in enumerate(frames):
        (record_a, rgb_a), (record_b, rgb_b) = base.encode(rgb, i, i == 0), adapted.encode(rgb, i, i == 0)
        assert record_a == record_b
        np.testing.assert_array_equal(rgb_a, rgb_b)


def test_adapter_changes_only_synthesis_layers_and_decoders_agree(loaded, layout, clip):
    symbols = _random_symbols(layout, 1)
    weights = adapted_weights(loaded.model, layout, symbols)
    assert set(weights) == {layer.name for layer in layout.layers}
    assert all(name.split(".")[0].endswith("_decoder") for name in weights)
    size = FrameSize(96, 64)
    encoder, decoder = (c(loaded.model, size, torch.device("cpu")) for c in (FrameEncoder, FrameDecoder))
    encoder.weights = decoder.weights = weights
    for i, rgb in enumerate(read_frames(clip, size, max_frames=3)):
        record, expected = encoder.encode(rgb, i, i == 0)
        np.testing.assert_array_equal(decoder.decode(record), expected)


def test_the_sender_sees_an_i_frame_as_base_and_adapted_decoders_show_it(loaded, layout, clip):
    """What `adaptcast_sender_psnr_db` compares: one latent, decoded with and without the adapter."""
    size = FrameSize(96, 64)
    encoder = FrameEncoder(loaded.model, size, torch.device("cpu"))
    base = FrameDecoder(loaded.model, size, torch.device("cpu"))
    encoder.weights = adapted_weights(loaded.model, layout, _random_symbols(layout, 1))
    record, shown = encoder.encode(next(read_frames(clip, size, max_frames=1)), 0, keyframe=True)
    np.testing.assert_array_equal(encoder.reconstruct_keyframe(encoder.weights), shown)
    as_base = encoder.reconstruct_keyframe(None)
    np.testing.assert_array_equal(as_base, base.decode(record))
    assert not np.array_equal(as_base, shown)


def _update(layout, symbols, version, parent=0, sha="ab" * 32, stream="cam1"):
    return AdapterUpdate(stream, version, parent, sha, layout.spec, symbols)


def test_update_round_trip(layout):
    symbols = _random_symbols(layout, 2)
    decoded = decode_update(encode_update(_update(layout, symbols, 3)))
    assert decoded.version == 3 and decoded.parent == 0 and decoded.spec == layout.spec
    assert torch.equal(decoded.symbols, symbols)


def test_ten_increments_cost_less_than_ten_snapshots_and_give_the_same_weights(loaded, layout):
    store = AdapterStore("cam1", loaded.model, loaded.info.sha256)
    versions = [_random_symbols(layout, 100, density=0.05)]
    for k in range(1, 10):  # each segment's adapter moves a few parameters from the last one
        versions.append(versions[-1] + _random_symbols(layout, 100 + k, density=0.005))
    snapshot_bytes = increment_bytes = 0
    for k, symbols in enumerate(versions, start=1):
        snapshot_bytes += len(encode_update(_update(layout, symbols, k, sha=loaded.info.sha256)))
        delta = symbols - versions[k - 2] if k > 1 else symbols
        data = encode_update(_update(layout, delta, k, parent=k - 1, sha=loaded.info.sha256))
        increment_bytes += len(data)
        store.receive(data)
        expected = adapted_weights(loaded.model, layout, symbols)
        actual = store.weights_for(k)
        assert all(torch.equal(actual[name], expected[name]) for name in expected)
    assert increment_bytes < snapshot_bytes
    # the store keeps its last 4 versions: bounded memory however long the stream runs
    assert store.held_versions() == [7, 8, 9, 10]
    assert store.state_bytes() < 4 * layout.size * 4 + 8 * 2**20


@pytest.fixture
def store(loaded):
    return AdapterStore("cam1", loaded.model, loaded.info.sha256)


def test_store_rejects_each_bad_update_with_its_reason(store, layout, loaded):
    sha = loaded.info.sha256
    good = encode_update(_update(layout, _random_symbols(layout, 3), 1, sha=sha))
    store.receive(good)
    cases = {
        "duplicate": good,
        "broken_chain": encode_update(_update(layout, _random_symbols(layout, 4), 5, parent=4, sha=sha)),
        "wrong_model": encode_update(_update(layout, _random_symbols(layout, 4), 2, sha="cd" * 32)),
        "wrong_stream": encode_update(_update(layout, _random_symbols(layout, 4), 2, sha=sha, stream="cam2")),
        "misshapen": encode_update(_update(layout, torch.zeros(7, dtype=torch.int32), 2, sha=sha)),
        "corrupt": good[:-1] + bytes([good[-1] ^ 1]),
    }
    for reason, data in cases.items():
        with pytest.raises(AdapterRejected) as caught:
            store.receive(data)
        assert caught.value.reason == reason
    assert store.rejections == {reason: 1 for reason in cases}
    assert store.held_versions() == [1]


def test_fallback_reasons_and_recovery_after_a_snapshot(store, layout, loaded):
    sha = loaded.info.sha256
    v1 = _random_symbols(layout, 5)
    store.receive(encode_update(_update(layout, v1, 1, sha=sha)))
    assert store.weights_for(1) is not None
    assert store.weights_for(0) is None and not store.fallbacks  # the base model is no fallback
    assert store.weights_for(2) is None  # never arrived
    bad = encode_update(_update(layout, v1, 3, parent=2, sha=sha))
    with pytest.raises(AdapterRejected):
        store.receive(bad)
    assert store.weights_for(3) is None
    assert store.fallbacks == {"missing": 1, "broken_chain": 1}
    store.receive(encode_update(_update(layout, v1, 4, sha=sha)))  # the next full snapshot
    assert store.weights_for(4) is not None


def test_random_corruptions_never_crash_and_never_pass(store, layout, loaded):
    data = encode_update(_update(layout, _random_symbols(layout, 6), 1, sha=loaded.info.sha256))
    rng = random.Random(3)
    for _ in range(300):
        damaged = bytearray(data)
        if rng.random() < 0.3:
            damaged = damaged[: rng.randrange(len(damaged))]
        else:
            for _ in range(rng.choice((1, 2, 5))):
                damaged[rng.randrange(len(damaged))] ^= rng.randrange(1, 256)
        with pytest.raises(AdapterRejected):
            store.receive(bytes(damaged))
    assert store.held_versions() == []


def test_spec_validation():
    for bad in (dict(ranks=(1, 2, 3)), dict(ranks=(1, 2, 3, 999)), dict(decoders=("hyper",)),
                dict(bin_width=float("nan")), dict(seed=-1), dict(method="partial"),
                dict(method="full"), dict(ranks=(0, 0, 0, 0))):
        with pytest.raises(ValueError):
            AdapterSpec(**bad)


def test_full_fine_tuning_moves_every_weight_and_bias_of_the_decoders(loaded):
    layout = AdapterLayout(loaded.model, AdapterSpec.full(decoders=("img_decoder",)))
    decoder_params = {name for name, _ in loaded.model.img_decoder.named_parameters(prefix="img_decoder")}
    assert {layer.name for layer in layout.layers} == decoder_params
    assert layout.size == sum(p.numel() for p in loaded.model.img_decoder.parameters())
