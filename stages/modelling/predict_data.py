"""The `predict` data path: decode each manifest image once for every view and preprocessing
group, and batch it shard by shard (the shards themselves: `stages.modelling.shards`).

A model's timm evaluation transform (resize, centre crop, to-tensor, normalise) is split in two:
the geometric part runs in DataLoader workers on the decoded PIL image and yields a uint8 HWC
tensor (4x less to copy between processes and to the device); the to-tensor scaling and the
normalisation run on the model's device, on the whole batch, with exactly the arithmetic of
`torchvision.transforms.functional.to_tensor` + `normalize` (so the float inputs are bit-identical
to timm's transform on CPU). Models whose data configs have the same `preprocessing_key` share one
group: their input is resized once per image.

Batches never cross a shard boundary (`plan_batches`), so a batch holds the same rows whether a
run computes one model, an ensemble, or only the shards an interrupted run left missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from stages.contracts.errors import ConfigError
from stages.contracts.formats import NUM_CLASSES
from stages.modelling.models import (
    architecture,
    create_model,
    data_config,
    eval_transform,
    preprocessing_key,
)
from stages.modelling.specs import ModelSpec, weights_sha256
from stages.sources.images import DECODE_ERRORS, open_image
from stages.sources.views import DEFAULT_MARGIN, VIEWS, Boxes

logger = logging.getLogger(__name__)

FEATURES_DTYPE = np.float16


def features_and_logits(
    module: torch.nn.Module, batch: torch.Tensor, *, amp: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass -> (pooled pre-logit features (B, D), logits (B, classes)), float32.

    timm's `forward_features`, then `forward_head(pre_logits=True)`, then the classifier: the
    logits equal `module(batch)` for timm models whose head is pool -> classifier (every demo
    model; checked in tests/modelling/test_predict_data.py), so predict writes the features of
    its own forward pass (`predict.embeddings`) and the embed stage those of one model."""
    cuda = batch.device.type == "cuda"
    with torch.autocast(device_type=batch.device.type, dtype=torch.float16, enabled=cuda and amp):
        timm_model: Any = module  # timm's forward_features / forward_head / get_classifier
        pooled = timm_model.forward_head(timm_model.forward_features(batch), pre_logits=True)
        logits = timm_model.get_classifier()(pooled)
    return pooled.float(), logits.float()


@dataclass(frozen=True)
class InputTransform:
    """One preprocessing group: what workers do to a decoded image, and what the device finishes.

    Attributes:
        key: `stages.modelling.models.preprocessing_key` of the group's data config.
        geometry: PIL -> PIL steps (resize, crop) run in workers; or, when `scaled` is False, the
            whole timm transform (PIL -> normalised float CHW tensor).
        mean, std: the normalisation constants applied on the device (None when not `scaled`).
        scaled: True when workers hand over uint8 HWC tensors that the device scales + normalises.
    """

    key: str
    geometry: Callable[[Any], Any]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    scaled: bool

    def worker_tensor(self, image: Any) -> torch.Tensor:
        """A decoded RGB image -> uint8 (H, W, C) tensor (or the full transform's float tensor)."""
        out = self.geometry(image)
        if not self.scaled:
            return out
        return torch.from_numpy(np.array(out, dtype=np.uint8, copy=True))

    def to_device(
        self, batch: torch.Tensor, device: torch.device, *, channels_last: bool
    ) -> torch.Tensor:
        """batch: (B, H, W, C) uint8 (or (B, C, H, W) float) -> normalised (B, C, H, W) float32."""
        batch = batch.to(device, non_blocking=True)
        if self.scaled:
            # HWC memory viewed as NCHW is the channels_last layout; the ops below keep it.
            batch = batch.permute(0, 3, 1, 2).to(torch.float32).div(255)
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            batch = batch.sub_(mean).div_(std)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return batch.contiguous(memory_format=memory_format)


def input_transform(config: dict[str, Any]) -> InputTransform:
    """Split a model's timm eval transform (`stages.modelling.models.eval_transform`) for the fast
    path.

    When the transform does not end in the usual [ToTensor, Normalize] pair, the whole transform
    runs in the workers instead (still correct, only less fast).
    """
    full = eval_transform(config)
    steps = list(getattr(full, "transforms", []))
    key = preprocessing_key(config)
    if (
        len(steps) >= 2
        and isinstance(steps[-2], transforms.ToTensor)
        and isinstance(steps[-1], transforms.Normalize)
        and not getattr(steps[-1], "inplace", False)
    ):
        norm = steps[-1]
        mean = tuple(float(v) for v in torch.as_tensor(norm.mean).flatten())
        std = tuple(float(v) for v in torch.as_tensor(norm.std).flatten())
        return InputTransform(key, transforms.Compose(steps[:-2]), mean, std, scaled=True)
    logger.info(
        "preprocessing %s: transform %s is not [..., ToTensor, Normalize]; running it "
        "whole in the workers",
        key,
        full,
    )
    return InputTransform(key, full, None, None, scaled=False)


@dataclass(frozen=True)
class Member:
    """A loaded ensemble member: the eval-mode model plus its identity and preprocessing."""

    spec: ModelSpec
    module: torch.nn.Module
    data_config: dict[str, Any]
    transform: InputTransform
    architecture: str
    weights_sha256: str | None
    identity: str

    @property
    def name(self) -> str:
        """The model's short name (its spec's)."""
        return self.spec.name

    @property
    def feature_width(self) -> int:
        """D, the width of its pooled pre-logit features (timm `num_features`)."""
        return int(getattr(self.module, "num_features"))  # noqa: B009 (timm attribute, untyped)


def _state_sha256(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_member(spec: ModelSpec, *, device: torch.device, channels_last: bool = True) -> Member:
    """Create a model from its spec and resolve its own timm preprocessing."""
    spec.require_weights()
    module = create_model(spec, device=device)
    classes = getattr(module, "num_classes", NUM_CLASSES)
    if classes != NUM_CLASSES:
        raise ConfigError(
            f"model {spec.name!r} has {classes} classes; predictions need the "
            f"{NUM_CLASSES} ImageNet classes (drop num_classes from its kwargs)"
        )
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    config = json.loads(json.dumps(data_config(module)))
    sha = weights_sha256(spec)
    return Member(
        spec,
        module,
        config,
        input_transform(config),
        architecture(module),
        sha,
        sha or _state_sha256(module),
    )


@dataclass(frozen=True)
class InputGroup:
    """One view under one preprocessing: what workers make of a decoded image for the members
    that share it (`predict.views`, `stages.sources.views`)."""

    view: str
    margin: float
    transform: InputTransform

    @property
    def key(self) -> str:
        """Members with the same key share the decoded, viewed and resized input."""
        return f"{self.view}:{self.transform.key}"

    def worker_tensor(self, image: Any, boxes: Boxes) -> torch.Tensor:
        """A decoded RGB image and its boxes -> this view's worker tensor."""
        return self.transform.worker_tensor(VIEWS[self.view](image, boxes, self.margin))


@dataclass(frozen=True)
class Output:
    """One predictions file: a member seen through one view."""

    member: Member
    view: str
    margin: float = DEFAULT_MARGIN

    @property
    def name(self) -> str:
        """`<model>.<view>`, the file stem (`formats.predictions_path`)."""
        return f"{self.member.name}.{self.view}"

    @property
    def group(self) -> InputGroup:
        """The input this output's member reads."""
        return InputGroup(self.view, self.margin, self.member.transform)


class ManifestImages(Dataset):
    """Manifest rows -> one input tensor per input group, decoding each image once.

    paths: (N,) manifest `path` column; boxes: (N,) its `boxes` (for the `boxes` view). Item
    `row` is `(row, None, tensor_group_0, ...)`, or `(row, reason, None, ...)` when the image
    cannot be decoded (a header-only ingest lets truncated files through): the row's predictions
    stay NaN and predict counts it unreadable.
    """

    def __init__(
        self,
        root: str | Path,
        paths: Sequence[str],
        groups: Sequence[InputGroup],
        boxes: Sequence[Boxes] | None = None,
    ) -> None:
        self.root = str(root)
        # One fixed-width bytes buffer, not N Python strings: forked workers share it copy-free.
        self.paths = np.array([p.encode("utf-8") for p in paths], dtype=np.bytes_)
        self.groups = tuple(groups)
        needs_boxes = any(group.view == "boxes" for group in self.groups)
        self.boxes = list(boxes) if needs_boxes and boxes is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[Any, ...]:
        path = self.paths[row].decode("utf-8")
        try:
            image = open_image(self.root, path)
        except DECODE_ERRORS as error:
            return (row, f"{type(error).__name__}: {error}", *(None for _ in self.groups))
        boxes = self.boxes[row] if self.boxes is not None else ()
        return (row, None, *(group.worker_tensor(image, boxes) for group in self.groups))


def collate_rows(items: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Dataset items -> (rows (B,) of the decoded images, [(row, reason)] of the undecodable ones,
    one stacked tensor per preprocessing group (None when no image of the batch decoded))."""
    good = [item for item in items if item[1] is None]
    bad = [(int(item[0]), str(item[1])) for item in items if item[1] is not None]
    rows = torch.tensor([int(item[0]) for item in good], dtype=torch.long)
    groups = len(items[0]) - 2
    stacked = [torch.stack([item[2 + g] for item in good]) if good else None for g in range(groups)]
    return (rows, bad, *stacked)


def plan_batches(
    usable: np.ndarray, shards: Sequence[int], *, shard_size: int, batch_size: int
) -> list[np.ndarray]:
    """The forward batches for some shards: each shard's usable rows, in order, `batch_size` a
    batch.

    Args:
        usable: (N,) bool, True where the manifest row is to be predicted (no skip_reason).
        shards: shard indices to cover (shard i = rows [i*shard_size, (i+1)*shard_size)).

    Returns:
        row-index arrays, shard by shard; a batch never spans two shards, so batch composition
        is the same for any subset of shards and any set of models.
    """
    batches: list[np.ndarray] = []
    for shard in sorted(shards):
        rows = (
            np.flatnonzero(usable[shard * shard_size : (shard + 1) * shard_size])
            + shard * shard_size
        )
        batches.extend(rows[i : i + batch_size] for i in range(0, len(rows), batch_size))
    return batches


def make_loader(
    dataset: ManifestImages, batches: list[np.ndarray], *, workers: int, pin_memory: bool
) -> DataLoader:
    """A DataLoader that yields the planned batches in order (one worker collates a whole batch)."""
    extra: dict[str, Any] = {"prefetch_factor": 4, "persistent_workers": False} if workers else {}
    return DataLoader(
        dataset,
        batch_sampler=[b.tolist() for b in batches],
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=collate_rows,
        **extra,
    )
