"""Processes of a training run: torchrun's process group (DDP) or a single process.

A training stage is an ordinary command (`python -m stages.train ...`). When params.yaml
`train.launch` asks for more than one process and the command is not already one of torchrun's
processes, `launched` re-runs it under `python -m torch.distributed.run` (`--standalone` on one
node; a c10d rendezvous at `rdzv_endpoint` across nodes). Each process then joins the group in
`distributed`: NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from stages.errors import ConfigError
from stages.models import resolve_device
from stages.train_config import LaunchConfig, TrainSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size, device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
                   ) -> torch.Tensor:
        """A CPU tensor reduced over all processes (on the GPU under NCCL), returned on the CPU."""
        if self.world == 1:
            return tensor
        moved = tensor.to(self.device) if self.device.type == "cuda" else tensor.clone()
        dist.all_reduce(moved, op=op)
        return moved.cpu()


@contextlib.contextmanager
def distributed(settings: TrainSettings, launch: LaunchConfig) -> Iterator[Dist]:
    """Join the torchrun process group when there is one (env WORLD_SIZE), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != 1 and world != launch.world:
        raise ConfigError(f"running under torchrun with WORLD_SIZE={world}, but params.yaml "
                          f"`train.launch` asks for {launch.world} processes; make them agree")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(settings.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    if world > 1:
        backend = launch.backend if launch.backend != "auto" else (
            "nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend)
    try:
        yield Dist(rank, world, local_rank, device)
    finally:
        torch.set_num_threads(threads)
        if world > 1:
            dist.destroy_process_group()


def torchrun_command(module: str, argv: Sequence[str], launch: LaunchConfig) -> list[str]:
    """The `torchrun` command line that runs `python -m <module> <argv>` in every process."""
    command = [sys.executable, "-m", "torch.distributed.run",
               f"--nproc-per-node={launch.nproc_per_node}"]
    if launch.nnodes == 1:
        command.append("--standalone")
    else:
        command += [f"--nnodes={launch.nnodes}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={launch.rdzv_endpoint}", f"--rdzv-id={launch.rdzv_id}"]
    return command + ["-m", module, *argv]


def quiet_unless_first() -> None:
    """Under torchrun, let only process 0 log progress (the others log warnings and errors)."""
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("stages", "__main__"):
            logging.getLogger(name).setLevel(logging.WARNING)


def launched(module: str, argv: Sequence[str], launch: LaunchConfig) -> int | None:
    """Re-run this stage under torchrun when params ask for several processes and this is not
    already one of them -> torchrun's exit status; None when the caller should run in-process."""
    if launch.world == 1 or "WORLD_SIZE" in os.environ:
        quiet_unless_first()
        return None
    command = torchrun_command(module, argv, launch)
    logger.info("launching %d processes: %s", launch.world, " ".join(command))
    return subprocess.run(command, check=False).returncode
