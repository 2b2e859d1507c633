"""stages.method.cams: scoring, target layers, real CAMs (box mapping: test_boxes.py).

Real demo images and the real demo models (mobilenetv1_025 at 128 px: 256 channels, so Score-CAM is
cheap); models built with pretrained=False (resnet18, convnext_atto, vit_tiny) only exercise the
target-layer rules, which depend on architecture, not weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from stages.method import cams
from stages.method.exemptions import CamModel, cam_model
from stages.modelling.specs import ModelSpec, model_specs
from stages.sources.boxes import box_mask, input_geometry
from stages.sources.images import open_image

CONFIDENT_IMAGE = (
    "ILSVRC2012_val_00000890"  # mobilenetv1_025: p(label 25) = 0.92, box [73, 9, 187, 193]
)


def v1_spec(params: dict) -> ModelSpec:
    """The mobilenetv1_025 demo model with an absolute folder (module fixtures run before chdir)."""
    spec = model_specs(params, ["mobilenetv1_025"])[0]
    folder = Path(__file__).resolve().parents[2] / spec.spec.removeprefix("local-dir:")
    return ModelSpec(spec.name, f"local-dir:{folder}")


def hook_count(model: torch.nn.Module) -> int:
    """Registered forward/backward (pre-)hooks over all modules."""
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


@pytest.fixture(scope="module")
def cam_v1(_params: dict) -> CamModel:
    with cam_model(v1_spec(_params), device=torch.device("cpu")) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def demo_rows(demo_manifest):
    return demo_manifest.set_index("image_id")


def _boxes(row) -> list[list[int]]:
    return [[int(v) for v in box] for box in row.boxes]


# ----------------------------------------------------------------------------- scoring


def test_explainability_score_counts_hot_box_pixels() -> None:
    heat = np.zeros((4, 4), np.float32)
    heat[0, :2] = [0.75, 0.9]
    heat[1, 0] = 0.74
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    assert cams.explainability_score(heat, mask, heat=0.75) == 0.5
    assert cams.explainability_score(heat, np.zeros((4, 4), bool), heat=0.75) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        cams.explainability_score(heat, np.zeros((3, 4), bool), heat=0.75)


def test_exemption_rule_outcomes_and_validation() -> None:
    rule = cams.ExemptionRule()
    assert rule.exempts([0.01, 0.5, None]) and not rule.exempts([0.0099, 0.5, None])
    assert rule.undecided(1, 1) and not rule.undecided(2, 1) and not rule.undecided(0, 1)
    assert rule.undecided(0, 3) and rule.undecided(0, 2)
    with pytest.raises(ValueError, match="min_area"):
        cams.ExemptionRule(min_area=0.0)
    with pytest.raises(ValueError, match="heat"):
        cams.ExemptionRule(heat=1.5)
    with pytest.raises(ValueError, match="min_methods"):
        cams.ExemptionRule(min_methods=0)


# ----------------------------------------------------------------------------- target layers


def test_target_layers_by_family_override_fallback_and_error(cam_v1: CamModel, _params) -> None:
    assert cam_v1.layer_path == "blocks.-1" and cam_v1.layer is cam_v1.model.blocks[-1]
    v2 = timm.create_model("mobilenetv2_100", pretrained=False)
    assert cams.resolve_target_layer(v2, architecture="mobilenetv2_100", name="m")[0] == "bn2"
    resnet = timm.create_model("resnet18", pretrained=False)
    path, layer = cams.resolve_target_layer(resnet, architecture="resnet18", name="r")
    assert path == "layer4" and layer is resnet.layer4
    path, layer = cams.resolve_target_layer(
        v2, architecture="mobilenetv2_100", name="m", override="blocks.-2.0"
    )
    assert layer is v2.blocks[-2][0]
    convnext = timm.create_model("convnext_atto", pretrained=False)
    assert (
        cams.resolve_target_layer(convnext, architecture="convnext_atto", name="c")[0] == "stages"
    )
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    with pytest.raises(
        ValueError, match=r"cannot resolve a target layer for model 'v'.*target_layers\.v"
    ):
        cams.resolve_target_layer(vit, architecture="vit_tiny_patch16_224", name="v")
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        embed_dim=16,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
    )  # NHWC features
    with pytest.raises(ValueError, match="cannot resolve a target layer"):
        cams.resolve_target_layer(swin, architecture="swin_tiny_patch4_window7_224", name="s")
    with pytest.raises(ValueError, match=r"'nope'.*children"):
        cams.resolve_target_layer(
            v2, architecture="mobilenetv2_100", name="m", override="blocks.nope"
        )


# ----------------------------------------------------------------------------- real CAMs


def test_heatmaps_in_unit_range_at_input_resolution(cam_v1, demo_rows, demo_root) -> None:
    row = demo_rows.loc[CONFIDENT_IMAGE]
    inputs, _ = cam_v1.prepare([open_image(demo_root, row.path)], [_boxes(row)])
    for method in cams.METHODS:
        maps = cams.heatmaps(method, cam_v1.model, cam_v1.layer, inputs, [int(row.label)])
        assert maps.shape == (1, 128, 128) and maps.dtype == np.float32
        assert maps.min() >= 0.0 and maps.max() <= 1.0 and maps.max() > 0.9, method


def test_object_box_scores_higher_than_an_empty_corner(cam_v1, demo_rows, demo_root) -> None:
    row = demo_rows.loc[CONFIDENT_IMAGE]
    image = open_image(demo_root, row.path)
    inputs, (box,) = cam_v1.prepare([image], [_boxes(row)])
    with torch.no_grad():
        assert cam_v1.model(inputs).softmax(-1)[0, int(row.label)] > 0.8
    corner = box_mask([[0, 0, 60, 60]], input_geometry(cam_v1.transform, *image.size))
    assert box.mean() > 0.3 and corner.any() and not (corner & box).any()
    for method in ("gradcam", "gradcam++"):
        heat = cams.heatmaps(method, cam_v1.model, cam_v1.layer, inputs, [int(row.label)])[0]
        on_box = cams.explainability_score(heat, box, heat=0.75)
        in_corner = cams.explainability_score(heat, corner, heat=0.75)
        assert on_box > in_corner + 0.05, (method, on_box, in_corner)


def test_hooks_released_over_50_calls_and_errors_pass_through(_params) -> None:
    with cam_model(v1_spec(_params), device=torch.device("cpu")) as loaded:
        model, layer = loaded.model, loaded.layer
        before = hook_count(model)
        tiny = torch.randn(1, 3, 32, 32)  # a 1x1 feature map keeps Score-CAM cheap
        for call in range(50):
            method = "scorecam" if call % 10 == 9 else ("gradcam", "gradcam++")[call % 2]
            cams.heatmaps(method, model, layer, tiny, [1], scorecam_batch_size=256)
        assert hook_count(model) == before
        with pytest.raises(IndexError):  # pytorch-grad-cam's own __exit__ would swallow this
            cams.heatmaps("gradcam", model, layer, tiny, [5000, 1])
        assert hook_count(model) == before


def test_early_exit_decisions_equal_exhaustive(cam_v1, demo_manifest, demo_root) -> None:
    rows = demo_manifest.iloc[10:14]
    images = [open_image(demo_root, p) for p in rows.path]
    inputs, masks = cam_v1.prepare(images, [_boxes(r) for r in rows.itertuples()])
    labels = [int(v) for v in rows.label]
    methods = ["scorecam", "gradcam", "gradcam++"]
    full = cams.explain_batch(
        cam_v1.model,
        cam_v1.layer,
        inputs,
        masks,
        labels,
        methods=methods,
        rule=cams.ExemptionRule(),
        exhaustive=True,
        scorecam_batch_size=256,
    )
    assert all(r.scores["scorecam"] is not None for r in full)
    saved = ran = 0
    for rule in (
        cams.ExemptionRule(),
        cams.ExemptionRule(min_area=0.3),
        cams.ExemptionRule(min_methods=3),
    ):
        stats = cams.CamStats()
        quick = cams.explain_batch(
            cam_v1.model,
            cam_v1.layer,
            inputs,
            masks,
            labels,
            methods=methods,
            rule=rule,
            stats=stats,
            scorecam_batch_size=256,
        )
        for f, q in zip(full, quick):
            scores = [f.scores[c] for c in ("gradcam", "gradcampp", "scorecam")]
            assert q.exempted == rule.exempts(scores)
            assert q.scores["gradcam"] == f.scores["gradcam"]
            if q.scores["scorecam"] is not None:
                assert q.scores["scorecam"] == f.scores["scorecam"]
        saved += len(labels) - stats.calls.get("scorecam", 0)
        ran += stats.calls.get("scorecam", 0)
    assert saved > 0 and ran > 0  # both paths of the early exit were taken


def test_scorecam_is_silent_batched_as_asked_and_warnings_still_show(
    cam_v1, demo_rows, demo_root, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ScoreCAM's own per-image tqdm bar is hidden; its documented `batch_size` sets the masked
    copies per forward (256 channels / 64 = 4 forwards); a warning raised inside is not lost."""
    row = demo_rows.loc[CONFIDENT_IMAGE]
    inputs, _ = cam_v1.prepare([open_image(demo_root, row.path)], [_boxes(row)])
    sizes: list[int] = []
    hook = cam_v1.model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    original = cams.ScoreCAM.get_cam_weights

    def warn_then_weigh(self, *args, **kwargs):
        import warnings

        warnings.warn("raised inside ScoreCAM", UserWarning, stacklevel=2)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cams.ScoreCAM, "get_cam_weights", warn_then_weigh)
    try:
        with pytest.warns(UserWarning, match="raised inside ScoreCAM"):
            cams.heatmaps(
                "scorecam",
                cam_v1.model,
                cam_v1.layer,
                inputs,
                [int(row.label)],
                scorecam_batch_size=64,
            )
    finally:
        hook.remove()
    assert sizes[1:] == [64, 64, 64, 64]  # after the activations forward
    assert "it/s" not in capfd.readouterr().err
