"""Decoding in a child process: what the decode pool (receiver/workers.py) and the archive export
(receiver/export.py) share, so that bad input that crashes or hangs torch or CompressAI costs
the child, never the process that started it.

Children are started with multiprocessing's "spawn" context: forking a process that runs torch
threads or an event loop copies locks held by threads that do not exist in the child.

Parent and child talk over a Unix socket pair in our own framing: the lengths of a JSON head and
of a binary body, then the head and the body (a packed record or a path one way, a frame's raw
RGB bytes the other). Nothing a child says is ever unpickled, and a message that claims more than
the largest frame is refused before it is read.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import multiprocessing
import resource
import signal
import struct
from typing import Any

import torch

from adaptcast.shared.codec.bitstream import MAX_DIMENSION, MAX_RECORD_BYTES
from adaptcast.shared.lifecycle import die_with_parent

SPAWN = multiprocessing.get_context("spawn")
MAX_HEAD_BYTES = 1 << 20
MAX_BODY_BYTES = MAX_DIMENSION * MAX_DIMENSION * 3 + MAX_RECORD_BYTES
"""The largest frame a stream header allows, plus an adapter snapshot (a record at most)."""
_LENGTHS = struct.Struct("<II")
"""A message: the lengths of its JSON head and of its binary body, then the head and the body."""


def message(head: dict[str, Any], *body: bytes | memoryview) -> list[bytes | memoryview]:
    """A message as the parts to write: lengths, JSON head, then the body's parts, uncopied."""
    encoded = json.dumps(head).encode()
    return [_LENGTHS.pack(len(encoded), sum(len(part) for part in body)), encoded, *body]


async def receive(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """The next message (asyncio); IncompleteReadError at the end of the input, ValueError or
    TypeError for one that breaks the framing's bounds."""
    head_length, body_length = _checked(await reader.readexactly(_LENGTHS.size))
    head = _head(await reader.readexactly(head_length))
    return head, await reader.readexactly(body_length)


def read_message(stream: io.BufferedIOBase) -> tuple[dict[str, Any], bytes] | None:
    """The next message from `stream` (a socket's `makefile("rwb")`, blocking); None at the end of the
    input (the other end closed it or died), ValueError or TypeError for one that breaks the framing's
    bounds."""
    lengths = stream.read(_LENGTHS.size)
    if len(lengths) < _LENGTHS.size:
        return None
    head_length, body_length = _checked(lengths)
    head = stream.read(head_length)
    body = stream.read(body_length)
    if len(head) < head_length or len(body) < body_length:
        return None
    return _head(head), body


def write_message(stream: io.BufferedIOBase, parts: list[bytes | memoryview]) -> None:
    stream.writelines(parts)
    stream.flush()


def _checked(lengths: bytes) -> tuple[int, int]:
    head_length, body_length = _LENGTHS.unpack(lengths)
    if head_length > MAX_HEAD_BYTES or body_length > MAX_BODY_BYTES:
        raise ValueError(f"a message of {head_length} + {body_length} bytes")
    return head_length, body_length


def _head(encoded: bytes) -> dict[str, Any]:
    head = json.loads(encoded)
    if not isinstance(head, dict):
        raise TypeError("a message head that is not an object")
    return head


def exit_description(reason: str, exitcode: int | None) -> str:
    """`reason`, and how the child ended, for a log line."""
    if exitcode is not None and exitcode < 0:
        return f"{reason}; killed by signal {-exitcode} ({signal.strsignal(-exitcode)})"
    return f"{reason}; exit code {exitcode}"


# The child's side.


def enter_child(log_level: int, threads: int) -> None:
    """What a decoding child does first.

    It dies with its parent (SIGKILL: a child stuck in a decode reads no end of its socket), and
    ignores SIGINT and SIGTERM: a Ctrl-C or a service manager signals the whole process group, and
    the parent stops its children itself. It logs like its parent, with its pid.
    """
    parent = multiprocessing.parent_process()
    assert parent is not None and parent.pid is not None, "a child that multiprocessing started knows its parent"
    die_with_parent(parent.pid, signal.SIGKILL)
    gc.freeze()  # what importing torch and CompressAI made: the exit would spend seconds collecting it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    torch.set_num_threads(threads)


def limit_address_space(device: torch.device, headroom_bytes: int | None) -> None:
    """Let this process's address space (RLIMIT_AS) grow by `headroom_bytes` beyond what it takes
    now, with torch imported and the model loaded; call it after loading the model.

    What it takes then (about 3.8 GB of mostly unused reservations) varies with the torch version:
    hence a limit relative to it. A record that makes torch or CompressAI allocate more raises
    MemoryError (that input refused) instead of exhausting the machine. Only on the CPU: CUDA's
    driver reserves address ranges far beyond any such limit, so on a GPU the service manager's
    memory limit (systemd MemoryMax=, a Kubernetes limit) does this job. None: no limit.
    """
    if headroom_bytes is None or device.type != "cpu":
        return
    with open("/proc/self/statm") as statm:
        limit = int(statm.read().split()[0]) * resource.getpagesize() + headroom_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
