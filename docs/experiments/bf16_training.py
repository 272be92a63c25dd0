"""Experiment: does bfloat16 autocast speed up a training step on this CPU (it has avx512_bf16)?

The variable-rate recipe's step (GOP of 7, batch 8, 128x128 crops, per-element quality), timed in
float32 and under torch.autocast("cpu", torch.bfloat16), medians of 5 steps after a warm-up.
Run: python docs/experiments/bf16_training.py (log beside it).
"""

import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from shared.codec.modelfile import load_model  # noqa: E402
from shared.codec.training import _lambdas_at, train_gop  # noqa: E402

torch.manual_seed(0)
loaded = load_model("ssf-small-vr")
model = loaded.model.train()
lambdas_points = loaded.info.rate_lambdas
rng = random.Random(0)
frames = [torch.rand(8, 3, 128, 128) for _ in range(7)]
quality = torch.tensor([rng.uniform(0, 3) for _ in range(8)])
lambdas = _lambdas_at(lambdas_points, quality)
for label, autocast in (("float32", False), ("bfloat16 autocast", True)):
    times = []
    for step in range(6):
        model.zero_grad()
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            terms = train_gop(model, frames, lambdas, quality)
        if step:
            times.append(time.perf_counter() - started)
    print(f"{label}: {statistics.median(times):.3f} s a step (median of 5), loss {terms and terms['loss']:.3f}",
          flush=True)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
