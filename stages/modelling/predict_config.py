"""The predict stage's configuration: `predict:` options and what one split's run reads.

`PredictOptions` is the `predict:` section of params.yaml (batching, workers, device, dtype,
shards, threads, processes, `weights_dir`, `embeddings`), validated at entry; `PredictConfig` adds
one split's image root, the models and the views. The predict stage, the embed stage and the
benches build them here and hand them to `stages.modelling.predictor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from stages.contracts.config import from_section, positive
from stages.contracts.errors import ConfigError
from stages.contracts.params import section
from stages.contracts.splits import Params, SplitEntry
from stages.modelling.specs import ModelSpec, model_specs, require_tracked_weights
from stages.sources.views import DEFAULT_MARGIN, VIEWS, box_margin, predict_views

DTYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class PredictOptions:
    """Options of the predict stage (params.yaml `predict:`; `splits`/`models` are read elsewhere).

    Attributes:
        batch_size: images per forward pass.
        workers: DataLoader worker processes decoding images (0 = decode in the main process).
        device: auto (CUDA when present) | cpu | cuda | cuda:N.
        dtype: storage dtype of the probabilities, float32 or float16.
        shard_size: rows per resumable shard.
        amp: float16 autocast for the forward pass on CUDA (CPU always computes in float32).
        channels_last: run models and inputs in channels_last memory format.
        threads: torch intra-op CPU threads while predicting (None = torch's default). On a CPU
            shared with other jobs, 1 avoids stalls of multi-threaded ops; CPU results depend on
            the thread count, so it is part of the shard fingerprint.
        processes: processes on this machine (> 1: the stage starts itself under torchrun, e.g.
            one per GPU); each takes a share of the shards. Results do not depend on it.
        weights_dir: the folder holding every local model folder and checkpoint file (a DVC
            dependency of predict and vote, so that new weights re-run predict).
        embeddings: also write each output's pooled pre-logit features, float16 (N, D), from
            the same forward pass (`data/embeddings/<split>/<model>.<view>.npy`); the
            probabilities are the same bytes either way.
    """

    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    dtype: Literal["float32", "float16"] = "float32"
    shard_size: int = 1024
    amp: bool = True
    channels_last: bool = True
    threads: int | None = None
    processes: int = 1
    weights_dir: str = "data/demo/models"
    embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "shard_size", "threads", "processes"):
            positive(f"predict.{name}", getattr(self, name))
        positive("predict.workers", self.workers, minimum=0)

    @classmethod
    def from_params(cls, params: Params) -> PredictOptions:
        """Build from the `predict:` section (its `splits` and `models` lists are read elsewhere).

        Raises:
            ConfigError: an unknown, missing or mistyped key, naming it.
        """
        return from_section(
            cls,
            section(params, "predict"),
            where="predict",
            ignore=("splits", "models", "views", "box_margin"),
        )


@dataclass(frozen=True)
class PredictConfig:
    """Everything predict reads for one split: its image root, the models, their views and the
    options.

    Attributes:
        split: the split; root: its image root.
        specs: the models to predict (one for `predict`, several for `predict-ensemble`).
        views: the views to predict each model through (`stages.sources.views`).
        margin: the `boxes` view's margin (`predict.box_margin`; read only when it is asked).
        options: the `predict:` section.
    """

    split: str
    root: str
    specs: tuple[ModelSpec, ...]
    views: tuple[str, ...]
    margin: float
    options: PredictOptions

    @classmethod
    def from_params(
        cls,
        params: Params,
        split: str,
        models: Sequence[str] | None = None,
        views: Sequence[str] | None = None,
    ) -> PredictConfig:
        """The config of `models` (default: `predict.models`) through `views` (default:
        `predict.views`) over `split`.

        Raises:
            ConfigError: a bad split entry, model entry, view or `predict:` section, or a
                model whose local weights lie outside `predict.weights_dir`.
        """
        entry = SplitEntry.from_params(params, split)
        chosen = tuple(views) if views is not None else predict_views(params)
        unknown = [v for v in chosen if v not in VIEWS]
        if unknown or not chosen or len(set(chosen)) != len(chosen):
            raise ConfigError(f"views {list(chosen)}: give distinct names from {list(VIEWS)}")
        margin = box_margin(params) if "boxes" in chosen else DEFAULT_MARGIN
        options = PredictOptions.from_params(params)
        specs = tuple(model_specs(params, models))
        require_tracked_weights(specs, options.weights_dir)
        return cls(split, entry.root, specs, chosen, margin, options)
