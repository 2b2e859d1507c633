"""Stage `explain`: CAM scores for the samples the top-5 consensus would remove.

Candidates are the active rows with boxes whose top-5 misses reach h3 (`decide.<split>.h3`); each is
explained by every model whose top-5 contains its label (`top5_hit_models`), with the methods of
`explain.methods`, cheapest first. One row per (candidate, model) goes to `data/cams/<split>.parquet`;
`decide` exempts a candidate when any of its models has `exempted` true.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from PIL import Image, ImageDraw
from pytorch_grad_cam.utils.image import show_cam_on_image
from tqdm import tqdm

from stages import cams, formats
from stages.boxes import box_mask, boxes_to_input, input_geometry
from stages.cli import run_as_script, split_stage_main
from stages.formats import CAMS_SCHEMA
from stages.images import open_image
from stages.models import (
    ModelSpec,
    architecture,
    create_model,
    data_config,
    eval_transform,
    model_specs,
    resolve_device,
)
from stages.params import resolve_threshold, section, split_models, split_params

logger = logging.getLogger(__name__)

"""`data/cams/<split>.parquet`: one row per (candidate, model whose top-5 holds the label); a score
is null when its method was not run (Score-CAM skipped by the early exit, or not configured)."""



@dataclass(frozen=True)
class ExplainConfig:
    """The `explain:` params section, validated.

    Attributes:
        methods: CAM methods, sorted cheapest first. rule: heat / min_area / min_methods.
        exhaustive: run every method on every pair (no early exit).
        batch_size: images per Grad-CAM/Grad-CAM++ batch. scorecam_batch_size: masked copies per
            Score-CAM forward. device: auto | cpu | cuda[:N].
        target_layers: model name -> dotted module path overrides. overlays: PNGs to write.
    """

    methods: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam")
    rule: cams.ExemptionRule = cams.ExemptionRule()
    exhaustive: bool = False
    batch_size: int = 16
    scorecam_batch_size: int = 128
    device: str = "auto"
    target_layers: dict[str, str] = field(default_factory=dict, hash=False)
    overlays: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in cams.METHODS]
        if unknown or not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"explain.methods must be distinct names from {list(cams.METHODS)}, "
                             f"got {list(self.methods)}")
        if self.rule.min_methods > len(self.methods):
            raise ValueError(f"explain.min_methods={self.rule.min_methods} exceeds the "
                             f"{len(self.methods)} methods configured; no model could exempt")
        for key in ("batch_size", "scorecam_batch_size", "overlays"):
            value, least = getattr(self, key), 0 if key == "overlays" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"explain.{key} must be an int >= {least}, got {value!r}")
        if not isinstance(self.exhaustive, bool):
            raise ValueError(f"explain.exhaustive must be true or false, got {self.exhaustive!r}")
        if not isinstance(self.target_layers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.target_layers.items()):
            raise ValueError("explain.target_layers must map model names to module paths like "
                             f"'blocks.-1', got {self.target_layers!r}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "ExplainConfig":
        """Build from params.yaml's `explain:` section (missing keys take the defaults)."""
        entry = dict(section(params, "explain"))
        rule = cams.ExemptionRule(heat=entry.pop("heat", 0.75), min_area=entry.pop("min_area", 0.01),
                                  min_methods=entry.pop("min_methods", 2))
        methods = entry.pop("methods", list(cls.methods))
        if not isinstance(methods, (list, tuple)):
            raise ValueError(f"explain.methods must be a list, got {methods!r}")
        known = set(cls.__dataclass_fields__) - {"methods", "rule"}
        if set(entry) - known:
            raise ValueError(f"explain has unknown keys {sorted(set(entry) - known)}; allowed: "
                             f"methods, heat, min_area, min_methods, {', '.join(sorted(known))}")
        entry["target_layers"] = dict(entry.get("target_layers") or {})
        ordered = tuple(sorted(methods, key=lambda m: cams.METHODS[m].cost if m in cams.METHODS else -1))
        return cls(methods=ordered, rule=rule, **entry)


@dataclass(frozen=True)
class CamModel:
    """A loaded model ready for CAMs: its eval transform, data config and target layer."""

    name: str
    model: torch.nn.Module
    layer_path: str
    layer: torch.nn.Module
    transform: Any
    config: dict[str, Any]
    device: torch.device

    def prepare(self, images: Sequence[Any], boxes: Sequence[Sequence[Sequence[float]]]
                ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """RGB PIL images and their boxes -> (B, 3, H, W) inputs on the device and B box masks."""
        inputs = torch.stack([self.transform(image) for image in images]).to(self.device)
        masks = [box_mask(b, input_geometry(self.transform, *image.size))
                 for image, b in zip(images, boxes)]
        return inputs, masks


@contextlib.contextmanager
def cam_model(spec: ModelSpec, *, device: torch.device, target_layer: str | None = None
              ) -> Iterator[CamModel]:
    """Load one model for CAMs; on exit drop it and restore cuDNN's settings (deterministic
    kernels are used inside, so the same inputs give the same heatmaps). Exceptions pass through."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    model = create_model(spec, device=device).requires_grad_(False)
    try:
        config = data_config(model)
        path, layer = cams.resolve_target_layer(model, architecture=architecture(model),
                                                name=spec.name, override=target_layer,
                                                input_size=config["input_size"])
        logger.info("%s: CAM target layer %s (%s)", spec.name, path, type(layer).__name__)
        yield CamModel(spec.name, model, path, layer, eval_transform(config), config, device)
    finally:
        del model
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
        if device.type == "cuda":
            torch.cuda.empty_cache()


def select_candidates(manifest: pd.DataFrame, votes: pd.DataFrame, *, h3: int) -> pd.DataFrame:
    """The samples the top-5 consensus would remove and that have boxes.

    Args:
        manifest: (N rows) the split's manifest. votes: (N rows) its votes, same order.
        h3: top-5 misses at which the consensus removes a sample.

    Returns:
        One row per candidate, manifest order: image_id, path, label (current), boxes (list of
        [xmin, ymin, xmax, ymax]), models (top5_hit_models).
    """
    formats.check_votes(votes, manifest)
    has_boxes = manifest["boxes"].map(lambda b: b is not None and len(b) > 0).to_numpy(bool)
    chosen = (votes["inactive_reason"].isna().to_numpy() & has_boxes
              & (votes["top5_misses"].fillna(0).to_numpy() >= h3) & votes["label"].notna().to_numpy())
    picked = manifest.loc[chosen]
    labels = votes.loc[chosen, "label"].astype("int64")
    if ((labels < 0) | (labels >= formats.NUM_CLASSES)).any():
        raise ValueError(f"votes hold labels outside 0..{formats.NUM_CLASSES - 1}")
    return pd.DataFrame({
        "image_id": picked["image_id"].to_numpy(),
        "path": picked["path"].to_numpy(),
        "label": labels.to_numpy(),
        "boxes": [[[int(v) for v in box] for box in boxes] for boxes in picked["boxes"]],
        "models": [list(m) for m in votes.loc[chosen, "top5_hit_models"]],
    })


def _pairs_by_model(candidates: pd.DataFrame, names: Sequence[str]) -> dict[str, list[int]]:
    """model -> candidate positions it explains (those whose top-5 hit it)."""
    unknown = sorted({m for models in candidates["models"] for m in models} - set(names))
    if unknown:
        raise ValueError(f"votes name models {unknown} that are not in predict.models {list(names)}; "
                         "re-run `imagenet-clean vote` after changing the ensemble")
    return {name: [i for i, models in enumerate(candidates["models"]) if name in models]
            for name in names}


def _overlay(cm: CamModel, inputs: torch.Tensor, b: int, boxes: list[list[int]],
             result: cams.Explanation, size: tuple[int, int]) -> Image.Image:
    """Input crop, then one heatmap overlay per computed method; the boxes outlined in each."""
    mean = torch.tensor(cm.config["mean"]).view(3, 1, 1)
    std = torch.tensor(cm.config["std"]).view(3, 1, 1)
    rgb = (inputs[b].detach().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    panels = [(rgb * 255).round().astype(np.uint8)]
    panels += [show_cam_on_image(rgb.astype(np.float32), heat_map, use_rgb=True)
               for heat_map in result.heatmaps.values()]
    canvas = Image.fromarray(np.concatenate(panels, axis=1))
    draw = ImageDraw.Draw(canvas)
    geom = input_geometry(cm.transform, *size)
    names = ["input"] + [f"{m} {result.scores[cams.METHODS[m].column]:.3f}" for m in result.heatmaps]
    for k, name in enumerate(names):
        offset = k * geom.width
        for x0, y0, x1, y1 in boxes_to_input(boxes, geom):
            draw.rectangle([offset + float(x0), float(y0), offset + float(x1) - 1, float(y1) - 1],
                           outline=(255, 255, 255))
        draw.text((offset + 2, 2), name, fill=(255, 255, 255))
    return canvas


def _explain_model(cm: CamModel, m_idx: int, candidates: pd.DataFrame, positions: list[int],
                   root: str | Path, config: ExplainConfig, overlays: dict[tuple[int, int], Path],
                   stats: cams.CamStats | None) -> dict[tuple[int, int], cams.Explanation]:
    """Explain one model's candidates in batches -> {(candidate position, model index): result}."""
    results: dict[tuple[int, int], cams.Explanation] = {}
    with tqdm(total=len(positions), desc=f"explain {cm.name}", unit="img", dynamic_ncols=True) as bar:
        for start in range(0, len(positions), config.batch_size):
            batch = positions[start:start + config.batch_size]
            images = [open_image(root, candidates.at[pos, "path"]) for pos in batch]
            boxes = [candidates.at[pos, "boxes"] for pos in batch]
            inputs, masks = cm.prepare(images, boxes)
            keep = any((pos, m_idx) in overlays for pos in batch)
            explained = cams.explain_batch(
                cm.model, cm.layer, inputs, masks, [int(candidates.at[p, "label"]) for p in batch],
                methods=config.methods, rule=config.rule, exhaustive=config.exhaustive,
                keep_heatmaps=keep, scorecam_batch_size=config.scorecam_batch_size, stats=stats)
            for b, (pos, result) in enumerate(zip(batch, explained)):
                if (pos, m_idx) in overlays:
                    with formats.atomic_path(overlays[(pos, m_idx)]) as tmp:
                        _overlay(cm, inputs, b, boxes[b], result, images[b].size).save(tmp, "PNG")
                result.heatmaps = {}
                results[(pos, m_idx)] = result
            bar.update(len(batch))
    return results


def explain_candidates(candidates: pd.DataFrame, root: str | Path, specs: Sequence[ModelSpec], *,
                       config: ExplainConfig = ExplainConfig(), overlay_dir: Path | None = None,
                       stats: cams.CamStats | None = None) -> pa.Table:
    """CAM scores for each (candidate, model whose top-5 holds its label), streaming model by model.

    Args:
        candidates: as `select_candidates` returns (C rows). root: the split's image root.
        specs: the ensemble, `predict.models` order. overlay_dir: where the first
            `config.overlays` pairs' PNGs go (`<image_id>__<model>.png`); None writes none.

    Returns:
        A CAMS_SCHEMA table, candidate order, then ensemble order within a candidate.
    """
    names = [spec.name for spec in specs]
    by_model = _pairs_by_model(candidates, names)
    order = sorted((pos, m_idx) for m_idx, name in enumerate(names) for pos in by_model[name])
    overlays = {} if overlay_dir is None else {
        (pos, m): Path(overlay_dir) / f"{candidates.at[pos, 'image_id']}__{names[m]}.png"
        for pos, m in order[:config.overlays]}
    device = resolve_device(config.device)
    results: dict[tuple[int, int], cams.Explanation] = {}
    for m_idx, spec in enumerate(specs):
        if by_model[spec.name]:
            with cam_model(spec, device=device,
                                target_layer=config.target_layers.get(spec.name)) as cm:
                results.update(_explain_model(cm, m_idx, candidates, by_model[spec.name], root,
                                              config, overlays, stats))
    rows = [results[key] for key in order]
    return pa.table({
        "image_id": [candidates.at[pos, "image_id"] for pos, _ in order],
        "model": [names[m] for _, m in order],
        **{column: [r.scores[column] for r in rows] for column in ("gradcam", "gradcampp", "scorecam")},
        "methods_passed": [r.methods_passed for r in rows],
        "exempted": [r.exempted for r in rows],
    }, schema=CAMS_SCHEMA)


def overlays_dir(split: str) -> Path:
    """`data/cams/<split>-overlays`: heatmap overlay PNGs (empty unless explain.overlays > 0)."""
    return formats.cams_path(split).with_name(f"{split}-overlays")


def run_explain(split: str, params: dict[str, Any]) -> cams.CamStats:
    """Read the manifest, votes and params of a split; write its CAM table and overlays folder."""
    config = ExplainConfig.from_params(params)
    specs = model_specs(params, split_models(params, split))
    h3 = section(params, "decide", split).get("h3")
    if h3 is None:
        raise ValueError(f"params.yaml has no decide.{split}.h3 (the top-5 consensus threshold)")
    h3 = resolve_threshold(h3, len(specs), name=f"decide.{split}.h3")
    manifest = formats.read_manifest(split)
    votes = formats.read_table(formats.votes_path(split), what=f"votes of split {split!r}")
    stale = {int(n) for n in votes["n_models"].dropna().unique()} - {len(specs)}
    if stale:
        raise ValueError(f"votes were cast by {sorted(stale)} models but the split's models "
                         f"(splits.{split}.models or predict.models) are {len(specs)}; re-run "
                         f"`imagenet-clean vote --split {split}`")
    candidates = select_candidates(manifest, votes, h3=h3)
    logger.info("explain %s: %d candidates (top-5 misses >= %d, with boxes), %d pairs", split,
                len(candidates), h3, sum(len(m) for m in candidates["models"]))
    stats = cams.CamStats()
    with formats.atomic_folder(overlays_dir(split)) as tmp:
        table = explain_candidates(candidates, split_params(params, split)["root"], specs,
                                   config=config, overlay_dir=tmp, stats=stats)
    formats.write_table(table, formats.cams_path(split), schema=CAMS_SCHEMA)
    skipped = stats.pairs - stats.calls.get("scorecam", 0) if "scorecam" in config.methods else 0
    logger.info("explain %s: %d pairs, %d exempting; heatmaps %s; seconds %s; Score-CAM skipped "
                "for %d pairs", split, table.num_rows, sum(table.column("exempted").to_pylist()),
                stats.calls, {k: round(v, 1) for k, v in stats.seconds.items()}, skipped)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.explain --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="explain", doc=__doc__, run=run_explain)


if __name__ == "__main__":
    run_as_script(main)
