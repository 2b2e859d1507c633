"""The training engine shared by out-of-fold training (`train`) and the retrain comparison.

Built from timm's training blocks: `timm.create_model` (through
`stages.modelling.models.create_model`), `timm.optim.create_optimizer_v2`,
`timm.scheduler.create_scheduler_v2` (stepped per update), `timm.data.create_transform` and `Mixup`,
timm's losses, `timm.utils.ModelEmaV3` and `NativeScaler`. It runs as one process or as one of
`torchrun`'s processes (DDP, see `stages.modelling.distributed`), with mixed precision and
channels_last on GPU.

A run is resumable: every `checkpoint_every` updates process 0 writes the whole state (weights,
optimizer, scaler, EMA, position in the epoch, the rows seen so far, running loss) atomically into
the run's work folder, tied to a fingerprint of everything the result depends on. Data order and
augmentation are functions of (seed, epoch, step/row), so a resumed run gives the same weights as
an uninterrupted one (bit for bit on CPU with the same thread count). The engine records every
manifest row it actually fed the model (`Trained.seen`): out-of-fold training proves with it that
no model saw the rows it predicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.layers import freeze_batch_norm_2d
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, dispatch_clip_grad
from tqdm import tqdm

from stages.contracts.errors import ConfigError, InputError
from stages.contracts.formats import NUM_CLASSES, atomic_path, image_ids_sha256
from stages.modelling import train_data
from stages.modelling.distributed import Dist
from stages.modelling.models import architecture, create_model, data_config, eval_transform
from stages.modelling.specs import ModelSpec
from stages.modelling.train_config import TrainSettings

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pth"
_IMAGENET_TAGS = ("in1k", "in21k", "in22k", "in12k", "imagenet")


@dataclass(frozen=True, eq=False)
class Job:
    """One training run over manifest rows.

    Attributes:
        name: shown in logs and progress bars.
        spec: the architecture (`models.<name>`; its weights only with `init: pretrained`).
        root: the split root of `paths`.
        paths: (N,) manifest paths.
        labels: (N,) int64 training labels (-1 on rows not trained on).
        train_rows: (R,) row indices to train on.
        seed: init, data order and augmentation seed.
        work: the run's work folder (checkpoints, prediction parts); outside every DVC output.
        identity: what else the result depends on (manifest/label digests), for the fingerprint.
    """

    name: str
    spec: ModelSpec
    root: Path
    paths: Sequence[str]
    labels: np.ndarray
    train_rows: np.ndarray
    seed: int
    work: Path
    identity: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Trained:
    """A finished run: the eval-mode model to predict with (the EMA when enabled), its timm data
    config at the training size, the rows seen (N,) bool, per-epoch history (deterministic: it goes
    into the stage's output) and per-epoch timings of this process (for benchmarks only)."""

    model: torch.nn.Module
    eval_config: dict[str, Any]
    seen: np.ndarray
    history: list[dict[str, Any]]
    steps: int
    resumed_at: int | None
    architecture: str
    timings: list[dict[str, Any]] = field(default_factory=list)


def imagenet_weights(model: torch.nn.Module) -> str | None:
    """Why a model's pretrained weights have seen ImageNet (a tag, a 1000-class head), or None."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = " ".join(str(cfg.get(k) or "") for k in ("tag", "hf_hub_id", "url", "file")).lower()
    hit = next((tag for tag in _IMAGENET_TAGS if tag in names), None)
    if hit:
        return f"its pretrained weights are tagged {hit!r}"
    if cfg.get("num_classes") == NUM_CLASSES or cfg.get("label_names"):
        return "its pretrained weights come with a 1000-class ImageNet head"
    return None


def build_model(spec: ModelSpec, settings: TrainSettings, device: torch.device) -> torch.nn.Module:
    """A 1000-class train-mode model: random init (`scratch`) or the spec's weights with a head
    re-initialised by timm when theirs has another size (`pretrained`); with `freeze_bn` every
    BatchNorm keeps its stored statistics and affine parameters (timm's `freeze_batch_norm_2d`),
    as fine-tuning needs for weights whose batch norm was folded into the convolutions."""
    pretrained = settings.init == "pretrained"
    kwargs = {**spec.kwargs, "num_classes": NUM_CLASSES}
    model = create_model(
        dataclasses.replace(spec, pretrained=pretrained, kwargs=kwargs), device=device
    )
    if pretrained and not settings.allow_imagenet_weights:
        reason = imagenet_weights(model)
        if reason:
            raise ConfigError(
                f"model {spec.name!r} ({spec.spec}): {reason}. Weights trained on ImageNet leak "
                "the very labels being checked, so out-of-fold predictions would not be out of "
                "fold. Use `train.settings.init: scratch`, weights that never saw ImageNet "
                "train, or set `train.settings.allow_imagenet_weights: true` knowingly"
            )
    if settings.freeze_bn:
        model = freeze_batch_norm_2d(model)
    return model.train()


def fingerprint(job: Job, settings: TrainSettings, world: int) -> dict[str, Any]:
    """Everything a run's weights depend on; a checkpoint under another fingerprint is discarded."""
    rows = np.ascontiguousarray(job.train_rows, dtype=np.int64)
    digest = hashlib.sha256(rows.tobytes())
    digest.update(np.ascontiguousarray(job.labels[rows], dtype=np.int64).tobytes())
    return json.loads(
        json.dumps(
            {
                "spec": job.spec.spec,
                "kwargs": job.spec.kwargs,
                "settings": settings.numeric(),
                "seed": job.seed,
                "world": world,
                "n_rows": len(job.paths),
                "train_rows_sha256": digest.hexdigest(),
                "root": str(job.root),
                "paths_sha256": image_ids_sha256(job.paths),
                "torch": torch.__version__,
                "timm": timm.__version__,
                **job.identity,
            },
            sort_keys=True,
            default=str,
        )
    )


def _seed_step(seed: int, epoch: int, step: int, rank: int) -> None:
    """Seed dropout, mixup and any other per-step randomness from the position in training."""
    state = int(np.random.SeedSequence([seed, epoch, step, rank, 7]).generate_state(1)[0])
    random.seed(state)
    np.random.seed(state)
    torch.manual_seed(state)


def _loss(settings: TrainSettings) -> tuple[Mixup | None, torch.nn.Module]:
    if settings.mixing:
        mixup = Mixup(
            mixup_alpha=settings.mixup,
            cutmix_alpha=settings.cutmix,
            label_smoothing=settings.label_smoothing,
            num_classes=NUM_CLASSES,
        )
        return mixup, SoftTargetCrossEntropy()
    if settings.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=settings.label_smoothing)
    return None, torch.nn.CrossEntropyLoss()


@dataclass(eq=False)
class _State:
    """What a checkpoint holds besides the module states (and what resuming restores)."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    carried: torch.Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.float64))
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)


class _Run:
    """The modules of one run and their checkpointing."""

    def __init__(self, job: Job, settings: TrainSettings, ctx: Dist) -> None:
        self.job, self.settings, self.ctx = job, settings, ctx
        self.cuda = ctx.device.type == "cuda"
        torch.manual_seed(job.seed)
        self.model = build_model(job.spec, settings, ctx.device)
        self.data_config = json.loads(json.dumps(data_config(self.model)))
        if settings.channels_last and self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = ModelEmaV3(self.model, decay=settings.ema_decay) if settings.ema else None
        self.optimizer = create_optimizer_v2(
            self.model,
            opt=settings.opt,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            momentum=settings.momentum,
        )
        self.scaler = NativeScaler() if settings.amp and self.cuda else None
        self.steps = train_data.steps_per_epoch(
            len(job.train_rows), batch_size=settings.batch_size, world=ctx.world
        )
        if self.steps == 0:
            raise InputError(
                f"{job.name}: no rows to train on (every row is skipped, removed or "
                "in the held-out fold)"
            )
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer,
            sched=settings.sched,
            num_epochs=settings.epochs,
            warmup_epochs=settings.warmup_epochs,
            warmup_lr=settings.warmup_lr,
            min_lr=settings.min_lr,
            step_on_epochs=False,
            updates_per_epoch=self.steps,
        )
        self.fingerprint = fingerprint(job, settings, ctx.world)
        self.path = job.work / CHECKPOINT
        self.net: torch.nn.Module = self.model
        if ctx.world > 1:
            ids = [ctx.device.index] if self.cuda else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def resume(self) -> _State:
        """The saved state when the work folder holds this run's checkpoint, else a fresh one."""
        state = _State(seen=np.zeros(len(self.job.paths), dtype=bool))
        if not self.path.is_file():
            return state
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as error:
            logger.warning(
                "%s: unreadable checkpoint %s (%s); starting over", self.job.name, self.path, error
            )
            return state
        if saved.get("fingerprint") != self.fingerprint:
            logger.warning(
                "%s: checkpoint %s belongs to other data, settings or process count; starting over",
                self.job.name,
                self.path,
            )
            return state
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler is not None and saved.get("scaler") is not None:
            self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        seen = np.unpackbits(saved["seen"].numpy(), count=len(self.job.paths)).astype(bool)
        state = _State(
            saved["epoch"],
            saved["step"],
            saved["global_step"],
            seen,
            saved["carried"] if self.ctx.is_main else torch.zeros(2, dtype=torch.float64),
            list(saved["history"]),
        )
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=state.global_step)
        logger.info(
            "%s: resuming at epoch %d, step %d (%d updates done)",
            self.job.name,
            state.epoch,
            state.step,
            state.global_step,
        )
        return state

    def save(self, state: _State, local: torch.Tensor) -> None:
        """Checkpoint (a collective: every process calls it at the same update)."""
        seen = self.ctx.all_reduce(torch.from_numpy(state.seen.astype(np.uint8)), dist.ReduceOp.MAX)
        partial = self.ctx.all_reduce(local.cpu())
        state.seen = seen.numpy().astype(bool)
        carried = state.carried + partial
        state.carried = carried if self.ctx.is_main else torch.zeros(2, dtype=torch.float64)
        local.zero_()
        if self.ctx.is_main:
            payload = {
                "fingerprint": self.fingerprint,
                "epoch": state.epoch,
                "step": state.step,
                "global_step": state.global_step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.state_dict() if self.ema else None,
                "seen": torch.from_numpy(np.packbits(state.seen)),
                "carried": carried,
                "history": state.history,
            }
            with atomic_path(self.path) as tmp:
                torch.save(payload, tmp)
        self.ctx.barrier()

    def update(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        mixup: Mixup | None,
        criterion: torch.nn.Module,
        global_step: int,
    ) -> torch.Tensor:
        """One optimizer update on a batch -> the (detached) loss."""
        inputs = inputs.to(self.ctx.device, non_blocking=True)
        targets = targets.to(self.ctx.device, non_blocking=True)
        if self.settings.channels_last and self.cuda:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            inputs, targets = mixup(inputs, targets)
        with torch.autocast(
            self.ctx.device.type, dtype=torch.float16, enabled=self.scaler is not None
        ):
            loss = criterion(self.net(inputs), targets)
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.settings.clip_grad
        if self.scaler is not None:
            self.scaler(loss, self.optimizer, clip_grad=clip, parameters=self.model.parameters())
        else:
            loss.backward()
            if clip is not None:
                dispatch_clip_grad(self.model.parameters(), clip)
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, step=global_step)
        return loss.detach()


def fit(job: Job, settings: TrainSettings, ctx: Dist) -> Trained:
    """Train `job` to the end, resuming from its work folder's checkpoint when it has one."""
    run = _Run(job, settings, ctx)
    state = run.resume()
    resumed_at = state.global_step if state.global_step else None
    mixup, criterion = _loss(settings)
    transform = train_data.train_transform(
        run.data_config,
        input_size=settings.input_size,
        scale=settings.scale,
        hflip=settings.hflip,
        color_jitter=settings.color_jitter,
        auto_augment=settings.auto_augment,
        re_prob=settings.re_prob,
    )
    dataset = train_data.ManifestSamples(job.root, job.paths, job.labels, transform, seed=job.seed)
    total = settings.epochs * run.steps
    bar = tqdm(
        total=total * settings.batch_size * ctx.world,
        initial=state.global_step * settings.batch_size * ctx.world,
        desc=f"train {job.name}",
        unit="img",
        mininterval=2.0,
        disable=not ctx.is_main,
    )
    local = torch.zeros(
        2, dtype=torch.float64, device=ctx.device
    )  # loss sum, images: no sync per step
    while state.epoch < settings.epochs:
        batches = train_data.EpochBatches(
            job.train_rows,
            seed=job.seed,
            epoch=state.epoch,
            batch_size=settings.batch_size,
            rank=ctx.rank,
            world=ctx.world,
            start_step=state.step,
        )
        dataset.epoch = state.epoch
        run.net.train()
        start = time.perf_counter()
        images = 0
        for inputs, targets, rows in train_data.loader(
            dataset, batches, workers=settings.workers, pin_memory=run.cuda
        ):
            _seed_step(job.seed, state.epoch, state.step, ctx.rank)
            loss = run.update(inputs, targets, mixup, criterion, state.global_step)
            local[0] += loss.double() * len(rows)
            local[1] += len(rows)
            state.seen[rows.numpy()] = True
            state.step, state.global_step = state.step + 1, state.global_step + 1
            images += len(rows) * ctx.world
            if run.scheduler is not None:
                run.scheduler.step_update(num_updates=state.global_step)
            bar.update(len(rows) * ctx.world)
            if state.step == run.steps:
                break
            if state.global_step % settings.checkpoint_every == 0:
                run.save(state, local)
        _end_epoch(run, state, local, images, time.perf_counter() - start)
    bar.close()
    model = run.ema.module if run.ema is not None else run.model
    return Trained(
        model.eval(),
        train_data.evaluation_config(run.data_config, input_size=settings.input_size),
        state.seen,
        state.history,
        state.global_step,
        resumed_at,
        architecture(model),
        state.timings,
    )


def _end_epoch(run: _Run, state: _State, local: torch.Tensor, images: int, seconds: float) -> None:
    """Close an epoch: record its mean loss and checkpoint at (next epoch, step 0)."""
    lr = run.optimizer.param_groups[0]["lr"]
    totals = state.carried + run.ctx.all_reduce(local.cpu())
    entry = {
        "epoch": state.epoch,
        "loss": round(float(totals[0] / totals[1].clamp(min=1)), 6),
        "images": int(totals[1]),
        "lr_end": lr,
    }
    timing = {
        "epoch": state.epoch,
        "images": int(totals[1]),
        "seconds": round(seconds, 3),
        "images_per_s": round(images / max(seconds, 1e-9), 2),
    }
    logger.info(
        "%s: epoch %d loss %.4f, %.1f img/s",
        run.job.name,
        state.epoch,
        entry["loss"],
        timing["images_per_s"],
    )
    state.history.append(entry)
    state.timings.append(timing)
    state.epoch, state.step = state.epoch + 1, 0
    state.carried = torch.zeros(2, dtype=torch.float64)
    local.zero_()
    run.save(state, local)


def predict_rows(
    trained: Trained,
    job: Job,
    rows: np.ndarray,
    out: Path,
    *,
    settings: TrainSettings,
    ctx: Dist,
    root: Path | None = None,
    paths: Sequence[str] | None = None,
) -> None:
    """Softmax of `rows` (of `paths`, default the job's) -> `out` (R, 1000) .npy, rows in order.

    Each process predicts every `world`-th row into a part file in the job's work folder;
    process 0 streams the parts into `out` (atomically). A collective: every process calls it.
    """
    mine = train_data.rank_rows(rows, rank=ctx.rank, world=ctx.world)
    dtype = np.dtype(settings.dtype)
    transform = eval_transform(trained.eval_config)
    paths = job.paths if paths is None else paths
    dataset = train_data.ManifestSamples(
        root or job.root, paths, np.zeros(len(paths), dtype=np.int64), transform
    )
    part = job.work / f"part-{ctx.rank:04d}.npy"
    with atomic_path(part) as tmp, torch.inference_mode():
        probs = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=dtype, shape=(len(mine), NUM_CLASSES)
        )
        done = 0
        batches = train_data.eval_batches(mine, settings.eval_batch_size)
        for inputs, _, _ in tqdm(
            train_data.loader(
                dataset, batches, workers=settings.workers, pin_memory=ctx.device.type == "cuda"
            ),
            total=len(batches),
            desc=f"predict {job.name}",
            unit="batch",
            mininterval=2.0,
            disable=not ctx.is_main,
        ):
            probs[done : done + len(inputs)] = softmax(trained.model, inputs, settings, ctx)
            done += len(inputs)
        probs.flush()
        del probs
    ctx.barrier()
    if ctx.is_main:
        parts = [np.load(job.work / f"part-{r:04d}.npy", mmap_mode="r") for r in range(ctx.world)]
        with atomic_path(out) as tmp:
            result = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=dtype, shape=(len(rows), NUM_CLASSES)
            )
            train_data.interleave(parts, result)
            result.flush()
            del result
    ctx.barrier()


def softmax(
    model: torch.nn.Module, inputs: torch.Tensor, settings: TrainSettings, ctx: Dist
) -> np.ndarray:
    """inputs: (B, 3, H, W) -> (B, 1000) float probabilities (computed in float32)."""
    cuda = ctx.device.type == "cuda"
    inputs = inputs.to(ctx.device, non_blocking=True)
    if settings.channels_last and cuda:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=settings.amp and cuda):
        logits = model(inputs)
    return torch.softmax(logits.float(), dim=1).to(getattr(torch, settings.dtype)).cpu().numpy()
