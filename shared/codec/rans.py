"""Handing rANS strings to CompressAI's decoder, which reads them without bounds checks
(CompressAI issue #300), so that it cannot read past the end of what it is given, whatever the
string holds: strings that cannot be valid are refused, the rest padded with zeros up to the most
the decoder can read for the number of symbols asked of it."""

from __future__ import annotations

RANS_STATE_BYTES = 8
"""The rANS coder's final state, the first bytes its decoder reads: every string holds at least these."""
RANS64_L = 1 << 31
"""The rANS decoder's state stays at or above this (ryg_rans's RANS64_L), given a start at or above it."""


def rans_read_bound(symbols: int, string_bytes: int) -> int:
    """The most bytes CompressAI's RansDecoder can read while decoding `symbols` symbols from a string of
    `string_bytes` bytes (whatever they hold) followed by zeros, given an initial state of at least 2^31.

    From compressai/cpp_exts/rans/rans_interface.cpp (set_stream, decode_stream) and ryg_rans's rans64.h,
    CompressAI 1.2: the decoder reads 32-bit words forwards, the first two into its 64-bit state x, then one
    word whenever x falls below L = 2^31, never writing outside its output. Each symbol takes one step
    x -> freq * (x >> 16) + (x & 0xFFFF) - start, which keeps x >= x >> 16; a symbol at the top of its table
    is an escape, which takes 4-bit groups x -> x >> 4 (GetBits): a count, extended while it reads 15, then
    that many value groups. So from x >= L every step leaves x >= L, a step shortens x by at most 16 bits and
    a group by 4, and a word read (which lengthens it by 32) needs x below 2^31: words read <= 1 + (bits
    shortened) / 32. The count groups read 15 only from the 64 bits x holds when the escape starts and from
    string words read meanwhile (8 groups each); a zero word read ends the count. So an escape whose count
    reads s string words takes at most c = 16 + 8s groups of 15, then at most 15 (c + 1) value groups: with
    its step, 16 + 4 (15 + 16c) <= 1100 + 512s bits for the symbol. Summed over the symbols, each string
    word counted once: bits <= 1100 * symbols + 128 * string_bytes, and bytes read <= 8 + 4 (1 + bits / 32).
    (The count stays far below 2^31 for strings below MAX_RECORD_BYTES.)
    """
    bits = 1100 * symbols + 128 * string_bytes
    return RANS_STATE_BYTES + 4 * (1 + -(-bits // 32))


def guarded_string(string: bytes, symbols: int) -> bytes:
    """A copy of `string` that CompressAI's decoder can decode `symbols` symbols from without reading past
    its end: padded with zeros to `rans_read_bound`. Raises ValueError for a string shorter than the
    decoder's state or whose initial state is below 2^31, which no encoder writes (its flush writes a
    state of at least RANS64_L) and from which the bound does not hold."""
    if len(string) < RANS_STATE_BYTES:
        raise ValueError(f"a rANS string of {len(string)} bytes, shorter than the coder's state")
    if int.from_bytes(string[:RANS_STATE_BYTES], "little") < RANS64_L:
        raise ValueError("a rANS string whose initial state is below 2^31, which no encoder writes")
    return string + bytes(rans_read_bound(symbols, len(string)) - len(string))
