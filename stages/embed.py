"""`embed` stage: one model's pooled features and every image's fingerprint for a split.

Writes `data/embeddings/<split>/<model>.npy` (float16 (N, D) pooled pre-logit features of the
model `duplicates.model`, manifest order, NaN rows for images not decoded) with its JSON sidecar
(model identity, preprocessing, D, Pillow/torch/timm versions), and
`data/fingerprints/<split>.parquet` (decoded-pixel sha256, 64-bit pHash and raw quality scores
per image), from one decode of each image. It uses predict's options (`predict.batch_size`,
`workers`, `device`, ...), is resumable by shards of `predict.shard_size` rows, and writes its
files atomically. The duplicates stage reads them (docs/duplicates.md).
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
from stages.modelling.predictor import PredictOptions
from stages.modelling.specs import model_specs, require_tracked_weights


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
    return embed_split(
        manifest,
        SplitEntry.from_params(params, split).root,
        specs[0],
        options=options,
        out=root / formats.embeddings_path(split, model),
        fingerprints_out=root / formats.fingerprints_path(split),
        split=split,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.embed --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="embed", doc=__doc__, run=run_embed)


if __name__ == "__main__":
    run_as_script(main)
