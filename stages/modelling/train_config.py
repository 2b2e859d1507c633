"""Configuration of training runs: params.yaml `train.settings`, `train.launch`, `train.seed` and
`retrain:`.

`train.settings` holds every knob of one training run (timm's `train.py` names); the out-of-fold
models of a split and both arms of the retrain comparison use the same settings. `train.launch`
says how many processes run it (torchrun) and how they meet. `retrain:` names what the retrain
comparison trains and scores (shared by `stages.retrain` and `stages.retrain_report`, so neither
imports the other).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from stages.contracts.config import fraction, from_section, positive, require
from stages.contracts.errors import ConfigError
from stages.contracts.params import section
from stages.contracts.splits import Params, SplitEntry
from stages.modelling.launch import LaunchConfig
from stages.modelling.specs import ModelSpec, model_specs

ARMS = ("original", "cleaned")
RETRAIN_ROOT = Path("data/retrain")

_NOT_NUMERIC = ("workers", "checkpoint_every", "eval_batch_size", "dtype")
"""Settings that do not change the trained weights (left out of the resume fingerprint)."""


@dataclass(frozen=True)
class TrainSettings:
    """One training run's knobs (params.yaml `train.settings`; identical for every out-of-fold
    model and both retrain arms). Rates and sizes follow timm's `train.py` names."""

    epochs: int = 2
    batch_size: int = 32
    eval_batch_size: int = 64
    input_size: int = 64
    init: Literal["scratch", "pretrained"] = "scratch"
    allow_imagenet_weights: bool = False
    freeze_bn: bool = False
    opt: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5
    sched: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str | None = None
    re_prob: float = 0.0
    clip_grad: float | None = None
    ema: bool = False
    ema_decay: float = 0.9998
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    threads: int | None = None
    workers: int = 2
    checkpoint_every: int = 100
    dtype: Literal["float32", "float16"] = "float32"

    def __post_init__(self) -> None:
        where = "train.settings"
        for name in ("epochs", "batch_size", "eval_batch_size", "input_size", "checkpoint_every"):
            positive(f"{where}.{name}", getattr(self, name))
        positive(f"{where}.workers", self.workers, minimum=0)
        positive(f"{where}.warmup_epochs", self.warmup_epochs, minimum=0)
        positive(f"{where}.threads", self.threads)
        require(self.lr > 0, f"{where}.lr", "a number > 0", self.lr)
        for name in ("label_smoothing", "hflip", "re_prob"):
            fraction(f"{where}.{name}", getattr(self, name))
        fraction(f"{where}.ema_decay", self.ema_decay, low_open=True)
        low, high = self.scale
        require(
            0 < low <= high <= 1,
            f"{where}.scale",
            "[min, max] with 0 < min <= max <= 1",
            list(self.scale),
        )
        require(
            self.mixup >= 0 and self.cutmix >= 0,
            f"{where}.mixup/cutmix",
            "numbers >= 0",
            (self.mixup, self.cutmix),
        )
        require(
            not self.mixing or self.batch_size % 2 == 0,
            f"{where}.batch_size",
            "even when mixup or cutmix is on (timm's Mixup pairs samples)",
            self.batch_size,
        )

    @property
    def mixing(self) -> bool:
        """Whether mixup or cutmix is on."""
        return self.mixup > 0 or self.cutmix > 0

    def numeric(self) -> dict[str, Any]:
        """The settings the trained weights depend on (for fingerprints and sidecars)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_NUMERIC}


def train_section(params: Params) -> dict[str, Any]:
    """params.yaml `train:`, with the fix when it is missing."""
    train = params.get("train")
    if not isinstance(train, dict):
        raise ConfigError("params.yaml has no `train:` section (see docs/train-split.md)")
    return train


def train_seed(params: Params) -> int:
    """Params `train.seed`: fold assignment, initialisation, data order, augmentation."""
    seed = train_section(params).get("seed", 0)
    require(
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
        "train.seed",
        "an int >= 0",
        seed,
    )
    return int(seed)


def fold_count(params: Params) -> int:
    """K from params `train.folds` (the list of fold indices the DVC matrix iterates: 0..K-1)."""
    folds = train_section(params).get("folds")
    count = len(folds) if isinstance(folds, list) else 0
    require(
        count >= 2 and folds == list(range(count)),
        "train.folds",
        "the list of fold indices [0, 1, ..., K-1] with K >= 2 (paper: [0, 1, 2, 3])",
        folds,
    )
    return count


def settings_from_params(
    params: Params, overrides: dict[str, Any] | None = None
) -> tuple[TrainSettings, LaunchConfig, int]:
    """(settings, launch, seed) from params `train.settings` (updated by `overrides`),
    `train.launch` and `train.seed`."""
    train = train_section(params)
    values = {**(train.get("settings") or {}), **(overrides or {})}
    settings = from_section(TrainSettings, values, where="train.settings")
    launch = from_section(LaunchConfig, train.get("launch"), where="train.launch")
    return settings, launch, train_seed(params)


@dataclass(frozen=True)
class FoldsConfig:
    """The K-fold assignment of an out-of-fold split (`folds` stage): K = len(`train.folds`),
    the seed `train.seed`."""

    split: str
    k: int
    seed: int

    @classmethod
    def from_params(cls, params: Params, split: str) -> FoldsConfig:
        """Raises ConfigError unless `split` is an out-of-fold split with valid folds and seed."""
        SplitEntry.from_params(params, split).require_out_of_fold()
        return cls(split, fold_count(params), train_seed(params))


@dataclass(frozen=True)
class RetrainSection:
    """params.yaml `retrain:`.

    Attributes:
        split: the train split whose original and cleaned labels are compared.
        eval_split: the split both models are scored on (its ledger gives the cleaned labels).
        model: a `models:` entry (the architecture; weights only with `init: pretrained`).
        settings: `train.settings` keys to change for both arms (e.g. more epochs).
    """

    split: str
    eval_split: str
    model: str
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Params) -> RetrainSection:
        """The `retrain:` section, checked (its splits and model must be configured)."""
        section_ = from_section(cls, section(params, "retrain"), where="retrain")
        SplitEntry.from_params(params, section_.split)
        SplitEntry.from_params(params, section_.eval_split)
        require(
            section_.model in (params.get("models") or {}),
            "retrain.model",
            "a model defined under `models:`",
            section_.model,
        )
        return section_


@dataclass(frozen=True)
class TrainConfig:
    """One fold model of an out-of-fold split (`train@<split>-<model>-<fold>`).

    Attributes:
        split, fold: the split and the held-out fold.
        spec: the architecture (`models.<model>`).
        settings, launch, seed: `train.settings`, `train.launch`, `train.seed`.
        root: the split's image root; labels: its current-labels file.
    """

    split: str
    fold: int
    spec: ModelSpec
    settings: TrainSettings
    launch: LaunchConfig
    seed: int
    root: str
    labels: str | None

    @classmethod
    def from_params(cls, params: Params, split: str, model: str, fold: int) -> TrainConfig:
        """Raises ConfigError for a split that is not out-of-fold or bad train settings."""
        entry = SplitEntry.from_params(params, split)
        entry.require_out_of_fold()
        settings, launch, seed = settings_from_params(params)
        return cls(
            split,
            fold,
            model_specs(params, [model])[0],
            settings,
            launch,
            seed,
            entry.root,
            entry.labels_file,
        )


@dataclass(frozen=True)
class OofConfig:
    """The out-of-fold predictions of one model (`oof@<split>-<model>`) from its K fold folders."""

    split: str
    model: str
    k: int

    @classmethod
    def from_params(cls, params: Params, split: str, model: str) -> OofConfig:
        """Raises ConfigError for a split that is not out-of-fold or bad `train.folds`."""
        SplitEntry.from_params(params, split).require_out_of_fold()
        return cls(split, model, fold_count(params))


@dataclass(frozen=True)
class RetrainConfig:
    """One arm of the retrain comparison (`retrain@<arm>`): `retrain:` resolved.

    Attributes:
        split, eval_split, model: as `RetrainSection`.
        spec: the architecture of `retrain.model`.
        settings: `train.settings` updated by `retrain.settings`; launch, seed: as training.
        root, eval_root: the image roots of the train split and of the eval split.
    """

    split: str
    eval_split: str
    model: str
    spec: ModelSpec
    settings: TrainSettings
    launch: LaunchConfig
    seed: int
    root: str
    eval_root: str

    @classmethod
    def from_params(cls, params: Params) -> RetrainConfig:
        """Raises ConfigError for a bad `retrain:` section or train settings."""
        own = RetrainSection.from_params(params)
        settings, launch, seed = settings_from_params(params, overrides=own.settings)
        return cls(
            own.split,
            own.eval_split,
            own.model,
            model_specs(params, [own.model])[0],
            settings,
            launch,
            seed,
            SplitEntry.from_params(params, own.split).root,
            SplitEntry.from_params(params, own.eval_split).root,
        )


def eval_rows(eval_manifest: pd.DataFrame, train_ids: Iterable[str]) -> tuple[np.ndarray, int]:
    """(usable eval rows whose image is not in the train split, how many were left out for it)."""
    usable = eval_manifest["skip_reason"].isna().to_numpy()
    shared = eval_manifest["image_id"].astype(str).isin(set(map(str, train_ids))).to_numpy()
    return np.flatnonzero(usable & ~shared), int((usable & shared).sum())


def arm_dir(arm: str) -> Path:
    """Where `retrain@<arm>` writes (probs.npy, seen.npy, log.json, model.safetensors)."""
    return RETRAIN_ROOT / arm
