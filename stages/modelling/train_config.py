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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from stages.contracts.config import fraction, from_section, positive, require
from stages.contracts.errors import ConfigError
from stages.contracts.params import section, split_params

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
        require(0 < low <= high <= 1, f"{where}.scale", "[min, max] with 0 < min <= max <= 1",
                list(self.scale))
        require(self.mixup >= 0 and self.cutmix >= 0, f"{where}.mixup/cutmix", "numbers >= 0",
                (self.mixup, self.cutmix))
        require(not self.mixing or self.batch_size % 2 == 0, f"{where}.batch_size",
                "even when mixup or cutmix is on (timm's Mixup pairs samples)", self.batch_size)

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def numeric(self) -> dict[str, Any]:
        """The settings the trained weights depend on (for fingerprints and sidecars)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_NUMERIC}


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
        require(self.nnodes == 1 or bool(self.rdzv_endpoint), "train.launch.rdzv_endpoint",
                "host:port of the rendezvous when nnodes > 1", self.rdzv_endpoint)

    @property
    def world(self) -> int:
        return self.nproc_per_node * self.nnodes


def settings_from_params(params: dict[str, Any], overrides: dict[str, Any] | None = None
                         ) -> tuple[TrainSettings, LaunchConfig, int]:
    """(settings, launch, seed) from params `train.settings` (updated by `overrides`),
    `train.launch` and `train.seed`."""
    train = params.get("train")
    if not isinstance(train, dict):
        raise ConfigError("params.yaml has no `train:` section (see README: Cleaning the train split)")
    values = {**(train.get("settings") or {}), **(overrides or {})}
    settings = from_section(TrainSettings, values, where="train.settings")
    launch = from_section(LaunchConfig, train.get("launch"), where="train.launch")
    seed = train.get("seed", 0)
    require(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, "train.seed",
            "an int >= 0", seed)
    return settings, launch, seed


@dataclass(frozen=True)
class RetrainConfig:
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


def retrain_config(params: dict[str, Any]) -> RetrainConfig:
    """The `retrain:` section, checked (its splits and model must be configured)."""
    config = from_section(RetrainConfig, section(params, "retrain"), where="retrain")
    split_params(params, config.split)
    split_params(params, config.eval_split)
    require(config.model in (params.get("models") or {}), "retrain.model",
            "a model defined under `models:`", config.model)
    return config


def eval_rows(eval_manifest: pd.DataFrame, train_ids: Sequence[str]) -> tuple[np.ndarray, int]:
    """(usable eval rows whose image is not in the train split, how many were left out for it)."""
    usable = eval_manifest["skip_reason"].isna().to_numpy()
    shared = eval_manifest["image_id"].astype(str).isin(set(map(str, train_ids))).to_numpy()
    return np.flatnonzero(usable & ~shared), int((usable & shared).sum())


def arm_dir(arm: str) -> Path:
    """Where `retrain@<arm>` writes (probs.npy, seen.npy, log.json, model.safetensors)."""
    return RETRAIN_ROOT / arm
