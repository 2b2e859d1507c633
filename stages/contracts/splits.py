"""params.yaml `splits.<name>`: every key of a split entry, typed, in one place.

A split entry is read by several stages, each for its own keys: ingest for where the images lie,
vote and promote for the current labels, decide and the review server for the overrides, vote,
decide and the others for the models whose predictions count. DVC re-runs a stage when a params
key it declares changes, so each stage reads exactly the keys it uses: `SplitEntry` checks the
entry's key names when it is made and each value's type when a stage reads it (ConfigError naming
`splits.<name>.<key>`, the expected type and the value).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from stages.contracts.config import coerce, describe
from stages.contracts.errors import ConfigError

Params = Mapping[str, Any]
"""params.yaml as loaded (`stages.contracts.params.load_params`)."""

Layout = Literal["kaggle", "devkit", "imagefolder", "imagenetv2", "hf-parquet"]
Predictions = Literal["pretrained", "out-of-fold"]
PRETRAINED: Predictions = "pretrained"
OUT_OF_FOLD: Predictions = "out-of-fold"

SPLIT_KEYS: dict[str, Any] = {
    "root": str,
    "layout": Layout,
    "subset": Literal["val", "train"] | None,
    "synsets": str | None,
    "boxes": str | None,
    "limit": int | None,
    "labels": str | None,
    "overrides": str | None,
    "models": list[str] | None,
    "predictions": Predictions,
}
"""Every key of a split entry and its type (all but `root` and `layout` may be left out)."""

REQUIRED = ("root", "layout")
DEFAULTS: dict[str, Any] = {"predictions": PRETRAINED}


@dataclass(frozen=True)
class SplitEntry:
    """One `splits.<name>` entry; its typed values are read through the properties below.

    Attributes:
        name: the split's name (a key of `splits:`).
        raw: the entry as params.yaml holds it.
    """

    name: str
    raw: Mapping[str, Any]

    @classmethod
    def from_params(cls, params: Params, name: str) -> SplitEntry:
        """The entry of split `name`.

        Raises:
            ConfigError: the split is not configured, the entry is not a mapping, it has an
                unknown key (with close matches) or lacks `root` or `layout`.
        """
        splits = params.get("splits") or {}
        if name not in splits:
            raise ConfigError(
                f"split {name!r} is not configured; params.yaml splits: {sorted(splits)}"
            )
        raw = splits[name]
        where = f"splits.{name}"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"params.yaml `{where}` must be a mapping of keys, got {raw!r}")
        for key in raw:
            if key not in SPLIT_KEYS:
                close = difflib.get_close_matches(str(key), list(SPLIT_KEYS), n=3)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ConfigError(
                    f"params.yaml `{where}` has an unknown key {key!r}{hint} "
                    f"(allowed: {', '.join(SPLIT_KEYS)})"
                )
        for key in REQUIRED:
            if key not in raw:
                raise ConfigError(
                    f"params.yaml `{where}` lacks the key {key!r}; add it "
                    f"({describe(SPLIT_KEYS[key])})"
                )
        return cls(name, raw)

    def _value(self, key: str) -> Any:
        default = DEFAULTS.get(key)
        # raw[key], not raw.get: a read through __getitem__ is what DVC's params tracking records
        value = self.raw[key] if key in self.raw else default  # noqa: SIM401
        return coerce(value, SPLIT_KEYS[key], where=f"splits.{self.name}.{key}")

    @property
    def where(self) -> str:
        """`splits.<name>`, for messages."""
        return f"splits.{self.name}"

    @property
    def root(self) -> str:
        """The raw source folder."""
        return str(self._value("root"))

    @property
    def layout(self) -> Layout:
        """How the raw source is laid out."""
        layout: Layout = self._value("layout")
        return layout

    @property
    def subset(self) -> str | None:
        """Kaggle / hf-parquet: `val` or `train`."""
        value: str | None = self._value("subset")
        return value

    @property
    def synsets(self) -> str | None:
        """devkit: the synset list (meta.mat or a 1000-line list in ILSVRC2012_ID order)."""
        value: str | None = self._value("synsets")
        return value

    @property
    def boxes(self) -> str | None:
        """Devkit / imagefolder / hf-parquet: the folder of bbox XMLs."""
        value: str | None = self._value("boxes")
        return value

    @property
    def limit(self) -> int | None:
        """Keep only the first N images by image_id (None: all)."""
        value: int | None = self._value("limit")
        return value

    @property
    def labels(self) -> str | None:
        """The current-labels file (`promote` writes it; absent file = iteration 0)."""
        value: str | None = self._value("labels")
        return value

    @property
    def labels_file(self) -> str:
        """The current-labels file, `iterations/<name>.parquet` when the key is left out."""
        return self.labels or f"iterations/{self.name}.parquet"

    @property
    def overrides(self) -> str | None:
        """The split's human overrides file (None: no overrides)."""
        value: str | None = self._value("overrides")
        return value

    @property
    def predictions(self) -> Predictions:
        """`pretrained` (from predict) or `out-of-fold` (from K-fold training)."""
        value: Predictions = self._value("predictions")
        return value

    @property
    def out_of_fold(self) -> bool:
        """Whether the split's predictions come from out-of-fold training."""
        return self.predictions == OUT_OF_FOLD

    def require_out_of_fold(self) -> None:
        """Raise ConfigError unless the split is marked `predictions: out-of-fold` (its DVC
        stages come from the matrix over `train.splits`)."""
        if not self.out_of_fold:
            raise ConfigError(
                f"split {self.name!r} is not an out-of-fold split: set "
                f"`{self.where}.predictions: {OUT_OF_FOLD}` and list it in "
                "`train.splits`"
            )

    def models(self, params: Params) -> tuple[str, ...]:
        """The models whose predictions the split's votes use: `splits.<name>.models` when given
        (e.g. the out-of-fold models of a train split), else `predict.models`.

        Raises:
            ConfigError: neither is a non-empty list of distinct model names defined under
                `models:`.
        """
        own: tuple[str, ...] | None = self._value("models")
        where = f"{self.where}.models" if own is not None else "predict.models"
        names = list(own) if own is not None else (params.get("predict") or {}).get("models")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(
                f"params.yaml `{where}` must be a non-empty list of model names, got {names!r}"
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"params.yaml `{where}` lists a model twice: {names}")
        undefined = [n for n in names if n not in (params.get("models") or {})]
        if undefined:
            raise ConfigError(
                f"params.yaml `{where}` names {undefined}, which `models:` does not "
                "define; add a `models.<name>.spec` entry for each"
            )
        return tuple(names)
