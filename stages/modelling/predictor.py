"""Models over a split -> cached softmax probabilities, resumable, in one image pass.

The work is done in shards of `predict.shard_size` rows kept in a hidden work folder beside the
output (`.<model>.partial/`), tied to the exact model, preprocessing, manifest and run options by
its `fingerprint.json`: a run killed at any point resumes with the missing shards only, and the
final file appears, atomically, only when complete. Several models are predicted in one pass over
the images (each decoded once per preprocessing). Under `torchrun` each process computes a share of
the missing shards and rank 0 assembles the same files (`stages.modelling.distributed`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import timm
import torch
from tqdm import tqdm

from stages.contracts import formats
from stages.contracts.sidecars import predictions_sidecar, write_features_placeholder
from stages.modelling import distributed
from stages.modelling.models import cpu_threads, resolve_device
from stages.modelling.predict_config import DTYPES, PredictConfig, PredictOptions
from stages.modelling.predict_data import (
    FEATURES_DTYPE,
    ManifestImages,
    Member,
    Output,
    features_and_logits,
    load_member,
    make_loader,
    plan_batches,
)
from stages.modelling.predict_features import assemble_features, features_store
from stages.modelling.shards import (
    ShardBuffers,
    ShardSink,
    ShardStore,
    features_name,
    manifest_sha256,
)
from stages.modelling.specs import ModelSpec
from stages.sources.views import DEFAULT_MARGIN

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


MANIFEST_COLUMNS = ("image_id", "path", "label", "skip_reason")


def _check_manifest(manifest: pd.DataFrame) -> None:
    if not isinstance(manifest, pd.DataFrame):
        raise TypeError(f"manifest must be a pandas DataFrame, got {type(manifest).__name__}")
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"manifest lacks columns {missing}; pass a table written by "
            "`imagenet-clean ingest` (formats.MANIFEST_SCHEMA)"
        )
    if len(manifest) == 0:
        raise ValueError("manifest has no rows; ingest a source that holds images first")


def _probabilities(member: Member, logits: torch.Tensor, *, config: PredictOptions) -> np.ndarray:
    if logits.ndim != 2 or logits.shape[1] != formats.NUM_CLASSES:
        raise ValueError(
            f"model {member.name!r} returned logits of shape {tuple(logits.shape)}; "
            f"expected (batch, {formats.NUM_CLASSES})"
        )
    return torch.softmax(logits.float(), dim=1).to(TORCH_DTYPES[config.dtype]).cpu().numpy()


def softmax_batch(member: Member, batch: torch.Tensor, *, config: PredictOptions) -> np.ndarray:
    """batch: (B, 3, H, W) -> (B, 1000) probabilities in the storage dtype."""
    cuda = batch.device.type == "cuda"
    with torch.autocast(
        device_type=batch.device.type, dtype=torch.float16, enabled=cuda and config.amp
    ):
        logits = member.module(batch)
    return _probabilities(member, logits, config=config)


def softmax_and_features(
    member: Member, batch: torch.Tensor, *, config: PredictOptions
) -> tuple[np.ndarray, np.ndarray]:
    """batch: (B, 3, H, W) -> ((B, 1000) probabilities in the storage dtype, (B, D) float16
    pooled pre-logit features), from one forward pass."""
    pooled, logits = features_and_logits(member.module, batch, amp=config.amp)
    return _probabilities(member, logits, config=config), pooled.to(torch.float16).cpu().numpy()


def _forward(
    outputs: Sequence[Output],
    index: Mapping[str, int],
    rows: np.ndarray,
    inputs: Sequence[torch.Tensor],
    buffers: ShardBuffers,
    seconds: dict[str, float],
    *,
    config: PredictOptions,
    device: torch.device,
) -> None:
    """One batch through every output (and its features where they are pending): each input
    group moved to the device once."""
    ready: dict[int, torch.Tensor] = {}
    shard = int(rows[0]) // config.shard_size
    for output in outputs:
        group = index[output.group.key]
        if group not in ready:
            ready[group] = output.member.transform.to_device(
                inputs[group], device, channels_last=config.channels_last
            )
        start = time.perf_counter()
        if buffers.wants(features_name(output.name), shard):
            probs, features = softmax_and_features(output.member, ready[group], config=config)
            buffers.add(features_name(output.name), rows, features)
        else:
            probs = softmax_batch(output.member, ready[group], config=config)
        if buffers.wants(output.name, shard):
            buffers.add(output.name, rows, probs)
        seconds[output.name] += time.perf_counter() - start


def predict_pass(
    manifest: pd.DataFrame,
    root: str | Path,
    outputs: Sequence[Output],
    pending: Mapping[str, set[int]],
    *,
    config: PredictOptions,
    device: torch.device,
    on_shard: ShardSink,
    desc: str = "predict",
) -> dict[str, float]:
    """Compute the pending shards of every output in one pass over the images (each image decoded
    once, each view and preprocessing made once per image).

    Args:
        manifest: (N rows) with `path`, `boxes` and `skip_reason`; skip rows stay NaN and are
            not decoded.
        outputs: the (member, view) pairs to predict; pending: output name -> shard indices, and
            `features_name(output name)` -> shards whose features to compute as well.
        on_shard: called as on_shard(name, shard, values) when a shard is done: probs (rows, 1000)
            under the output name, float16 features (rows, D) under its features name.

    Returns:
        seconds spent in each output's forward pass.
    """
    usable = manifest["skip_reason"].isna().to_numpy()
    todo = {o.name: _output_shards(o, pending) for o in outputs}
    outputs = [o for o in outputs if todo[o.name]]
    groups = {o.group.key: o.group for o in outputs}
    index = {key: i for i, key in enumerate(groups)}
    buffers = ShardBuffers(
        usable,
        {name: shards for name, shards in pending.items() if shards},
        shard_size=config.shard_size,
        dtype=DTYPES[config.dtype],
        on_shard=on_shard,
        layouts={features_name(o.name): (o.member.feature_width, FEATURES_DTYPE) for o in outputs},
    )
    buffers.flush_empty()
    batches = plan_batches(
        usable, buffers.shards, shard_size=config.shard_size, batch_size=config.batch_size
    )
    boxes = manifest["boxes"].tolist() if "boxes" in manifest else None
    paths = manifest["path"].fillna("").tolist()
    images = ManifestImages(root, paths, list(groups.values()), boxes)
    loader = make_loader(images, batches, workers=config.workers, pin_memory=device.type == "cuda")
    seconds = dict.fromkeys(todo, 0.0)
    if not batches:
        return seconds
    bars = _progress_bars(outputs, todo, buffers, desc)
    with torch.inference_mode():
        for rows, bad, *inputs in loader:
            rows = rows.numpy()
            for row, reason in bad:
                logger.warning(
                    "%s: cannot be decoded (%s); its predictions stay NaN (counted as "
                    "n_unreadable in the sidecar)",
                    Path(root) / paths[row],
                    reason,
                )
            shard = int(rows[0] if len(rows) else bad[0][0]) // config.shard_size
            now = [o for o in outputs if shard in todo[o.name]]
            if len(rows):
                _forward(now, index, rows, inputs, buffers, seconds, config=config, device=device)
            for output in now:
                bar = bars[output.name]
                bar.update(len(rows) + len(bad))
                rate = bar.n / max(seconds[output.name], 1e-9)
                bar.set_postfix_str(f"forward {rate:.0f} img/s", refresh=False)
            buffers.rows_done(shard, len(rows) + len(bad))
    for bar in bars.values():
        bar.close()
    return seconds


def _output_shards(output: Output, pending: Mapping[str, set[int]]) -> set[int]:
    """The shards an output is run on: those of its probabilities and of its features."""
    return set(pending.get(output.name, ())) | set(pending.get(features_name(output.name), ()))


def _progress_bars(
    outputs: Sequence[Output], todo: Mapping[str, set[int]], buffers: ShardBuffers, desc: str
) -> dict[str, tqdm[Any]]:
    """One progress bar per output, sized to its pending rows."""
    return {
        o.name: tqdm(
            total=sum(buffers.waiting[s] for s in todo[o.name]),
            position=i,
            desc=f"{desc} {o.name}",
            unit="img",
            mininterval=2.0,
            leave=True,
        )
        for i, o in enumerate(outputs)
    }


def shard_fingerprint(
    output: Output,
    manifest_digest: str,
    root: str | Path,
    *,
    config: PredictOptions,
    device: torch.device,
) -> dict[str, Any]:
    """Everything a shard's bytes depend on; shards under another fingerprint are never reused."""
    member = output.member
    return {
        "model": member.name,
        "view": output.view,
        "view_params": view_params(output),
        "spec": member.spec.spec,
        "pretrained": member.spec.pretrained,
        "kwargs": json.loads(json.dumps(member.spec.kwargs, sort_keys=True, default=str)),
        "weights": member.identity,
        "architecture": member.architecture,
        "preprocessing": member.data_config,
        "manifest_sha256": manifest_digest,
        "root": str(root),
        "dtype": config.dtype,
        "batch_size": config.batch_size,
        "shard_size": config.shard_size,
        "device": device.type,
        "amp": config.amp and device.type == "cuda",
        "channels_last": config.channels_last,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
    }


def view_params(output: Output) -> dict[str, Any]:
    """What a view's pixels depend on beyond the image (recorded in the sidecar)."""
    return {"margin": output.margin} if output.view == "boxes" else {}


def _labels(manifest: pd.DataFrame) -> np.ndarray:
    return pd.to_numeric(manifest["label"], errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )


def load_outputs(
    specs: Sequence[ModelSpec],
    views: Sequence[str],
    *,
    device: torch.device,
    channels_last: bool,
    margin: float = DEFAULT_MARGIN,
) -> list[Output]:
    """Load each model once and pair it with every view (models first, then views)."""
    members = [load_member(s, device=device, channels_last=channels_last) for s in specs]
    return [Output(member, view, margin) for member in members for view in views]


def predict_split(
    config: PredictConfig,
    manifest: pd.DataFrame,
    outs: Mapping[str, str | Path],
    *,
    features: Mapping[str, str | Path] | None = None,
) -> dict[str, dict[str, Any]]:
    """Write each (model, view)'s predictions + sidecar in one image pass, resuming from shards.

    Under torchrun each rank computes its share of the missing shards (`distributed.Context.share`)
    into the shared work folders; rank 0 then assembles the final files (outputs must be on a
    filesystem every rank sees).

    Args:
        config: the split, models, views and options.
        manifest: (N rows) the split's manifest (formats.MANIFEST_SCHEMA).
        outs: `<model>.<view>` -> .npy path; the sidecar is written beside it as `<stem>.json`.
        features: `<model>.<view>` -> .npy path of its features (`predict_features`): float16
            (N, D) from the same forward pass when `predict.embeddings` is on, else a (N, 0)
            placeholder; None writes none.

    Returns:
        `<model>.<view>` -> sidecar dict.
    """
    _check_manifest(manifest)
    options, ctx = config.options, distributed.context()
    device = distributed.device_for(options.device, ctx)
    with cpu_threads(options.threads):
        outputs = load_outputs(
            config.specs,
            config.views,
            device=device,
            channels_last=options.channels_last,
            margin=config.margin,
        )
        missing = [
            o.name
            for o in outputs
            if o.name not in outs or (features is not None and o.name not in features)
        ]
        if missing:
            raise ValueError(f"no output path for {missing}")
        kept = features if options.embeddings and features else {}
        stores = _stores(config, manifest, outputs, outs, kept, device=device)
        if ctx.is_main:
            for store in stores.values():
                store.prepare()
        distributed.barrier(ctx)
        pending = rank_shards({name: store.missing() for name, store in stores.items()}, ctx)
        seconds = predict_pass(
            manifest,
            config.root,
            outputs,
            pending,
            config=options,
            device=device,
            on_shard=lambda name, shard, values: stores[name].write(shard, values),
            desc=f"predict {config.split}",
        )
    distributed.barrier(ctx)
    sidecars = (
        _assemble(manifest, outputs, stores, config=options, split=config.split)
        if ctx.is_main
        else {}
    )
    if ctx.is_main and features and not kept:
        for output in outputs:
            write_features_placeholder(
                features[output.name],
                manifest,
                split=config.split,
                model=output.member.name,
                view=output.view,
                source="predict",
            )
    sidecars = distributed.broadcast(sidecars, ctx)  # the others wait for rank 0's files
    for output in outputs:
        logger.info(
            "predict %s %s (rank %d of %d): top-1 %s, top-5 %s; forward %.1f s",
            config.split,
            output.name,
            ctx.rank,
            ctx.world,
            sidecars[output.name]["top1"],
            sidecars[output.name]["top5"],
            seconds.get(output.name, 0.0),
        )
    return sidecars


def _stores(
    config: PredictConfig,
    manifest: pd.DataFrame,
    outputs: Sequence[Output],
    outs: Mapping[str, str | Path],
    features: Mapping[str, str | Path],
    *,
    device: torch.device,
) -> dict[str, ShardStore]:
    """Each output's probability store, and its features store where `features` names a path."""
    options, digest = config.options, manifest_sha256(manifest)
    stores = {}
    for output in outputs:
        fingerprint = shard_fingerprint(output, digest, config.root, config=options, device=device)
        stores[output.name] = ShardStore(
            outs[output.name],
            fingerprint,
            n_rows=len(manifest),
            shard_size=options.shard_size,
            dtype=DTYPES[options.dtype],
        )
        if output.name in features:
            stores[features_name(output.name)] = features_store(
                features[output.name],
                fingerprint,
                n_rows=len(manifest),
                shard_size=options.shard_size,
                width=output.member.feature_width,
            )
    return stores


def rank_shards(missing: Mapping[str, set[int]], ctx: distributed.Context) -> dict[str, set[int]]:
    """This rank's shards: the union of every model's missing shards, shared out in order, then
    each model's missing shards among them (one image pass serves all models of a shard)."""
    mine = set(ctx.share(sorted(set().union(*missing.values())))) if missing else set()
    return {name: shards & mine for name, shards in missing.items()}


def _assemble(
    manifest: pd.DataFrame,
    outputs: Sequence[Output],
    stores: Mapping[str, ShardStore],
    *,
    config: PredictOptions,
    split: str,
) -> dict[str, dict[str, Any]]:
    """Stream each output's shards into its final .npy, write its sidecar, drop its work folder."""
    labels, usable = _labels(manifest), manifest["skip_reason"].isna().to_numpy()
    sidecars = {}
    for output in outputs:
        store, member = stores[output.name], output.member
        top1, top5, unreadable = store.assemble(labels, usable)
        if len(unreadable):
            shown = manifest["path"].iloc[unreadable[:20]].tolist()
            logger.warning(
                "predict %s %s: %d usable rows could not be decoded; their predictions "
                "are NaN: %s%s. Re-run `imagenet-clean ingest` with ingest.verify: full "
                "to mark them skip rows",
                split,
                output.name,
                len(unreadable),
                ", ".join(shown),
                " ..." if len(unreadable) > len(shown) else "",
            )
        sidecars[output.name] = predictions_sidecar(
            manifest,
            model=member.name,
            split=split,
            source="predict",
            dtype=config.dtype,
            spec=member.spec.spec,
            top1=top1,
            top5=top5,
            architecture=member.architecture,
            weights_sha256=member.weights_sha256,
            preprocessing=member.data_config,
            n_unreadable=len(unreadable),
            view=output.view,
            view_params=view_params(output),
        )
        store.write_sidecar(sidecars[output.name])
        store.remove()
        if features_name(output.name) in stores:
            assemble_features(stores[features_name(output.name)], manifest, output, split=split)
    return sidecars


def predict_models(
    manifest: pd.DataFrame,
    root: str | Path,
    specs: Sequence[ModelSpec],
    *,
    config: PredictOptions,
    views: Sequence[str] = ("full",),
    margin: float = DEFAULT_MARGIN,
) -> dict[str, np.ndarray]:
    """In-memory predictions of several models x views in one image pass -> `<model>.<view>` ->
    (N, 1000) array."""
    _check_manifest(manifest)
    device = resolve_device(config.device)
    results: dict[str, np.ndarray] = {}

    def keep(name: str, shard: int, probs: np.ndarray) -> None:
        results[name][shard * config.shard_size : shard * config.shard_size + len(probs)] = probs

    with cpu_threads(config.threads):
        outputs = load_outputs(
            specs, views, device=device, channels_last=config.channels_last, margin=margin
        )
        shape = (len(manifest), formats.NUM_CLASSES)
        results.update({o.name: np.full(shape, np.nan, DTYPES[config.dtype]) for o in outputs})
        every = set(range(-(-len(manifest) // config.shard_size)))
        predict_pass(
            manifest,
            root,
            outputs,
            {o.name: every for o in outputs},
            config=config,
            device=device,
            on_shard=keep,
        )
    return results


def predict_model(
    manifest: pd.DataFrame,
    root: str | Path,
    spec: ModelSpec,
    *,
    config: PredictOptions,
    view: str = "full",
    margin: float = DEFAULT_MARGIN,
) -> np.ndarray:
    """One model's in-memory predictions through one view: (N, 1000), NaN rows for skip rows."""
    outputs = predict_models(manifest, root, [spec], config=config, views=[view], margin=margin)
    return outputs[f"{spec.name}.{view}"]
