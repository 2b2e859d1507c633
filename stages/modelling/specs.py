"""Model specs: params.yaml `models.<name>` entries -> what `timm.create_model` takes.

Torch-free, so stages that only name models (vote, decide, the retrain report) do not import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.contracts.config import from_section
from stages.contracts.errors import ConfigError
from stages.contracts.formats import file_sha256
from stages.contracts.splits import Params


@dataclass(frozen=True)
class ModelEntry:
    """A `models.<name>` params entry (a mapping; a bare string is its `spec`).

    Attributes:
        spec: what `timm.create_model` takes: `local-dir:<folder>`, `hf-hub:timm/<name>` or a
            registry name.
        pretrained: load the pretrained weights. `false` needs `kwargs.checkpoint_path` (weights
            from a file) or `random_weights: true` (an untrained model, on purpose: tests and
            benchmarks), so that no stage silently predicts with random weights.
        kwargs: extra `timm.create_model` keyword arguments.
        random_weights: allow `pretrained: false` without a checkpoint.
    """

    spec: str
    pretrained: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)
    random_weights: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """One ensemble member as params.yaml names it.

    Attributes:
        name: the project's short name (a params key, a file stem, a DVC stage suffix).
        spec: what `timm.create_model` takes: `local-dir:<folder>`, `hf-hub:timm/<name>` or a
            registry name.
        pretrained: load pretrained weights (always true for the ensemble).
        kwargs: extra `timm.create_model` keyword arguments.
        random_weights: an untrained model is meant (see `require_weights`).
    """

    name: str
    spec: str
    pretrained: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    random_weights: bool = field(default=False, compare=False)

    def require_weights(self) -> None:
        """Refuse to predict or explain with random weights: `pretrained: false` needs
        `kwargs.checkpoint_path` or an explicit `random_weights: true`. (Out-of-fold training
        models are `pretrained: false` on purpose: `train.settings.init` decides their weights.)

        Raises:
            ConfigError: naming the model entry and the three ways out.
        """
        if not self.pretrained and not self.random_weights and "checkpoint_path" not in self.kwargs:
            where = f"models.{self.name}"
            raise ConfigError(
                f"params.yaml `{where}` has pretrained: false, which would predict "
                "with random weights; set pretrained: true, give the weights in "
                f"`{where}.kwargs.checkpoint_path`, or add `random_weights: true` "
                "to use an untrained model on purpose"
            )

    @classmethod
    def from_params(cls, name: str, entry: dict[str, Any] | str) -> ModelSpec:
        """Build from a `models.<name>` params entry (a mapping with `spec`, or a bare spec string).

        Raises:
            ConfigError: unknown/missing/mistyped keys.
        """
        parsed = from_section(
            ModelEntry, {"spec": entry} if isinstance(entry, str) else entry, where=f"models.{name}"
        )
        return cls(
            name=name,
            spec=parsed.spec,
            pretrained=parsed.pretrained,
            kwargs=dict(parsed.kwargs),
            random_weights=parsed.random_weights,
        )


def model_specs(params: Params, names: Sequence[str] | None = None) -> list[ModelSpec]:
    """The ModelSpecs named by `names` (default: `predict.models`) from a params dict."""
    if names is None:
        names = (params.get("predict") or {}).get("models")
        if not isinstance(names, list) or not names:
            raise ConfigError(
                f"params.yaml `predict.models` must be a non-empty list of model "
                f"names, got {names!r}"
            )
    registry = params.get("models") or {}
    missing = [n for n in names if n not in registry]
    if missing:
        raise ConfigError(
            f"models {missing} are listed but not defined under `models:` in "
            "params.yaml; add a `models.<name>.spec` entry for each"
        )
    return [ModelSpec.from_params(n, registry[n]) for n in names]


def weights_sha256(spec: ModelSpec) -> str | None:
    """sha256 of the local file a model's weights come from (`weights_file`), or None when they
    are not local (the Hub, timm's cache)."""
    path = weights_file(spec)
    return file_sha256(path) if path is not None else None


def weights_file(spec: ModelSpec) -> Path | None:
    """The local file a model's weights are loaded from: its `kwargs.checkpoint_path` (which timm
    loads over any other weights), else a `local-dir:` folder's model.safetensors (or
    pytorch_model.bin); None when there is none."""
    checkpoint = spec.kwargs.get("checkpoint_path")
    if checkpoint and Path(checkpoint).is_file():
        return Path(checkpoint)
    if not spec.spec.startswith("local-dir:"):
        return None
    folder = Path(spec.spec.removeprefix("local-dir:"))
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = folder / name
        if path.is_file():
            return path
    return None


def local_weights(spec: ModelSpec) -> list[Path]:
    """The local paths a model's weights depend on: its `local-dir:` folder and its
    `kwargs.checkpoint_path` (as written in params.yaml)."""
    paths = (
        [Path(spec.spec.removeprefix("local-dir:"))] if spec.spec.startswith("local-dir:") else []
    )
    checkpoint = spec.kwargs.get("checkpoint_path")
    return paths + ([Path(checkpoint)] if checkpoint else [])


def require_tracked_weights(specs: Sequence[ModelSpec], weights_dir: str) -> None:
    """Refuse a model whose local weights (`local-dir:` folder, checkpoint file) lie outside
    `predict.weights_dir`: DVC tracks that folder as predict's dependency, so only weights inside
    it re-run predict when they change (and vote refuses predictions of other weights).

    Raises:
        ConfigError: naming the model entry, the path, the folder and the fix.
    """
    root = Path(weights_dir).absolute()
    for spec in specs:
        for path in local_weights(spec):
            if not path.absolute().is_relative_to(root):
                raise ConfigError(
                    f"params.yaml `models.{spec.name}` loads its weights from {path}, outside "
                    f"`predict.weights_dir` ({weights_dir}), the folder DVC tracks as predict's "
                    "dependency (so that new weights re-run predict); move the model folder or "
                    f"checkpoint into {weights_dir}, or set predict.weights_dir to a folder "
                    "that holds every local model"
                )
