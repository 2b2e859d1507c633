"""The one private part of the operating system the project relies on: Linux's parent-death signal
(libc's `prctl(PR_SET_PDEATHSIG)`, through ctypes), so that a stage process dies with its parent.

`dvc repro` starts each stage command as its child (through `$SHELL -c`, which bash, dash and zsh
replace by the command itself). Killed with SIGKILL, DVC cannot pass anything on, and its stage
would run on as an orphan: a prediction of hours writing into folders nobody is waiting for. So
every stage entry point asks the kernel for SIGTERM when its parent exits (`die_with_parent`), and
a stage that starts `torchrun` asks the same for it (`parent_death_preexec`), whose workers are
stage entry points again. Where prctl is missing (not Linux), a daemon thread checks the parent
every second instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
"""prctl option: the signal the kernel sends this process when its parent exits (linux/prctl.h)."""
SIGNAL = signal.SIGTERM
"""What a stage gets when its parent dies: SIGTERM ends Python at once and lets torchrun's agent
stop its workers first."""
POLL_SECONDS = 1.0


def set_parent_death_signal(sig: int = SIGNAL) -> bool:
    """Ask Linux to send `sig` to this process when its parent exits (kept across exec).

    Returns:
        False where the call is not available (not Linux, no libc), else whether it worked.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return False
    return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0


def _watch_parent(parent: int) -> None:
    """Terminate this process once its parent `parent` is gone (it is then re-parented)."""
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    logger.error("the parent process %d is gone; stopping", parent)
    os.kill(os.getpid(), SIGNAL)


def die_with_parent() -> None:
    """Make this process end when the process that started it ends (kill -9 included)."""
    parent = os.getppid()
    if not set_parent_death_signal():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    elif os.getppid() != parent:  # the parent died before the kernel was asked
        os.kill(os.getpid(), SIGNAL)


def parent_death_preexec() -> None:
    """`subprocess.Popen(preexec_fn=...)` for a child that must end with this process."""
    set_parent_death_signal()
