"""The `review` stage: the static report holds every decision with its evidence, bounded chunks.

Fast tests build reports of small synthetic splits (ledger, votes with the evidence columns,
manifest, real JPEG files and memory-mapped predictions written here); the slow one measures a
50,000-row ledger. The real demo's report is built and used in tests/test_review_browser.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_report import MODELS, write_split

from stages.contracts import formats
from stages.contracts.errors import ConfigError, InputError
from stages.reporting.report import (
    WHY,
    read_data,
)
from stages.review import run_review


def report_rows(folder: Path) -> list[dict[str, Any]]:
    """Every record of a built report, chunk by chunk."""
    meta = read_data(folder / "data/meta.js")
    return [r for k in range(meta["chunks"]) for r in read_data(folder / f"data/chunk-{k:05d}.js")]


def test_every_fix_removal_and_secondary_label_is_in_the_report(split_root) -> None:
    root, params = split_root
    figures = run_review("val", params)
    ledger = pd.read_parquet(root / formats.ledger_path("val"))
    must = set(
        ledger.loc[
            ledger["action"].isin(["fix", "remove"]) | (ledger["secondary_labels"].map(len) > 0),
            "image_id",
        ]
    )
    rows = report_rows(root / "data/review/val")
    assert must and must <= {r["id"] for r in rows}
    assert (
        len(rows)
        == figures["shown"]
        == len(read_data(root / "data/review/val/data/index.js")["pos"])
    )
    for r in rows:
        assert (root / "data/review/val" / r["thumb"]).is_file()
        assert len(r["top5"]) == len(MODELS) and all(len(t) == 5 for t in r["top5"])
        assert r["id"] == ledger["image_id"].iat[r["pos"]]
    for name in ("index.html", "app.js", "style.css"):
        assert (root / "data/review/val" / name).is_file()


def test_rows_are_ranked_by_label_quality_and_chunks_are_bounded(split_root) -> None:
    root, params = split_root
    run_review("val", params)
    index = read_data(root / "data/review/val/data/index.js")
    quality = [q for q in index["q"] if q is not None]
    assert quality == sorted(quality)
    assert all(q is None for q in index["q"][len(quality) :])  # rows without a label come last
    meta = read_data(root / "data/review/val/data/meta.js")
    sizes = [
        len(read_data(root / f"data/review/val/data/chunk-{k:05d}.js"))
        for k in range(meta["chunks"])
    ]
    assert max(sizes) <= params["review"]["chunk_rows"] and sum(sizes) == meta["shown"]


def test_keep_sample_is_seeded(split_root) -> None:
    root, params = split_root
    sampled = []
    for seed in (0, 0, 1):
        params["review"]["seed"] = seed
        run_review("val", params)
        index = read_data(root / "data/review/val/data/index.js")
        sampled.append({p for p, w in zip(index["pos"], index["why"]) if w & WHY["sample"]})
    assert len(sampled[0]) == params["review"]["keep_sample"]
    assert sampled[0] == sampled[1] != sampled[2]


def test_same_inputs_give_the_same_bytes(split_root) -> None:
    root, params = split_root
    run_review("val", params)
    first = {
        p.relative_to(root): p.read_bytes()
        for p in (root / "data/review").rglob("*")
        if p.is_file()
    }
    run_review("val", params)
    second = {
        p.relative_to(root): p.read_bytes()
        for p in (root / "data/review").rglob("*")
        if p.is_file()
    }
    assert first == second


def test_record_carries_names_candidates_and_cam_overlays(split_root) -> None:
    root, params = split_root
    ledger = pd.read_parquet(root / formats.ledger_path("val"))
    fixed = ledger.index[ledger["action"] == "fix"][0]
    image_id = ledger.at[fixed, "image_id"]
    overlay = root / f"data/cams/val-overlays/{image_id}__model_b.png"
    overlay.parent.mkdir(parents=True)
    Image.new("RGB", (30, 20), "red").save(overlay)
    run_review("val", params)
    record = next(r for r in report_rows(root / "data/review/val") if r["id"] == image_id)
    assert record["action"] == "fix" and record["new"] == ledger.at[fixed, "new_label"]
    assert record["cl"] == [[record["new"], "model_a"], [record["new"], "model_b"]]
    assert record["cams"] == [["model_b", f"cams/{fixed}__model_b.png"]]
    assert (root / "data/review/val" / record["cams"][0][1]).read_bytes() == overlay.read_bytes()
    meta = read_data(root / "data/review/val/data/meta.js")
    assert len(meta["classes"]) == 1000 and meta["models"] == list(MODELS)


def test_unreadable_image_has_no_thumbnail_but_is_listed(split_root) -> None:
    root, params = split_root
    for image in (root / "images").iterdir():
        image.write_bytes(b"not a jpeg")
    figures = run_review("val", params)
    rows = report_rows(root / "data/review/val")
    assert figures["no_thumbnail"] == len(rows) and all(r["thumb"] is None for r in rows)


def test_votes_without_evidence_columns_are_refused(split_root) -> None:
    root, params = split_root
    votes = pd.read_parquet(root / formats.votes_path("val")).drop(columns=["label_prob"])
    formats.write_table(votes, root / formats.votes_path("val"))
    with pytest.raises(InputError, match=r"lacks columns \['label_prob'\].*dvc repro"):
        run_review("val", params)


def test_unknown_review_key_is_a_config_error(split_root) -> None:
    _, params = split_root
    params["review"]["keep_samples"] = 3
    with pytest.raises(ConfigError, match="did you mean 'keep_sample'"):
        run_review("val", params)
    params["review"] = {"chunk_rows": 0}
    with pytest.raises(ConfigError, match="review.chunk_rows"):
        run_review("val", params)


def test_each_queue_holds_its_lowest_quality_rows_not_yet_overridden_first(split_root) -> None:
    """A round is bounded: each queue keeps review.queue_rows rows, lowest label quality first
    (rows a reviewer already overrode after the others), and the page says how many of how many."""
    root, params = split_root
    ledger = pd.read_parquet(root / formats.ledger_path("val"))
    quality = pd.read_parquet(root / formats.votes_path("val"))["label_prob"].to_numpy()
    fixes = ledger.index[ledger["action"] == "fix"].to_numpy()
    fixes = fixes[np.lexsort((fixes, np.nan_to_num(quality[fixes], nan=np.inf)))]
    ledger.loc[fixes[0], "override"] = True  # the weakest fix was reviewed already
    formats.write_table(ledger, root / formats.ledger_path("val"))
    params["review"].update(queue_rows=4, keep_sample=0, top_pairs=0)
    run_review("val", params)
    index = read_data(root / "data/review/val/data/index.js")
    shown_fix = {p for p, w in zip(index["pos"], index["why"]) if w & WHY["fix"]}
    assert shown_fix == set(fixes[1:5].tolist())
    overridden = {p for p, w in zip(index["pos"], index["why"]) if w & WHY["override"]}
    assert overridden == {int(fixes[0])}
    meta = read_data(root / "data/review/val/data/meta.js")
    assert meta["queues"]["fix"] == [4, len(fixes)] and meta["queue_rows"] == 4
    removals = int((ledger["action"] == "remove").sum())
    assert meta["queues"]["remove"] == [4, removals] and removals > 4
    assert meta["shown"] <= 4 * 6


@pytest.mark.slow
def test_50k_row_report_is_bounded_by_its_queues_not_the_split(tmp_path: Path, monkeypatch) -> None:
    params = write_split(tmp_path, 50_000, seed=1, models=MODELS[:2])
    params["review"] = {
        "keep_sample": 200,
        "seed": 0,
        "chunk_rows": 50,
        "thumb_size": 224,
        "top_pairs": 50,
        "pair_images": 50,
        "workers": 2,
        "queue_rows": 500,
    }
    monkeypatch.chdir(tmp_path)
    figures = run_review("val", params)
    rows = report_rows(tmp_path / "data/review/val")
    ledger = pd.read_parquet(
        tmp_path / formats.ledger_path("val"), columns=["action", "secondary_labels"]
    )
    decided = int(
        (ledger["action"].isin(["fix", "remove"]) | (ledger["secondary_labels"].map(len) > 0)).sum()
    )
    size = sum(p.stat().st_size for p in (tmp_path / "data/review/val").rglob("*") if p.is_file())
    print(f"\n50k-row review: {figures}, {size / 1e6:.1f} MB, {decided} decided rows")
    assert decided > 6000 and len(rows) == figures["shown"]
    assert figures["shown"] <= 6 * 500 + 200 + 50 * 50
    assert figures["max_chunk_bytes"] < 150_000  # one page load stays small
    assert figures["index_bytes"] < 60 * figures["shown"]


def test_duplicates_view_holds_the_groups_members_as_shown_records(split_root) -> None:
    """With `decide.val.duplicates.group` set, meta.js lists the group's duplicate groups; the
    split's members are shown records (thumbnail, issues) that their slots point at; without it,
    the view is empty and says no group is configured."""
    from stages.dedup.groups import DUPLICATES_SCHEMA

    root, params = split_root
    run_review("val", params)
    meta = read_data(root / "data/review/val/data/meta.js")
    assert meta["duplicates"] == {"group": None, "total": 0, "groups": []}
    ledger = pd.read_parquet(root / formats.ledger_path("val"))
    ids = ledger["image_id"]
    ledger["duplicate_group"] = pd.array([0, 0] + [pd.NA] * (len(ledger) - 2), dtype="Int32")
    ledger["issues"] = [["dark"]] + [[] for _ in range(len(ledger) - 1)]
    formats.write_table(ledger, root / formats.ledger_path("val"))
    table = pd.DataFrame(
        {
            "image_id": [ids[0], ids[1], "t0"],
            "split": ["val", "val", "train"],
            "row": [0, 1, 0],
            "group": [0, 0, 0],
            "kind": ["exact", "near", "exact"],
            "similarity": [1.0, 0.9, 1.0],
            "match": [ids[1], ids[0], ids[0]],
            "match_split": ["val", "val", "val"],
            "label": [1, 2, 3],
            "labels": [[1, 2, 3]] * 3,
            "conflicting": True,
            "splits": [["val", "train"]] * 3,
            "size": 3,
        }
    )
    formats.write_table(table, root / formats.duplicates_path("vt"), schema=DUPLICATES_SCHEMA)
    params["duplicates"] = {"groups": {"vt": ["val", "train"]}}
    params["decide"]["val"]["duplicates"] = {"group": "vt"}
    figures = run_review("val", params)
    meta = read_data(root / "data/review/val/data/meta.js")
    assert figures["duplicate_groups"] == 1 and meta["duplicates"]["group"] == "vt"
    (group,) = meta["duplicates"]["groups"]
    assert [m["id"] for m in group["members"]] == [ids[0], ids[1], "t0"]
    assert group["members"][2]["slot"] is None and group["conflicting"]
    rows = report_rows(root / "data/review/val")
    first = rows[group["members"][0]["slot"]]
    assert first["id"] == ids[0] and first["issues"] == ["dark"] and first["dup"] == 0
    assert "duplicate" in rows[group["members"][1]["slot"]]["why"]
    assert (root / "data/review/val" / first["thumb"]).is_file()
