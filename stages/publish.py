"""`publish` stage: cleaned splits + decision ledgers -> `data/hub/`, a Hugging Face dataset
repository folder that `datasets.load_dataset` reads; pushed to the Hub only when asked.

The folder holds two configs, each with one split per published split: `default` (the cleaned split:
kept and fixed images with their labels after fixes and merges) and `ledger` (every decision with
its evidence). Parquet shards `data/<config>/<split>-NNNNN-of-NNNNN.parquet` stay under
`max_shard_bytes` of data each and carry the `datasets` features (ClassLabel labels) in their schema
metadata; the dataset card `README.md` declares the same features in its YAML. Two modes:
`labels` publishes no pixels (an overlay keyed by image_id and path, to join with one's own ImageNet
copy), `images` embeds each image's original bytes as a `datasets.Image` column.

Building and pushing are separate steps: the folder is built (atomically, keeping the previous
one on any failure; leftovers of a killed build are removed by the next), then, when asked, pushed
in one commit tagged `iteration-<k>`. A refused push (offline, no token) leaves the built folder in
place. The token comes from the HF_TOKEN environment variable only and is never written anywhere.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from stages.contracts.params import load_params
from stages.hub.publishing import PublishConfig, build_hub_folder
from stages.hub.repo import PushError, push


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m stages.publish`: build data/hub for every split in `publish.splits`; push (or
    dry-run the push) when params or flags ask."""
    parser = argparse.ArgumentParser(
        prog="imagenet-clean publish",
        description="Build data/hub (a Hub dataset folder) from the cleaned splits and ledgers; "
        "push it when publish.push (or --push) asks.",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    parser.add_argument("--out", default="data/hub", help="the repository folder to write")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="log what a push would upload (files, sizes, repo, tag); no network",
    )
    parser.add_argument("--push", action="store_true", help="push even when publish.push is false")
    args = parser.parse_args(argv)
    config = PublishConfig.from_params(load_params(args.params))
    options = config.options
    dry_run = options.dry_run or args.dry_run
    pushing = (options.push or args.push) and not dry_run
    folder = build_hub_folder(
        config.inputs,
        mode=options.mode,
        out=args.out,
        include_placeholders=options.include_placeholders,
        max_shard_bytes=options.max_shard_bytes,
        context=config.context,
    )
    if pushing or dry_run:
        try:
            push(
                folder.path,
                repo_id=options.repo_id,
                iteration=folder.iteration,
                token=os.environ.get("HF_TOKEN") or None,
                dry_run=dry_run,
                private=options.private,
            )
        except PushError as error:
            raise PushError(
                f"{error}. {args.out} is built and kept; push it with `imagenet-clean "
                "publish --push` when the Hub can be reached"
            ) from error
    return 0


if __name__ == "__main__":
    from stages.cli import run_as_script

    run_as_script(main)
