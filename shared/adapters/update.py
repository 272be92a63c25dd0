"""Adapter updates on the wire: a snapshot of an adapter's symbols, or their change since the
previous version, entropy-coded under the spike-and-slab prior.

    magic "ACAD" | format u8 | kind u8 | stream_len u8 | stream (UTF-8)
    | version u32 | parent u32 | model_sha256 32 bytes | seed u64 | bin_width f64
    | ranks 4 x u8 | decoders bitmask u8 | method u8 | symbols u32 | string_len u32 | rANS string
    | crc32c u32 (of every byte before it)

Nothing is unpickled; every length, count and value is checked before it is used, and each
failure is an `AdapterRejected` with a reason that the receiver counts.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, get_args

import crc32c
import torch
from compressai.ans import RansDecoder, RansEncoder
from torch import Tensor

from adaptcast.shared.adapters.lora import ADAPTED_DECODERS, METHODS, AdapterSpec
from adaptcast.shared.adapters.prior import MAX_CODED_SYMBOL, SpikeSlabPrior
from adaptcast.shared.codec.rans import RANS_STATE_BYTES, guarded_string

MAGIC = b"ACAD"
FORMAT = 2
MAX_SYMBOLS = 4_000_000
MAX_SYMBOL_VALUE = 1 << 20
RejectionReason = Literal["corrupt", "misshapen", "non_finite", "wrong_stream", "wrong_model", "duplicate",
                          "broken_chain"]
REJECTION_REASONS: tuple[RejectionReason, ...] = get_args(RejectionReason)
"""Why an adapter update is refused: the parser's reasons and the adapter store's."""
"""A symbol this far from the start (5000 at the default bin width) is no adapter: reject."""
_HEAD = struct.Struct("<4sBBB")
_BODY = struct.Struct("<II32sQd4BBBII")
_CRC = struct.Struct("<I")


class UpdateKind(IntEnum):
    SNAPSHOT = 0
    INCREMENT = 1


class AdapterRejected(Exception):
    """An adapter update that cannot be used; `reason` is a short label for metrics."""

    def __init__(self, reason: RejectionReason, detail: str, version: int | None = None) -> None:
        super().__init__(f"adapter update rejected ({reason}): {detail}")
        self.reason = reason
        self.version = version
        """The version the update claimed, when it could be read."""


@dataclass(frozen=True)
class AdapterUpdate:
    stream: str
    version: int
    """Versions count from 1; 0 means the base model."""
    parent: int
    """The version this increment applies to; 0 for a snapshot."""
    model_sha256: str
    spec: AdapterSpec
    symbols: Tensor
    """int32: the adapter's symbols (snapshot) or their change since `parent` (increment)."""

    @property
    def kind(self) -> UpdateKind:
        return UpdateKind.SNAPSHOT if self.parent == 0 else UpdateKind.INCREMENT


def _coder_tables(spec: AdapterSpec) -> tuple[list[list[int]], list[int], list[int]]:
    cdf = SpikeSlabPrior(bin_width=spec.bin_width).quantized_cdf
    return [cdf], [len(cdf)], [-MAX_CODED_SYMBOL]


def encode_update(update: AdapterUpdate) -> bytes:
    symbols = update.symbols.to(torch.int32).reshape(-1).tolist()
    string = RansEncoder().encode_with_indexes(symbols, [0] * len(symbols), *_coder_tables(update.spec))
    stream = update.stream.encode()
    mask = sum(1 << ADAPTED_DECODERS.index(d) for d in update.spec.decoders)
    body = (
        _HEAD.pack(MAGIC, FORMAT, update.kind, len(stream))
        + stream
        + _BODY.pack(update.version, update.parent, bytes.fromhex(update.model_sha256), update.spec.seed,
                     update.spec.bin_width, *update.spec.ranks, mask, METHODS.index(update.spec.method),
                     len(symbols), len(string))
        + string
    )
    return body + _CRC.pack(crc32c.crc32c(body))


def decode_update(data: bytes, layout_size: Callable[[AdapterSpec], int] | None = None) -> AdapterUpdate:
    """Parse and check an update; raise AdapterRejected with a reason for anything wrong.

    CompressAI's rANS decoder trusts the symbol count it is given and reads past the string's
    end for symbols that are not there (a crash), so a receiver passes `layout_size` (the
    symbols an adapter of a spec has on its model) and a count that differs is refused first.
    """
    if len(data) < _HEAD.size + _BODY.size + _CRC.size:
        raise AdapterRejected("corrupt", f"{len(data)} bytes is shorter than any update")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if crc32c.crc32c(data[: -_CRC.size]) != crc:
        raise AdapterRejected("corrupt", "checksum mismatch")
    magic, version_format, kind, stream_len = _HEAD.unpack_from(data)
    if magic != MAGIC or version_format != FORMAT:
        raise AdapterRejected("corrupt", f"unknown magic {magic!r} or format {version_format}")
    if kind not in (UpdateKind.SNAPSHOT, UpdateKind.INCREMENT):
        raise AdapterRejected("corrupt", f"unknown update kind {kind}")
    offset = _HEAD.size + stream_len
    if offset + _BODY.size + _CRC.size > len(data):
        raise AdapterRejected("corrupt", "stream name runs past the end")
    try:
        stream = data[_HEAD.size : offset].decode()
    except UnicodeDecodeError:
        raise AdapterRejected("corrupt", "stream name is not UTF-8") from None
    version, parent, sha, seed, bin_width, *rest = _BODY.unpack_from(data, offset)
    ranks, mask, method, count, string_len = tuple(rest[:4]), rest[4], rest[5], rest[6], rest[7]
    offset += _BODY.size
    if offset + string_len + _CRC.size != len(data):
        raise AdapterRejected("corrupt", f"string length {string_len} does not match the update's size")
    if version == 0 or (kind == UpdateKind.SNAPSHOT) != (parent == 0) or parent >= version:
        raise AdapterRejected("corrupt",
                              f"version {version} with parent {parent} is not a valid {UpdateKind(kind).name}")
    if count > MAX_SYMBOLS:
        raise AdapterRejected("misshapen", f"{count} symbols is more than any adapter has")
    if method >= len(METHODS):
        raise AdapterRejected("misshapen", f"unknown adapter method {method}")
    try:
        spec = AdapterSpec(ranks=ranks, decoders=tuple(d for i, d in enumerate(ADAPTED_DECODERS) if mask >> i & 1),
                           seed=seed, bin_width=bin_width, method=METHODS[method])
    except ValueError as exc:
        raise AdapterRejected("misshapen", str(exc)) from None
    if layout_size is not None and count != (expected := layout_size(spec)):
        raise AdapterRejected("misshapen", f"{count} symbols, the model's layout has {expected}")
    if count and (string_len < RANS_STATE_BYTES or string_len % 4):
        raise AdapterRejected("corrupt", f"a rANS string of {string_len} bytes cannot hold {count} symbols")
    string = data[offset : offset + string_len]
    try:
        string = guarded_string(string, count) if count else bytes(RANS_STATE_BYTES)
    except ValueError as exc:
        raise AdapterRejected("corrupt", str(exc)) from None
    decoder = RansDecoder()
    flat = decoder.decode_with_indexes(string, [0] * count, *_coder_tables(spec))
    symbols = torch.tensor(flat, dtype=torch.int32)
    if count and int(symbols.abs().max()) > MAX_SYMBOL_VALUE:
        raise AdapterRejected("non_finite", "a symbol is out of any plausible range")
    return AdapterUpdate(stream, version, parent, sha.hex(), spec, symbols)
