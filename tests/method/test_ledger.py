"""stages.method.ledger: moved from test_decide.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from evidence_inputs import posterior_fields

from stages.contracts import formats
from stages.contracts.errors import ConfigError
from stages.method.ledger import DecideConfig, decide_split, reconcile
from stages.method.merges import load_merges
from stages.method.overrides import apply_overrides
from stages.method.thresholds import Thresholds

VOTES_SCHEMA = formats.VOTES_SCHEMA


CAMS_SCHEMA = formats.CAMS_SCHEMA


MODELS = ["m0", "m1", "m2", "m3", "m4"]
POSTERIOR = ("label_posterior", "best_other", "best_other_posterior", "noise_rate")


def paper(h1: int = 3, h2: int = 3, h3: int = 4, n_models: int = 5) -> DecideConfig:
    return DecideConfig("paper", Thresholds(h1=h1, h2=h2, h3=h3, n_models=n_models))


PAPER = paper()
T = Thresholds(h1=3, h2=3, h3=4, n_models=5)  # the paper's val thresholds at |M| = 5
CONSENSUS_SPLIT = DecideConfig("consensus", T)


WNIDS = formats.class_wnids()
TYPEWRITER, KEYBOARD = WNIDS.index("n04505470"), WNIDS.index("n03085013")


MERGE_TABLE = Path("data/table_a1_merges.csv")


def vote(
    image_id: str,
    label: int | None = 10,
    candidates: tuple[int, ...] = (),
    misses: int = 0,
    inactive: str | None = None,
    iteration: int = 0,
    ensemble: dict[int, float] | None = None,
) -> dict:
    """One votes row: candidates come from the first len(candidates) models; `ensemble` gives the
    ensemble's mean probabilities of its top classes (default: the label at 0.9)."""
    ensemble = ensemble or {label: 0.9, 500: 0.04, 501: 0.03, 502: 0.02, 503: 0.01}
    top = sorted(ensemble, key=lambda c: (-ensemble[c], c))[:5]
    return {
        "image_id": image_id,
        "label": None if inactive else label,
        "original_label": label,
        "iteration": iteration,
        "inactive_reason": inactive,
        "cl_candidates": list(candidates),
        "cl_models": MODELS[: len(candidates)],
        "top5_misses": misses,
        "top5_hit_models": MODELS[misses:],
        "n_models": 5,
        "ensemble_top": [] if inactive else top,
        "ensemble_probs": [] if inactive else [ensemble[c] for c in top],
        "label_prob": None if inactive else ensemble.get(label, 0.001),
        "model_top1": [] if inactive else [top[0]] * 5,
        **(dict.fromkeys(POSTERIOR) if inactive else posterior_fields(label, ensemble)),
    }


def tables(*rows: dict, skip: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(votes, manifest) as the stages read them back from parquet."""
    skip = skip or {}
    votes = pa.Table.from_pylist(list(rows), schema=VOTES_SCHEMA).to_pandas()
    manifest = pa.Table.from_pylist(
        [
            {
                "image_id": r["image_id"],
                "path": f"val/{r['image_id']}.JPEG",
                "label": r["original_label"],
                "wnid": WNIDS[r["original_label"]],
                "boxes": [[1, 2, 30, 40]],
                "width": 227,
                "height": 227,
                "skip_reason": skip.get(r["image_id"]),
            }
            for r in rows
        ],
        schema=formats.MANIFEST_SCHEMA,
    )
    return votes, manifest.to_pandas()


def decide(*rows: dict, config: DecideConfig = PAPER, **kwargs) -> pd.DataFrame:
    votes, manifest = tables(*rows, skip=kwargs.pop("skip", None))
    ledger, _ = decide_split(votes, manifest, config=config, **kwargs)
    return ledger.set_index("image_id")


def overrides(*rows: tuple[str, str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "action", "new_label", "note"])


def test_fix_at_exactly_h1_votes_with_two_unique_candidates() -> None:
    ledger = decide(vote("a", 10, (7, 7, 9)), vote("b", 10, (7, 9)))
    assert ledger.loc["a", "action"] == "fix" and ledger.loc["a", "new_label"] == 7
    assert ledger.loc["a", "reason"] == (
        "fix: 3 of 5 models flagged it, candidates {7 (cock): 2, 9 (ostrich): 1} (h1=3) -> 7 (cock)"
    )
    assert ledger.loc["b", "action"] == "keep" and ledger.loc["b", "new_label"] == 10
    assert "below h1=3" in ledger.loc["b", "reason"]


def test_tied_candidates_fix_to_the_smaller_class_index() -> None:
    ledger = decide(vote("a", 10, (9, 7)), vote("b", 10, (7, 9)), config=paper(2, 3, 4, 5))
    assert list(ledger["new_label"]) == [7, 7]


def test_no_fix_at_three_unique_candidates() -> None:
    ledger = decide(vote("a", 10, (7, 8, 9, 9)), config=paper(3, 4, 4, 5))
    assert ledger.loc["a", "action"] == "keep"


def test_removal_at_h2_unique_candidates() -> None:
    ledger = decide(vote("a", 10, (7, 8, 9)), vote("b", 10, (7, 8)))
    assert ledger.loc["a", "action"] == "remove" and pd.isna(ledger.loc["a", "new_label"])
    assert (
        "3 unique candidates {7 (cock): 1, 8 (hen): 1, 9 (ostrich): 1} (h2=3)"
        in ledger.loc["a", "reason"]
    )
    assert ledger.loc["b", "action"] == "keep"


def test_consensus_removal_at_h3_and_not_below() -> None:
    elsewhere = {500: 0.6, 501: 0.2, 502: 0.1, 503: 0.05, 504: 0.01}
    ledger = decide(vote("a", 10, misses=4, ensemble=elsewhere), vote("b", 10, misses=3))
    assert ledger.loc["a", "action"] == "remove"
    assert ledger.loc["a", "reason"] == (
        "remove: top-5 missed by 4 of 5 models (h3=4), "
        "no CAM exemption; models predicted 500 (cliff "
        "dwelling) x5"
    )
    assert ledger.loc["b", "action"] == "keep" and ledger.loc["b", "reason"] == "keep"
    assert list(ledger["top5_misses"]) == [4, 3]


def test_cam_exemption_saves_a_consensus_removal() -> None:
    cams = pa.Table.from_pylist(
        [
            {
                "image_id": "a",
                "model": "m4",
                "gradcam": 0.5,
                "gradcampp": 0.4,
                "scorecam": None,
                "methods_passed": 2,
                "exempted": True,
            },
            {
                "image_id": "b",
                "model": "m4",
                "gradcam": 0.0,
                "gradcampp": 0.0,
                "scorecam": 0.0,
                "methods_passed": 0,
                "exempted": False,
            },
        ],
        schema=CAMS_SCHEMA,
    ).to_pandas()
    ledger = decide(vote("a", 10, misses=4), vote("b", 10, misses=4), cams=cams)
    assert ledger.loc["a", "action"] == "keep" and ledger.loc["a", "exempted"]
    assert (
        ledger.loc["a", "exemptions"] == 1
        and "exempted by the CAMs of 1" in ledger.loc["a", "reason"]
    )
    assert ledger.loc["b", "action"] == "remove" and not ledger.loc["b", "exempted"]


def test_exemption_does_not_save_a_cl_removal() -> None:
    cams = pd.DataFrame({"image_id": ["a"], "model": ["m4"], "exempted": [True]})
    ledger = decide(vote("a", 10, (7, 8, 9), misses=4), cams=cams)
    assert ledger.loc["a", "action"] == "remove" and not ledger.loc["a", "exempted"]
    assert "no CAM exemption" not in ledger.loc["a", "reason"]


def test_fix_beats_consensus_and_cl_removal() -> None:
    ledger = decide(
        vote("a", 10, (7, 7, 7), misses=5),
        vote("b", 10, (7, 9), misses=5),
        config=paper(2, 2, 4, 5),
    )
    assert list(ledger["action"]) == ["fix", "fix"]
    assert list(ledger["new_label"]) == [7, 7]


def test_a_fix_to_the_current_label_keeps_and_never_removes() -> None:
    ledger = decide(vote("a", 7, (7, 7, 7), misses=5))
    assert ledger.loc["a", "action"] == "keep" and ledger.loc["a", "new_label"] == 7


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"h1": "half", "h2": 3, "h3": 4}, r"`decide.val.h1`: .*'half'"),
        (
            {"h1": 3, "h2": 3, "h3": 6},
            r"`decide.val.h3` = 6 is above the number of models \|M\| = 5",
        ),
        (
            {"h1": 3, "h2": 3, "h3": 4, "strategy": "best"},
            r"`decide.val.strategy` must be one of "
            r"'expected_benefit', 'consensus', 'paper'",
        ),
        (
            {"h1": 3, "h2": 3, "h3": 4, "stratgy": "paper"},
            r"unknown key 'stratgy'; did you mean "
            r"'strategy'",
        ),
        ({"h1": 3, "h3": 4}, r"`decide.val` lacks the key 'h2'"),
    ],
)
def test_bad_decide_params_are_refused_naming_the_key(
    params: dict, entry: dict, match: str
) -> None:
    params["models"].update({m: {"spec": f"local-dir:{m}"} for m in MODELS})
    params["predict"]["models"] = MODELS
    params["decide"]["val"] = entry
    with pytest.raises(ConfigError, match=match):
        DecideConfig.from_params(params, "val")


def test_skip_rows_and_earlier_removals_are_inactive() -> None:
    ledger = decide(
        vote("a", 10, (7, 7, 7)),
        vote("b", 10, inactive="skip: truncated file"),
        vote("c", 10, (7, 7, 7), inactive="removed in iteration 0: remove: ...", iteration=1),
        skip={"b": "truncated file"},
    )
    assert list(ledger["action"]) == ["fix", "skip", "remove"]
    assert ledger.loc["b", "reason"] == "skip: truncated file"
    assert ledger.loc["c", "reason"] == "removed in iteration 0: remove: ..."
    assert ledger[["label", "new_label"]].loc[["b", "c"]].isna().all().all()
    assert list(ledger["original_label"]) == [10, 10, 10]


def test_an_image_predict_could_not_decode_is_a_skip_not_a_removal() -> None:
    from stages.method.votes import UNREADABLE

    carried = "skip: unreadable image: predict could not decode it (...)"
    ledger = decide(
        vote("a", 10),
        vote("u", 10, (7, 7, 7), misses=5, inactive=UNREADABLE),
        vote("c", 10, inactive=carried, iteration=1),  # promoted from an earlier iteration
    )
    assert list(ledger["action"]) == ["keep", "skip", "skip"]
    assert ledger.loc["u", "reason"] == UNREADABLE and UNREADABLE.startswith("skip: unreadable")
    assert ledger.loc["c", "reason"] == carried
    assert ledger[["label", "new_label"]].loc[["u", "c"]].isna().all().all()
    counts = reconcile(ledger.reset_index(), ledger.reset_index())
    assert counts == {**counts, "keep": 1, "skip": 2, "remove": 0}


def test_merges_apply_after_fixes_and_empty_classes_get_placeholders() -> None:
    merges = load_merges(MERGE_TABLE)
    assert len(merges) == 21 and merges[TYPEWRITER] == KEYBOARD
    space_bar = WNIDS.index("n04264628")
    votes, manifest = tables(
        vote("fixed", 10, (TYPEWRITER,) * 3),
        vote("kept", TYPEWRITER),
        vote("gone", TYPEWRITER, misses=5),
        vote("plain", 10),
    )
    ledger, clean = decide_split(votes, manifest, config=PAPER, merges=merges)
    ledger = ledger.set_index("image_id")
    assert ledger.loc["fixed", ["action", "new_label", "merged"]].tolist() == [
        "fix",
        KEYBOARD,
        True,
    ]
    assert ledger.loc["kept", ["action", "new_label", "merged"]].tolist() == [
        "keep",
        KEYBOARD,
        True,
    ]
    assert (
        "merged n04505470 typewriter keyboard -> n03085013 computer keyboard"
        in ledger.loc["kept", "reason"]
    )
    assert not ledger.loc["gone", "merged"] and not ledger.loc["plain", "merged"]
    assert list(clean["image_id"][:3]) == ["fixed", "kept", "plain"]
    holders = clean[clean["placeholder"]]
    assert len(holders) == 21 and holders["action"].eq("placeholder").all()
    assert holders["path"].isna().all() and holders["original_label"].isna().all()
    assert (holders["width"] == 224).all() and f"placeholder_{WNIDS[space_bar]}" in set(
        holders["image_id"]
    )
    assert list(holders["label"]) == sorted(merges)


def test_an_override_never_brings_back_a_class_the_merges_empty(
    caplog: pytest.LogCaptureFixture,
) -> None:
    merges = load_merges(MERGE_TABLE)
    space_bar, beaker = WNIDS.index("n04264628"), WNIDS.index("n02815834")
    votes, manifest = tables(vote("kept", TYPEWRITER), vote("fixed", 10), vote("also", 10))
    ledger, clean = decide_split(
        votes,
        manifest,
        config=PAPER,
        merges=merges,
        overrides=overrides(
            ("kept", "keep", "", "a real typewriter"),
            ("fixed", "fix", WNIDS[space_bar], ""),
            ("also", "secondary", WNIDS[beaker], ""),
        ),
        overrides_source="data/overrides/val.csv",
    )
    ledger = ledger.set_index("image_id")
    assert ledger["new_label"].tolist() == [KEYBOARD, KEYBOARD, 10]
    assert ledger.loc[["kept", "fixed"], "merged"].all() and ledger["override"].all()
    assert ledger.loc["kept", "reason"] == (
        "override: a real typewriter; merged n04505470 typewriter keyboard -> n03085013 "
        "computer keyboard"
    )
    assert list(ledger.loc["also", "secondary_labels"]) == [merges[beaker]]
    assert clean["placeholder"].sum() == 21
    assert "data/overrides/val.csv: the override of kept names n04505470, which the merges " in (
        caplog.text
    )


def test_overrides_beat_every_rule() -> None:
    table = overrides(
        ("fixed", "remove", "", "not a dog at all"),
        ("gone", "keep", "", "checked by hand"),
        ("plain", "fix", WNIDS[3], ""),
        ("idx", "fix", "4", "x"),
    )
    ledger = decide(
        vote("fixed", 10, (7, 7, 7)),
        vote("gone", 10, misses=5),
        vote("plain", 10),
        vote("idx", 10),
        overrides=table,
    )
    assert ledger["action"].tolist() == ["remove", "keep", "fix", "fix"]
    assert ledger["new_label"].tolist()[1:] == [10, 3, 4]
    assert ledger["override"].all()
    assert ledger["reason"].tolist()[:3] == [
        "override: not a dog at all",
        "override: checked by hand",
        "override: (no note)",
    ]


@pytest.mark.parametrize(
    "row, match",
    [
        (("nope", "keep", "", ""), r"overrides.csv line 2 \(image_id 'nope'\): unknown image_id"),
        (("a", "delete", "", ""), r"line 2 .*action 'delete' is not keep, fix, remove, secondary"),
        (("a", "fix", "", ""), r"line 2 .*action fix needs a new_label"),
        (("a", "fix", "n99999999", ""), r"not a class index 0..999 or an ILSVRC2012 wnid"),
        (("a", "keep", "5", ""), r"new_label is only read for actions fix and secondary"),
        (("s", "keep", "", ""), r"unreadable \(a skip row\)"),
    ],
)
def test_bad_overrides_name_the_file_the_row_and_the_fix(row: tuple, match: str) -> None:
    votes, manifest = tables(
        vote("a", 10), vote("s", 10, inactive="skip: empty"), skip={"s": "empty"}
    )
    with pytest.raises(ValueError, match=match):
        decide_split(
            votes,
            manifest,
            config=PAPER,
            overrides=overrides(row),
            overrides_source="data/overrides.csv",
        )


def test_duplicate_override_rows_are_refused() -> None:
    votes, manifest = tables(vote("a", 10))
    table = overrides(("a", "keep", "", ""), ("a", "remove", "", ""))
    with pytest.raises(ValueError, match=r"line 3 .*has two keep/fix/remove rows"):
        apply_overrides(decide_split(votes, manifest, config=PAPER)[0], table, source="o.csv")


def test_counts_reconcile_and_a_broken_ledger_is_refused() -> None:
    votes, manifest = tables(
        vote("a", 10, (7, 7, 7)),
        vote("b", 10, (7, 8, 9)),
        vote("c", 10),
        vote("d", 10, inactive="skip: empty"),
        skip={"d": "empty"},
    )
    ledger, clean = decide_split(votes, manifest, config=PAPER)
    assert reconcile(ledger, manifest) == {"keep": 1, "fix": 1, "remove": 1, "skip": 1}
    assert len(clean) == 2
    with pytest.raises(ValueError, match="does not reconcile"):
        reconcile(ledger.assign(action=["fix", "remove", "keep", "dropped"]), manifest)


def test_votes_that_do_not_fit_the_manifest_or_the_models_are_refused() -> None:
    votes, manifest = tables(vote("a", 10), vote("b", 10))
    with pytest.raises(ValueError, match="do not align with the manifest"):
        decide_split(votes.iloc[::-1].reset_index(drop=True), manifest, config=PAPER)
    with pytest.raises(ValueError, match=r"computed with \[5\] models but the split lists 4"):
        decide_split(votes, manifest, config=paper(2, 3, 3, 4))
