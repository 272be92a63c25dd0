"""The rate-distortion trade-off the benchmarks fit adapters for."""

from __future__ import annotations

from adaptcast.shared.codec.modelfile import ModelInfo


def fitting_lambda(info: ModelInfo, quality: float | None = None) -> float:
    """The model's lambda at `quality` (`ModelInfo.lambda_at`); ValueError, saying so, for a model
    whose metadata has none: no adapter can be fitted for it."""
    lmbda = info.lambda_at(quality)
    if lmbda is None:
        raise ValueError(f"model {info.name} has no lambda: adapters cannot be fitted for it")
    return lmbda
