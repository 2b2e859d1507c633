"""train_data: one process's seeded batches per epoch, the rows each process predicts and their
reassembly, and per-sample augmentation of real demo images that depends on (seed, epoch, row)
only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEMO_ROOT

from stages.modelling import train_data
from stages.modelling.models import eval_transform


def test_epoch_batches_split_one_seeded_order_between_processes_and_resume_mid_epoch() -> None:
    rows = np.arange(100, 150)
    one = [
        train_data.EpochBatches(rows, seed=1, epoch=2, batch_size=4, rank=r, world=3)
        for r in range(3)
    ]
    assert [len(b) for b in one] == [5, 5, 5]  # ceil(50 / (4 * 3)) each
    assert all(len(batch) == 4 for b in one for batch in b)
    taken = np.concatenate([np.concatenate(list(b)) for b in one])
    assert len(taken) == 60 and set(taken.tolist()) == set(rows.tolist())  # 10 rows twice
    later = train_data.EpochBatches(
        rows, seed=1, epoch=2, batch_size=4, rank=1, world=3, start_step=3
    )
    assert list(later) == list(one[1])[3:]
    other = train_data.EpochBatches(rows, seed=1, epoch=3, batch_size=4, rank=1, world=3)
    assert list(other) != list(one[1])


def test_parts_of_several_processes_interleave_back_into_row_order() -> None:
    rows = np.arange(11)
    parts = [train_data.rank_rows(rows, rank=r, world=3) for r in range(3)]
    out = np.zeros(11, dtype=np.int64)
    train_data.interleave(parts, out, chunk=2)
    assert out.tolist() == rows.tolist()


def test_augmentation_depends_on_the_row_and_epoch_not_the_call_order(
    small_manifest: pd.DataFrame,
) -> None:
    transform = train_data.train_transform(
        {"interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3},
        input_size=32,
        scale=(0.08, 1.0),
        hflip=0.5,
        color_jitter=0.4,
        auto_augment=None,
        re_prob=0.25,
    )
    data = train_data.ManifestSamples(
        DEMO_ROOT,
        small_manifest["path"].tolist(),
        small_manifest["label"].to_numpy(),
        transform,
        seed=0,
    )
    first, second = data[3][0], data[4][0]
    assert torch.equal(data[4][0], second) and torch.equal(data[3][0], first)
    data.epoch = 1
    assert not torch.equal(data[3][0], first)


@pytest.mark.parametrize(
    ("n_rows", "batch_size", "world", "steps"),
    [
        (50, 4, 3, 5),  # 12 rows per step: 4 steps leave 2 rows out, a 5th covers them
        (48, 4, 3, 4),  # exactly 4 steps
        (1, 32, 8, 1),  # one row still makes one (padded) step
        (0, 4, 1, 0),  # nothing to train on
    ],
)
def test_steps_per_epoch_cover_every_row_once(
    n_rows: int, batch_size: int, world: int, steps: int
) -> None:
    assert train_data.steps_per_epoch(n_rows, batch_size=batch_size, world=world) == steps


def test_one_process_trains_on_every_row_once_per_epoch_in_a_seeded_order() -> None:
    rows = np.array([3, 9, 4, 12, 7, 20, 1, 5])
    batches = list(train_data.EpochBatches(rows, seed=5, epoch=0, batch_size=2))
    assert len(batches) == 4
    assert sorted(row for batch in batches for row in batch) == sorted(rows.tolist())
    assert batches == list(train_data.EpochBatches(rows, seed=5, epoch=0, batch_size=2))
    assert batches != list(train_data.EpochBatches(rows, seed=6, epoch=0, batch_size=2))


def test_rank_rows_take_every_world_th_row_in_order() -> None:
    rows = np.array([10, 11, 12, 13, 14, 15, 16])
    assert train_data.rank_rows(rows, rank=0, world=3).tolist() == [10, 13, 16]
    assert train_data.rank_rows(rows, rank=1, world=3).tolist() == [11, 14]
    assert train_data.rank_rows(rows, rank=2, world=3).tolist() == [12, 15]
    assert train_data.rank_rows(rows, rank=0, world=1).tolist() == rows.tolist()


def test_eval_batches_keep_row_order_with_a_short_last_batch() -> None:
    assert train_data.eval_batches(np.array([7, 3, 5, 1, 9]), 2) == [[7, 3], [5, 1], [9]]


def test_sample_seed_is_a_32_bit_function_of_seed_epoch_and_row() -> None:
    seed = train_data.sample_seed(0, 1, 2)
    assert seed == train_data.sample_seed(0, 1, 2) and 0 <= seed < 2**32
    others = {
        train_data.sample_seed(1, 1, 2),
        train_data.sample_seed(0, 2, 2),
        train_data.sample_seed(0, 1, 3),
        train_data.sample_seed(0, 2, 1),
    }
    assert seed not in others and len(others) == 4


def test_samples_give_label_and_row_and_name_an_undecodable_image(
    tmp_path: Path, small_manifest: pd.DataFrame
) -> None:
    transform = eval_transform(
        train_data.evaluation_config(
            {
                "input_size": (3, 224, 224),
                "interpolation": "bilinear",
                "mean": (0.5,) * 3,
                "std": (0.5,) * 3,
                "crop_pct": 0.875,
                "crop_mode": "center",
            },
            input_size=32,
        )
    )
    paths, labels = small_manifest["path"].tolist()[:3], small_manifest["label"].to_numpy()[:3]
    image, label, row = train_data.ManifestSamples(DEMO_ROOT, paths, labels, transform)[2]
    assert image.shape == (3, 32, 32) and (label, row) == (int(labels[2]), 2)
    (tmp_path / "bad.JPEG").write_bytes(b"not a jpeg")
    broken = train_data.ManifestSamples(tmp_path, ["bad.JPEG"], np.array([0]), transform)
    with pytest.raises(ValueError, match="bad.JPEG: cannot be decoded.*imagenet-clean ingest"):
        broken[0]
    with pytest.raises(ValueError, match=r"labels have shape \(2,\), expected \(3,\)"):
        train_data.ManifestSamples(DEMO_ROOT, paths, labels[:2], transform)
