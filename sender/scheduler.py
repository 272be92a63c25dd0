"""Sharing one fitting device (a GPU, or the CPU) between cameras.

Fits take turns, first come first served, so that each has the device to itself (two fits at
once would each run at half speed and both miss their segment). A fit that waited has that
much less time: it runs fewer steps; one whose camera's time ran out while it waited is not run
at all, and the camera goes on with its previous adapter (counted as fit_skipped). Every
camera thus keeps up with its own frames whatever the others do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

MIN_FIT_SECONDS = 0.05
"""Less time than this is not worth a fit."""


class FitScheduler:
    def __init__(self) -> None:
        self._turn = asyncio.Lock()  # asyncio's lock wakes its waiters in arrival order

    async def run(self, deadline: float, fit: Callable[[float], Awaitable[T]]) -> T | None:
        """Run `fit(seconds_left)` when the device is free, if `deadline` (time.monotonic())
        still leaves time; None when it does not."""
        async with self._turn:
            left = deadline - time.monotonic()
            if left < MIN_FIT_SECONDS:
                return None
            return await fit(left)
