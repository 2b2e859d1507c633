"""The pytorch-grad-cam behaviour the project works around, in one place, for tested versions only.

Three things of grad-cam 1.5 need care: a CAM object's `__exit__` swallows an IndexError raised in
its block (so `open_cam` does not hand it the exception and lets every exception through); ScoreCAM
draws a tqdm bar of its own per image on stderr (so `quiet_progress` silences the block's stderr
and re-issues its warnings); ScoreCAM's batch of masked inputs is an attribute, `batch_size`
(documented: "ScoreCAM has a batched implementation. You can override the internal batch size").
Each use is checked against `SUPPORTED`; pyproject.toml bounds grad-cam to it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from pytorch_grad_cam import ScoreCAM

from stages.contracts.errors import UserError

SUPPORTED = ("1.5",)
"""grad-cam major.minor versions whose behaviour above was read and tested."""


class UnsupportedGradCam(UserError, ImportError):
    """The installed grad-cam is not one whose behaviour this module was tested with."""


def check_version(version: str | None = None) -> None:
    """Raise UnsupportedGradCam unless `version` (default: the installed one) is supported."""
    version = version or importlib.metadata.version("grad-cam")
    if ".".join(version.split(".")[:2]) not in SUPPORTED:
        raise UnsupportedGradCam(
            f"grad-cam {version} is not supported by the explain stage (tested: "
            f"{', '.join(s + '.x' for s in SUPPORTED)}); install a tested version "
            f"(pip install 'grad-cam>={SUPPORTED[0]},<{SUPPORTED[-1].split('.')[0]}."
            f"{int(SUPPORTED[-1].split('.')[1]) + 1}')"
        )


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """ScoreCAM draws a tqdm bar of its own per image on sys.stderr; the stage already shows one
    per model. The block's stderr goes to a buffer; warnings raised meanwhile are re-issued."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


@contextlib.contextmanager
def open_cam(
    cam_class: type,
    model: torch.nn.Module,
    layer: torch.nn.Module,
    *,
    scorecam_batch_size: int = 128,
) -> Iterator[Any]:
    """A pytorch-grad-cam CAM object whose hooks are released on exit.

    The CAM object is entered and exited as a context manager, but its `__exit__` is not handed
    the exception: pytorch-grad-cam's would swallow an IndexError; this lets every exception
    through.
    """
    check_version()
    cam = cam_class(model=model, target_layers=[layer])
    if cam_class is ScoreCAM:
        # pytorch-grad-cam's documented knob ("ScoreCAM has a batched implementation. You can
        # override the internal batch size"): masked inputs per forward.
        cam.batch_size = scorecam_batch_size
    try:
        yield cam.__enter__()
    finally:
        cam.__exit__(None, None, None)
