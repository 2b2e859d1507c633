"""Decision strategies on constructed evidence: the paper's rules kept exactly, and the
multi-label-aware consensus strategy's secondary labels, fixes, removals, veto and budget."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from evidence_inputs import rows

from stages.contracts.errors import ConfigError
from stages.method.decisions import StrategyOptions
from stages.method.expected_benefit import expected_benefit
from stages.method.strategies import STRATEGIES, ConsensusConfig, consensus, paper
from stages.method.thresholds import Thresholds

T = Thresholds(h1=3, h2=3, h3=4, n_models=5)
C = ConsensusConfig(clear=0.5, support=0.15, secondary=0.3, max_remove=1.0)


def test_two_right_classes_keep_the_label_and_record_a_secondary_label() -> None:
    # a desk with a monitor on it: the ensemble splits between the two
    out = consensus(
        rows(
            {
                "label": 526,
                "ensemble": {526: 0.45, 664: 0.40, 527: 0.05},
                "candidates": (664, 664, 664),
                "misses": 0,
            }
        ),
        thresholds=T,
        options=StrategyOptions(consensus=C),
    )
    assert out.action.tolist() == ["keep"] and out.new_label.tolist() == [526]
    assert out.secondary == [[664]]
    assert out.reason[0].startswith(
        "keep + secondary: the image shows both: the label 526 (desk) 0.45 and 664 (monitor) 0.40"
    )


def test_a_confident_wrong_label_is_fixed_to_the_clearly_right_class() -> None:
    out = consensus(
        rows(
            {
                "label": 397,
                "ensemble": {396: 0.93, 397: 0.001},
                "candidates": (396, 396, 396, 396),
                "misses": 4,
            }
        ),
        thresholds=T,
        options=StrategyOptions(consensus=C),
    )
    assert out.action.tolist() == ["fix"] and out.new_label.tolist() == [396]
    assert out.secondary == [[]]
    assert out.reason[0] == (
        "fix: to 396 (lionfish), which the ensemble gives 0.93 (>= clear 0.5), while the "
        "label 397 (puffer) gets 0.00 (< support 0.15); CL: 4 of 5 models flag the label, "
        "candidates {396 (lionfish): 4}"
    )


def test_a_fix_no_model_voted_for_says_the_ensemble_chose_the_class() -> None:
    """The paintbrush image of the demo: no CL vote, the ensemble says pot. The reason names the
    ensemble as what chose the class; the CL count is evidence about the label, never `-> class`."""
    out = consensus(
        rows({"label": 696, "ensemble": {738: 0.98, 696: 0.01}}),
        thresholds=T,
        options=StrategyOptions(consensus=C),
    )
    assert out.action.tolist() == ["fix"] and out.new_label.tolist() == [738]
    assert out.reason[0] == (
        "fix: to 738 (pot), which the ensemble gives 0.98 (>= clear 0.5), while the label "
        "696 (paintbrush) gets 0.01 (< support 0.15); CL: 0 of 5 models flag the label"
    )


def test_nothing_fits_is_removed_with_what_the_models_predicted() -> None:
    spread = {611: 0.2, 612: 0.18, 444: 0.1, 665: 0.08, 10: 0.01}
    out = consensus(
        rows({"label": 10, "ensemble": spread, "candidates": (611, 612, 444, 665), "misses": 5}),
        thresholds=T,
        options=StrategyOptions(consensus=C),
    )
    assert out.action.tolist() == ["remove"] and out.new_label.tolist() == [-1]
    assert "no class clearly right" in out.reason[0]
    assert out.reason[0].endswith("models predicted 611 (jigsaw puzzle) x5")


def test_a_supported_label_is_kept_even_when_questioned() -> None:
    out = consensus(
        rows(
            {"label": 10, "ensemble": {10: 0.6, 11: 0.2}, "candidates": (11, 11, 11)},
            {"label": 10, "ensemble": {10: 0.2, 11: 0.25}, "misses": 5},
        ),
        thresholds=T,
        options=StrategyOptions(consensus=C),
    )
    assert out.action.tolist() == ["keep", "keep"] and out.secondary == [[], []]


def test_the_cam_veto_keeps_a_removal_candidate() -> None:
    out = consensus(
        rows({"label": 10, "ensemble": {20: 0.3, 10: 0.05}, "misses": 4, "exemptions": 1}),
        thresholds=T,
        options=StrategyOptions(consensus=C),
    )
    assert out.action.tolist() == ["keep"] and out.exempted.tolist() == [True]
    assert "exempted by the CAMs of 1 model(s)" in out.reason[0]


def test_removals_stay_within_the_budget_weakest_labels_first() -> None:
    weak = [
        {"label": 10, "ensemble": {20 + k: 0.3, 10: 0.01 * k}, "candidates": (20 + k,) * 3}
        for k in range(4)
    ]
    plain = [{"label": 10, "ensemble": {10: 0.9}}] * 46
    out = consensus(
        rows(*weak, *plain),
        thresholds=T,
        options=StrategyOptions(consensus=ConsensusConfig(max_remove=0.04)),
    )
    assert out.action.tolist()[:4] == ["remove", "remove", "keep", "keep"]  # 4 % of 50 rows = 2
    assert "beyond the removal budget (max_remove 0.04: 2 of 50 active rows)" in out.reason[2]
    assert (out.action[4:] == "keep").all()


def test_strategies_are_picked_from_a_dict() -> None:
    assert {
        "paper": paper,
        "consensus": consensus,
        "expected_benefit": expected_benefit,
    } == STRATEGIES


def test_consensus_knobs_are_fractions() -> None:
    with pytest.raises(
        ConfigError,
        match=r"decide.consensus.clear` must be a number in \[0.0, "
        r"1.0\], got 1.5",
    ):
        ConsensusConfig(clear=1.5)


# ------------------------------------------------------------------------------------------------
# The paper preset: the rules as they were before strategies existed, kept verbatim here as the
# reference implementation; the strategy must give the same action, new label and exemption.


def reference_verdict(
    label: int, candidates: Sequence[int], misses: int, exemptions: int, t: Thresholds
) -> tuple[str, int | None, bool]:
    counts = Counter(int(c) for c in candidates)
    if len(candidates) >= t.h1 and len(counts) < 3:
        best = min(counts, key=lambda c: (-counts[c], c))
        if best != label:
            return "fix", best, False
        return "keep", label, False
    why = []
    if len(counts) >= t.h2:
        why.append("cl")
    if misses >= t.h3 and exemptions == 0:
        why.append("consensus")
    if why:
        return "remove", None, False
    if misses >= t.h3:
        return "keep", label, True
    return "keep", label, False


@pytest.mark.parametrize(
    "t", [T, Thresholds(h1=2, h2=2, h3=3, n_models=5), Thresholds(h1=8, h2=4, h3=8, n_models=8)]
)
def test_paper_preset_decides_exactly_as_the_paper_rules(t: Thresholds) -> None:
    rng = np.random.default_rng(7)
    specs = []
    for _ in range(3000):
        n_votes = int(rng.integers(0, t.n_models + 1))
        label = int(rng.integers(0, 6))
        specs.append(
            {
                "label": label,
                "candidates": tuple(int(c) for c in rng.integers(0, 6, size=n_votes)),
                "misses": int(rng.integers(0, t.n_models + 1)),
                "exemptions": int(rng.integers(0, 2)) * int(rng.integers(0, 3)),
                "ensemble": {label: float(rng.random())},
            }
        )
    out = paper(rows(*specs), thresholds=t, options=StrategyOptions())
    for i, spec in enumerate(specs):
        action, new, exempted = reference_verdict(
            spec["label"], spec["candidates"], spec["misses"], spec["exemptions"], t
        )
        assert (out.action[i], out.new_label[i], out.exempted[i]) == (
            action,
            -1 if new is None else new,
            exempted,
        ), spec
        assert out.secondary[i] == []
