"""`decide` stage: votes + CAM exemptions -> the decision ledger and the cleaned split.

A decision strategy (`decide.<split>.strategy`, `stages.method.strategies`) decides every active row:
`consensus` (the default: multi-label aware, from the ensemble's evidence, the CL votes, the top-5
consensus and the CAM veto; it records secondary labels for images that show several classes) or
`paper` (the rules of Kertész 2021, exactly). Then the paper's Table A.1 **merges**
(`decide.merges`): every kept or fixed row whose label is a source class gets the target class
(`merged` = true; the action stays keep or fix). Then the split's **human overrides**
(`decide.<split>.overrides`, a CSV image_id,action,new_label,note) win over everything: keep (the
label before this iteration, unmerged), fix, remove, and secondary (the image's secondary labels
become exactly the listed classes). Last, each merge source class left without an image in the
cleaned split gets one black 224x224 placeholder row, so the 1000-class interface stays.

Inactive rows: a manifest skip row is a `skip`; a row that left the split in an earlier iteration
is a `remove` with the labels file's reason. keep + fix + remove + skip = manifest rows, checked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.cli import run_as_script, split_stage_main
from stages.contracts.config import from_section
from stages.contracts.errors import ConfigError, InputError, MissingInputError
from stages.contracts.params import resolve_threshold, section, split_models, split_params
from stages.method.overrides import apply_overrides, load_overrides
from stages.method.strategies import STRATEGIES, ConsensusConfig, Rows, Thresholds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitDecideConfig:
    """params.yaml `decide.<split>`: the strategy and the paper's vote counts (a count, or a
    fraction of |M| such as 'M/2', rounded up)."""

    h1: int | str
    h2: int | str
    h3: int | str
    strategy: Literal["consensus", "paper"] = "consensus"


@dataclass(frozen=True)
class MergesConfig:
    """params.yaml `decide.merges`."""

    enabled: bool = True
    table: str = "data/table_a1_merges.csv"


@dataclass(frozen=True)
class DecideConfig:
    """Everything decide reads for one split, resolved."""

    strategy: str
    thresholds: Thresholds
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    merges: MergesConfig = field(default_factory=MergesConfig)
    overrides: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any], split: str) -> "DecideConfig":
        """From `decide.<split>`, `decide.consensus`, `decide.merges`, the split's `overrides`
        file (`splits.<split>.overrides`) and |M| = the split's models.

        Raises:
            ConfigError: unknown/missing keys, bad thresholds, a threshold above |M| (which would
                switch its rule off silently).
        """
        own = from_section(SplitDecideConfig, section(params, "decide", split),
                           where=f"decide.{split}")
        shared = section(params, "decide")
        n_models = len(split_models(params, split))
        counts = {}
        for name in ("h1", "h2", "h3"):
            where = f"decide.{split}.{name}"
            try:
                counts[name] = resolve_threshold(getattr(own, name), n_models, name=where)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"params.yaml `{where}`: {error}") from None
            if counts[name] > n_models:
                raise ConfigError(f"params.yaml `{where}` = {counts[name]} is above the number of "
                                  f"models |M| = {n_models}, so its rule could never fire; use at "
                                  f"most {n_models} (or a fraction such as 'M/2')")
        return cls(own.strategy, Thresholds(n_models=n_models, **counts),
                   from_section(ConsensusConfig, shared.get("consensus"), where="decide.consensus"),
                   from_section(MergesConfig, shared.get("merges"), where="decide.merges"),
                   split_params(params, split).get("overrides"))


def count_exemptions(cams: pd.DataFrame | None) -> dict[str, int]:
    """image_id -> number of distinct models whose CAMs exempt it (cams rows with exempted=true)."""
    if cams is None or len(cams) == 0:
        return {}
    missing = {"image_id", "model", "exempted"} - set(cams.columns)
    if missing:
        raise InputError(f"cams table lacks columns {sorted(missing)}; re-run `dvc repro explain`")
    hits = cams.loc[cams["exempted"].fillna(False).astype(bool), ["image_id", "model"]]
    return {str(k): int(v) for k, v in hits.drop_duplicates().groupby("image_id").size().items()}


def _check_votes(votes: pd.DataFrame, manifest: pd.DataFrame, t: Thresholds) -> None:
    formats.check_votes(votes, manifest)
    active = votes["inactive_reason"].isna()
    stale = sorted(set(votes.loc[active, "n_models"].dropna().astype(int)) - {t.n_models})
    if stale:
        raise InputError(f"votes were computed with {stale} models but the split lists "
                         f"{t.n_models}; re-run `dvc repro vote`")
    if votes.loc[active, "label"].isna().any():
        raise InputError("votes table has active rows without a label; re-run `dvc repro vote`")
    if (votes["top5_misses"].fillna(0) > t.n_models).any():
        raise InputError(f"votes table has top5_misses above |M|={t.n_models}; re-run vote")


def _lists(column: pd.Series, rows: np.ndarray) -> np.ndarray:
    """An object array of int64 arrays (an absent list becomes empty) for the given rows."""
    out = np.empty(len(rows), dtype=object)
    for k, value in enumerate(column.to_numpy(dtype=object)[rows]):
        out[k] = np.asarray(value if value is not None else [], dtype=np.int64)
    return out


def _matrix(column: pd.Series, rows: np.ndarray, width: int, dtype: type) -> np.ndarray:
    """(A, width) from a list column (rows without the list get zeros)."""
    out = np.zeros((len(rows), width), dtype=dtype)
    for k, value in enumerate(column.to_numpy(dtype=object)[rows]):
        if value is not None and len(value):
            out[k, :len(value)] = value
    return out


def evidence_rows(votes: pd.DataFrame, rows: np.ndarray, exemptions: np.ndarray) -> Rows:
    """The strategies' view of the given votes rows (positions)."""
    return Rows(
        label=votes["label"].to_numpy(dtype=np.float64, na_value=np.nan)[rows].astype(np.int64),
        candidates=_lists(votes["cl_candidates"], rows),
        misses=votes["top5_misses"].fillna(0).to_numpy(dtype=np.int64)[rows],
        exemptions=exemptions[rows],
        ensemble_top=_matrix(votes["ensemble_top"], rows, 5, np.int64),
        ensemble_probs=_matrix(votes["ensemble_probs"], rows, 5, np.float64),
        label_prob=votes["label_prob"].to_numpy(dtype=np.float64, na_value=np.nan)[rows],
        model_top1=_lists(votes["model_top1"], rows))


def apply_rules(votes: pd.DataFrame, manifest: pd.DataFrame, *, config: DecideConfig,
                exemptions: dict[str, int] | None = None) -> pd.DataFrame:
    """The strategy's decisions, before merges and overrides.

    Args:
        votes: the votes table (contracts), one row per manifest row, same order.
        manifest: the split's manifest (its `skip_reason` marks skip rows).
        config: the strategy and its thresholds.
        exemptions: image_id -> number of exempting models (see `count_exemptions`).

    Returns:
        The ledger (columns of LEDGER_FULL_SCHEMA), one row per votes row, same order.
    """
    _check_votes(votes, manifest, config.thresholds)
    n = len(votes)
    n_exempt = votes["image_id"].map(exemptions or {}).fillna(0).to_numpy(dtype=np.int32)
    skip = manifest["skip_reason"].notna().to_numpy()
    inactive = votes["inactive_reason"].notna().to_numpy() & ~skip
    labels = votes["label"].to_numpy(dtype=np.float64, na_value=np.nan)
    action = np.where(skip, "skip", np.where(inactive, "remove", "keep")).astype(object)
    reason = np.where(skip, "skip: " + manifest["skip_reason"].fillna("").astype(str),
                      np.where(inactive, votes["inactive_reason"].fillna("").astype(str), "keep")
                      ).astype(object)
    new_label = np.where(skip | inactive, np.nan, labels)
    exempted = np.zeros(n, dtype=bool)
    secondary: list[list[int]] = [[] for _ in range(n)]
    active = np.flatnonzero(~skip & ~inactive)
    decided = STRATEGIES[config.strategy](evidence_rows(votes, active, n_exempt),
                                          thresholds=config.thresholds, consensus=config.consensus)
    action[active], reason[active], exempted[active] = decided.action, decided.reason, decided.exempted
    new_label[active] = np.where(decided.new_label < 0, np.nan, decided.new_label)
    for k, i in enumerate(active):
        secondary[i] = decided.secondary[k]
    return pd.DataFrame({
        "image_id": votes["image_id"].to_numpy(), "label": formats.nullable_ints(labels), "action": action,
        "new_label": formats.nullable_ints(new_label), "cl_candidates": _lists(votes["cl_candidates"], np.arange(n)),
        "top5_misses": votes["top5_misses"].fillna(0).to_numpy(dtype=np.int32), "exempted": exempted,
        "reason": reason, "secondary_labels": secondary,
        "original_label": votes["original_label"].astype("Int32").to_numpy(),
        "iteration": votes["iteration"].astype("int32").to_numpy(), "merged": False,
        "override": False, "exemptions": n_exempt})


def load_merges(path: str | Path) -> dict[int, int]:
    """Table A.1 (source_wnid,...,target_wnid,...) -> {source class index: target class index}."""
    if not Path(path).is_file():
        raise MissingInputError(f"merge table {path} not found; fix decide.merges.table or set "
                                "decide.merges.enabled: false")
    table = pd.read_csv(path, dtype=str)
    missing = {"source_wnid", "target_wnid"} - set(table.columns)
    if missing:
        raise InputError(f"{path}: needs columns source_wnid and target_wnid, lacks {sorted(missing)}")
    index = formats.wnid_index()
    merges: dict[int, int] = {}
    for line, (source, target) in enumerate(zip(table["source_wnid"], table["target_wnid"]), 2):
        unknown = [w for w in (source, target) if w not in index]
        if unknown:
            raise InputError(f"{path} line {line}: {unknown} not ILSVRC2012 wnids; fix the row")
        if index[source] in merges:
            raise InputError(f"{path} line {line}: source {source} is listed twice; keep one row")
        merges[index[source]] = index[target]
    chained = sorted(set(merges.values()) & set(merges))
    if chained:
        wnids = formats.class_wnids()
        raise InputError(f"{path}: {[wnids[c] for c in chained]} are both a source and a target; "
                         "merge straight to the final class")
    return merges


def apply_merges(ledger: pd.DataFrame, merges: dict[int, int]) -> pd.DataFrame:
    """Kept and fixed rows whose new_label is a merge source get the target (merged = true)."""
    ledger = ledger.copy()
    if not merges:
        return ledger
    wnids, names = formats.class_wnids(), formats.class_names()
    new_label = ledger["new_label"].to_numpy(dtype=np.float64, na_value=np.nan)
    reason = ledger["reason"].to_numpy(dtype=object).copy()
    merged = ledger["merged"].to_numpy(dtype=bool).copy()
    hit = ledger["action"].isin(["keep", "fix"]).to_numpy() & np.isin(new_label, list(merges))
    for i in np.flatnonzero(hit):
        source = int(new_label[i])
        target = merges[source]
        new_label[i], merged[i] = target, True
        reason[i] += (f"; merged {wnids[source]} {names[source].split(',')[0]} -> "
                      f"{wnids[target]} {names[target].split(',')[0]}")
    secondary = [sorted({merges.get(int(c), int(c)) for c in extra} - {int(new_label[i])})
                 if len(extra) else [] for i, extra in enumerate(ledger["secondary_labels"])]
    return ledger.assign(new_label=formats.nullable_ints(new_label), merged=merged, reason=reason,
                         secondary_labels=secondary)


def build_clean(ledger: pd.DataFrame, manifest: pd.DataFrame, *,
                placeholder_classes: Iterable[int] = ()) -> pd.DataFrame:
    """The cleaned split: kept and fixed rows (manifest order), then one placeholder row for each
    class of `placeholder_classes` that no kept or fixed row carries (class index order)."""
    wnids = formats.class_wnids()
    kept = ledger["action"].isin(["keep", "fix"]).to_numpy()
    rows = manifest.loc[kept, ["image_id", "path", "boxes", "width", "height"]].reset_index(drop=True)
    part = ledger.loc[kept].reset_index(drop=True)
    rows["label"] = part["new_label"].astype("Int32")
    rows["original_label"] = part["original_label"].astype("Int32")
    rows["secondary_labels"] = part["secondary_labels"].to_numpy(dtype=object)
    rows["wnid"] = [wnids[int(c)] for c in rows["label"]]
    rows["action"], rows["placeholder"], rows["merged"] = part["action"], False, part["merged"]
    rows["iteration"] = part["iteration"]
    iteration = int(ledger["iteration"].iloc[0]) if len(ledger) else 0
    present = set(int(c) for c in rows["label"])
    empty = sorted(set(int(c) for c in placeholder_classes) - present)
    holders = pd.DataFrame({
        "image_id": [f"placeholder_{wnids[c]}" for c in empty], "path": None, "label": empty,
        "original_label": pd.array([pd.NA] * len(empty), dtype="Int32"),
        "secondary_labels": [[] for _ in empty], "wnid": [wnids[c] for c in empty], "action": "placeholder", "placeholder": True,
        "merged": False, "boxes": [[] for _ in empty], "width": formats.PLACEHOLDER_SIZE,
        "height": formats.PLACEHOLDER_SIZE, "iteration": iteration})
    frames = [f for f in (rows, holders) if len(f)]
    clean = pd.concat(frames, ignore_index=True) if frames else rows
    return clean.reindex(columns=formats.CLEAN_SCHEMA.names)


def reconcile(ledger: pd.DataFrame, manifest: pd.DataFrame) -> dict[str, int]:
    """Counts per action; raises when keep + fix + remove + skip != manifest rows."""
    counts = {a: int((ledger["action"] == a).sum()) for a in formats.ACTIONS}
    if sum(counts.values()) != len(manifest) or len(ledger) != len(manifest):
        raise ValueError(f"ledger does not reconcile: {counts} over {len(ledger)} rows, manifest has "
                         f"{len(manifest)} rows; this is a bug in decide, please report it")
    return counts


def decide_split(votes: pd.DataFrame, manifest: pd.DataFrame, *, config: DecideConfig,
                 cams: pd.DataFrame | None = None, merges: dict[int, int] | None = None,
                 overrides: pd.DataFrame | None = None, overrides_source: str = "overrides"
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Strategy, then merges, then overrides, then placeholders -> (ledger, cleaned split)."""
    ledger = apply_rules(votes, manifest, config=config, exemptions=count_exemptions(cams))
    ledger = apply_merges(ledger, merges or {})
    if overrides is not None and len(overrides):
        ledger = apply_overrides(ledger, overrides, source=overrides_source)
    reconcile(ledger, manifest)
    clean = build_clean(ledger, manifest, placeholder_classes=(merges or {}).keys())
    return ledger, clean


def run_decide(split: str, params: dict[str, Any], *, root: str | Path = ".") -> dict[str, int]:
    """The stage: read manifest, votes, cams, merges and overrides; write ledger and clean split."""
    root = Path(root)
    config = DecideConfig.from_params(params, split)
    manifest = formats.read_manifest(split, path=root / formats.manifest_path(split))
    votes = formats.read_table(root / formats.votes_path(split), what=f"votes of {split!r}")
    cams = formats.read_table(root / formats.cams_path(split), what=f"CAM scores of {split!r}")
    merges = load_merges(root / config.merges.table) if config.merges.enabled else {}
    overrides = load_overrides(root / config.overrides) if config.overrides else None
    ledger, clean = decide_split(votes, manifest, config=config, cams=cams, merges=merges,
                                 overrides=overrides, overrides_source=str(config.overrides))
    formats.write_table(ledger, root / formats.ledger_path(split), schema=formats.LEDGER_FULL_SCHEMA)
    formats.write_table(clean, root / formats.clean_path(split), schema=formats.CLEAN_SCHEMA)
    counts = reconcile(ledger, manifest)
    counts.update(merged=int(ledger["merged"].sum()), override=int(ledger["override"].sum()),
                  exempted=int(ledger["exempted"].sum()),
                  secondary=int((ledger["secondary_labels"].map(len) > 0).sum()),
                  placeholders=int(clean["placeholder"].sum()))
    t = config.thresholds
    logger.info("decide %s (strategy %s, h1=%d h2=%d h3=%d, |M|=%d): %s", split, config.strategy,
                t.h1, t.h2, t.h3, t.n_models, counts)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.decide --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="decide", doc=__doc__, run=run_decide)


if __name__ == "__main__":
    run_as_script(main)
