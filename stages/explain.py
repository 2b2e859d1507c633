"""Stage `explain`: CAM scores for the samples the top-5 consensus would remove.

Candidates are the active rows with boxes whose top-5 misses reach h3 (`decide.<split>.h3`); each
is explained by every model whose top-5 contains its label (`top5_hit_models`), with the methods of
`explain.methods`, cheapest first. One row per (candidate, model) goes to
`data/cams/<split>.parquet`; `decide` exempts a candidate when any of its models has `exempted`
true.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence

from stages.cli import describe, run_as_script
from stages.contracts import formats
from stages.contracts.errors import InputError
from stages.contracts.formats import CAMS_SCHEMA
from stages.contracts.params import load_params
from stages.method import cams
from stages.method.exemptions import (
    ExplainConfig,
    explain_candidates,
    overlays_dir,
    plan_explain,
    select_candidates,
)
from stages.modelling import distributed
from stages.modelling.launch import launch_or_run

logger = logging.getLogger(__name__)


def run_explain(config: ExplainConfig) -> cams.CamStats:
    """Read the manifest and votes of a split; write its CAM table and overlays folder.
    Under torchrun it joins the process group (see stages.modelling.distributed) for the run."""
    split, specs, h3, options = config.split, config.specs, config.h3, config.options
    manifest = formats.read_manifest(split)
    votes = formats.read_table(formats.votes_path(split), what=f"votes of split {split!r}")
    stale = {int(n) for n in votes["n_models"].dropna().unique()} - {len(specs)}
    if stale:
        raise InputError(
            f"votes were cast by {sorted(stale)} models but the split's models list "
            f"{len(specs)}; re-run `imagenet-clean vote --split {split}`"
        )
    candidates = select_candidates(manifest, votes, h3=h3)
    plan = plan_explain(split, candidates, [spec.name for spec in specs], options)
    logger.info("%s; candidates: top-5 misses >= %d, with boxes", plan.describe(), h3)
    plan.check(options.max_pairs)
    stats = cams.CamStats()
    with distributed.session(options.device) as ctx:
        folder = (
            formats.atomic_folder(overlays_dir(split))
            if ctx.is_main
            else contextlib.nullcontext(overlays_dir(split))
        )  # only rank 0 writes
        with folder as tmp:
            table = explain_candidates(
                candidates, config.root, specs, config=options, overlay_dir=tmp, stats=stats
            )
        if ctx.is_main:
            formats.write_table(table, formats.cams_path(split), schema=CAMS_SCHEMA)
        distributed.barrier(ctx)
    skipped = stats.pairs - stats.calls.get("scorecam", 0) if "scorecam" in options.methods else 0
    logger.info(
        "explain %s: %d pairs, %d exempting; heatmaps %s; seconds %s; Score-CAM skipped "
        "for %d pairs",
        split,
        table.num_rows,
        sum(table.column("exempted").to_pylist()),
        stats.calls,
        {k: round(v, 1) for k, v in stats.seconds.items()},
        skipped,
    )
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.explain --split val [--params params.yaml]`; under `torchrun` (or
    with `explain.processes` > 1) each process explains a share of the candidates."""
    parser = argparse.ArgumentParser(prog="imagenet-clean explain", description=describe(__doc__))
    parser.add_argument(
        "--split", required=True, help="a split configured under params.yaml splits"
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    config = ExplainConfig.from_params(load_params(args.params), args.split)
    return launch_or_run(
        "stages.explain", argv, config.options.processes, lambda: run_explain(config)
    )


if __name__ == "__main__":
    run_as_script(main)
