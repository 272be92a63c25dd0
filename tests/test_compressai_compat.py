"""At CompressAI's widths our Scale-Space Flow is CompressAI's `ssf2020`, weight for weight."""

from __future__ import annotations

import numpy as np
import torch
from compressai.models.video import ScaleSpaceFlow as CompressAISSF

from adaptcast.shared.codec.framecodec import FrameEncoder
from adaptcast.shared.codec.modelfile import load_compressai_checkpoint
from adaptcast.shared.frames import FrameSize


def test_compressai_state_dict_loads_and_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    reference = CompressAISSF().eval()
    checkpoint = tmp_path / "ssf2020-random.pth.tar"
    torch.save(reference.state_dict(), checkpoint)

    ours = load_compressai_checkpoint(checkpoint).model
    assert ours.state_dict().keys() == reference.state_dict().keys()

    frames = [torch.rand(1, 3, 128, 128) for _ in range(3)]
    with torch.no_grad():
        expected = reference(frames)
        actual = ours(frames)
    for x_expected, x_actual in zip(expected["x_hat"], actual["x_hat"]):
        torch.testing.assert_close(x_actual, x_expected, rtol=0, atol=1e-5)
    for lik_expected, lik_actual in zip(expected["likelihoods"], actual["likelihoods"]):
        for part in lik_expected:
            for name in lik_expected[part]:
                torch.testing.assert_close(lik_actual[part][name], lik_expected[part][name], rtol=1e-5, atol=1e-6)


def test_our_bitstream_reconstructs_what_compressai_decompresses(tmp_path):
    """The same frames through CompressAI's compress/decompress and through our coder."""
    torch.manual_seed(1)
    reference = CompressAISSF().eval()
    reference.update(force=True)
    checkpoint = tmp_path / "ssf2020-random.pth.tar"
    torch.save(reference.state_dict(), checkpoint)
    loaded = load_compressai_checkpoint(checkpoint)

    rgb = [np.random.default_rng(i).integers(0, 256, (128, 128, 3), dtype=np.uint8) for i in range(2)]
    frames = [torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255 for f in rgb]
    with torch.no_grad():
        strings, shapes = reference.compress(frames)
        expected = reference.decompress(strings, shapes)

    encoder = FrameEncoder(loaded.model, FrameSize(128, 128), torch.device("cpu"))
    for i, frame in enumerate(rgb):
        _, reconstruction = encoder.encode(frame, i, keyframe=i == 0)
        expected_rgb = expected[i][0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        assert np.abs(reconstruction.astype(int) - expected_rgb.astype(int)).max() <= 1
