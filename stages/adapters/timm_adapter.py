"""The one private part of timm the project relies on, for tested versions only.

timm registers MobileNet-V1 at widths 1.0 and up but not the 0.25/0.5/0.75 widths the demo ships;
its public API has no way to build them (the registered `mobilenetv1_100` fixes the width, and the
builder pieces live in the private `timm.models._efficientnet_builder`). `register_mobilenet_v1`
registers them with timm's public `register_model`, each built by timm's own private generator
`timm.models.efficientnet._gen_mobilenet_v1(variant, width)`, exactly as timm builds its registered
widths. `check_version` refuses timm versions whose generator was not read and tested.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models import efficientnet, register_model

from stages.contracts.errors import UserError

SUPPORTED = ("1.0",)
"""timm major.minor versions whose `_gen_mobilenet_v1` was read and tested."""

MOBILENET_V1_WIDTHS = {"mobilenetv1_025": 0.25, "mobilenetv1_050": 0.5, "mobilenetv1_075": 0.75}

__all__ = [
    "MOBILENET_V1_WIDTHS",
    "SUPPORTED",
    "UnsupportedTimm",
    "check_version",
    "register_mobilenet_v1",
]


class UnsupportedTimm(UserError, ImportError):
    """The installed timm is not one whose private generator this module was tested with."""


def check_version(version: str | None = None) -> None:
    """Raise UnsupportedTimm unless `version` (default: the installed one) is supported."""
    version = version or timm.__version__
    if ".".join(version.split(".")[:2]) not in SUPPORTED or not hasattr(
        efficientnet, "_gen_mobilenet_v1"
    ):
        raise UnsupportedTimm(
            f"timm {version} is not supported for the MobileNet-V1 width variants "
            f"{sorted(MOBILENET_V1_WIDTHS)} (tested: {', '.join(s + '.x' for s in SUPPORTED)}); "
            "install a tested version (pip install 'timm>=1.0.9,<1.1')"
        )


def register_mobilenet_v1() -> None:
    """Register mobilenetv1_025/050/075 as timm models (once; names timm already has are kept)."""
    for variant, width in MOBILENET_V1_WIDTHS.items():
        if timm.is_model(variant):
            continue
        check_version()

        def build(
            pretrained: bool = False, _variant: str = variant, _width: float = width, **kwargs: Any
        ) -> torch.nn.Module:
            return efficientnet._gen_mobilenet_v1(_variant, _width, pretrained=pretrained, **kwargs)

        build.__name__ = build.__qualname__ = variant
        register_model(build)
