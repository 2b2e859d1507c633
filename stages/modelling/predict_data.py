"""The `predict` data path: decode each manifest image once for every view and preprocessing
group, and keep the results in resumable shards.

A model's timm evaluation transform (resize, centre crop, to-tensor, normalise) is split in two:
the geometric part runs in DataLoader workers on the decoded PIL image and yields a uint8 HWC
tensor (4x less to copy between processes and to the device); the to-tensor scaling and the
normalisation run on the model's device, on the whole batch, with exactly the arithmetic of
`torchvision.transforms.functional.to_tensor` + `normalize` (so the float inputs are bit-identical
to timm's transform on CPU). Models whose data configs have the same `preprocessing_key` share one
group: their input is resized once per image.

Batches never cross a shard boundary (`plan_batches`), so a batch holds the same rows whether a
run computes one model, an ensemble, or only the shards an interrupted run left missing.
`ShardStore` keeps a model's finished shards in a work folder outside the output folder (which DVC
hashes) and streams them into the final memory-mappable .npy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from stages.contracts.errors import ConfigError
from stages.contracts.formats import NUM_CLASSES, atomic_path, percent, write_json, write_npy
from stages.contracts.sidecars import topk_hits
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

FINGERPRINT = "fingerprint.json"
FEATURES_DTYPE = np.float16
ShardSink = Callable[[str, int, np.ndarray], None]


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


class ShardBuffers:
    """Collects batch results per (output, shard); hands a shard on once all its usable rows are
    in.

    usable: (N,) bool; pending: output name -> shard indices to compute; on_shard(name, shard,
    values (rows of the shard, width)) receives each complete shard (NaN rows for skip rows).
    Every output is (rows, 1000) probabilities in `dtype` unless `layouts` gives it another
    (width, dtype), as for features (`features_name`).
    """

    def __init__(
        self,
        usable: np.ndarray,
        pending: Mapping[str, set[int]],
        *,
        shard_size: int,
        dtype: type[np.floating],
        on_shard: ShardSink,
        layouts: Mapping[str, tuple[int, type[np.floating]]] | None = None,
    ) -> None:
        self.usable, self.pending, self.on_shard = usable, pending, on_shard
        self.shard_size, self.dtype = shard_size, dtype
        self.layouts = dict(layouts or {})
        self.shards = sorted(set().union(*pending.values())) if pending else []
        self.waiting = {
            s: int(usable[s * shard_size : (s + 1) * shard_size].sum()) for s in self.shards
        }
        self.buffers: dict[tuple[str, int], np.ndarray] = {}

    def _buffer(self, name: str, shard: int) -> np.ndarray:
        if (name, shard) not in self.buffers:
            rows = min(self.shard_size, len(self.usable) - shard * self.shard_size)
            width, dtype = self.layouts.get(name, (NUM_CLASSES, self.dtype))
            self.buffers[name, shard] = np.full((rows, width), np.nan, dtype=dtype)
        return self.buffers[name, shard]

    def wants(self, name: str, shard: int) -> bool:
        """Whether output `name` is to be computed for `shard`."""
        return shard in self.pending.get(name, ())

    def add(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        """Store a batch: rows (B,) manifest row indices within one shard, values (B, width)."""
        shard = int(rows[0]) // self.shard_size
        self._buffer(name, shard)[rows - shard * self.shard_size] = values

    def rows_done(self, shard: int, count: int) -> None:
        """Count `count` rows of `shard` as computed by every model pending it."""
        self.waiting[shard] -= count
        if self.waiting[shard] == 0:
            for name, shards in self.pending.items():
                if shard in shards:
                    self.on_shard(name, shard, self._buffer(name, shard))
                    del self.buffers[name, shard]

    def flush_empty(self) -> None:
        """Hand on the shards without usable rows (all skip rows): nothing to compute."""
        for shard in self.shards:
            if self.waiting[shard] == 0:
                self.rows_done(shard, 0)


def manifest_sha256(manifest: pd.DataFrame) -> str:
    """A digest of what predictions depend on in a manifest: row order, ids, paths, skip rows and
    the images' bytes (their sha256), so shards of a killed run never outlive a changed image."""
    digest = hashlib.sha256(str(len(manifest)).encode())
    for column in ("image_id", "path", "skip_reason", "sha256"):
        values = manifest[column].astype(object).where(manifest[column].notna(), "\x01")
        digest.update("\x00".join(map(str, values)).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def features_name(output: str) -> str:
    """The buffer and store name of an output's features (`<model>.<view>:features`)."""
    return f"{output}:features"


def work_folder(out: str | Path) -> Path:
    """A model's work folder for its output `<root>/<split>/<model>.npy`:
    `<root>/.work/<split>/<model>/`, beside the output folder but outside it, so that a killed run
    leaves nothing in the folder that DVC hashes (vote's and evaluate's dependency) and the next
    run, after DVC deleted the outputs, still finds its shards."""
    out = Path(out)
    return out.parent.parent / ".work" / out.parent.name / out.stem


class ShardStore:
    """A model's work folder (`work_folder`) with `fingerprint.json` and one `shard-NNNNNN.npy`
    per shard of (rows, width) values: probabilities (width 1000) or features (width D).

    Shards are written atomically; the folder is wiped when its fingerprint differs from this
    run's, so stale shards of another model, preprocessing, manifest or option set are never used.
    The final file is assembled in the work folder too, and only renamed into the output folder.
    """

    def __init__(
        self,
        out: str | Path,
        fingerprint: dict[str, Any],
        *,
        n_rows: int,
        shard_size: int,
        dtype: type[np.floating],
        width: int = NUM_CLASSES,
    ) -> None:
        self.out, self.fingerprint, self.n_rows = Path(out), fingerprint, n_rows
        self.shard_size, self.dtype, self.width = shard_size, np.dtype(dtype), width
        self.folder = work_folder(self.out)
        self.n_shards = -(-n_rows // shard_size)

    def path(self, shard: int) -> Path:
        """The file of shard number `shard`."""
        return self.folder / f"shard-{shard:06d}.npy"

    def _rows(self, shard: int) -> int:
        return min(self.shard_size, self.n_rows - shard * self.shard_size)

    def _valid(self, shard: int) -> bool:
        try:
            array = np.load(self.path(shard), mmap_mode="r")
        except (OSError, ValueError):
            return False
        return array.shape == (self._rows(shard), self.width) and array.dtype == self.dtype

    def open(self) -> set[int]:
        """Prepare the work folder (wiped when its fingerprint differs) -> the missing shards."""
        self.prepare()
        return self.missing()

    def prepare(self) -> None:
        """Wipe the work folder when its fingerprint differs from this run's, remove files of
        writes that were killed, and save the fingerprint. Under torchrun only rank 0 calls this,
        before the others look at the folder."""
        for stale in self.out.parent.glob(f".{self.out.name}.*.tmp"):
            stale.unlink()  # an assembly killed before its rename (by an older version)
        legacy = self.out.parent / f".{self.out.stem}.partial"
        if legacy.is_dir():
            shutil.rmtree(legacy)  # an older version's work folder inside the output folder
        saved = self.folder / FINGERPRINT
        if self.folder.exists() and (
            not saved.is_file() or json.loads(saved.read_text()) != self.fingerprint
        ):
            logger.warning(
                "%s: its shards belong to another model, preprocessing, manifest or "
                "option set; discarding them",
                self.folder,
            )
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp"):
            stale.unlink()  # a shard write killed before its rename
        if not saved.is_file():
            write_json(self.fingerprint, saved)

    def missing(self) -> set[int]:
        """The shards not yet in the (prepared) work folder."""
        missing = {s for s in range(self.n_shards) if not self._valid(s)}
        if len(missing) < self.n_shards:
            logger.info(
                "%s: resuming; %d of %d shards already done, computing %d",
                self.out.name,
                self.n_shards - len(missing),
                self.n_shards,
                len(missing),
            )
        return missing

    def write(self, shard: int, values: np.ndarray) -> None:
        """Atomically store one complete shard: values (rows of the shard, width)."""
        write_npy(values, self.path(shard))

    def _stream(self, usable: np.ndarray, visit: Callable[[slice, np.ndarray], None]) -> np.ndarray:
        """Stream the shards into the final .npy (atomic rename), calling visit(rows, shard) on
        each -> the (U,) usable rows left NaN (images that could not be decoded). Holds one shard
        in RAM at a time."""
        unreadable = []
        with atomic_path(self.out, within=self.folder) as tmp:
            array = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=self.dtype, shape=(self.n_rows, self.width)
            )
            for shard in range(self.n_shards):
                rows = slice(shard * self.shard_size, shard * self.shard_size + self._rows(shard))
                values = np.load(self.path(shard))
                array[rows] = values
                visit(rows, values)
                unreadable.append(
                    np.flatnonzero(usable[rows] & np.isnan(values[:, 0])) + rows.start
                )
            array.flush()
            del array
        return np.concatenate(unreadable) if unreadable else np.empty(0, dtype=np.int64)

    def assemble(
        self, labels: np.ndarray, usable: np.ndarray
    ) -> tuple[float | None, float | None, np.ndarray]:
        """Stream probability shards into the final .npy -> (top-1, top-5) in percent and the
        (U,) usable rows whose predictions are NaN.

        labels: (N,) float (NaN where unknown); usable: (N,) bool.
        """
        totals = np.zeros(3, dtype=np.int64)  # top-1 hits, top-5 hits, rows scored

        def count(rows: slice, probs: np.ndarray) -> None:
            hits, scored = topk_hits(probs, labels[rows], usable[rows])
            totals[:2] += hits
            totals[2] += scored

        missing = self._stream(usable, count)
        scored = int(totals[2])
        return percent(int(totals[0]), scored), percent(int(totals[1]), scored), missing

    def assemble_features(self, usable: np.ndarray) -> np.ndarray:
        """Stream feature shards into the final .npy -> the (U,) usable rows without features.

        usable: (N,) bool."""
        return self._stream(usable, lambda rows, values: None)

    def write_sidecar(self, sidecar: dict[str, Any]) -> None:
        """Write the output's JSON sidecar `<stem>.json`, its temporary file in the work folder."""
        write_json(sidecar, self.out.with_suffix(".json"), within=self.folder)

    def remove(self) -> None:
        """Delete the work folder (after the final file and its sidecar are in place), and its
        parents `.work/<split>/` and `.work/` once empty."""
        shutil.rmtree(self.folder, ignore_errors=True)
        for parent in (self.folder.parent, self.folder.parent.parent):
            try:
                parent.rmdir()
            except OSError:
                break  # not empty: another model's work is in progress
