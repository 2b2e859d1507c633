"""`embed` stage: one model's pooled features and every image's fingerprint for a split.

Writes `data/embeddings/<split>/<model>.npy` (float16 (N, D) pooled pre-logit features of the
model `duplicates.model`, manifest order, NaN rows for images not decoded) with its JSON sidecar
(model identity, preprocessing, D, Pillow/torch/timm versions), and
`data/fingerprints/<split>.parquet` (decoded-pixel sha256, 64-bit pHash and raw quality scores
per image), from one decode of each image. It uses predict's options (`predict.batch_size`,
`workers`, `device`, ...), is resumable by shards of `predict.shard_size` rows, and writes its
files atomically. The duplicates stage reads them (docs/duplicates.md).

With `predict.embeddings` on, predict already writes the `full` view's features of every model
of `predict.models` over every split of `predict.splits` from its own forward pass. For such a
split embed runs no model: it fingerprints the images and writes a (N, 0) embeddings file whose
sidecar names predict's (`features_from`), which is what the duplicates stage then reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.cli import run_as_script, split_stage_main
from stages.contracts import formats
from stages.contracts.errors import ConfigError
from stages.contracts.params import section
from stages.contracts.splits import Params, SplitEntry
from stages.modelling.embeddings import embed_split
from stages.modelling.predict_config import PredictOptions
from stages.modelling.specs import model_specs, require_tracked_weights
from stages.sources.views import predict_views


def run_embed(split: str, params: Params, *, root: str | Path = ".") -> dict[str, Any]:
    """Write the split's embeddings (model `duplicates.model`) and fingerprints."""
    root = Path(root)
    model = section(params, "duplicates").get("model")
    if not isinstance(model, str) or model not in (params.get("models") or {}):
        raise ConfigError(
            f"params.yaml `duplicates.model` must name an entry of `models:`, got {model!r}"
        )
    options = PredictOptions.from_params(params)
    specs = model_specs(params, [model])
    require_tracked_weights(specs, options.weights_dir)
    manifest = formats.read_manifest(split, path=root / formats.manifest_path(split))
    from_predict = predict_writes_features(params, split, model)
    return embed_split(
        manifest,
        SplitEntry.from_params(params, split).root,
        None if from_predict else specs[0],
        options=options,
        out=root / formats.embeddings_path(split, model),
        fingerprints_out=root / formats.fingerprints_path(split),
        split=split,
        features_from=formats.features_path(split, model) if from_predict else None,
    )


def predict_writes_features(params: Params, split: str, model: str) -> bool:
    """Whether predict writes `model`'s `full` features over `split` (`predict.embeddings` on,
    the split in `predict.splits`, the model in `predict.models`, `full` in `predict.views`)."""
    predict = section(params, "predict")
    return (
        predict.get("embeddings") is True
        and split in (predict.get("splits") or [])
        and model in (predict.get("models") or [])
        and "full" in predict_views(params)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.embed --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="embed", doc=__doc__, run=run_embed)


if __name__ == "__main__":
    run_as_script(main)
