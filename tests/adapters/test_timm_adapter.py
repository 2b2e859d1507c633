"""stages.adapters.timm_adapter: the demo's MobileNet-V1 widths (0.25/0.5/0.75) become timm models
through timm's public registration, and timm versions whose private generator was not tested are
refused (real timm, the real demo folders; offline as the tests always run)."""

from __future__ import annotations

import pytest
import timm

from stages.adapters import timm_adapter
from stages.modelling.models import create_model
from stages.modelling.specs import model_specs


def test_demo_mobilenet_v1_widths_load_through_public_registration(params: dict) -> None:
    model = create_model(model_specs(params, ["mobilenetv1_025"])[0])
    assert timm.is_model("mobilenetv1_025") and model.num_classes == 1000
    assert model.pretrained_cfg["architecture"] == "mobilenetv1_025"
    from timm.models import efficientnet

    assert "mobilenetv1_025" not in efficientnet.__all__  # nothing added to timm's own modules


def test_timm_adapter_refuses_untested_versions() -> None:
    timm_adapter.check_version()  # the installed timm is a tested one
    for version in ("1.1.0", "2.0.0", "0.9.16"):
        with pytest.raises(
            timm_adapter.UnsupportedTimm,
            match=rf"timm {version} is not supported"
            r".*timm>=1.0.9,<1.1",
        ):
            timm_adapter.check_version(version)


def test_each_width_is_registered_once_with_its_channels_scaled() -> None:
    """Stem 32 x width and 1024 x width features, as timm's own MobileNet-V1 widths; registering
    again keeps the first entry points (no overwrite)."""
    timm_adapter.register_mobilenet_v1()
    first = {v: timm.models.model_entrypoint(v) for v in timm_adapter.MOBILENET_V1_WIDTHS}
    timm_adapter.register_mobilenet_v1()
    for variant, width in timm_adapter.MOBILENET_V1_WIDTHS.items():
        assert timm.models.model_entrypoint(variant) is first[variant]
        model = timm.create_model(variant, pretrained=False)
        assert (model.conv_stem.out_channels, model.num_features) == (
            int(32 * width),
            int(1024 * width),
        ), variant


def test_an_untested_timm_is_refused_before_anything_is_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(timm, "__version__", "1.1.0")
    monkeypatch.setattr(timm, "is_model", lambda name: False)
    registered: list[object] = []
    monkeypatch.setattr(timm_adapter, "register_model", registered.append)
    with pytest.raises(timm_adapter.UnsupportedTimm, match=r"timm 1.1.0 is not supported"):
        timm_adapter.register_mobilenet_v1()
    assert registered == []
