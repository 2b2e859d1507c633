"""`decide` stage: votes + CAM exemptions -> the decision ledger and the cleaned split.

The rules (Kertész 2021; DESIGN.md "The method"), per active row with candidates L' (one entry per
model that flagged it, repeats kept) and C_s = number of models whose top-5 misses the label:

1. **fix** when |L'| >= h1 and |unique(L')| < 3: the label becomes the most frequent candidate;
   a tie between two equally frequent candidates goes to the smaller class index.
2. **CL removal** when |unique(L')| >= h2.
3. **consensus removal** when C_s >= h3, unless the CAMs of at least one model exempt the sample.
4. A sample to be fixed is never removed: a fix beats both removals. (If the winning candidate is
   the current label, nothing changes: the row is kept, and not removed either.)

Then the paper's Table A.1 **merges** (`decide.merges`): every kept or fixed row whose label is a
source class gets the target class (`merged` = true; the action stays keep or fix, so a keep that
only the merge changed is a `keep` whose `new_label` is the target). Then **human overrides**
(`decide.overrides`, a CSV image_id,action,new_label,note) win over everything (a `keep` override
keeps the current label, unmerged; a `fix` to the current label is recorded as a keep). Last, each merge source class left without an image in the
cleaned split gets one black 224x224 placeholder row, so the 1000-class interface stays.

Inactive rows: a manifest skip row is a `skip`; a row that left the split in an earlier iteration
is a `remove` with the labels file's reason. keep + fix + remove + skip = manifest rows, checked.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from stages import formats
from stages.cli import run_as_script, split_stage_main
from stages.params import resolve_threshold, section

logger = logging.getLogger(__name__)

OVERRIDE_COLUMNS = ("image_id", "action", "new_label", "note")


@dataclass(frozen=True)
class Thresholds:
    """Resolved vote counts: fix at >= h1 candidates, remove at >= h2 unique candidates or at
    >= h3 top-5 misses; n_models = |M|."""

    h1: int
    h2: int
    h3: int
    n_models: int

    def __post_init__(self) -> None:
        for name in ("h1", "h2", "h3", "n_models"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive count, got {value!r}; give counts or "
                                 "fractions like 'M/2' in params.yaml decide.<split>")

    @classmethod
    def from_params(cls, params: dict[str, Any], split: str) -> "Thresholds":
        """`decide.<split>.h1/h2/h3` resolved against |M| = len(predict.models)."""
        n_models = len(section(params, "predict")["models"])
        own = section(params, "decide", split)
        missing = [k for k in ("h1", "h2", "h3") if k not in own]
        if missing:
            raise ValueError(f"params.yaml decide.{split} lacks {missing}; add them (counts or 'M/2')")
        return cls(*(resolve_threshold(own[k], n_models, name=f"decide.{split}.{k}")
                     for k in ("h1", "h2", "h3")), n_models=n_models)


def _describe(counts: Counter) -> str:
    """`{12: 3, 7: 1}`: candidates by frequency, then class index."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "{" + ", ".join(f"{c}: {n}" for c, n in items) + "}"


def _verdict(label: int, candidates: Sequence[int], misses: int, exemptions: int,
             t: Thresholds) -> tuple[str, int | None, bool, str]:
    """One active row -> (action, new_label, exempted, reason)."""
    counts = Counter(int(c) for c in candidates)
    flagged = f"{len(candidates)} of {t.n_models} models flagged it, candidates {_describe(counts)}"
    if len(candidates) >= t.h1 and len(counts) < 3:
        best = min(counts, key=lambda c: (-counts[c], c))
        if best != label:
            return "fix", best, False, f"fix: {flagged} (h1={t.h1}) -> {best}"
        return "keep", label, False, f"keep: {flagged} (h1={t.h1}); the winner is the current label"
    missed = f"top-5 missed by {misses} of {t.n_models} models (h3={t.h3})"
    why = []
    if len(counts) >= t.h2:
        why.append(f"{len(counts)} unique candidates {_describe(counts)} (h2={t.h2})")
    if misses >= t.h3 and exemptions == 0:
        why.append(f"{missed}, no CAM exemption")
    if why:
        return "remove", None, False, "remove: " + "; ".join(why)
    if misses >= t.h3:
        return "keep", label, True, f"keep: {missed}, exempted by the CAMs of {exemptions} model(s)"
    if counts:
        return "keep", label, False, f"keep: {flagged}; below h1={t.h1} and < h2={t.h2} unique"
    return "keep", label, False, "keep"


def count_exemptions(cams: pd.DataFrame | None) -> dict[str, int]:
    """image_id -> number of distinct models whose CAMs exempt it (cams rows with exempted=true)."""
    if cams is None or len(cams) == 0:
        return {}
    missing = {"image_id", "model", "exempted"} - set(cams.columns)
    if missing:
        raise ValueError(f"cams table lacks columns {sorted(missing)}; re-run `dvc repro explain`")
    hits = cams.loc[cams["exempted"].fillna(False).astype(bool), ["image_id", "model"]]
    return {str(k): int(v) for k, v in hits.drop_duplicates().groupby("image_id").size().items()}


def _check_votes(votes: pd.DataFrame, manifest: pd.DataFrame, t: Thresholds) -> None:
    formats.check_votes(votes, manifest)
    active = votes["inactive_reason"].isna()
    stale = sorted(set(votes.loc[active, "n_models"].dropna().astype(int)) - {t.n_models})
    if stale:
        raise ValueError(f"votes were computed with {stale} models but predict.models lists "
                         f"{t.n_models}; re-run `dvc repro vote`")
    if votes.loc[active, "label"].isna().any():
        raise ValueError("votes table has active rows without a label; re-run `dvc repro vote`")
    if (votes["top5_misses"].fillna(0) > t.n_models).any():
        raise ValueError(f"votes table has top5_misses above |M|={t.n_models}; re-run vote")


def apply_rules(votes: pd.DataFrame, manifest: pd.DataFrame, *, thresholds: Thresholds,
                exemptions: dict[str, int] | None = None) -> pd.DataFrame:
    """The paper's fix / CL removal / consensus removal rules, before merges and overrides.

    Args:
        votes: the votes table (contracts), one row per manifest row, same order.
        manifest: the split's manifest (its `skip_reason` marks skip rows).
        thresholds: resolved h1/h2/h3 and |M|.
        exemptions: image_id -> number of exempting models (see `count_exemptions`).

    Returns:
        The ledger (columns of LEDGER_FULL_SCHEMA), one row per votes row, same order.
    """
    _check_votes(votes, manifest, thresholds)
    exemptions = exemptions or {}
    n = len(votes)
    candidates = votes["cl_candidates"].to_numpy(dtype=object).copy()
    lengths = np.fromiter((-1 if c is None else len(c) for c in candidates), np.int64, n)
    for i in np.flatnonzero(lengths < 0):
        candidates[i], lengths[i] = np.empty(0, np.int32), 0
    misses = votes["top5_misses"].fillna(0).to_numpy(dtype=np.int64)
    n_exempt = votes["image_id"].map(exemptions).fillna(0).to_numpy(dtype=np.int32)
    skip = manifest["skip_reason"].notna().to_numpy()
    inactive = votes["inactive_reason"].notna().to_numpy() & ~skip
    labels = votes["label"].to_numpy(dtype=np.float64, na_value=np.nan)
    action = np.where(skip, "skip", np.where(inactive, "remove", "keep")).astype(object)
    reason = np.where(skip, "skip: " + manifest["skip_reason"].fillna("").astype(str),
                      np.where(inactive, votes["inactive_reason"].fillna("").astype(str), "keep")
                      ).astype(object)
    new_label = np.where(skip | inactive, np.nan, labels)
    exempted = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(~skip & ~inactive & ((lengths > 0) | (misses >= thresholds.h3))):
        action[i], fixed, exempted[i], reason[i] = _verdict(
            int(labels[i]), candidates[i], int(misses[i]), int(n_exempt[i]), thresholds)
        new_label[i] = np.nan if fixed is None else fixed
    return pd.DataFrame({
        "image_id": votes["image_id"].to_numpy(), "label": _ints(labels), "action": action,
        "new_label": _ints(new_label), "cl_candidates": candidates,
        "top5_misses": misses.astype("int32"), "exempted": exempted, "reason": reason,
        "original_label": votes["original_label"].astype("Int32").to_numpy(),
        "iteration": votes["iteration"].astype("int32").to_numpy(), "merged": False,
        "override": False, "exemptions": n_exempt})


def _ints(values: np.ndarray) -> pd.arrays.IntegerArray:
    """float64 with NaN for null -> a nullable Int32 array."""
    return pd.arrays.IntegerArray(np.nan_to_num(values, nan=0).astype(np.int32), np.isnan(values))


def load_merges(path: str | Path) -> dict[int, int]:
    """Table A.1 (source_wnid,...,target_wnid,...) -> {source class index: target class index}."""
    table = pd.read_csv(path, dtype=str)
    missing = {"source_wnid", "target_wnid"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: needs columns source_wnid and target_wnid, lacks {sorted(missing)}")
    index = _wnid_index()
    merges: dict[int, int] = {}
    for line, (source, target) in enumerate(zip(table["source_wnid"], table["target_wnid"]), 2):
        unknown = [w for w in (source, target) if w not in index]
        if unknown:
            raise ValueError(f"{path} line {line}: {unknown} not ILSVRC2012 wnids; fix the row")
        if index[source] in merges:
            raise ValueError(f"{path} line {line}: source {source} is listed twice; keep one row")
        merges[index[source]] = index[target]
    chained = sorted(set(merges.values()) & set(merges))
    if chained:
        wnids = formats.class_wnids()
        raise ValueError(f"{path}: {[wnids[c] for c in chained]} are both a source and a target; "
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
    return ledger.assign(new_label=_ints(new_label), merged=merged, reason=reason)


def load_overrides(path: str | Path) -> pd.DataFrame:
    """The overrides CSV as strings (a header-only file = no overrides)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"overrides file {path} not found; create it with the header "
                                f"{','.join(OVERRIDE_COLUMNS)} (no rows = no overrides)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(table.columns) != list(OVERRIDE_COLUMNS):
        raise ValueError(f"{path}: header must be {','.join(OVERRIDE_COLUMNS)}, got "
                         f"{','.join(table.columns)}")
    return table


@functools.lru_cache(maxsize=1)
def _wnid_index() -> dict[str, int]:
    return {wnid: i for i, wnid in enumerate(formats.class_wnids())}


def _parse_class(value: str) -> int | None:
    """A class index from "123" or a wnid; None when it is neither."""
    index = _wnid_index()
    if value.strip() in index:
        return index[value.strip()]
    try:
        number = int(value)
    except ValueError:
        return None
    return number if 0 <= number < formats.NUM_CLASSES else None


def _override_error(row: dict[str, Any], position: int | None, action_now: np.ndarray,
                    label_now: np.ndarray) -> str | None:
    """Why an override row cannot apply (with the fix), or None."""
    action, new_label = row["action"].strip(), row["new_label"].strip()
    if position is None:
        return "unknown image_id; use an image_id of the split's manifest"
    if action not in ("keep", "fix", "remove"):
        return f"action {action!r} is not keep, fix or remove; use one of those"
    if action == "fix" and not new_label:
        return "action fix needs a new_label (class index 0..999 or wnid); add it"
    if action != "fix" and new_label:
        return "new_label is only read for action fix; clear it or use fix"
    if action == "fix" and _parse_class(new_label) is None:
        return f"new_label {new_label!r} is not a class index 0..999 or an ILSVRC2012 wnid"
    if action_now[position] == "skip":
        return "the image is unreadable (a skip row); overrides cannot apply to it; drop the row"
    if action == "keep" and np.isnan(label_now[position]):
        return "the image left the split earlier and has no label to keep; use fix with a new_label"
    return None


def apply_overrides(ledger: pd.DataFrame, overrides: pd.DataFrame, *, source: str = "overrides"
                    ) -> pd.DataFrame:
    """Human overrides win over every rule and merge; `override` = true, reason "override: <note>".

    Raises:
        ValueError: naming `source`, the CSV line and the fix, for an unknown image_id, a bad
            action, a fix without a valid new_label or a duplicated image_id.
    """
    cols = {c: ledger[c].to_numpy(dtype=object).copy() for c in ("action", "reason")}
    label = ledger["label"].to_numpy(dtype=np.float64, na_value=np.nan)
    new_label = ledger["new_label"].to_numpy(dtype=np.float64, na_value=np.nan)
    merged, override = ledger["merged"].to_numpy(dtype=bool).copy(), np.zeros(len(ledger), bool)
    positions = {image_id: i for i, image_id in enumerate(ledger["image_id"])}
    seen: set[str] = set()
    for line, row in enumerate(overrides.to_dict("records"), 2):
        image_id = row["image_id"].strip()
        problem = _override_error(row, positions.get(image_id), cols["action"], label)
        if problem is None and image_id in seen:
            problem = "image_id appears twice; keep one row"
        if problem:
            raise ValueError(f"{source} line {line} (image_id {image_id!r}): {problem}")
        seen.add(image_id)
        i, action = positions[image_id], row["action"].strip()
        new_label[i] = (_parse_class(row["new_label"]) if action == "fix"
                        else label[i] if action == "keep" else np.nan)
        if action == "fix" and new_label[i] == label[i]:
            action = "keep"  # an override "fix" to the current label (e.g. a later iteration)
        cols["action"][i], merged[i], override[i] = action, False, True
        cols["reason"][i] = f"override: {row['note'].strip() or '(no note)'}"
    return ledger.assign(action=cols["action"], reason=cols["reason"], new_label=_ints(new_label),
                         merged=merged, override=ledger["override"].to_numpy(bool) | override)


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
    rows["wnid"] = [wnids[int(c)] for c in rows["label"]]
    rows["action"], rows["placeholder"], rows["merged"] = part["action"], False, part["merged"]
    rows["iteration"] = part["iteration"]
    iteration = int(ledger["iteration"].iloc[0]) if len(ledger) else 0
    present = set(int(c) for c in rows["label"])
    empty = sorted(set(int(c) for c in placeholder_classes) - present)
    holders = pd.DataFrame({
        "image_id": [f"placeholder_{wnids[c]}" for c in empty], "path": None, "label": empty,
        "original_label": pd.array([pd.NA] * len(empty), dtype="Int32"),
        "wnid": [wnids[c] for c in empty], "action": "placeholder", "placeholder": True,
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


def decide_split(votes: pd.DataFrame, manifest: pd.DataFrame, *, thresholds: Thresholds,
                 cams: pd.DataFrame | None = None, merges: dict[int, int] | None = None,
                 overrides: pd.DataFrame | None = None, overrides_source: str = "overrides"
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rules, then merges, then overrides, then placeholders -> (ledger, cleaned split)."""
    ledger = apply_rules(votes, manifest, thresholds=thresholds, exemptions=count_exemptions(cams))
    ledger = apply_merges(ledger, merges or {})
    if overrides is not None and len(overrides):
        ledger = apply_overrides(ledger, overrides, source=overrides_source)
    reconcile(ledger, manifest)
    clean = build_clean(ledger, manifest, placeholder_classes=(merges or {}).keys())
    return ledger, clean


def run_decide(split: str, params: dict[str, Any], *, root: str | Path = ".") -> dict[str, int]:
    """The stage: read manifest, votes, cams, merges and overrides; write ledger and clean split."""
    root = Path(root)
    thresholds = Thresholds.from_params(params, split)
    manifest = formats.read_manifest(split, path=root / formats.manifest_path(split))
    votes = formats.read_table(root / formats.votes_path(split), what=f"votes of {split!r}")
    cams = formats.read_table(root / formats.cams_path(split), what=f"CAM scores of {split!r}")
    merge_params = section(params, "decide").get("merges") or {}
    merges = load_merges(root / merge_params["table"]) if merge_params.get("enabled") else {}
    overrides_file = section(params, "decide").get("overrides")
    overrides = load_overrides(root / overrides_file) if overrides_file else None
    ledger, clean = decide_split(votes, manifest, thresholds=thresholds, cams=cams, merges=merges,
                                 overrides=overrides, overrides_source=str(overrides_file))
    formats.write_table(ledger, root / formats.ledger_path(split), schema=formats.LEDGER_FULL_SCHEMA)
    formats.write_table(clean, root / formats.clean_path(split), schema=formats.CLEAN_SCHEMA)
    counts = reconcile(ledger, manifest)
    counts.update(merged=int(ledger["merged"].sum()), override=int(ledger["override"].sum()),
                  exempted=int(ledger["exempted"].sum()),
                  placeholders=int(clean["placeholder"].sum()))
    logger.info("decide %s (h1=%d h2=%d h3=%d, |M|=%d): %s", split, thresholds.h1, thresholds.h2,
                thresholds.h3, thresholds.n_models, counts)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.decide --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="decide", doc=__doc__, run=run_decide)


if __name__ == "__main__":
    run_as_script(main)
