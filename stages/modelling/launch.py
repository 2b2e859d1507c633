"""How a stage runs past one process: params -> a `torchrun` command line (torch-free).

A stage whose params ask for N > 1 processes (`predict.processes`, `explain.processes`,
`train.launch`) starts itself under `torch.distributed.run` (`relaunch`): `--standalone` on one
node, a c10d rendezvous across nodes (docs/distributed.md). The processes then join
the group in `stages.modelling.distributed`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from stages.adapters.libc_adapter import parent_death_preexec
from stages.contracts.config import positive, require

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchConfig:
    """How a training stage is launched (params.yaml `train.launch`).

    One process when `nproc_per_node * nnodes == 1`; otherwise the stage re-runs itself under
    `torchrun` (`--standalone` on one node; c10d rendezvous at `rdzv_endpoint` across nodes, where
    every node runs the same stage command and all of them see the same files).
    """

    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str = "imagenet-clean"
    backend: Literal["auto", "nccl", "gloo"] = "auto"

    def __post_init__(self) -> None:
        positive("train.launch.nproc_per_node", self.nproc_per_node)
        positive("train.launch.nnodes", self.nnodes)
        require(
            self.nnodes == 1 or bool(self.rdzv_endpoint),
            "train.launch.rdzv_endpoint",
            "host:port of the rendezvous when nnodes > 1",
            self.rdzv_endpoint,
        )

    @property
    def world(self) -> int:
        """The number of processes over all nodes."""
        return self.nproc_per_node * self.nnodes


def torchrun_command(module: str, argv: Sequence[str], launch: LaunchConfig) -> list[str]:
    """The `torchrun` command line that runs `python -m <module> <argv>` in every process."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={launch.nproc_per_node}",
    ]
    if launch.nnodes == 1:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={launch.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={launch.rdzv_endpoint}",
            f"--rdzv-id={launch.rdzv_id}",
        ]
    return command + ["-m", module, *argv]


def quiet_unless_first() -> None:
    """Under torchrun, let only process 0 log progress (the others log warnings and errors)."""
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("stages", "__main__"):
            logging.getLogger(name).setLevel(logging.WARNING)


def relaunch(module: str, argv: Sequence[str], launch: LaunchConfig | int) -> int | None:
    """With more than one process asked for (a LaunchConfig, or a count on this node) and no
    torchrun yet: run `module` with `argv` under `torch.distributed.run` and return its exit
    status; else None (go on in this process; under torchrun only rank 0 logs progress)."""
    if isinstance(launch, int):
        launch = LaunchConfig(nproc_per_node=launch)
    if launch.world <= 1 or "WORLD_SIZE" in os.environ:
        quiet_unless_first()
        return None
    command = torchrun_command(module, argv, launch)
    logger.info("starting %d processes: %s", launch.world, " ".join(command))
    return subprocess.call(command, preexec_fn=parent_death_preexec)  # dies with this stage


def launch_or_run(
    module: str, argv: Sequence[str] | None, launch: LaunchConfig | int, run: Callable[[], Any]
) -> int:
    """A stage's entry: under torchrun when `launch` asks for more processes than this one
    (torchrun's exit status), else `run()` here (status 0). `argv` None means sys.argv[1:]."""
    status = relaunch(module, list(sys.argv[1:] if argv is None else argv), launch)
    if status is not None:
        return status
    run()
    return 0
