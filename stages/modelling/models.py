"""Model loading: timm specs from params.yaml -> eval-mode models and their own preprocessing.

Models are only ever built through `timm.create_model`; the MobileNet-V1 width variants that the
demo ships (0.25/0.5/0.75, not in timm's registry) are registered first
(`stages.adapters.timm_adapter`).
A spec timm cannot build here (an unknown name, Hub weights while offline, a `local-dir:` folder
without config.json) fails with a UserError naming the model and the fix.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import errors as hub_errors
from timm.data import create_transform, resolve_data_config

from stages.adapters import timm_adapter
from stages.contracts.errors import ConfigError, MissingInputError, UserError
from stages.modelling.specs import ModelSpec

logger = logging.getLogger(__name__)


def create_model(spec: ModelSpec, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Create an eval-mode float32 model from its spec with `timm.create_model`.

    Raises:
        MissingInputError: a `local-dir:` folder without config.json.
        UserError: an unknown timm name, or Hub weights that cannot be fetched (offline).
    """
    timm_adapter.register_mobilenet_v1()
    _check_local_dir(spec)
    _check_registry_name(spec)
    try:
        model = timm.create_model(spec.spec, pretrained=spec.pretrained, **spec.kwargs)
    except (
        hub_errors.LocalEntryNotFoundError,
        hub_errors.OfflineModeIsEnabled,
        hub_errors.HfHubHTTPError,
    ) as error:
        raise UserError(_hub_message(spec, error)) from error
    return model.float().eval().to(device)


def _check_registry_name(spec: ModelSpec) -> None:
    if spec.spec.startswith(("local-dir:", "hf-hub:", "hf_hub:")) or timm.is_model(spec.spec):
        return
    close = difflib.get_close_matches(spec.spec, timm.list_models(), n=3)
    hint = f" (close: {', '.join(close)})" if close else ""
    raise UserError(
        f"model {spec.name!r}: timm has no model named {spec.spec!r}{hint}; fix "
        f"`models.{spec.name}.spec` (a timm name from timm.list_models(), "
        "hf-hub:timm/<name> or local-dir:<folder>)"
    )


def _hub_message(spec: ModelSpec, error: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    why = (
        "HF_HUB_OFFLINE is set"
        if offline
        else f"the Hub cannot be reached ({type(error).__name__})"
    )
    return (
        f"model {spec.name!r} ({spec.spec}): its weights are not in the local Hugging Face "
        f"cache and {why}. Fix: download them once with network access (HF_HUB_OFFLINE=0 "
        f"python -c \"import timm; timm.create_model('{spec.spec}', pretrained=True)\"), or "
        f"set `models.{spec.name}.spec` to local-dir:<folder> holding config.json and "
        "model.safetensors"
    )


def _check_local_dir(spec: ModelSpec) -> None:
    if spec.spec.startswith("local-dir:"):
        folder = Path(spec.spec.removeprefix("local-dir:"))
        if not (folder / "config.json").is_file():
            raise MissingInputError(
                f"model {spec.name!r}: {folder}/config.json not found; "
                "a local-dir: spec must name a timm model folder"
            )


def data_config(model: torch.nn.Module) -> dict[str, Any]:
    """The model's own evaluation preprocessing (input size, crop, interpolation, mean/std)."""
    return resolve_data_config(model=model)


def eval_transform(config: dict[str, Any]) -> Any:
    """Timm's evaluation transform (resize, center crop, to tensor, normalise) for a data config."""
    return create_transform(**config, is_training=False)


def preprocessing_key(config: dict[str, Any]) -> str:
    """A canonical string for a data config: models with equal keys share decoded inputs."""
    return json.dumps({k: config[k] for k in sorted(config)}, sort_keys=True, default=list)


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
        raise ConfigError(
            f"device {device!r} is not a torch device; use auto, cpu or cuda[:N]"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for but CUDA is not available; use auto or cpu")
    return resolved


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` torch intra-op threads (None: leave as is), then restore."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
