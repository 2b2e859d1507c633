"""`decide` stage: votes + CAM exemptions -> the decision ledger and the cleaned split.

A decision strategy (`decide.<split>.strategy`, `stages.method.strategies`) decides every active
row: `consensus` (the default: multi-label aware, from the ensemble's evidence, the CL votes, the
top-5 consensus and the CAM veto; it records secondary labels for images that show several
classes) or `paper` (the rules of Kertész 2021, exactly). Then the paper's Table A.1 **merges**
(`decide.merges`): every kept or fixed row whose label is a source class gets the target class
(`merged` = true; the action stays keep or fix). Then the split's **human overrides**
(`splits.<split>.overrides`, a CSV image_id,action,new_label,note) win over everything: keep (the
label before this iteration, unmerged), fix, remove, and secondary (the image's secondary labels
become exactly the listed classes). Last, each merge source class left without an image in the
cleaned split gets one black 224x224 placeholder row, so the 1000-class interface stays.

Inactive rows: a manifest skip row is a `skip`; a row that left the split in an earlier iteration
is a `remove` with the labels file's reason. keep + fix + remove + skip = manifest rows, checked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from stages.cli import run_as_script, split_stage_main
from stages.contracts import formats
from stages.contracts.splits import Params
from stages.method.duplicates import DuplicateEvidence
from stages.method.ledger import DecideConfig, decide_split, reconcile
from stages.method.merges import load_merges
from stages.method.overrides import load_overrides

logger = logging.getLogger(__name__)


def run_decide(split: str, params: Params, *, root: str | Path = ".") -> dict[str, int]:
    """Read manifest, votes, cams, merges and overrides; write the ledger and the clean split."""
    root = Path(root)
    config = DecideConfig.from_params(params, split)
    manifest = formats.read_manifest(split, path=root / formats.manifest_path(split))
    votes = formats.read_table(root / formats.votes_path(split), what=f"votes of {split!r}")
    cams = formats.read_table(root / formats.cams_path(split), what=f"CAM scores of {split!r}")
    merges = load_merges(root / config.merges.table) if config.merges.enabled else {}
    overrides = load_overrides(root / config.overrides) if config.overrides else None
    group = config.duplicates.group
    duplicates = None
    if group is not None:
        duplicates = DuplicateEvidence(
            formats.read_table(root / formats.duplicates_path(group), what=f"duplicates {group!r}"),
            formats.read_table(
                root / formats.duplicate_issues_path(group), what=f"duplicate issues {group!r}"
            ),
            config.duplicates,
        )
    ledger, clean = decide_split(
        votes,
        manifest,
        config=config,
        cams=cams,
        merges=merges,
        overrides=overrides,
        overrides_source=str(config.overrides),
        duplicates=duplicates,
        split=split,
    )
    formats.write_table(
        ledger,
        root / formats.ledger_path(split),
        schema=formats.LEDGER_FULL_SCHEMA,
        nullable_integers=formats.LEDGER_NULLABLE_INTEGERS,
    )
    formats.write_table(clean, root / formats.clean_path(split), schema=formats.CLEAN_SCHEMA)
    counts = reconcile(ledger, manifest)
    counts.update(
        merged=int(ledger["merged"].sum()),
        override=int(ledger["override"].sum()),
        exempted=int(ledger["exempted"].sum()),
        secondary=int((ledger["secondary_labels"].map(len) > 0).sum()),
        placeholders=int(clean["placeholder"].sum()),
        duplicates=int(ledger["duplicate_group"].notna().sum()),
        with_issues=int((ledger["issues"].map(len) > 0).sum()),
    )
    t = config.thresholds
    logger.info(
        "decide %s (strategy %s, h1=%d h2=%d h3=%d, |M|=%d): %s",
        split,
        config.strategy,
        t.h1,
        t.h2,
        t.h3,
        t.n_models,
        counts,
    )
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.decide --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="decide", doc=__doc__, run=run_decide)


if __name__ == "__main__":
    run_as_script(main)
