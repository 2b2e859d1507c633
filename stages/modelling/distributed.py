"""Running stages past one process with torch's own launcher (`torchrun`): predict, explain, train.

Under `torchrun` (the environment holds WORLD_SIZE > 1), a stage joins the process group (NCCL on
CUDA, gloo on CPU), each rank takes its share of the work (`Context.share`), and rank 0 writes the
final outputs after a barrier, so the files are the same as a one-process run's and never appear
partially under their final names. One process (no torchrun) is the unchanged single-process path.

A stage whose params ask for N > 1 processes (`predict.processes`, `explain.processes`,
`train.launch`) starts itself under `torch.distributed.run` (`relaunch`): `--standalone` on one
node, a c10d rendezvous across nodes (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from stages.contracts.errors import ConfigError
from stages.modelling.launch import LaunchConfig
from stages.modelling.models import cpu_threads, resolve_device

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
        """Whether this is rank 0, the process that writes the outputs."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every world-th one from position rank (balanced within one item)."""
        return list(items[self.rank :: self.world])


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
            raise ConfigError(
                f"device {name!r} pins one GPU, but torchrun started {ctx.world} "
                "processes; use device: auto or cuda (each rank takes cuda:LOCAL_RANK)"
            )
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def session(device: str = "auto", *, backend: str = "auto") -> Iterator[Context]:
    """Join torchrun's process group for the block (`auto`: NCCL for CUDA, else gloo), then leave
    it. Without torchrun (or when a group already exists) it only yields the current context."""
    if not launched() or dist.is_initialized():
        yield context()
        return
    cuda = resolve_device(device).type == "cuda"
    if backend == "auto":
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


@dataclass(frozen=True)
class Dist(Context):
    """A training process's place in the run: its rank and device, and the collectives it needs."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def barrier(self) -> None:
        """Wait until every process reaches this point."""
        barrier(self)

    def all_reduce(self, tensor: torch.Tensor, op: Any = None) -> torch.Tensor:
        """A CPU tensor reduced over all processes (on the GPU under NCCL), returned on the CPU."""
        if self.world == 1:
            return tensor
        moved = tensor.to(self.device) if self.device.type == "cuda" else tensor.clone()
        dist.all_reduce(moved, op=dist.ReduceOp.SUM if op is None else op)
        return moved.cpu()


@contextlib.contextmanager
def distributed(
    launch: LaunchConfig, *, device: str = "auto", threads: int | None = None
) -> Iterator[Dist]:
    """A training run's process: joins torchrun's group when there is one (`session`, with
    `train.launch.backend`), takes this rank's device (`train.settings.device`), sets
    `train.settings.threads` for the block.

    Raises:
        ConfigError: torchrun started another number of processes than `train.launch` asks for.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != 1 and world != launch.world:
        raise ConfigError(
            f"running under torchrun with WORLD_SIZE={world}, but params.yaml "
            f"`train.launch` asks for {launch.world} processes; make them agree"
        )
    with cpu_threads(threads), session(device, backend=launch.backend) as ctx:
        yield Dist(ctx.rank, ctx.world, ctx.local_rank, device_for(device, ctx))
