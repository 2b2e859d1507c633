"""The one private part of the operating system the project relies on: Linux's parent-death signal
(libc's `prctl(PR_SET_PDEATHSIG)`, through ctypes), so that a stage process dies with its parent.

`dvc repro` starts each stage command through `$SHELL -c` (`/bin/sh -c` where SHELL is unset, as
in many containers and CI runners). bash and zsh replace themselves by the command; dash, Debian's
`/bin/sh`, does not, and stays between DVC and the stage. Killed with SIGKILL, DVC cannot pass
anything on, and its stage would run on as an orphan: a prediction of hours writing into folders
nobody is waiting for. So every stage entry point asks the kernel for SIGTERM when its parent exits
(`die_with_parent`) and, where that parent is a shell running only a `-c` command, also watches the
shell's parent (DVC) through a pidfd; a stage that starts `torchrun` asks the same for it
(`parent_death_preexec`), whose workers are stage entry points again. Where prctl or pidfd is
missing, a daemon thread checks every second instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
"""prctl option: the signal the kernel sends this process when its parent exits (linux/prctl.h)."""
SIGNAL = signal.SIGTERM
"""What a stage gets when its parent dies: SIGTERM ends Python at once and lets torchrun's agent
stop its workers first."""
POLL_SECONDS = 1.0
SHELLS = frozenset({"sh", "dash", "ash", "bash", "zsh", "ksh", "mksh", "busybox"})
"""Programs that `dvc repro` may run a stage command through (`$SHELL -c` or `/bin/sh -c`)."""


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


def _parent_of(pid: int) -> int | None:
    """The parent of process `pid` (from /proc), or None where it cannot be read."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def shell_wrapper_parent(parent: int) -> int | None:
    """The parent of `parent` when `parent` is a shell running a `-c` command (dash does not
    replace itself by the command, so it stands between DVC and the stage), else None."""
    try:
        argv = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    name = os.path.basename(argv[0].decode(errors="replace")).lstrip("-")
    if name not in SHELLS or b"-c" not in argv[1:]:
        return None
    return _parent_of(parent)


def _watch_grandparent(shell: int, grandparent: int) -> None:
    """Terminate this process once `grandparent` (the shell's parent) has exited: at once through a
    pidfd, else by checking every second whether the shell was re-parented."""
    try:
        pidfd = os.pidfd_open(grandparent)
    except (AttributeError, OSError):
        while _parent_of(shell) == grandparent:
            time.sleep(POLL_SECONDS)
    else:
        select.select([pidfd], [], [])
    logger.error("the process %d that started this stage's shell is gone; stopping", grandparent)
    os.kill(os.getpid(), SIGNAL)


def die_with_parent() -> None:
    """Make this process end when the process that started it ends (kill -9 included), or the
    process that started its `sh -c` wrapper."""
    parent = os.getppid()
    if not set_parent_death_signal():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    elif os.getppid() != parent:  # the parent died before the kernel was asked
        os.kill(os.getpid(), SIGNAL)
    grandparent = shell_wrapper_parent(parent)
    if grandparent is not None and grandparent > 1:
        threading.Thread(target=_watch_grandparent, args=(parent, grandparent), daemon=True).start()


def parent_death_preexec() -> None:
    """`subprocess.Popen(preexec_fn=...)` for a child that must end with this process."""
    set_parent_death_signal()
