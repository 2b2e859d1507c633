"""The expected-benefit strategy on constructed evidence (posteriors from the pipeline's own closed
form at a 10 % noise rate): a fix only where the new class is probably right, removals only where
the label is more likely wrong than the split's labels are on average and within the budget, the
CAM veto, the review queue, and decisions that do not flip on the last bits of the evidence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from evidence_inputs import rows

from stages.method.decisions import ExpectedBenefitConfig, StrategyOptions, confidence
from stages.method.expected_benefit import expected_benefit
from stages.method.thresholds import Thresholds

T = Thresholds(h1=3, h2=3, h3=4, n_models=5)
ALL = ExpectedBenefitConfig(max_remove=1.0)

CLEAN = {"label": 10, "ensemble": {10: 0.95, 11: 0.02}}
WRONG = {"label": 10, "ensemble": {20: 0.99, 10: 0.001}}  # pi(20) = 0.92
DOUBTFUL = {"label": 10, "ensemble": {20: 0.7, 30: 0.25, 10: 0.01}}  # pi(10) = 0.77, pi(20) = 0.2


def decide(*specs: dict, knobs: ExpectedBenefitConfig = ALL):
    evidence = rows(*specs)
    out = expected_benefit(evidence, thresholds=T, options=StrategyOptions(expected_benefit=knobs))
    return out, confidence(evidence, out)


def test_a_clearly_wrong_label_is_fixed_with_its_estimated_precision() -> None:
    out, right = decide(WRONG, CLEAN)
    assert out.action.tolist() == ["fix", "keep"] and out.new_label.tolist() == [20, 10]
    assert out.reason[0].startswith("fix: P(20 (") and "precision 0.8" in out.reason[0]
    assert right[0] == pytest.approx(0.92, abs=0.01) and right[1] > 0.99
    assert not out.review.any()


def test_no_fix_below_the_precision_knob_the_row_is_removed_instead() -> None:
    out, right = decide(WRONG, knobs=dataclasses.replace(ALL, precision=0.95))
    assert out.action.tolist() == ["remove"] and out.new_label.tolist() == [-1]
    assert "is wrong) = 0.92 >= 2.0 x noise 0.10" in out.reason[0]
    assert right[0] == pytest.approx(0.92, abs=0.01)  # P(the label is wrong)


def test_a_label_twice_as_likely_wrong_as_the_average_label_is_removed() -> None:
    out, right = decide(DOUBTFUL, CLEAN)
    assert out.action.tolist() == ["remove", "keep"]
    assert right[0] == pytest.approx(0.23, abs=0.01)
    # P(wrong) 0.15 < 2 x noise: more doubtful than the average label, not enough to remove
    doubtful = {"label": 10, "ensemble": {20: 0.5, 30: 0.3, 10: 0.05}}
    assert decide(doubtful)[0].action.tolist() == ["keep"]
    margin_one = dataclasses.replace(ALL, removal_margin=1.0)
    assert decide(doubtful, knobs=margin_one)[0].action.tolist() == ["remove"]


def test_uninformative_models_remove_and_fix_nothing() -> None:
    """Flat evidence (every class about equally likely, the label too) puts every label at
    P(wrong) = noise: no removal, no fix, whatever the labels."""
    flat = [{"label": k, "ensemble": {k: 0.001, k + 1: 0.0011}} for k in range(50)]
    out = decide(*flat)[0]
    assert (out.action == "keep").all() and not out.review.any()


def test_removals_stay_within_the_budget_least_likely_labels_first_the_rest_queued() -> None:
    weak = [{"label": 10, "ensemble": {20: 0.7, 30: 0.25, 10: 0.002 * (k + 1)}} for k in range(4)]
    knobs = dataclasses.replace(ALL, max_remove=0.04)
    out = decide(*weak, *[CLEAN] * 46, knobs=knobs)[0]
    assert out.action.tolist()[:4] == ["remove", "remove", "keep", "keep"]  # 4 % of 50 = 2
    assert out.review.tolist()[:4] == [False, False, True, True]
    assert "beyond the removal budget (max_remove 0.04: 2 of 50 active rows)" in out.reason[2]
    assert (out.action[4:] == "keep").all() and not out.review[4:].any()


def test_the_cam_veto_keeps_a_removal_candidate_and_can_be_switched_off() -> None:
    vetoed = decide({**DOUBTFUL, "exemptions": 2})[0]
    assert vetoed.action.tolist() == ["keep"] and vetoed.exempted.tolist() == [True]
    assert "the CAMs of 2 model(s) find it in its boxes" in vetoed.reason[0]
    off = decide({**DOUBTFUL, "exemptions": 2}, knobs=dataclasses.replace(ALL, cam_veto=False))
    assert off[0].action.tolist() == ["remove"]


def test_a_possible_other_class_is_queued_for_review_not_acted_on() -> None:
    unsure = {"label": 10, "ensemble": {20: 0.9, 10: 0.05}}  # pi(20) = 0.47, pi(10) = 0.53
    out = decide(unsure, knobs=dataclasses.replace(ALL, review=0.4))[0]
    assert out.action.tolist() == ["remove"]  # the label is wrong with P 0.47 >= 2 x noise
    kept = decide(unsure, knobs=dataclasses.replace(ALL, max_remove=0.0, review=0.4))[0]
    assert kept.action.tolist() == ["keep"] and kept.review.tolist() == [True]


def test_secondary_labels_are_never_published_below_the_precision_knob() -> None:
    both = {"label": 526, "ensemble": {526: 0.55, 664: 0.44}}
    out = decide(both, knobs=dataclasses.replace(ALL, review=0.4))[0]
    assert out.action.tolist() == ["keep"] and out.secondary == [[]]
    assert out.review.tolist() == [True] and "may also show 664 (" in out.reason[0]


def test_secondary_labels_are_reviewed_not_published_even_where_the_ensemble_is_sure() -> None:
    """q(664) = 0.85 while pi(label) = 0.90 (a low noise rate): the old rule published 664 as a
    secondary label at 'precision' q, and such labels were wrong on held-out dev images. A single-
    label posterior gives pi(664) = 0.10: the row is reviewed, nothing is published."""
    confident = {"label": 526, "ensemble": {664: 0.85, 526: 0.14}, "noise": 0.02}
    knobs = dataclasses.replace(ALL, removal_margin=10.0, review=0.5)  # no removal either
    out = decide(confident, knobs=knobs)[0]
    assert out.action.tolist() == ["keep"] and out.secondary == [[]]
    assert out.review.tolist() == [True]
    assert "may also show 664 (monitor) (q = 0.85)" in out.reason[0]


def test_decisions_do_not_flip_on_the_last_bits_of_the_evidence() -> None:
    specs = [WRONG, DOUBTFUL, CLEAN] * 20
    evidence = rows(*specs)
    nudged = dataclasses.replace(
        evidence,
        label_posterior=evidence.label_posterior + 1e-7,
        best_other_posterior=evidence.best_other_posterior - 1e-7,
    )
    options = StrategyOptions(expected_benefit=ExpectedBenefitConfig(max_remove=0.1))
    first = expected_benefit(evidence, thresholds=T, options=options)
    second = expected_benefit(nudged, thresholds=T, options=options)
    assert first.action.tolist() == second.action.tolist()
    assert first.reason.tolist() == second.reason.tolist()


def test_rows_without_evidence_are_kept_untouched() -> None:
    evidence = rows(WRONG)
    blind = dataclasses.replace(
        evidence,
        label_posterior=np.array([np.nan]),
        best_other=np.array([-1]),
        best_other_posterior=np.array([np.nan]),
    )
    out = expected_benefit(blind, thresholds=T, options=StrategyOptions())
    assert out.action.tolist() == ["keep"] and not out.review.any()


# ------------------------------------------------------------- do no harm, on real evidence

VIEWS = ("full", "boxes")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory, demo_manifest, _params: dict):
    """Every demo model x view predicted over the 500 dev images, and the dev reference."""
    from stages.method import references
    from stages.modelling.predict_config import PredictConfig
    from stages.modelling.predictor import predict_split

    folder = tmp_path_factory.mktemp("dev") / "predictions"
    models = tuple(_params["predict"]["models"])
    config = PredictConfig.from_params(_params, "val", models, VIEWS)
    outs = {f"{m}.{v}": folder / f"{m}.{v}.npy" for m in models for v in VIEWS}
    predict_split(config, demo_manifest, outs)
    reference = references.reference_file(_params, "val")
    entries = references.align(
        references.load_reference(reference), demo_manifest["image_id"], source=str(reference)
    )
    return folder, models, list(entries)


def dev_agreement(params: dict, manifest, dev, models: tuple[str, ...], mask=None):
    """(before, after) ReaL agreement of the default strategy's ledger with these models."""
    from stages.method import references
    from stages.method.ledger import DecideConfig, decide_split
    from stages.method.merges import load_merges
    from stages.method.votes import VoteConfig, split_votes

    folder, _, entries = dev
    vote = dataclasses.replace(
        VoteConfig.from_params(params, "val"), models=models, views=VIEWS, specs=()
    )
    votes, _ = split_votes(vote, manifest, predictions=folder)
    decide = DecideConfig.from_params(params, "val")
    n = len(models)
    decide = dataclasses.replace(
        decide, strategy="expected_benefit", thresholds=Thresholds(h1=n, h2=n, h3=n, n_models=n)
    )
    merges = load_merges(decide.merges.table)
    ledger, _ = decide_split(votes.to_pandas(), manifest, config=decide, merges=merges)
    if mask is not None:
        entries = [e if keep else None for e, keep in zip(entries, mask)]
    block = references.agreement(ledger, entries)
    return block["agreement_before"], block["agreement_after"]


@pytest.mark.slow
def test_the_weakest_model_alone_does_not_lower_dev_agreement(params, demo_manifest, dev) -> None:
    before, after = dev_agreement(params, demo_manifest, dev, ("mobilenetv1_025",))
    assert after >= before


@pytest.mark.slow
def test_the_full_ensemble_does_not_lower_dev_agreement_on_either_half(
    params, demo_manifest, dev
) -> None:
    _, models, entries = dev
    judged = np.flatnonzero([e is not None for e in entries])
    order = np.random.default_rng(0).permutation(judged)
    for part in (order[: len(order) // 2], order[len(order) // 2 :]):
        mask = np.zeros(len(entries), dtype=bool)
        mask[part] = True
        before, after = dev_agreement(params, demo_manifest, dev, models, mask)
        assert after >= before, (before, after)


@pytest.mark.slow
def test_the_ledger_does_not_change_when_the_predictions_move_by_one_part_in_a_million(
    params, demo_manifest, dev, tmp_path
) -> None:
    """Decisions compare posteriors rounded to 4 decimals and temperatures are rounded too, so a
    fresh clone whose CPU arithmetic differs in the last bits decides the same (issue 21)."""
    import shutil

    from stages.contracts import formats
    from stages.method.ledger import DecideConfig, decide_split
    from stages.method.merges import load_merges
    from stages.method.votes import VoteConfig, split_votes

    folder, models, _ = dev
    nudged = tmp_path / "nudged"
    nudged.mkdir()
    rng = np.random.default_rng(0)
    for path in folder.glob("*.npy"):
        probs = np.load(path).astype(np.float64)
        probs = probs * (1 + rng.uniform(-1e-6, 1e-6, probs.shape))  # float32's last bits
        formats.write_npy(
            (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32), nudged / path.name
        )
        shutil.copy(path.with_suffix(".json"), nudged / path.with_suffix(".json").name)
    vote = dataclasses.replace(
        VoteConfig.from_params(params, "val"), models=models, views=VIEWS, specs=()
    )
    decide = DecideConfig.from_params(params, "val")
    merges = load_merges(decide.merges.table)
    ledgers = []
    for source in (folder, nudged):
        votes, _ = split_votes(vote, demo_manifest, predictions=source)
        ledgers.append(
            decide_split(votes.to_pandas(), demo_manifest, config=decide, merges=merges)[0]
        )
    columns = ["action", "new_label", "reason", "review"]
    assert ledgers[0][columns].compare(ledgers[1][columns]).empty
