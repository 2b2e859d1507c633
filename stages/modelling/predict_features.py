"""Embeddings from predict's own forward pass (`predict.embeddings`).

With the switch on, every predict output (a model through a view) also keeps the pooled pre-logit
features of the forward pass that gives its probabilities (`predict_data.features_and_logits`):
float16 (N, D) in manifest order, NaN rows for skip rows and undecodable images, at
`data/embeddings/<split>/<model>.<view>.npy` with a JSON sidecar. They go through the same
resumable shards as the probabilities (a `ShardStore` of width D in
`data/embeddings/.work/<split>/<model>.<view>/`) and appear atomically when complete. With the
switch off the same paths hold a (N, 0) file whose sidecar says `"enabled": false`
(`contracts.sidecars.write_features_placeholder`), so that the DVC stage always has its outputs.
The embed stage then reads no model for a split whose `duplicates.model` features predict already
wrote (docs/duplicates.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import timm
import torch

from stages.contracts.sidecars import features_sidecar
from stages.modelling.predict_data import FEATURES_DTYPE, Output
from stages.modelling.shards import ShardStore

logger = logging.getLogger(__name__)


def features_store(
    out: str | Path, fingerprint: dict[str, Any], *, n_rows: int, shard_size: int, width: int
) -> ShardStore:
    """The resumable shards of one output's features; `fingerprint` is its probabilities'
    (`predictor.shard_fingerprint`), marked as features so the two never share shards."""
    return ShardStore(
        out,
        {**fingerprint, "features": "pooled pre-logit", "features_dtype": "float16"},
        n_rows=n_rows,
        shard_size=shard_size,
        dtype=FEATURES_DTYPE,
        width=width,
    )


def assemble_features(
    store: ShardStore, manifest: pd.DataFrame, output: Output, *, split: str
) -> dict[str, Any]:
    """Stream an output's feature shards into its .npy, write its sidecar, drop its work folder
    -> the sidecar."""
    usable = manifest["skip_reason"].isna().to_numpy()
    without = store.assemble_features(usable)
    member = output.member
    sidecar = features_sidecar(
        manifest,
        split=split,
        model=member.name,
        view=output.view,
        source="predict",
        dim=store.width,
        n_without=len(without),
        spec=member.spec.spec,
        weights=member.identity,
        architecture=member.architecture,
        preprocessing=member.data_config,
        torch=torch.__version__,
        timm=timm.__version__,
    )
    store.write_sidecar(sidecar)
    store.remove()
    logger.info(
        "predict %s %s: features %d x %d float16 (%d usable rows without)",
        split,
        output.name,
        len(manifest),
        store.width,
        len(without),
    )
    return sidecar
