"""Running `predict` and `explain` past one process with torch's own launcher (`torchrun`).

Under `torchrun` (the environment holds WORLD_SIZE > 1), a stage joins the process group (NCCL on
CUDA, gloo on CPU), each rank takes its share of the work (`share`), and rank 0 writes the final
outputs after a barrier, so the files are the same as a one-process run's and never appear
partially under their final names. One process (no torchrun) is the unchanged single-process path.

A stage's `processes` param (N > 1) makes `python -m stages.<stage>` (and so `dvc repro`) start
itself under `torch.distributed.run --standalone --nproc-per-node N` on this machine; for several
machines, run `torchrun` yourself on each (README: "Several GPUs and nodes").
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from stages.errors import ConfigError
from stages.models import resolve_device

logger = logging.getLogger(__name__)

T = TypeVar("T")

BARRIER_TIMEOUT = datetime.timedelta(hours=6)
"""How long a rank waits for the others (a rank with one more shard or candidate than the others,
then rank 0 assembling the outputs); a dead rank is reported by torchrun sooner."""


@dataclass(frozen=True)
class Context:
    """This process's place: rank in 0..world-1 and local_rank (its GPU on this node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every world-th one from position rank (balanced within one item)."""
        return list(items[self.rank::self.world])


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def context() -> Context:
    """The current process group's context (a one-process Context when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device_for(name: str, ctx: Context) -> torch.device:
    """`auto`/`cuda` -> this rank's GPU (cuda:LOCAL_RANK) under torchrun; else as resolve_device."""
    device = resolve_device(name)
    if ctx.world > 1 and device.type == "cuda":
        if name not in ("auto", "cuda"):
            raise ConfigError(f"device {name!r} pins one GPU, but torchrun started {ctx.world} "
                              "processes; use device: auto or cuda (each rank takes cuda:LOCAL_RANK)")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Context]:
    """Join torchrun's process group for the block (NCCL for CUDA, else gloo), then leave it.
    Without torchrun (or when a group already exists) it only yields the current context."""
    if not launched() or dist.is_initialized():
        yield context()
        return
    cuda = resolve_device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    ctx = context()
    logger.info("rank %d of %d (local rank %d, %s)", ctx.rank, ctx.world, ctx.local_rank, backend)
    try:
        yield ctx
    finally:
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    """Wait for every rank (no-op in one process)."""
    if ctx.world > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[ctx.local_rank])
        else:
            dist.barrier()


def gather(value: Any, ctx: Context) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    if ctx.world == 1:
        return [value]
    values: list[Any] = [None] * ctx.world
    dist.all_gather_object(values, value)
    return values


def broadcast(value: Any, ctx: Context) -> Any:
    """Rank 0's `value` on every rank."""
    if ctx.world == 1:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def relaunch(module: str, argv: Sequence[str], processes: int) -> int | None:
    """With `processes` > 1 and no torchrun yet: run `module` with `argv` under
    `torch.distributed.run --standalone --nproc-per-node processes` and return its exit status;
    else None (go on in this process)."""
    if processes <= 1 or launched():
        return None
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", module, *argv]
    logger.info("starting %d processes: %s", processes, " ".join(command))
    return subprocess.call(command)
