"""Class activation maps for the explainability veto: box masks, target layers, heatmaps, scores.

The explainability score of a heatmap is the fraction of the pixels inside the label's boxes (their
union) whose heat is >= `heat`. Boxes are mapped into the heatmap's space by `stages.sources.boxes`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from stages.adapters import gradcam_adapter
from stages.contracts.config import fraction, positive, require

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- scoring


def explainability_score(heatmap: np.ndarray, mask: np.ndarray, *, heat: float) -> float:
    """Fraction of the mask's pixels whose heat is >= `heat`; 0.0 for an empty mask.

    Args:
        heatmap: (H, W) heat in [0, 1].
        mask: (H, W) bool, the union of the label's boxes at input resolution.
    """
    if heatmap.shape != mask.shape:
        raise ValueError(
            f"heatmap {heatmap.shape} and box mask {mask.shape} differ in shape; map "
            "the boxes with the model's own input_geometry"
        )
    inside = int(mask.sum())
    if inside == 0:
        return 0.0
    return int(np.count_nonzero(heatmap[mask] >= heat)) / inside


@dataclass(frozen=True)
class ExemptionRule:
    """The paper's veto: a method passes at score >= min_area; a model exempts at >= min_methods."""

    heat: float = 0.75
    min_area: float = 0.01
    min_methods: int = 2

    def __post_init__(self) -> None:
        for name in ("heat", "min_area"):
            value = getattr(self, name)
            require(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                f"explain.{name}",
                "a number",
                value,
            )
            fraction(f"explain.{name}", value, low_open=True)
        require(
            isinstance(self.min_methods, int) and not isinstance(self.min_methods, bool),
            "explain.min_methods",
            "an int",
            self.min_methods,
        )
        positive("explain.min_methods", self.min_methods)

    def passes(self, score: float | None) -> bool:
        """Whether one method's score passes (None: not computed -> does not pass)."""
        return score is not None and score >= self.min_area

    def methods_passed(self, scores: Sequence[float | None]) -> int:
        """How many of one model's per-method scores pass."""
        return sum(self.passes(s) for s in scores)

    def exempts(self, scores: Sequence[float | None]) -> bool:
        """Whether a model with these per-method scores exempts the sample."""
        return self.methods_passed(scores) >= self.min_methods

    def undecided(self, passed: int, remaining: int) -> bool:
        """Whether `remaining` more methods can still change the outcome after `passed` passes."""
        return passed < self.min_methods <= passed + remaining


# ----------------------------------------------------------------------------- target layers

FAMILY_LAYERS: dict[str, str] = {
    r"^mobilenetv1": "blocks.-1",  # conv_head and bn2 are Identity
    r"^(tf_)?(mobilenetv2|efficientnet|efficientnetv2|mnasnet|spnasnet|mixnet)": "bn2",
    r"^(resnet|resnext|wide_resnet|seresnet|seresnext|ecaresnet|skresnet)\d": "layer4",
}
"""Architecture-name pattern -> dotted path of its last spatial feature map."""


def module_at(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """The submodule at a dotted path; integers index sequences (negative from the end)."""
    module = model
    for part in path.split("."):
        try:
            if re.fullmatch(r"-?\d+", part):
                # torch's stubs give Module no __getitem__; Sequential and ModuleList have one
                # (on any other module this raises TypeError, caught below)
                module = module[int(part)]  # type: ignore[index]
            else:
                module = getattr(module, part)
        except (AttributeError, IndexError, TypeError, KeyError) as error:
            children = [name for name, _ in module.named_children()]
            raise ValueError(
                f"target layer path {path!r}: no {part!r} under "
                f"{type(module).__name__} (children: {children})"
            ) from error
    if not isinstance(module, torch.nn.Module):
        raise ValueError(
            f"target layer path {path!r} names a {type(module).__name__}, not a module"
        )
    return module


def _last_spatial_child(model: torch.nn.Module, input_size: Sequence[int]) -> str | None:
    """Generic rule: the last direct child, in execution order, whose output is the NCHW feature
    map that `forward_features` returns (None when that output is not NCHW: a ViT's tokens, or a
    Swin's NHWC map, whose dim 1 is not timm's `num_features`)."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, child in model.named_children():
        if isinstance(child, torch.nn.Identity):
            continue
        handles.append(
            child.register_forward_hook(
                lambda _m, _i, out, _n=name: (
                    seen.append((_n, tuple(out.shape))) if isinstance(out, torch.Tensor) else None
                )
            )
        )
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            dummy = torch.zeros(1, *input_size, device=device)
            features = getattr(model, "forward_features", None)
            out = features(dummy) if features is not None else model(dummy)
    finally:
        for handle in handles:
            handle.remove()
    channels = getattr(model, "num_features", None)
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or channels not in (None, out.shape[1]):
        return None
    matches = [name for name, shape in seen if shape == tuple(out.shape)]
    return matches[-1] if matches else None


def resolve_target_layer(
    model: torch.nn.Module,
    *,
    architecture: str,
    name: str,
    override: str | None = None,
    input_size: Sequence[int] = (3, 224, 224),
) -> tuple[str, torch.nn.Module]:
    """The CAM target layer of a model -> (dotted path, module).

    Order: the params override (`explain.target_layers.<name>`), the first FAMILY_LAYERS pattern
    that matches `architecture` (when that module exists and is not Identity), then the generic
    rule.

    Raises:
        ValueError: an override path that does not resolve, or an architecture with no rule whose
            features are not an NCHW map.
    """
    if override is not None:
        return override, module_at(model, override)
    for pattern, path in FAMILY_LAYERS.items():
        if re.match(pattern, architecture):
            try:
                module = module_at(model, path)
            except ValueError:
                break
            if not isinstance(module, torch.nn.Identity):
                return path, module
            break
    child = _last_spatial_child(model, input_size)
    if child is None:
        raise ValueError(
            f"cannot resolve a target layer for model {name!r} (architecture "
            f"{architecture!r}): no family rule and its features are not a spatial "
            f"map; set explain.target_layers.{name} to a module path like 'blocks.-1'"
        )
    return child, module_at(model, child)


# ----------------------------------------------------------------------------- heatmaps


@dataclass(frozen=True)
class CamMethod:
    """A CAM method: its params name, its column in the CAM table, its cost rank, its class."""

    name: str
    column: str
    cost: int
    cam_class: type
    uses_gradients: bool


METHODS: dict[str, CamMethod] = {
    "gradcam": CamMethod("gradcam", "gradcam", 0, GradCAM, True),
    "gradcam++": CamMethod("gradcam++", "gradcampp", 1, GradCAMPlusPlus, True),
    "scorecam": CamMethod("scorecam", "scorecam", 2, ScoreCAM, False),
}
"""The methods `explain.methods` may name, cheapest first by `cost`."""


def heatmaps(
    method: str,
    model: torch.nn.Module,
    layer: torch.nn.Module,
    inputs: torch.Tensor,
    labels: Sequence[int],
    *,
    scorecam_batch_size: int = 128,
) -> np.ndarray:
    """CAM heatmaps for each input's label -> (B, H, W) float32 in [0, 1] at input resolution.

    Args:
        inputs: (B, 3, H, W) preprocessed inputs on the model's device.
        labels: (B,) class indices to explain.
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {sorted(METHODS)}")
    targets = [ClassifierOutputTarget(int(label)) for label in labels]
    if METHODS[method].uses_gradients:
        # Gradients flow from the input, so a frozen model (see cam_model) still gets its
        # target layer's gradients without computing any weight gradients.
        inputs = inputs.detach().requires_grad_(True)
        with (
            torch.enable_grad(),
            gradcam_adapter.open_cam(METHODS[method].cam_class, model, layer) as cam,
        ):
            heatmaps: np.ndarray = cam(input_tensor=inputs, targets=targets)
            return heatmaps
    maps = []
    with (
        torch.no_grad(),
        gradcam_adapter.quiet_progress(),
        gradcam_adapter.open_cam(
            METHODS[method].cam_class, model, layer, scorecam_batch_size=scorecam_batch_size
        ) as cam,
    ):
        for i, target in enumerate(targets):  # one image at a time: (C, 3, H, W) masked copies
            maps.append(cam(input_tensor=inputs[i : i + 1], targets=[target]))
    return np.concatenate(maps).astype(np.float32, copy=False)


@dataclass
class Explanation:
    """One (sample, model) result: per-method scores (None = not computed), the veto outcome,
    and the heatmaps when asked for."""

    scores: dict[str, float | None]
    methods_passed: int
    exempted: bool
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class CamStats:
    """Work done: heatmaps computed and seconds spent per method; pairs seen."""

    calls: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    pairs: int = 0

    def add(self, method: str, calls: int, seconds: float) -> None:
        """Count `calls` heatmaps and `seconds` spent on `method`."""
        self.calls[method] = self.calls.get(method, 0) + calls
        self.seconds[method] = self.seconds.get(method, 0.0) + seconds


def explain_batch(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    inputs: torch.Tensor,
    masks: Sequence[np.ndarray],
    labels: Sequence[int],
    *,
    methods: Sequence[str],
    rule: ExemptionRule,
    exhaustive: bool = False,
    keep_heatmaps: bool = False,
    scorecam_batch_size: int = 128,
    stats: CamStats | None = None,
) -> list[Explanation]:
    """Score a batch with each method, cheapest first; without `exhaustive`, a method runs only
    for the samples whose exemption it can still change.

    Args:
        inputs: (B, 3, H, W) on the model's device; masks: B x (H, W) bool; labels: (B,).
    """
    ordered = sorted(methods, key=lambda m: METHODS[m].cost)
    results = [Explanation({METHODS[m].column: None for m in METHODS}, 0, False) for _ in labels]
    for position, method in enumerate(ordered):
        remaining = len(ordered) - position
        todo = [
            b
            for b, r in enumerate(results)
            if exhaustive or rule.undecided(r.methods_passed, remaining)
        ]
        if not todo:
            continue
        started = time.perf_counter()
        maps = heatmaps(
            method,
            model,
            layer,
            inputs[todo],
            [labels[b] for b in todo],
            scorecam_batch_size=scorecam_batch_size,
        )
        if stats is not None:
            stats.add(method, len(todo), time.perf_counter() - started)
        for heat_map, b in zip(maps, todo):
            score = explainability_score(heat_map, masks[b], heat=rule.heat)
            results[b].scores[METHODS[method].column] = score
            results[b].methods_passed += int(rule.passes(score))
            if keep_heatmaps:
                results[b].heatmaps[method] = heat_map
    for result in results:
        result.exempted = result.methods_passed >= rule.min_methods
    if stats is not None:
        stats.pairs += len(results)
    return results
