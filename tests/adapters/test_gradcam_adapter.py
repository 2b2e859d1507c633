"""stages.adapters.gradcam_adapter: grad-cam's quirks behind a version check."""

from __future__ import annotations

import sys

import pytest
import torch
from pytorch_grad_cam import GradCAM, ScoreCAM

from stages.adapters import gradcam_adapter


def tiny() -> tuple[torch.nn.Module, torch.nn.Module]:
    layer = torch.nn.Conv2d(3, 4, 3, padding=1)
    model = torch.nn.Sequential(
        layer,
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 10),
    )
    return model.eval(), layer


def test_only_tested_versions_are_accepted() -> None:
    gradcam_adapter.check_version()  # the installed one (pyproject bounds it)
    with pytest.raises(
        gradcam_adapter.UnsupportedGradCam,
        match=r"grad-cam 1.6.0 is not supported .*\(pip install 'grad-cam>=1.5,<1.6'\)",
    ):
        gradcam_adapter.check_version("1.6.0")


def test_open_cam_releases_its_hooks_and_lets_errors_through() -> None:
    model, layer = tiny()
    with (
        pytest.raises(IndexError),  # grad-cam's own __exit__ would swallow this one
        gradcam_adapter.open_cam(GradCAM, model, layer),
    ):
        raise IndexError("raised inside the block")
    assert not layer._forward_hooks and not layer._backward_hooks


def test_scorecam_takes_the_batch_size_and_its_progress_bars_are_silenced(capsys) -> None:
    model, layer = tiny()
    with gradcam_adapter.open_cam(ScoreCAM, model, layer, scorecam_batch_size=3) as cam:
        assert cam.batch_size == 3
    with gradcam_adapter.quiet_progress():
        print("a progress bar", file=sys.stderr)
    assert capsys.readouterr().err == ""
