"""Image embeddings: a model's pooled pre-logit features (timm `forward_features` then
`forward_head(pre_logits=True)`), float16 (N, D) in manifest order, written with the image
fingerprints (`stages.dedup.fingerprints`) from the same decode of each image.

The logits are the classifier applied to these features, so `predict_data.features_and_logits`
gives both from one forward pass: with `predict.embeddings` on, predict writes every output's
features itself (`stages.modelling.predict_features`). The `embed` stage runs one named model
(`duplicates.model`) through the predict data path (`stages.modelling.predict_data`: the model's
own preprocessing, shard-aligned batches) into resumable shards in
`data/embeddings/.work/<split>/<model>/`; the final files appear atomically when every shard is
done, and a killed run resumes with the missing shards only. Where predict already wrote that
model's `full` features, embed runs no model (`spec=None`): it fingerprints the images and writes
a (N, 0) embeddings file whose sidecar names predict's file (`features_from`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import timm
import torch
from tqdm import tqdm

from stages.contracts import formats
from stages.dedup.fingerprints import FINGERPRINT_SCHEMA, PILLOW_VERSION, fingerprint
from stages.modelling import predict_data as pdata
from stages.modelling import shards
from stages.modelling.models import cpu_threads, resolve_device
from stages.modelling.predict_config import PredictOptions
from stages.modelling.specs import ModelSpec
from stages.sources.images import DECODE_ERRORS, open_image
from stages.sources.views import DEFAULT_MARGIN

logger = logging.getLogger(__name__)


class FingerprintedImages(pdata.ManifestImages):
    """Manifest rows -> (row, reason, fingerprint dict, model input) from one decode each."""

    def __getitem__(self, row: int) -> tuple[Any, ...]:
        path = self.paths[row].decode("utf-8")
        try:
            image = open_image(self.root, path)
        except DECODE_ERRORS as error:
            return (row, f"{type(error).__name__}: {error}", None, None)
        found = dataclasses.asdict(fingerprint(image))
        tensor = self.groups[0].worker_tensor(image, []) if self.groups else None
        return (row, None, found, tensor)


def collate(items: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Items -> (rows, [(row, reason)], [fingerprints], stacked inputs or None (no image decoded,
    or no model))."""
    good = [item for item in items if item[1] is None]
    bad = [(int(item[0]), str(item[1])) for item in items if item[1] is not None]
    rows = torch.tensor([int(item[0]) for item in good], dtype=torch.long)
    stacked = torch.stack([item[3] for item in good]) if good and good[0][3] is not None else None
    return rows, bad, [item[2] for item in good], stacked


class FeatureStore:
    """The work folder of one (split, model): a `shards.ShardStore` of the features (width D; 0
    when no model runs) and one `shard-N.parquet` of image fingerprints beside each of its shards;
    wiped when the run's fingerprint differs."""

    def __init__(
        self, out: Path, run: dict[str, Any], *, n_rows: int, shard_size: int, dim: int
    ) -> None:
        self.features = shards.ShardStore(
            out, run, n_rows=n_rows, shard_size=shard_size, dtype=pdata.FEATURES_DTYPE, width=dim
        )
        self.folder, self.dim = self.features.folder, dim

    def rows(self, shard: int) -> slice:
        """The manifest rows of a shard."""
        size, n_rows = self.features.shard_size, self.features.n_rows
        return slice(shard * size, min(n_rows, (shard + 1) * size))

    def _prints(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:06d}.parquet"

    def missing(self) -> list[int]:
        """Prepare the folder (wiped on another fingerprint) -> the shards still to compute."""
        self.features.prepare()
        without = self.features.missing()
        every = range(self.features.n_shards)
        return [s for s in every if s in without or not self._prints(s).is_file()]

    def write(self, shard: int, features: np.ndarray, prints: pd.DataFrame) -> None:
        """Atomically store one shard (fingerprints first: a shard counts once both exist)."""
        formats.write_table(prints, self._prints(shard), schema=FINGERPRINT_SCHEMA)
        self.features.write(shard, features)

    def assemble(self, fingerprints_out: Path) -> tuple[int, pd.DataFrame]:
        """Stream the shards into the final .npy and fingerprint table -> (rows without features,
        skip rows included; the fingerprint table)."""
        without = self.features.assemble_features(np.ones(self.features.n_rows, dtype=bool))
        parts = [formats.read_table(self._prints(s)) for s in range(self.features.n_shards)]
        table = pd.concat(parts, ignore_index=True)
        formats.write_table(table, fingerprints_out, schema=FINGERPRINT_SCHEMA)
        return len(without), table

    def remove(self) -> None:
        """Delete the work folder and its empty parents."""
        self.features.remove()


def _empty_prints(ids: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame({name: [None] * len(ids) for name in FINGERPRINT_SCHEMA.names})
    frame["image_id"] = list(ids)
    return frame


def _shard_batches(
    loader: Any, batches: Sequence[np.ndarray], shard_size: int
) -> Iterator[tuple[int, list[Any]]]:
    """The loader's batches grouped by shard (planned batches never span two shards and come in
    shard order, so consecutive batches of one shard make it whole)."""
    planned = (int(b[0]) // shard_size for b in batches)
    for shard, group in itertools.groupby(zip(planned, loader), key=lambda pair: pair[0]):
        yield shard, [item for _, item in group]


def _compute_shard(
    member: pdata.Member | None,
    items: list[Any],
    rows: slice,
    ids: Sequence[str],
    *,
    options: PredictOptions,
    device: torch.device,
    dim: int,
) -> tuple[np.ndarray, pd.DataFrame]:
    """One shard's features (NaN rows where not decoded; width 0 without a model) and
    fingerprints (null rows likewise)."""
    features = np.full((rows.stop - rows.start, dim), np.nan, pdata.FEATURES_DTYPE)
    prints = _empty_prints(ids)
    for batch_rows, bad, found, inputs in items:
        for row, reason in bad:
            logger.warning(
                "row %d cannot be decoded (%s): no fingerprint, no embedding", row, reason
            )
        local = batch_rows.numpy() - rows.start
        if inputs is not None and member is not None:
            x = member.transform.to_device(inputs, device, channels_last=options.channels_last)
            pooled, _ = pdata.features_and_logits(member.module, x, amp=options.amp)
            features[local] = pooled.cpu().numpy().astype(pdata.FEATURES_DTYPE)
        for k, values in zip(local, found):
            for key, value in values.items():
                prints.at[int(k), key] = value
    return features, prints


def _run_fingerprint(
    member: pdata.Member | None,
    manifest: pd.DataFrame,
    root: str | Path,
    *,
    options: PredictOptions,
    device: torch.device,
) -> dict[str, Any]:
    """Everything a shard's bytes depend on (shards under another are discarded)."""
    return {
        "model": member.name if member else None,
        "weights": member.identity if member else None,
        "preprocessing": member.data_config if member else None,
        "manifest_sha256": shards.manifest_sha256(manifest),
        "root": str(root),
        "shard_size": options.shard_size,
        "batch_size": options.batch_size,
        "device": device.type,
        "torch": torch.__version__,
        "pillow": PILLOW_VERSION,
    }


def _compute_missing(
    store: FeatureStore,
    manifest: pd.DataFrame,
    root: str | Path,
    member: pdata.Member | None,
    *,
    options: PredictOptions,
    device: torch.device,
    split: str,
) -> None:
    """Decode, fingerprint (and embed, with a model) the shards the store lacks."""
    todo = store.missing()
    usable = manifest["skip_reason"].isna().to_numpy()
    batches = pdata.plan_batches(
        usable, todo, shard_size=options.shard_size, batch_size=options.batch_size
    )
    groups = [pdata.InputGroup("full", DEFAULT_MARGIN, member.transform)] if member else []
    dataset = FingerprintedImages(root, manifest["path"].fillna("").tolist(), groups)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[b.tolist() for b in batches],
        num_workers=options.workers,
        collate_fn=collate,
    )
    ids = manifest["image_id"].tolist()
    bar = tqdm(total=int(sum(len(b) for b in batches)), desc=f"embed {split}", unit="img")
    computed = set()
    for shard, items in _shard_batches(loader, batches, options.shard_size):
        rows = store.rows(shard)
        feats, prints = _compute_shard(
            member, items, rows, ids[rows], options=options, device=device, dim=store.dim
        )
        store.write(shard, feats, prints)
        computed.add(shard)
        bar.update(sum(len(i[0]) + len(i[1]) for i in items))
    bar.close()
    for shard in set(todo) - computed:  # shards of skip rows only: nothing to decode
        rows = store.rows(shard)
        empty = np.full((rows.stop - rows.start, store.dim), np.nan, pdata.FEATURES_DTYPE)
        store.write(shard, empty, _empty_prints(ids[rows]))


def embed_split(
    manifest: pd.DataFrame,
    root: str | Path,
    spec: ModelSpec | None,
    *,
    options: PredictOptions,
    out: Path,
    fingerprints_out: Path,
    split: str,
    features_from: str | Path | None = None,
) -> dict[str, Any]:
    """Write a split's embeddings (+ JSON sidecar) and fingerprints, resuming from shards.

    Args:
        spec: the model whose features to compute; None when `features_from` names the features
            predict already wrote (`predict.embeddings`): then no model runs, and `out` is a
            (N, 0) file whose sidecar points there.

    Returns:
        the sidecar (model identity, preprocessing, N, D, dtype, rows without features, versions,
        `features_from`).
    """
    if (spec is None) == (features_from is None):
        raise ValueError("embed_split: give a model spec, or features_from (not both)")
    device = resolve_device(options.device)
    with cpu_threads(options.threads), torch.inference_mode():
        member = (
            pdata.load_member(spec, device=device, channels_last=options.channels_last)
            if spec is not None
            else None
        )
        dim = member.feature_width if member else 0
        run = _run_fingerprint(member, manifest, root, options=options, device=device)
        store = FeatureStore(out, run, n_rows=len(manifest), shard_size=options.shard_size, dim=dim)
        _compute_missing(store, manifest, root, member, options=options, device=device, split=split)
    unreadable, _ = store.assemble(fingerprints_out)
    usable = manifest["skip_reason"].isna().to_numpy()
    sidecar = {
        **run,
        "split": split,
        "spec": spec.spec if spec else None,
        "n": len(manifest),
        "dim": dim,
        "dtype": "float16",
        "n_skipped": int((~usable).sum()),
        "n_without_features": unreadable if member else None,
        "image_ids_sha256": formats.image_ids_sha256(manifest["image_id"]),
        "timm": timm.__version__,
        "features_from": str(features_from) if features_from is not None else None,
    }
    formats.write_json(sidecar, out.with_suffix(".json"), within=store.folder)
    store.remove()
    logger.info(
        "embed %s: %d images fingerprinted; embeddings %s",
        split,
        len(manifest),
        f"{spec.name}: {len(manifest)} x {dim} float16, {unreadable} rows without features"
        if spec
        else f"from predict's {features_from}",
    )
    return sidecar
