"""One stream's adapters at the receiving end: versions, chains, and the fallback decision.

A segment names the adapter version it was coded with. `weights_for` is asked once, at the
segment's start, and its answer holds for the whole segment, so a swap is atomic and happens
only at a boundary. Anything that makes a version unusable (never arrived, corrupt, another
model, wrong shape, broken chain) makes the segment decode with the base model, counted by
reason; the next snapshot restores adapted decoding.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from typing import Literal, get_args

import torch
from torch import Tensor

from adaptcast.shared.adapters.lora import AdapterLayout, AdapterSpec, adapted_weights
from adaptcast.shared.adapters.update import (
    AdapterRejected,
    AdapterUpdate,
    RejectionReason,
    decode_update,
    encode_update,
)
from adaptcast.shared.codec.ssf import ScaleSpaceFlow, SynthesisWeights

log = logging.getLogger(__name__)


MAX_REMEMBERED_SPECS = 4
"""Adapter shapes whose symbol counts a store keeps (a stream normally uses one)."""
FallbackReason = Literal[RejectionReason, "missing"]
FALLBACK_REASONS: tuple[FallbackReason, ...] = get_args(FallbackReason)
"""Why a segment that names an adapter decodes with the base model: the version never arrived
(`missing`), its update was refused (the rejection's reason), or its weights are not finite."""


class AdapterStore:
    def __init__(self, stream: str, model: ScaleSpaceFlow, model_sha256: str, keep: int = 4) -> None:
        self.stream = stream
        self.model = model
        self.model_sha256 = model_sha256
        self.keep = keep
        self._symbols: OrderedDict[int, Tensor] = OrderedDict()
        self._layouts: dict[int, AdapterLayout] = {}
        self._rejected: dict[int, RejectionReason] = {}
        self._sizes: dict[AdapterSpec, int] = {}
        self._weights_cache: tuple[int, SynthesisWeights] | None = None
        self.rejections: Counter[RejectionReason] = Counter()
        self.fallbacks: Counter[FallbackReason] = Counter()

    def receive(self, data: bytes) -> AdapterUpdate:
        """Take an update off the wire; raise AdapterRejected (already counted) if unusable."""
        try:
            update = decode_update(data, self._layout_size)
            layout = self._layout_for(update)
            self._check(update, layout)
        except AdapterRejected as exc:
            self.rejections[exc.reason] += 1
            if exc.version is not None:
                self._rejected[exc.version] = exc.reason
            log.warning("camera %s: %s", self.stream, exc)
            raise
        symbols = self._symbols[update.parent] + update.symbols if update.parent else update.symbols
        self._symbols[update.version] = symbols
        self._layouts[update.version] = layout
        while len(self._symbols) > self.keep:
            old, _ = self._symbols.popitem(last=False)
            self._layouts.pop(old, None)
        return update

    def _layout_size(self, spec: AdapterSpec) -> int:
        """Symbols an adapter of `spec` has on this model, remembered for the few specs a stream uses."""
        if spec not in self._sizes:
            if len(self._sizes) >= MAX_REMEMBERED_SPECS:
                self._sizes.clear()  # a stream that keeps changing shape: measure again
            self._sizes[spec] = AdapterLayout(self.model, spec).size
        return self._sizes[spec]

    def _layout_for(self, update: AdapterUpdate) -> AdapterLayout:
        """The parent's layout when the shape is unchanged (no new random draw), else a new one."""
        parent = self._layouts.get(update.parent)
        return parent if parent is not None and parent.spec == update.spec else AdapterLayout(self.model, update.spec)

    def _check(self, update: AdapterUpdate, layout: AdapterLayout) -> None:
        def reject(reason: RejectionReason, detail: str) -> None:
            raise AdapterRejected(reason, f"version {update.version}: {detail}", update.version)

        if update.stream != self.stream:
            reject("wrong_stream", f"update is for stream {update.stream!r}")
        if update.model_sha256 != self.model_sha256:
            reject("wrong_model", f"made for model {update.model_sha256[:16]}")
        if update.version in self._symbols:
            reject("duplicate", "already held")
        if update.parent and update.parent not in self._symbols:
            reject("broken_chain", f"parent version {update.parent} is not held")
        if update.parent and self._layouts[update.parent] is not layout:
            reject("broken_chain", "increment changes the adapter's shape")
        if update.symbols.numel() != layout.size:
            reject("misshapen", f"{update.symbols.numel()} symbols, the model's layout has {layout.size}")

    def weights_for(self, version: int) -> SynthesisWeights | None:
        """Weights for a segment coded with `version` (0: the base model); None means fall back."""
        if version == 0:
            return None
        if self._weights_cache and self._weights_cache[0] == version:
            return self._weights_cache[1]
        if version not in self._symbols:
            reason: FallbackReason = self._rejected.get(version, "missing")
            self.fallbacks[reason] += 1
            log.warning("camera %s: segment falls back to the base model: adapter version %d %s",
                        self.stream, version, reason)
            return None
        weights = adapted_weights(self.model, self._layouts[version], self._symbols[version])
        if not all(torch.isfinite(w).all() for w in weights.values()):
            self.fallbacks["non_finite"] += 1
            log.warning("camera %s: adapter version %d gives non-finite weights", self.stream, version)
            return None
        self._weights_cache = (version, weights)
        return weights

    def held_versions(self) -> list[int]:
        return list(self._symbols)

    def snapshot(self, version: int) -> bytes | None:
        """A coded full snapshot (parent 0) of a held version; None when it is not held.

        The archive starts each file with one, so that a file decodes alone even when the
        updates that built the version (a snapshot and its increments) are in deleted files.
        """
        if version not in self._symbols:
            return None
        return encode_update(AdapterUpdate(self.stream, version, 0, self.model_sha256,
                                           self._layouts[version].spec, self._symbols[version]))

    def state_bytes(self) -> int:
        """Memory held for this stream's adapters: symbols, seeded factors and cached weights."""
        tensors = list(self._symbols.values())
        for layout in {id(layout): layout for layout in self._layouts.values()}.values():
            tensors += layout.seeded_tensors()
        if self._weights_cache:
            tensors += list(self._weights_cache[1].values())
        return sum(t.numel() * t.element_size() for t in tensors)
