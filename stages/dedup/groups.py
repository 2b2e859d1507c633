"""Duplicate groups over a group of splits (params.yaml `duplicates.groups`), within and across
splits, from three kinds of evidence:

- **exact**: the same file bytes (the manifest's sha256) or the same decoded pixels (the
  fingerprints' pixel_sha256: a lossless re-encode, a copy with other metadata);
- **near**: a pHash within `phash_distance` bits, or an embedding cosine >= `cosine` (re-encoded
  at another JPEG quality, resized, slightly cropped or shifted, a grayscale copy);
- **similar**: cosine in [`review_cosine`, `cosine`): listed for review, never acted on.

Candidate pairs are each image's `neighbours` nearest neighbours by cosine (faiss) plus every pair
of equal hashes; a group is a connected component of exact and near pairs (similar groups are
components of the similar pairs among images in no duplicate group). Output rows, one per member:
see DUPLICATES_SCHEMA.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from stages.contracts.config import fraction, from_section, positive
from stages.contracts.errors import ConfigError
from stages.contracts.params import section
from stages.dedup import neighbours as nb
from stages.dedup.fingerprints import PILLOW_VERSION, phash_ints
from stages.dedup.quality import QualityThresholds, issues, outliers

logger = logging.getLogger(__name__)

KINDS = ("exact", "near", "similar")

DUPLICATES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("split", pa.string()),
        ("row", pa.int64()),
        ("group", pa.int32()),
        ("kind", pa.string()),
        ("similarity", pa.float32()),
        ("match", pa.string()),
        ("match_split", pa.string()),
        ("label", pa.int32()),
        ("labels", pa.list_(pa.int32())),
        ("conflicting", pa.bool_()),
        ("splits", pa.list_(pa.string())),
        ("size", pa.int32()),
    ]
)
"""`data/duplicates/<group>.parquet`: one row per image in a group of two or more. `row` is the
image's manifest row; `kind` how it is joined to its group (exact > near > similar); `similarity`
the cosine to its closest member (1.0 for exact); `match` / `match_split` that member; `label` the
image's manifest label, `labels` the sorted labels of the group, `conflicting` whether they
differ; `splits` the splits the group spans (a leak when more than one); `size` its members."""

ISSUES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("split", pa.string()),
        ("issues", pa.list_(pa.string())),
        ("nearest", pa.string()),
        ("nearest_similarity", pa.float32()),
    ]
)
"""`data/duplicates/<group>.issues.parquet`: one row per image of the group's splits (split order,
then manifest order): its quality issues and its nearest other image by cosine."""


SEARCH_KEYS = tuple(f.name for f in fields(nb.IndexOptions))
"""The `duplicates:` keys that configure the faiss search (flat in params.yaml)."""


@dataclass(frozen=True)
class DuplicatesConfig:
    """params.yaml `duplicates` (see docs/duplicates.md).

    Attributes:
        groups: group name -> the splits searched together, within and across.
        model: the `models:` entry whose pooled pre-logit features are the embeddings.
        phash_distance: near at a pHash Hamming distance <= this (of 64 bits).
        cosine: near at an embedding cosine >= this.
        review_cosine: similar (review only) at a cosine in [review_cosine, cosine).
        search: the faiss search (`neighbours.IndexOptions`), from the flat keys `index`,
            `neighbours`, `flat_max_rows`, `ivf_lists`, `nprobe`, `seed`.
        quality: the `quality.QualityThresholds`.
    """

    groups: dict[str, tuple[str, ...]]
    model: str
    phash_distance: int = 6
    cosine: float = 0.876
    review_cosine: float = 0.82
    search: nb.IndexOptions = field(default_factory=nb.IndexOptions)
    quality: QualityThresholds = field(default_factory=QualityThresholds)

    def __post_init__(self) -> None:
        fraction("duplicates.cosine", self.cosine, low=-1.0)
        fraction("duplicates.review_cosine", self.review_cosine, low=-1.0, high=self.cosine)
        positive("duplicates.phash_distance", self.phash_distance, minimum=0)

    @classmethod
    def from_params(cls, params: Any) -> DuplicatesConfig:
        """From `duplicates:`; ConfigError for unknown keys, bad values or unknown splits."""
        values = dict(section(params, "duplicates"))
        quality = from_section(
            QualityThresholds, values.pop("quality", None), where="duplicates.quality"
        )
        search = from_section(
            nb.IndexOptions,
            {key: values[key] for key in SEARCH_KEYS if key in values},
            where="duplicates",
        )
        config = from_section(cls, values, where="duplicates", ignore=SEARCH_KEYS)
        known = set(params.get("splits") or {})
        for name, splits in config.groups.items():
            unknown = [s for s in splits if s not in known]
            if not splits or unknown or len(set(splits)) != len(splits):
                raise ConfigError(
                    f"params.yaml `duplicates.groups.{name}` must list distinct configured "
                    f"splits (configured: {sorted(known)}), got {list(splits)}"
                )
        return dataclasses.replace(config, search=search, quality=quality)


@dataclass(frozen=True)
class SplitData:
    """One split of a group: its manifest, fingerprints and embeddings, all in manifest order."""

    split: str
    manifest: pd.DataFrame
    fingerprints: pd.DataFrame
    embeddings: np.ndarray


@dataclass(frozen=True)
class Pairs:
    """Pairs (i, j) over the group's rows with their cosine (NaN: not computed) and kind."""

    i: np.ndarray
    j: np.ndarray
    cosine: np.ndarray
    kind: np.ndarray

    def of(self, kinds: tuple[str, ...]) -> Pairs:
        """The pairs of these kinds."""
        keep = np.isin(self.kind, kinds)
        return Pairs(self.i[keep], self.j[keep], self.cosine[keep], self.kind[keep])


def _stack(parts: list[SplitData]) -> tuple[pd.DataFrame, np.ndarray]:
    """One frame over the group's rows (split, row, image_id, label, hashes, valid) + embeddings."""
    frames = []
    for part in parts:
        m, f = part.manifest, part.fingerprints
        if len(f) != len(m) or len(part.embeddings) != len(m):
            raise ConfigError(
                f"split {part.split!r}: manifest {len(m)} rows, fingerprints {len(f)}, "
                f"embeddings {len(part.embeddings)}; re-run `dvc repro embed@{part.split}`"
            )
        frames.append(
            pd.DataFrame(
                {
                    "split": part.split,
                    "row": np.arange(len(m), dtype=np.int64),
                    "image_id": m["image_id"].to_numpy(),
                    "label": m["label"].astype("Int32").to_numpy(),
                    "sha256": m["sha256"].to_numpy(),
                    "pixel_sha256": f["pixel_sha256"].to_numpy(),
                    "phash": f["phash"].to_numpy(),
                    "valid": m["skip_reason"].isna().to_numpy() & f["phash"].notna().to_numpy(),
                }
            )
        )
    rows = pd.concat(frames, ignore_index=True)
    x = nb.normalised(np.concatenate([p.embeddings for p in parts]))
    return rows, x


def _hash_pairs(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Exact pairs: same file bytes or same decoded pixels (chains within each hash)."""
    found_i, found_j = [], []
    for column in ("sha256", "pixel_sha256"):
        valid = rows[column].notna().to_numpy() & rows["valid"].to_numpy()
        keys = rows[column].fillna("").to_numpy(dtype=object).astype(str)
        i, j = nb.equal_pairs(keys, valid)
        found_i.append(i)
        found_j.append(j)
    return np.concatenate(found_i), np.concatenate(found_j)


def candidate_pairs(
    rows: pd.DataFrame, x: np.ndarray, config: DuplicatesConfig
) -> tuple[Pairs, np.ndarray, np.ndarray]:
    """Every classified pair, plus each row's nearest other row and its cosine (-1 when none)."""
    valid = rows["valid"].to_numpy()
    hashes = phash_ints(rows["phash"].where(rows["valid"], None).tolist())
    sims, ids = nb.knn(x, config.search)
    ids = np.where(valid[np.clip(ids, 0, None)] & (ids >= 0), ids, -1)
    ki, kj, kc = nb.pairs_above(sims, ids, -np.inf)
    keep = valid[ki] & valid[kj]
    ki, kj, kc = ki[keep], kj[keep], kc[keep]
    ei, ej = _hash_pairs(rows)
    pi, pj = nb.equal_pairs(hashes, valid)
    i = np.concatenate([ei, pi, ki])
    j = np.concatenate([ej, pj, kj])
    cos = np.concatenate([np.full(len(ei), 1.0), np.full(len(pi), np.nan), kc]).astype(np.float32)
    exact = np.concatenate([np.ones(len(ei), bool), np.zeros(len(pi) + len(ki), bool)])
    close = nb.phash_pairs(hashes, valid, i, j, config.phash_distance)
    near = ~exact & (close | (cos >= config.cosine))
    similar = ~exact & ~near & (cos >= config.review_cosine)
    kind = np.where(exact, "exact", np.where(near, "near", np.where(similar, "similar", "")))
    keep = kind != ""
    nearest, nearest_sim = _nearest(sims, ids, len(rows))
    return Pairs(i[keep], j[keep], cos[keep], kind[keep].astype(object)), nearest, nearest_sim


def _nearest(sims: np.ndarray, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest other row among its neighbours (-1: none) and that cosine."""
    other = (ids >= 0) & (ids != np.arange(n)[:, None])
    masked = np.where(other, sims, -np.inf)
    best = masked.argmax(axis=1) if masked.shape[1] else np.zeros(n, dtype=np.int64)
    found = other.any(axis=1) if masked.shape[1] else np.zeros(n, dtype=bool)
    nearest = np.where(found, ids[np.arange(n), best] if masked.shape[1] else -1, -1)
    value = np.where(found, masked[np.arange(n), best] if masked.shape[1] else np.nan, np.nan)
    return nearest, value.astype(np.float32)


def components(n: int, pairs: Pairs, members: np.ndarray | None = None) -> np.ndarray:
    """Component label per row (-1 for rows in no pair, or outside `members`)."""
    i, j = pairs.i, pairs.j
    if members is not None:
        keep = members[i] & members[j]
        i, j = i[keep], j[keep]
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    linked = np.zeros(n, dtype=bool)
    linked[i] = linked[j] = True
    return np.where(linked, label, -1)


STRENGTH = {"exact": 2, "near": 1, "similar": 0}


def _best_match(n: int, pairs: Pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: its strongest pair's kind ('' when none), that cosine and the other row (-1)."""
    src = np.concatenate([pairs.i, pairs.j])
    dst = np.concatenate([pairs.j, pairs.i])
    cos = np.concatenate([pairs.cosine, pairs.cosine])
    strength = np.array([STRENGTH[k] for k in pairs.kind], dtype=np.int64)
    strength = np.concatenate([strength, strength])
    order = np.lexsort((dst, -cos, -strength, src))
    first = np.ones(len(order), dtype=bool)
    first[1:] = src[order][1:] != src[order][:-1]
    pick = order[first]
    kind = np.full(n, "", dtype=object)
    kind[src[pick]] = np.array(list(STRENGTH), dtype=object)[2 - strength[pick]]
    sim = np.full(n, np.nan, dtype=np.float32)
    sim[src[pick]] = cos[pick]
    match = np.full(n, -1, dtype=np.int64)
    match[src[pick]] = dst[pick]
    return kind, sim, match


def _members(
    rows: pd.DataFrame, pairs: Pairs, comp: np.ndarray, first_id: int, split_order: list[str]
) -> pd.DataFrame:
    """The table rows of the components `comp` (ids numbered from `first_id` by first row)."""
    n = len(rows)
    in_group = np.flatnonzero(comp >= 0)
    if not len(in_group):
        return pd.DataFrame(columns=DUPLICATES_SCHEMA.names)
    starts = pd.Series(in_group).groupby(comp[in_group]).min().sort_values()
    number = {int(c): first_id + k for k, c in enumerate(starts.index)}
    kind, sim, match = _best_match(n, pairs)
    part = rows.iloc[in_group].reset_index(drop=True)
    part["group"] = np.array([number[int(c)] for c in comp[in_group]], dtype=np.int32)
    part["kind"], part["similarity"] = kind[in_group], sim[in_group]
    part["match"] = rows["image_id"].to_numpy()[match[in_group]]
    part["match_split"] = rows["split"].to_numpy()[match[in_group]]
    by_group = part.groupby("group")
    labels = {
        g: sorted({int(v) for v in s.dropna()})
        for g, s in by_group["label"]  # per group
    }
    spans = by_group["split"].agg(lambda s: [x for x in split_order if x in set(s)])
    part["labels"] = part["group"].map(labels)
    part["conflicting"] = part["labels"].map(len) > 1
    part["splits"] = part["group"].map(spans)
    part["size"] = part["group"].map(by_group.size()).astype(np.int32)
    return part.sort_values(["group", "split", "row"], key=_split_key(split_order))


def _split_key(order: list[str]) -> Any:
    rank = {s: k for k, s in enumerate(order)}
    return lambda col: col.map(rank) if col.name == "split" else col


@dataclass(frozen=True)
class Result:
    """What the duplicates stage writes: the members table, the per-image issues and metrics."""

    table: pd.DataFrame
    issues: pd.DataFrame
    metrics: dict[str, Any]


def find_duplicates(parts: list[SplitData], config: DuplicatesConfig) -> Result:
    """Duplicate and similar groups over the splits `parts` (in group order), each image's
    quality issues and nearest neighbour, and the metrics that count them."""
    rows, x = _stack(parts)
    n = len(rows)
    pairs, nearest, nearest_sim = candidate_pairs(rows, x, config)
    missing = np.isnan(pairs.cosine)
    pairs.cosine[missing] = np.einsum("ij,ij->i", x[pairs.i[missing]], x[pairs.j[missing]])
    order = [p.split for p in parts]
    dup = pairs.of(("exact", "near"))
    comp = components(n, dup)
    table = _members(rows, dup, comp, 0, order)
    similar = pairs.of(("similar",))
    comp2 = components(n, similar, members=comp < 0)
    first = int(table["group"].max()) + 1 if len(table) else 0
    table = pd.concat(
        [t for t in (table, _members(rows, similar, comp2, first, order)) if len(t)] or [table],
        ignore_index=True,
    )
    table = table.reindex(columns=DUPLICATES_SCHEMA.names)
    valid = rows["valid"].to_numpy()
    mean_sim = np.where(valid, np.nan_to_num(nearest_sim, nan=-1.0), np.nan)
    found = issues(
        pd.concat([p.fingerprints for p in parts], ignore_index=True),
        config.quality,
        outliers(mean_sim, valid, config.quality.outlier_fraction),
    )
    issue_table = pd.DataFrame(
        {
            "image_id": rows["image_id"].to_numpy(),
            "split": rows["split"].to_numpy(),
            "issues": [f if v else [] for f, v in zip(found, valid)],
            "nearest": np.where(nearest >= 0, rows["image_id"].to_numpy()[nearest], None),
            "nearest_similarity": np.where(nearest >= 0, nearest_sim, np.nan),
        }
    )
    return Result(table, issue_table, _metrics(rows, pairs, table, issue_table, config))


def _metrics(
    rows: pd.DataFrame,
    pairs: Pairs,
    table: pd.DataFrame,
    issue_table: pd.DataFrame,
    config: DuplicatesConfig,
) -> dict[str, Any]:
    """Counts by kind, within / across splits, conflicting; quality issues; the settings."""
    groups = table.drop_duplicates("group")
    dup = groups["kind"] != "similar"
    across = groups["splits"].map(len) > 1
    has_exact = groups["group"].isin(table.loc[table["kind"] == "exact", "group"])
    per_split = {}
    for split, part in rows.groupby("split", sort=False):
        mine = table[table["split"] == split]
        per_split[str(split)] = {
            "images": len(part),
            "fingerprinted": int(part["valid"].sum()),
            "in_duplicate_groups": int((mine["kind"] != "similar").sum()),
            "exact": int((mine["kind"] == "exact").sum()),
            "near": int((mine["kind"] == "near").sum()),
            "similar": int((mine["kind"] == "similar").sum()),
            "leaked": int(((mine["kind"] != "similar") & (mine["splits"].map(len) > 1)).sum()),
        }
    counted = pd.Series([i for found in issue_table["issues"] for i in found]).value_counts()
    return {
        "images": len(rows),
        "pairs": {k: int((pairs.kind == k).sum()) for k in KINDS},
        "groups": {
            "duplicate": int(dup.sum()),
            "with_exact": int(has_exact.sum()),
            "near_only": int((dup & ~has_exact).sum()),
            "within_split": int((dup & ~across).sum()),
            "across_splits": int((dup & across).sum()),
            "conflicting": int((dup & groups["conflicting"]).sum()),
            "similar": int((~dup).sum()),
        },
        "per_split": per_split,
        "issues": {str(k): int(v) for k, v in counted.sort_index().items()},
        "images_with_issues": int((issue_table["issues"].map(len) > 0).sum()),
        "settings": {
            "model": config.model,
            "phash_distance": config.phash_distance,
            "cosine": config.cosine,
            "review_cosine": config.review_cosine,
            "index": config.search.index,
            "neighbours": config.search.neighbours,
            "pillow": PILLOW_VERSION,
        },
    }
