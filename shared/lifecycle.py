"""Children that die with their parent: the demo's receiver and sender, the receiver's decode workers.

A process started by another one keeps running when its parent is killed (SIGKILL, the OOM
killer, a crash): the demo's daemons would go on streaming with no one to stop them, and a decode
worker stuck in a decode would never read the end of its socket. On Linux the child asks the
kernel for a signal when its parent dies (prctl PR_SET_PDEATHSIG). The child sets it in its own
start-up, not in a `preexec_fn` between fork and exec, which is unsafe in a process with threads.

Two traps of PR_SET_PDEATHSIG are handled here or left to the caller:
- The parent may die before the child makes the call; the child then has a new parent (init or
  a subreaper) and the kernel will never signal it. So the child compares `os.getppid()` with the
  pid its parent gave it, right after the call, and signals itself when they differ.
- "The parent" is the thread that started the child: a child started from a thread that ends is
  signalled although its parent process lives on. The demo starts its daemons from its main
  thread and the decode pool starts its workers from the receiver's event loop thread.

Where prctl does not exist (not Linux) a daemon thread polls `os.getppid()` every second instead
and signals the process when it changes: slower, and it needs the interpreter to run Python code
now and then (a C call that holds the GIL for long delays it), but portable.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

PARENT_PID_ENV = "ADAPTCAST_DIE_WITH_PARENT"
"""Set by a parent to its pid in a child's environment: the child (`adaptcast.cli.main`) then dies with it."""
PR_SET_PDEATHSIG = 1
"""From <linux/prctl.h>."""
POLL_SECONDS = 1.0
"""How often the fallback checks its parent where prctl does not exist."""


def die_with_parent(parent_pid: int, signum: signal.Signals) -> None:
    """Have this process receive `signum` when `parent_pid`, its parent, dies (at once if it already has).

    `signum` is what the kernel sends: SIGKILL for the demo's daemons and the decode workers (which
    ignore SIGTERM); SIGTERM would suit a child whose clean stop is quick and sure.
    """
    if not _set_death_signal(signum):
        threading.Thread(target=_watch_parent, args=(parent_pid, signum), name="adaptcast-parent-watch",
                         daemon=True).start()
    elif os.getppid() != parent_pid:  # the parent died before the call: the kernel will not tell
        os.kill(os.getpid(), signum)


def die_with_parent_from_environment() -> None:
    """`die_with_parent(SIGKILL)` when the parent said so in PARENT_PID_ENV.

    SIGKILL, not SIGTERM: a parent that stops normally stops its children itself, with SIGTERM and
    a grace period (the demo does); this signal only comes when the parent was killed outright or
    crashed, and then nobody is left to kill a child whose clean stop hangs (a sender waits for a
    running adapter fit). The child ends as abruptly as its parent did.

    The variable is removed from the environment first, so that this process's own children
    (the receiver's decode workers inherit its environment) do not take it for their parent's pid.
    """
    value = os.environ.pop(PARENT_PID_ENV, None)
    if value is None:
        return
    if not value.isdigit():
        raise ValueError(f"{PARENT_PID_ENV} is {value[:32]!r}, not a process id")
    die_with_parent(int(value), signal.SIGKILL)


def _set_death_signal(signum: signal.Signals) -> bool:
    """prctl(PR_SET_PDEATHSIG, signum); False where this system has no prctl."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except AttributeError:
        return False
    if prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    return True


def _watch_parent(parent_pid: int, signum: signal.Signals) -> None:
    """The fallback: signal this process once its parent is no longer `parent_pid`."""
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signum)
