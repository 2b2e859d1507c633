"""Model loading: timm specs from params.yaml -> eval-mode models and their own preprocessing.

Models are only ever built through `timm.create_model`; the MobileNet-V1 width variants that the
demo ships (0.25/0.5/0.75, not in timm's registry) are added with timm's `register_model`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import create_transform, resolve_data_config
from timm.models import register_model
from timm.models._registry import is_model
from timm.models.efficientnet import _gen_mobilenet_v1

from stages.formats import file_sha256

logger = logging.getLogger(__name__)

_MOBILENET_V1_WIDTHS = {"mobilenetv1_025": 0.25, "mobilenetv1_050": 0.5, "mobilenetv1_075": 0.75}


def _register_mobilenet_v1_variants() -> None:
    """Register MobileNet-V1 at widths 0.25/0.5/0.75 (timm only ships 1.0 and up)."""
    for variant, width in _MOBILENET_V1_WIDTHS.items():
        if is_model(variant):
            continue

        def build(pretrained: bool = False, _variant: str = variant, _width: float = width,
                  **kwargs: Any) -> torch.nn.Module:
            return _gen_mobilenet_v1(_variant, _width, pretrained=pretrained, **kwargs)

        build.__name__ = variant
        build.__module__ = "timm.models.efficientnet"
        register_model(build)


_register_mobilenet_v1_variants()


@dataclass(frozen=True)
class ModelSpec:
    """One ensemble member as params.yaml names it.

    Attributes:
        name: the project's short name (a params key, a file stem, a DVC stage suffix).
        spec: what `timm.create_model` takes: `local-dir:<folder>`, `hf-hub:timm/<name>` or a
            registry name.
        pretrained: load pretrained weights (always true for the ensemble).
        kwargs: extra `timm.create_model` keyword arguments.
    """

    name: str
    spec: str
    pretrained: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def from_params(cls, name: str, entry: dict[str, Any] | str) -> "ModelSpec":
        """Build from a `models.<name>` params entry (a dict with `spec`, or a bare spec string)."""
        if isinstance(entry, str):
            entry = {"spec": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("spec"), str):
            raise ValueError(f"models.{name} must be a timm spec string or a mapping with a 'spec' "
                             f"string, got {entry!r}")
        unknown = set(entry) - {"spec", "pretrained", "kwargs"}
        if unknown:
            raise ValueError(f"models.{name} has unknown keys {sorted(unknown)}; "
                             "allowed: spec, pretrained, kwargs")
        return cls(name=name, spec=entry["spec"], pretrained=bool(entry.get("pretrained", True)),
                   kwargs=dict(entry.get("kwargs") or {}))


def model_specs(params: dict[str, Any], names: list[str] | None = None) -> list[ModelSpec]:
    """The ModelSpecs named by `names` (default: `predict.models`) from a params dict."""
    names = list(names if names is not None else params["predict"]["models"])
    registry = params.get("models") or {}
    missing = [n for n in names if n not in registry]
    if missing:
        raise ValueError(f"models {missing} are listed but not defined under `models:` in "
                         "params.yaml; add a `models.<name>.spec` entry for each")
    return [ModelSpec.from_params(n, registry[n]) for n in names]


def create_model(spec: ModelSpec, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Create an eval-mode float32 model from its spec with `timm.create_model`."""
    _check_local_dir(spec)
    model = timm.create_model(spec.spec, pretrained=spec.pretrained, **spec.kwargs)
    return model.float().eval().to(device)


def _check_local_dir(spec: ModelSpec) -> None:
    if spec.spec.startswith("local-dir:"):
        folder = Path(spec.spec.removeprefix("local-dir:"))
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"model {spec.name!r}: {folder}/config.json not found; "
                                    "a local-dir: spec must name a timm model folder")


def data_config(model: torch.nn.Module) -> dict[str, Any]:
    """The model's own evaluation preprocessing (input size, crop, interpolation, mean/std)."""
    return resolve_data_config(model=model)


def eval_transform(config: dict[str, Any]) -> Any:
    """timm's evaluation transform (resize, center crop, to tensor, normalise) for a data config."""
    return create_transform(**config, is_training=False)


def preprocessing_key(config: dict[str, Any]) -> str:
    """A canonical string for a data config: models with equal keys share decoded inputs."""
    return json.dumps({k: config[k] for k in sorted(config)}, sort_keys=True, default=list)


def weights_sha256(spec: ModelSpec) -> str | None:
    """sha256 of a local-dir model's weight file, or None when the weights are not local."""
    if not spec.spec.startswith("local-dir:"):
        return None
    folder = Path(spec.spec.removeprefix("local-dir:"))
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = folder / name
        if path.is_file():
            return file_sha256(path)
    return None


def architecture(model: torch.nn.Module) -> str:
    """The timm architecture name of a created model."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a torch device; use auto, cpu or cuda[:N]"
                         ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; use auto or cpu")
    return resolved
