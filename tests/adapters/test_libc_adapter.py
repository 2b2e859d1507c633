"""stages.adapters.libc_adapter: a stage process ends with its parent, kill -9 of it included.

Real processes: a parent python that starts a child (directly, or through `dash -c` as DVC does
where SHELL is unset), the parent killed with SIGKILL (what `kill -9` of `dvc repro` does); the
child must not run on as an orphan.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from stages.adapters import libc_adapter

CHILD = (
    "import os, sys, time\n"
    "if sys.argv[1] == '1':\n"
    "    from stages.adapters.libc_adapter import die_with_parent\n"
    "    die_with_parent()\n"
    "print(os.getpid(), flush=True)\n"
    "time.sleep(120)\n"
)
PARENT = (
    "import shlex, subprocess, sys\n"
    "child = [sys.executable, sys.argv[1], sys.argv[2]]\n"
    "if sys.argv[3]:\n"
    "    child = [sys.argv[3], '-c', shlex.join(child)]\n"
    "subprocess.Popen(child).wait()\n"
)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def orphan_survives(tmp_path: Path, *, linked: bool, shell: str = "") -> bool:
    """Kill -9 a parent whose child (started through `shell -c` where given) does (or does not)
    die with it; True if the child runs on."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(script), "1" if linked else "0", shell],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    child = int(parent.stdout.readline())  # type: ignore[union-attr]
    time.sleep(0.5)  # the child is past its set-up
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    survived = alive(child)
    if survived:
        os.kill(child, signal.SIGKILL)
    return survived


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux's")
def test_a_process_that_asks_dies_with_its_killed_parent(tmp_path: Path) -> None:
    assert libc_adapter.set_parent_death_signal()
    assert orphan_survives(tmp_path, linked=False)  # what happened before: an orphan runs on
    assert not orphan_survives(tmp_path, linked=True)


@pytest.mark.skipif(not shutil.which("dash"), reason="needs dash, Debian's /bin/sh")
def test_a_stage_behind_dash_dies_with_the_process_that_started_dash(tmp_path: Path) -> None:
    """dash does not replace itself by its `-c` command: killing DVC leaves dash waiting and the
    stage would run on under it (what CI saw where SHELL is unset)."""
    dash = str(shutil.which("dash"))
    assert orphan_survives(tmp_path, linked=False, shell=dash)
    assert not orphan_survives(tmp_path, linked=True, shell=dash)


def test_a_shell_running_a_command_is_told_apart_from_other_parents(tmp_path: Path) -> None:
    shell = subprocess.Popen(["/bin/sh", "-c", "sleep 30; true"])  # two commands: no shell execs
    other = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.2)
        assert libc_adapter.shell_wrapper_parent(shell.pid) == os.getpid()
        assert libc_adapter.shell_wrapper_parent(other.pid) is None
        assert libc_adapter.shell_wrapper_parent(2**22 + 1) is None  # no such process
    finally:
        shell.kill()
        other.kill()
        shell.wait()
        other.wait()


def test_without_prctl_a_watchdog_thread_notices_the_parent_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parents, killed = iter([100, 100, 1]), []
    monkeypatch.setattr(libc_adapter.os, "getppid", lambda: next(parents))
    monkeypatch.setattr(libc_adapter.os, "kill", lambda pid, sig: killed.append(sig))
    monkeypatch.setattr(libc_adapter, "POLL_SECONDS", 0.0)
    libc_adapter._watch_parent(100)
    assert killed == [libc_adapter.SIGNAL]
