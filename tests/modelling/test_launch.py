"""stages.modelling.launch: moved from test_train.py."""

from __future__ import annotations

from stages.modelling.launch import LaunchConfig, torchrun_command


def test_torchrun_command_is_standalone_on_one_node_and_rendezvous_across_nodes() -> None:
    one = torchrun_command("stages.train", ["--fold", "1"], LaunchConfig(nproc_per_node=2))
    assert one[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--standalone",
        "-m",
        "stages.train",
        "--fold",
        "1",
    ]
    many = torchrun_command(
        "stages.train", [], LaunchConfig(nproc_per_node=8, nnodes=4, rdzv_endpoint="node0:29400")
    )
    assert "--nnodes=4" in many and "--rdzv-endpoint=node0:29400" in many
    assert "--rdzv-backend=c10d" in many and "--standalone" not in many
