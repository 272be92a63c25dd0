"""The surveillance coding tools an encoder uses, chosen together (`adaptcast encode`, the sender)."""

from __future__ import annotations

from dataclasses import dataclass

from adaptcast.shared.codec.background import BackgroundSettings


@dataclass(frozen=True)
class CodingTools:
    """What the encoder may do beyond coding every frame: skip P-frames that do not pay for their
    bits, start segments from a background picture instead of an I-frame, and send a new adapter
    version only when it is estimated to save more than its update costs. The defaults suit a
    fixed camera; `CodingTools.none()` is the plain codec (every frame coded, I-frames, every
    fitted adapter sent)."""

    skip: bool = True
    background: BackgroundSettings | None = BackgroundSettings()
    adapter_gate: bool = True

    @classmethod
    def none(cls) -> CodingTools:
        return cls(skip=False, background=None, adapter_gate=False)
