"""The explainability veto (paper step 4): CAM scores of the rows the top-5 consensus would remove.

Candidates are the active rows with boxes whose top-5 misses reach h3; each is explained by every
model whose top-5 contains its label, with the configured methods, cheapest first; a model exempts
the row when enough methods find the label's heat inside the boxes (`stages.method.cams`).
Models are loaded one at a time; under torchrun each process explains a share of the batches.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from PIL import Image, ImageDraw
from pytorch_grad_cam.utils.image import show_cam_on_image
from tqdm import tqdm

from stages.contracts import formats
from stages.contracts.config import from_section, positive, require
from stages.contracts.errors import ConfigError
from stages.contracts.formats import CAMS_SCHEMA
from stages.contracts.params import section
from stages.contracts.splits import Params, SplitEntry
from stages.method import cams
from stages.method.thresholds import consensus_threshold
from stages.modelling import distributed
from stages.modelling.models import (
    architecture,
    create_model,
    data_config,
    eval_transform,
    resolve_device,
)
from stages.modelling.specs import ModelSpec, model_specs
from stages.sources.boxes import box_mask, boxes_to_input, input_geometry
from stages.sources.images import open_image

logger = logging.getLogger(__name__)

Results = dict[tuple[int, int], cams.Explanation]
"""(candidate position, model index) -> its explanation."""
Pngs = dict[tuple[int, int], bytes]
"""(candidate position, model index) -> its overlay PNG bytes."""


@dataclass(frozen=True)
class CamOptions:
    """The `explain:` params section (built by `stages.contracts.config.from_section`).

    Attributes:
        methods: CAM methods; kept sorted cheapest first.
        heat, min_area, min_methods: the exemption rule (`rule`).
        exhaustive: run every method on every pair (no early exit).
        batch_size: images per Grad-CAM/Grad-CAM++ batch. scorecam_batch_size: masked copies per
            Score-CAM forward. device: auto | cpu | cuda[:N].
        target_layers: model name -> dotted module path overrides. overlays: PNGs to write.
        processes: processes on this machine (> 1: the stage starts itself under torchrun); each
            explains a share of the candidates. Results do not depend on it.
        max_pairs: refuse a run of more (candidate, model) pairs than this, before any model is
            loaded (`ExplainPlan.check`); None: no limit.
    """

    methods: tuple[Literal["gradcam", "gradcam++", "scorecam"], ...] = (
        "gradcam",
        "gradcam++",
        "scorecam",
    )
    heat: float = 0.75
    min_area: float = 0.01
    min_methods: int = 2
    exhaustive: bool = False
    batch_size: int = 16
    scorecam_batch_size: int = 128
    device: str = "auto"
    target_layers: dict[str, str] = field(default_factory=dict, hash=False)
    overlays: int = 0
    processes: int = 1
    max_pairs: int | None = 20000

    def __post_init__(self) -> None:
        require(
            bool(self.methods) and len(set(self.methods)) == len(self.methods),
            "explain.methods",
            f"distinct names from {list(cams.METHODS)}",
            list(self.methods),
        )
        require(
            self.min_methods <= len(self.methods),
            "explain.min_methods",
            f"at most the {len(self.methods)} methods configured (else no model could exempt)",
            self.min_methods,
        )
        _ = self.rule  # building the rule checks heat, min_area and min_methods
        for key in ("batch_size", "scorecam_batch_size", "processes"):
            positive(f"explain.{key}", getattr(self, key))
        positive("explain.overlays", self.overlays, minimum=0)
        positive("explain.max_pairs", self.max_pairs, minimum=0)
        object.__setattr__(
            self, "methods", tuple(sorted(self.methods, key=lambda m: cams.METHODS[m].cost))
        )

    @property
    def rule(self) -> cams.ExemptionRule:
        """The exemption rule: heat, min_area, min_methods."""
        return cams.ExemptionRule(
            heat=self.heat, min_area=self.min_area, min_methods=self.min_methods
        )

    @classmethod
    def from_params(cls, params: Params) -> CamOptions:
        """Build from params.yaml's `explain:` section (missing keys take the defaults).

        Raises:
            ConfigError: an unknown or mistyped key or an out-of-range value, naming it.
        """
        return from_section(cls, section(params, "explain"), where="explain")


@dataclass(frozen=True)
class ExplainConfig:
    """Everything explain reads for one split.

    Attributes:
        split: the split; specs: its models (vote order); root: its image root.
        h3: the top-5 misses at which the consensus would remove a row (`decide.<split>.h3`).
        options: the `explain:` section.
    """

    split: str
    specs: tuple[ModelSpec, ...]
    root: str
    h3: int
    options: CamOptions

    @classmethod
    def from_params(cls, params: Params, split: str) -> ExplainConfig:
        """Raises ConfigError for a bad `explain:` section, split entry or `decide.<split>`."""
        entry = SplitEntry.from_params(params, split)
        specs = tuple(model_specs(params, entry.models(params)))
        return cls(
            split,
            specs,
            entry.root,
            consensus_threshold(params, split),
            CamOptions.from_params(params),
        )


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

    def prepare(
        self, images: Sequence[Any], boxes: Sequence[Sequence[Sequence[float]]]
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """RGB PIL images and their boxes -> (B, 3, H, W) inputs on the device and B box masks."""
        inputs = torch.stack([self.transform(image) for image in images]).to(self.device)
        masks = [
            box_mask(b, input_geometry(self.transform, *image.size))
            for image, b in zip(images, boxes)
        ]
        return inputs, masks


@contextlib.contextmanager
def cam_model(
    spec: ModelSpec, *, device: torch.device, target_layer: str | None = None
) -> Iterator[CamModel]:
    """Load one model for CAMs; on exit drop it and restore cuDNN's settings (deterministic
    kernels are used inside, so the same inputs give the same heatmaps). Exceptions pass through."""
    spec.require_weights()
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    model = None
    try:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        model = create_model(spec, device=device).requires_grad_(False)
        config = data_config(model)
        path, layer = cams.resolve_target_layer(
            model,
            architecture=architecture(model),
            name=spec.name,
            override=target_layer,
            input_size=config["input_size"],
        )
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
    chosen = (
        votes["inactive_reason"].isna().to_numpy()
        & has_boxes
        & (votes["top5_misses"].fillna(0).to_numpy() >= h3)
        & votes["label"].notna().to_numpy()
    )
    picked = manifest.loc[chosen]
    labels = votes.loc[chosen, "label"].astype("int64")
    if ((labels < 0) | (labels >= formats.NUM_CLASSES)).any():
        raise ValueError(f"votes hold labels outside 0..{formats.NUM_CLASSES - 1}")
    return pd.DataFrame(
        {
            "image_id": picked["image_id"].to_numpy(),
            "path": picked["path"].to_numpy(),
            "label": labels.to_numpy(),
            "boxes": [[[int(v) for v in box] for box in boxes] for boxes in picked["boxes"]],
            "models": [list(m) for m in votes.loc[chosen, "top5_hit_models"]],
        }
    )


SECONDS_PER_PAIR = {"cpu": 1.1, "cuda": 0.05}
"""Rough cost of one (candidate, model) pair, image decoding and the early-exit Score-CAM share
included: CPU measured on the demo models at 50k rows (2 cores, docs/explain.md); GPU assumed
(no GPU was available to measure it). Only used to print the plan before the run."""


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class ExplainPlan:
    """What an explain run will do, known before any model loads: its candidates, its (candidate,
    model) pairs per model, and the time that takes at `SECONDS_PER_PAIR` on each device."""

    split: str
    candidates: int
    pairs_by_model: dict[str, int]
    device: str
    processes: int = 1

    @property
    def pairs(self) -> int:
        """(candidate, model) pairs: one CAM run (up to three methods) each."""
        return sum(self.pairs_by_model.values())

    def seconds(self, device: str) -> float:
        """Estimated wall time on `device` ("cpu" or "cuda"), shared by the processes."""
        return self.pairs * SECONDS_PER_PAIR[device] / max(1, self.processes)

    def describe(self) -> str:
        """One line: pairs, per model, the estimate on CPU and GPU and where it will run."""
        per_model = ", ".join(f"{m} {n}" for m, n in self.pairs_by_model.items() if n)
        return (
            f"explain {self.split}: {self.candidates} candidates, {self.pairs} (image, model) "
            f"pairs ({per_model or 'none'}); estimated {_duration(self.seconds('cpu'))} on CPU, "
            f"{_duration(self.seconds('cuda'))} on a GPU (runs on {self.device}, "
            f"{self.processes} process{'es' if self.processes > 1 else ''})"
        )

    def check(self, max_pairs: int | None) -> None:
        """Raise ConfigError, naming the fixes, when the run has more pairs than `max_pairs`."""
        if max_pairs is None or self.pairs <= max_pairs:
            return
        raise ConfigError(
            f"explain {self.split} would compute CAMs for {self.pairs} (image, model) pairs "
            f"(about {_duration(self.seconds('cpu'))} on CPU, "
            f"{_duration(self.seconds('cuda'))} on a GPU), more than params.yaml "
            f"`explain.max_pairs` = {max_pairs}; raise explain.max_pairs (null: no limit), "
            "run on GPUs (explain.device: cuda, explain.processes: one per GPU), or explain "
            f"fewer candidates (a higher decide.{self.split}.h3)"
        )


def plan_explain(
    split: str, candidates: pd.DataFrame, names: Sequence[str], options: CamOptions
) -> ExplainPlan:
    """The plan of explaining `candidates` (as `select_candidates` returns) with models `names`
    on `options.device` by `options.processes` processes."""
    by_model = _pairs_by_model(candidates, names)
    return ExplainPlan(
        split,
        len(candidates),
        {m: len(p) for m, p in by_model.items()},
        resolve_device(options.device).type,
        options.processes,
    )


def _pairs_by_model(candidates: pd.DataFrame, names: Sequence[str]) -> dict[str, list[int]]:
    """Model -> candidate positions it explains (those whose top-5 hit it)."""
    unknown = sorted({m for models in candidates["models"] for m in models} - set(names))
    if unknown:
        raise ValueError(
            f"votes name models {unknown} that are not in predict.models {list(names)}; "
            "re-run `imagenet-clean vote` after changing the ensemble"
        )
    return {
        name: [i for i, models in enumerate(candidates["models"]) if name in models]
        for name in names
    }


def _overlay(
    cm: CamModel,
    inputs: torch.Tensor,
    b: int,
    boxes: list[list[int]],
    result: cams.Explanation,
    size: tuple[int, int],
) -> Image.Image:
    """Input crop, then one heatmap overlay per computed method; the boxes outlined in each."""
    mean = torch.tensor(cm.config["mean"]).view(3, 1, 1)
    std = torch.tensor(cm.config["std"]).view(3, 1, 1)
    rgb = (inputs[b].detach().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    panels = [(rgb * 255).round().astype(np.uint8)]
    panels += [
        show_cam_on_image(rgb.astype(np.float32), heat_map, use_rgb=True)
        for heat_map in result.heatmaps.values()
    ]
    canvas = Image.fromarray(np.concatenate(panels, axis=1))
    draw = ImageDraw.Draw(canvas)
    geom = input_geometry(cm.transform, *size)
    names = ["input"] + [
        f"{m} {result.scores[cams.METHODS[m].column]:.3f}" for m in result.heatmaps
    ]
    for k, name in enumerate(names):
        offset = k * geom.width
        for x0, y0, x1, y1 in boxes_to_input(boxes, geom):
            draw.rectangle(
                [offset + float(x0), float(y0), offset + float(x1) - 1, float(y1) - 1],
                outline=(255, 255, 255),
            )
        draw.text((offset + 2, 2), name, fill=(255, 255, 255))
    return canvas


def _explain_model(
    cm: CamModel,
    m_idx: int,
    candidates: pd.DataFrame,
    positions: list[int],
    root: str | Path,
    config: CamOptions,
    overlays: dict[tuple[int, int], Path],
    stats: cams.CamStats | None,
) -> tuple[Results, Pngs]:
    """Explain one model's candidates in batches -> ({(candidate position, model index): result},
    {(position, model index): overlay PNG bytes} for the pairs in `overlays`)."""
    results: Results = {}
    pngs: Pngs = {}
    with tqdm(
        total=len(positions), desc=f"explain {cm.name}", unit="img", dynamic_ncols=True
    ) as bar:
        for start in range(0, len(positions), config.batch_size):
            batch = positions[start : start + config.batch_size]
            images = [open_image(root, str(candidates["path"][pos])) for pos in batch]
            boxes: list[list[list[int]]] = [candidates["boxes"][pos] for pos in batch]
            inputs, masks = cm.prepare(images, boxes)
            keep = any((pos, m_idx) in overlays for pos in batch)
            explained = cams.explain_batch(
                cm.model,
                cm.layer,
                inputs,
                masks,
                [int(candidates["label"][p]) for p in batch],
                methods=config.methods,
                rule=config.rule,
                exhaustive=config.exhaustive,
                keep_heatmaps=keep,
                scorecam_batch_size=config.scorecam_batch_size,
                stats=stats,
            )
            for b, (pos, result) in enumerate(zip(batch, explained)):
                if (pos, m_idx) in overlays:
                    buffer = io.BytesIO()
                    _overlay(cm, inputs, b, boxes[b], result, images[b].size).save(buffer, "PNG")
                    pngs[(pos, m_idx)] = buffer.getvalue()
                result.heatmaps = {}
                results[(pos, m_idx)] = result
            bar.update(len(batch))
    return results, pngs


def _rank_positions(positions: list[int], batch_size: int, ctx: distributed.Context) -> list[int]:
    """This rank's share of a model's candidates, whole batches at a time, so every batch holds the
    candidates it holds in one process (CAM arithmetic can depend on the batch it runs in)."""
    batches = [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]
    return [pos for batch in ctx.share(batches) for pos in batch]


def _merge(
    parts: list[tuple[Results, Pngs, cams.CamStats]], stats: cams.CamStats | None
) -> tuple[Results, Pngs]:
    """Every rank's (results, overlay PNGs, work done) -> one results dict and one PNG dict."""
    results: Results = {}
    pngs: Pngs = {}
    for part_results, part_pngs, part_stats in parts:
        results.update(part_results)
        pngs.update(part_pngs)
        if stats is not None:
            for method, calls in part_stats.calls.items():
                stats.add(method, calls, part_stats.seconds[method])
            stats.pairs += part_stats.pairs
    return results, pngs


def explain_candidates(
    candidates: pd.DataFrame,
    root: str | Path,
    specs: Sequence[ModelSpec],
    *,
    config: CamOptions = CamOptions(),
    overlay_dir: Path | None = None,
    stats: cams.CamStats | None = None,
) -> pa.Table:
    """CAM scores for each (candidate, model whose top-5 holds its label), streaming model by model.

    Under torchrun each rank explains a share of each model's batches of candidates; every rank
    returns the whole table, and rank 0 alone writes the overlays.

    Args:
        candidates: as `select_candidates` returns (C rows). root: the split's image root.
        specs: the ensemble, `predict.models` order. overlay_dir: where the first
            `config.overlays` pairs' PNGs go (`<image_id>__<model>.png`, listed in
            `index.json`); None writes none.

    Returns:
        A CAMS_SCHEMA table, candidate order, then ensemble order within a candidate.
    """
    names = [spec.name for spec in specs]
    by_model = _pairs_by_model(candidates, names)
    order = sorted((pos, m_idx) for m_idx, name in enumerate(names) for pos in by_model[name])
    overlays = (
        {}
        if overlay_dir is None
        else {
            (pos, m): Path(overlay_dir) / f"{candidates['image_id'][pos]}__{names[m]}.png"
            for pos, m in order[: config.overlays]
        }
    )
    ctx = distributed.context()
    device = distributed.device_for(config.device, ctx)
    own: tuple[Results, Pngs, cams.CamStats] = ({}, {}, cams.CamStats())
    for m_idx, spec in enumerate(specs):
        positions = _rank_positions(by_model[spec.name], config.batch_size, ctx)
        if positions:
            with cam_model(
                spec, device=device, target_layer=config.target_layers.get(spec.name)
            ) as cm:
                done, pngs = _explain_model(
                    cm, m_idx, candidates, positions, root, config, overlays, own[2]
                )
                own[0].update(done)
                own[1].update(pngs)
    results, pngs = _merge(distributed.gather(own, ctx), stats)
    if ctx.is_main:
        for key, data in pngs.items():
            with formats.atomic_path(overlays[key]) as tmp:
                tmp.write_bytes(data)
        if overlay_dir is not None:
            write_overlay_index(overlay_dir, sorted(overlays[key].name for key in pngs), config)
    rows = [results[key] for key in order]
    return pa.table(
        {
            "image_id": [candidates.at[pos, "image_id"] for pos, _ in order],
            "model": [names[m] for _, m in order],
            **{
                column: [r.scores[column] for r in rows]
                for column in ("gradcam", "gradcampp", "scorecam")
            },
            "methods_passed": [r.methods_passed for r in rows],
            "exempted": [r.exempted for r in rows],
        },
        schema=CAMS_SCHEMA,
    )


OVERLAY_INDEX = "index.json"
"""The overlays folder's listing: always written, so the folder is never empty (DVC warns of an
empty output folder) and a reader sees which pairs have a picture."""


def write_overlay_index(folder: Path, files: Sequence[str], config: CamOptions) -> None:
    """`<folder>/index.json`: the overlay PNGs written and the `explain.overlays` limit."""
    index = {"explain.overlays": config.overlays, "files": list(files)}
    formats.write_json(index, Path(folder) / OVERLAY_INDEX)


def overlays_dir(split: str) -> Path:
    """`data/cams/<split>-overlays`: heatmap overlay PNGs (empty unless explain.overlays > 0)."""
    return formats.cams_path(split).with_name(f"{split}-overlays")
