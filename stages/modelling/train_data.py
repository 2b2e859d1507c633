"""Streaming data for training: manifest rows -> augmented tensors, one process's batches per epoch.

Nothing but the manifest's paths and labels is held in memory: images are decoded on demand by
DataLoader workers. Every random choice is a function of (seed, epoch, row) or (seed, epoch, step):
each sample seeds its own augmentation, and `EpochBatches` derives an epoch's order from the seed,
so a run resumed from a checkpoint in the middle of an epoch sees exactly the batches, the crops and
the flips the uninterrupted run would have seen, whichever worker decodes which batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset

from stages.sources.images import DECODE_ERRORS, open_image


def sample_seed(seed: int, epoch: int, row: int) -> int:
    """A 32-bit seed for one sample's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, row]).generate_state(1)[0])


class ManifestSamples(Dataset):
    """Manifest rows -> (image tensor, label, row), decoded on demand.

    Args:
        root: the split root the manifest's paths are relative to.
        paths: (N,) the manifest's `path` column.
        labels: (N,) int64 labels (-1 where a row has none; such rows must never be requested
            for training).
        transform: PIL image -> (3, H, W) float tensor.
        seed: with `epoch` and the row, seeds `random` and torch before the transform runs.
    """

    def __init__(
        self,
        root: str | Path,
        paths: Sequence[str],
        labels: np.ndarray,
        transform: Callable[[Any], torch.Tensor],
        *,
        seed: int = 0,
    ) -> None:
        self.root = str(root)
        # One fixed-width bytes buffer, not N Python strings: forked workers share it copy-free.
        self.paths = np.array([p.encode("utf-8") for p in paths], dtype=np.bytes_)
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.shape != (len(self.paths),):
            raise ValueError(
                f"labels have shape {self.labels.shape}, expected ({len(self.paths)},)"
            )
        self.transform, self.seed, self.epoch = transform, seed, 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int, int]:
        path = self.paths[row].decode("utf-8")
        try:
            image = open_image(self.root, path)
        except DECODE_ERRORS as error:
            raise ValueError(
                f"{Path(self.root) / path}: cannot be decoded ({error}) although the "
                "manifest marks it usable; re-run `imagenet-clean ingest` so it "
                "becomes a skip row"
            ) from error
        state = sample_seed(self.seed, self.epoch, row)
        random.seed(state)
        torch.manual_seed(state)
        return self.transform(image), int(self.labels[row]), row


class EpochBatches:
    """One process's training batches of one epoch (a DataLoader `batch_sampler`).

    The epoch's order is a seeded permutation of `rows`, extended by wrapping around to its start
    until every process gets `steps_per_epoch` full batches (as torch's DistributedSampler pads);
    process `rank` takes every `world`-th row of it. So every row is trained on every epoch, and a
    few (fewer than batch_size x world) twice.

    Args:
        rows: (R,) manifest row indices to train on (R >= 1).
        start_step: the first batch to yield (a resumed epoch skips the batches already done).
    """

    def __init__(
        self,
        rows: np.ndarray,
        *,
        seed: int,
        epoch: int,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        start_step: int = 0,
    ) -> None:
        steps = steps_per_epoch(len(rows), batch_size=batch_size, world=world)
        order = np.asarray(rows)[np.random.default_rng([seed, epoch]).permutation(len(rows))]
        mine = np.resize(order, steps * batch_size * world)[rank::world]
        self.batches = mine.reshape(steps, batch_size)[start_step:]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch.tolist()


def steps_per_epoch(n_rows: int, *, batch_size: int, world: int) -> int:
    """Batches per process per epoch: enough to cover every row once."""
    return -(-n_rows // (batch_size * world))


def rank_rows(rows: np.ndarray, *, rank: int, world: int) -> np.ndarray:
    """The rows one process predicts: every `world`-th, starting at `rank` (order kept)."""
    return np.asarray(rows)[rank::world]


def interleave(parts: Sequence[np.ndarray], out: np.ndarray, *, chunk: int = 4096) -> None:
    """Undo `rank_rows`: parts[r] holds rows r, r+W, ... of `out` (W = len(parts)); copied
    `chunk` rows at a time, so memory-mapped parts are never read whole."""
    world = len(parts)
    for rank, part in enumerate(parts):
        for start in range(0, len(part), chunk):
            block = np.asarray(part[start : start + chunk])
            out[rank + start * world : rank + (start + len(block)) * world : world] = block


def loader(
    dataset: ManifestSamples,
    batches: Iterator[list[int]] | EpochBatches | list[list[int]],
    *,
    workers: int,
    pin_memory: bool,
) -> DataLoader:
    """A DataLoader over planned batches, decoding in `workers` processes."""
    extra: dict[str, Any] = {"prefetch_factor": 4, "persistent_workers": False} if workers else {}
    return DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory, **extra
    )


def eval_batches(rows: np.ndarray, batch_size: int) -> list[list[int]]:
    """Rows in order, `batch_size` per batch."""
    rows = np.asarray(rows)
    return [rows[i : i + batch_size].tolist() for i in range(0, len(rows), batch_size)]


def train_transform(
    data_config: dict[str, Any],
    *,
    input_size: int,
    scale: Sequence[float],
    hflip: float,
    color_jitter: float,
    auto_augment: str | None,
    re_prob: float,
) -> Callable[[Any], torch.Tensor]:
    """Timm's training transform (random resized crop, flip, jitter/auto-augment, erasing) with
    the model's normalisation."""
    low, high = scale
    return create_transform(
        input_size=(3, input_size, input_size),
        is_training=True,
        scale=(low, high),
        hflip=hflip,
        color_jitter=color_jitter,
        auto_augment=auto_augment,
        re_prob=re_prob,
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
    )


def evaluation_config(data_config: dict[str, Any], *, input_size: int) -> dict[str, Any]:
    """The model's timm data config at the training input size (what held-out rows go through)."""
    config = dict(data_config)
    config["input_size"] = (3, input_size, input_size)
    return config
