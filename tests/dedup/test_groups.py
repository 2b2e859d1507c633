"""Duplicate groups from hashes and embeddings (real-image cases: tests/test_duplicates.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.contracts.errors import ConfigError
from stages.dedup.groups import DuplicatesConfig, SplitData, find_duplicates


def part(split: str, n: int, x: np.ndarray, labels: list[int], sha: list[str], ph: list[str]):
    ids = [f"{split}{k}" for k in range(n)]
    manifest = pd.DataFrame(
        {"image_id": ids, "label": labels, "sha256": sha, "skip_reason": [None] * n}
    )
    prints = pd.DataFrame(
        {
            "image_id": ids,
            "pixel_sha256": [f"p{s}" for s in sha],
            "phash": ph,
            "width": 300,
            "height": 200,
            "brightness": 0.5,
            "bright_p99": 0.9,
            "sharpness": 500.0,
            "entropy": 7.0,
            "colourfulness": 20.0,
        }
    )
    return SplitData(split, manifest, prints, x.astype(np.float16))


def config(**kw: object) -> DuplicatesConfig:
    return DuplicatesConfig(groups={"g": ("a", "b")}, model="m", **kw)  # type: ignore[arg-type]


def test_groups_by_kind_across_splits() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((8, 16))
    a = base.copy()
    a[1] = a[0] + 0.01  # near copy of a0 by cosine
    a[3] = a[2] * 0.85 + base[7] * 0.55  # similar to a2 only
    b = base[[4, 5]].copy()  # b0 = a4 by bytes (leak), b1 unrelated by content but same pHash
    b[1] = rng.standard_normal(16)
    ph = [f"{int(k):016x}" for k in rng.integers(0, 2**63, size=8)]  # ~32 bits apart
    sha = [f"s{k}" for k in range(8)]
    parts = [
        part("a", 8, a, [0, 1, 2, 2, 4, 5, 6, 7], sha, ph),
        part("b", 2, b, [9, 5], ["s4", "x"], [ph[4], ph[5]]),
    ]
    result = find_duplicates(parts, config(review_cosine=0.5))
    t = result.table.set_index(["split", "image_id"])
    assert t.loc[("a", "a0"), "kind"] == "near"
    assert t.loc[("a", "a1"), "group"] == t.loc[("a", "a0"), "group"]
    assert t.loc[("b", "b0"), "kind"] == "exact" and t.loc[("b", "b0"), "conflicting"]
    assert list(t.loc[("b", "b0"), "labels"]) == [4, 9]
    assert list(t.loc[("b", "b0"), "splits"]) == ["a", "b"]
    assert t.loc[("b", "b1"), "kind"] == "near" and t.loc[("b", "b1"), "match"] == "a5"
    assert t.loc[("a", "a2"), "kind"] == "similar"
    assert result.metrics["groups"]["across_splits"] == 2
    assert result.metrics["groups"]["conflicting"] == 2  # a0/a1 and b0/a4 (b1/a5 share 5)
    assert len(result.issues) == 10 and result.issues["nearest"].notna().all()


def test_config_from_params(params: dict) -> None:
    assert DuplicatesConfig.from_params(params).groups == {"val": ("val",)}
    params["duplicates"]["groups"] = {"x": ["val", "nope"]}
    with pytest.raises(ConfigError, match="duplicates.groups.x"):
        DuplicatesConfig.from_params(params)
    params["duplicates"]["groups"] = {"x": ["val"]}
    params["duplicates"]["quality"]["darkk"] = 1
    with pytest.raises(ConfigError, match="did you mean 'dark'"):
        DuplicatesConfig.from_params(params)


def test_the_flat_search_keys_configure_the_faiss_search(params: dict) -> None:
    params["duplicates"].update(index="ivf", nprobe=8, neighbours=16)
    search = DuplicatesConfig.from_params(params).search
    assert (search.index, search.nprobe, search.neighbours) == ("ivf", 8, 16)
    params["duplicates"]["neighbours"] = 0
    with pytest.raises(ConfigError, match=r"`duplicates.neighbours` must be an int >= 1, got 0"):
        DuplicatesConfig.from_params(params)
    params["duplicates"].update(neighbours=16, nprobee=8)
    with pytest.raises(ConfigError, match="did you mean 'nprobe'"):
        DuplicatesConfig.from_params(params)
