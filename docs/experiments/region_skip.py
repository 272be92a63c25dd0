"""Experiment: encoder-side region skip (residual latent zeroed where coding it does not pay)."""
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from compressai.ans import BufferedRansEncoder

from adaptcast_bench.bdrate import bd_rate
from adaptcast.shared.codec.framecodec import FrameEncoder, FrameKind, FrameRecord
from adaptcast.shared.codec.latents import symbols_checksum
from adaptcast.shared.codec.modelfile import ModelLibrary, load_model
from adaptcast.shared.pipeline.stream import decode_file, encode_file
from adaptcast.shared.codec.tools import CodingTools
from adaptcast.shared.frames import FrameSize, to_rgb, to_tensor

MODE = {"on": False}

orig_encode = FrameEncoder.encode

@torch.no_grad()
def encode(self, rgb, index, keyframe):
    if keyframe or not MODE["on"]:
        return orig_encode(self, rgb, index, keyframe)
    x = to_tensor(rgb, self.padded, self.device)
    model = self.model
    lm = self.skip.lmbda if self.skip else MODE["lmbda"]
    y_motion = model.motion_encoder(torch.cat((x, self.reference), dim=1))
    # first pass: what coding each position buys
    hp = model.res_hyperprior
    enc0 = BufferedRansEncoder(); sym0 = []
    y_motion_hat = self.coders["motion"].encode(y_motion, enc0, sym0)
    x_pred = model.predict(self.reference, y_motion_hat, self.weights)
    y_res = model.res_encoder(x - x_pred)
    y_hat, lik = hp(y_res)
    bits = (-torch.log2(lik["y"])).sum(1)[0]  # H x W
    x_hat = model.decode_inter(x_pred, y_motion_hat, y_hat, self.weights)
    x_zero = model.decode_inter(x_pred, y_motion_hat, torch.zeros_like(y_hat), self.weights)
    def block(d):
        return torch.nn.functional.avg_pool2d(d.mean(1, keepdim=True), 16)[0, 0] * 256
    d_coded = block((x_hat - x) ** 2); d_zero = block((x_zero - x) ** 2)
    mask = (lm * 255**2 * (d_zero - d_coded) < bits * MODE["k"])
    y_res = y_res * (~mask).float()
    encoder = BufferedRansEncoder(); symbols = []
    y_motion_hat = self.coders["motion"].encode(y_motion, encoder, symbols)
    y_res_hat = self.coders["res"].encode(y_res, encoder, symbols)
    x_hat = model.decode_inter(x_pred, y_motion_hat, y_res_hat, self.weights)
    string = encoder.flush()
    MODE["masked"] += int(mask.sum()); MODE["positions"] += mask.numel()
    if self.skip and self._skipping_pays(self.skip, x, x_hat, string):
        return FrameRecord(index, FrameKind.SKIP, self.padded.height, self.padded.width, 0, b""), to_rgb(self.reference, self.size)
    self.reference = x_hat
    return FrameRecord(index, FrameKind.PREDICTED, self.padded.height, self.padded.width, symbols_checksum(symbols), string), to_rgb(x_hat, self.size)

FrameEncoder.encode = encode
C = str(__import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data" / "clips") + "/"
size = FrameSize(320, 240)
for clip in sys.argv[1:]:
    curves = {}
    for name, on, tools, k in (("plain", False, CodingTools.none(), 1), ("region", True, CodingTools.none(), 1), ("tools", False, CodingTools(adapter_gate=False), 1), ("tools+region", True, CodingTools(adapter_gate=False), 1)):
        pts = []
        for q in (1, 2, 3, 4):
            loaded = load_model(f"ssf-small-q{q}")
            MODE.update(on=on, lmbda=loaded.info.lmbda, k=k, masked=0, positions=0)
            t = time.perf_counter()
            r = encode_file(C + clip, "/tmp/r.acs", loaded, torch.device("cpu"), size=size, fps=10, segment_frames=20, max_frames=60, tools=tools, progress=False)
            el = time.perf_counter() - t
            d = decode_file("/tmp/r.acs", None, ModelLibrary.holding(loaded), torch.device("cpu"), reference=C + clip, progress=False)
            pts.append((r.bpp, d.psnr))
            print(clip, name, q, f"{r.bpp:.4f} {d.psnr:.2f} masked {MODE['masked']}/{MODE['positions']} {60/el:.1f} fps", flush=True)
        curves[name] = pts
    for a, b in (("plain", "region"), ("tools", "tools+region"), ("plain", "tools")):
        try:
            v = bd_rate([p[0] for p in curves[a]], [p[1] for p in curves[a]], [p[0] for p in curves[b]], [p[1] for p in curves[b]])
        except ValueError:
            v = None
        print(clip, f"BD-rate {b} vs {a}:", v, flush=True)
