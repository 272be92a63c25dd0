"""A capture time burned into the picture, for measuring glass-to-glass latency at any client.

A client that shows the video (an RTSP player, a browser over WHEP, the archive's export) knows
when it shows a frame, but not when the camera took it: nothing of the capture time survives
the re-encoding and the protocols on the way. So the sender can stamp it into the picture
itself (`cameras[].timecode`), as broadcast engineers burn a timecode in: 40 black or white
blocks in two rows across the top of the frame, the capture time in milliseconds modulo 2^32
(49 days) and 8 bits of its CRC-32 (masked), most significant bit first. A block is a twentieth of the
frame's width (16 pixels at 320x240), large enough to come through the neural codec and
H.264 unharmed; a damaged code fails its check and reads as None rather than as a wrong time.
"""

from __future__ import annotations

import zlib

import numpy as np

COLUMNS = 20
ROWS = 2
TIME_BITS = 32
CHECK_BITS = 8
TIME_MODULUS = 1 << TIME_BITS


def block_size(width: int) -> int:
    """The side of one block, in pixels, for frames `width` pixels wide."""
    return max(1, width // COLUMNS)


CHECK_MASK = 0x5A
"""XORed into the check bits so that neither an all-white nor an all-black strip (sky, a lens cap)
passes for a time."""


def _check(milliseconds: int) -> int:
    return (zlib.crc32(milliseconds.to_bytes(4, "big")) ^ CHECK_MASK) & ((1 << CHECK_BITS) - 1)


def _bits(milliseconds: int) -> list[int]:
    word = (milliseconds << CHECK_BITS) | _check(milliseconds)
    return [(word >> shift) & 1 for shift in range(TIME_BITS + CHECK_BITS - 1, -1, -1)]


def stamp(rgb: np.ndarray, captured_at: float) -> np.ndarray:
    """`rgb` (uint8 H x W x 3) with `captured_at` (seconds since the epoch) burned into its top rows."""
    side = block_size(rgb.shape[1])
    if rgb.shape[0] < ROWS * side:
        raise ValueError(f"a {rgb.shape[1]}x{rgb.shape[0]} frame is too small for a timecode")
    stamped = rgb.copy()
    milliseconds = round(captured_at * 1000) % TIME_MODULUS
    for index, bit in enumerate(_bits(milliseconds)):
        row, column = divmod(index, COLUMNS)
        stamped[row * side:(row + 1) * side, column * side:(column + 1) * side] = 255 if bit else 0
    return stamped


def block_means(rgb: np.ndarray) -> list[float]:
    """The mean brightness of the middle of each block, in reading order (what `decode` reads)."""
    side = block_size(rgb.shape[1])
    margin = side // 4
    grey = rgb[: ROWS * side, : COLUMNS * side].astype(np.float32).mean(axis=2)
    means = []
    for index in range(ROWS * COLUMNS):
        row, column = divmod(index, COLUMNS)
        block = grey[row * side + margin:(row + 1) * side - margin, column * side + margin:(column + 1) * side - margin]
        means.append(float(block.mean()))
    return means


def decode(means: list[float]) -> int | None:
    """The stamped time in milliseconds modulo 2^32 from `block_means`, or None when the check fails."""
    word = 0
    for mean in means:
        word = (word << 1) | (mean >= 128)
    milliseconds = word >> CHECK_BITS
    return milliseconds if word & ((1 << CHECK_BITS) - 1) == _check(milliseconds) else None


def read(rgb: np.ndarray) -> int | None:
    """The capture time stamped into `rgb`, in milliseconds modulo 2^32, or None when there is none."""
    return decode(block_means(rgb))


def age_seconds(stamped_ms: int, now: float) -> float:
    """How long before `now` (seconds since the epoch) the frame stamped `stamped_ms` was captured."""
    return ((round(now * 1000) - stamped_ms) % TIME_MODULUS) / 1000
