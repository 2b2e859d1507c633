"""The dataset card `data/hub/README.md`: YAML front matter that the Hub and `datasets` parse
(licence, task, and `shards.metadata_yaml`'s configs and features), then what the data is, the
human agreement headline, how it was made, counts, per-model metrics, fields, how to load it,
provenance and the paper's citation. Rendered from its inputs only (no dates, no host names), so
the same inputs give the same card.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml
from datasets import DatasetInfo
from huggingface_hub import DatasetCardData

from stages.hub.card_inputs import CardContext, SplitSummary
from stages.hub.card_tables import counts_table, flatten, table1
from stages.hub.shards import metadata_yaml
from stages.method.decisions import StrategyOptions

logger = logging.getLogger(__name__)

PAPER = (
    "Kertész, C. (2021). Automated Cleanup of the ImageNet Dataset by Model Consensus, "
    "Explainability and Confident Learning. arXiv:2103.16324."
)
BIBTEX = (
    "@article{kertesz2021imagenetclean,\n"
    "  title   = {Automated Cleanup of the ImageNet Dataset by Model Consensus, Explainability"
    " and Confident Learning},\n"
    "  author  = {Kert{\\'e}sz, Csaba},\n"
    "  journal = {arXiv preprint arXiv:2103.16324},\n"
    "  year    = {2021},\n"
    "  url     = {https://arxiv.org/abs/2103.16324}\n"
    "}"
)


class CardDumper(yaml.SafeDumper):
    """PyYAML's safe dumper (what `DatasetCardData.to_yaml` uses) naming the anchors it writes for
    shared objects: the class names, written once and referred to by every ClassLabel column
    (`class_label: &class_names` ... `class_label: *class_names`)."""

    def generate_anchor(self, node: yaml.Node) -> str:
        """`class_names`, then `class_names_2`, ... (only the class-name lists are shared)."""
        self.anchors_written = getattr(self, "anchors_written", 0) + 1
        return "class_names" if self.anchors_written == 1 else f"class_names_{self.anchors_written}"


SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
)
MODE_TEXT = {
    "labels": (
        "**labels** (an overlay): no pixels. Every row is keyed by `image_id` and `path` (the "
        "file's path relative to the split's ImageNet root), so it joins onto your own copy of "
        "ImageNet, obtained under ImageNet's terms of access."
    ),
    "images": (
        "**images**: the original image bytes are embedded as a `datasets.Image` column "
        "(`image`), unchanged. Only for users who may redistribute ImageNet images."
    ),
}


def render_card(
    *,
    context: CardContext,
    splits: Sequence[SplitSummary],
    infos: Mapping[str, DatasetInfo],
    mode: str,
    include_placeholders: bool,
) -> str:
    """The whole README.md: YAML front matter, then the markdown body."""
    body = [
        _intro(context, splits, mode, include_placeholders),
        _method(context, splits),
        counts_table(splits),
        table1(splits),
        _fields(infos),
        _loading(context, splits, mode),
        _provenance(splits),
        "## Citation\n\nPlease cite the paper this dataset reproduces:\n\n"
        f"> {PAPER}\n\n```bibtex\n{BIBTEX}\n```\n",
    ]
    metadata = yaml.dump(
        front_matter(splits, infos).to_dict(),
        Dumper=CardDumper,
        sort_keys=False,
        allow_unicode=True,
    )  # what DatasetCardData.to_yaml writes, with named anchors
    return "---\n" + metadata + "---\n\n" + "\n".join(body)


def front_matter(
    splits: Sequence[SplitSummary], infos: Mapping[str, DatasetInfo]
) -> DatasetCardData:
    """The YAML metadata: the Hub's card fields, then `configs` and `dataset_info` in the format
    `datasets` reads back (`shards.metadata_yaml`)."""
    total = sum(split.default_rows for split in splits)
    size = next((label for bound, label in SIZE_CATEGORIES if total < bound), "10M<n<100M")
    data = DatasetCardData(
        pretty_name="ImageNet-Clean",
        license="other",
        license_name="imagenet-terms-of-access",
        license_link="https://image-net.org/download.php",
        task_categories=["image-classification"],
        task_ids=["multi-class-image-classification"],
        size_categories=[size],
        annotations_creators=["crowdsourced", "machine-generated"],
        source_datasets=["extended|imagenet-1k"],
        tags=["imagenet", "label-noise", "confident-learning", "data-cleaning"],
    )
    for key, value in metadata_yaml(
        infos, [split.name for split in splits], default="default"
    ).items():
        data[key] = value
    return data


def _intro(
    context: CardContext, splits: Sequence[SplitSummary], mode: str, include_placeholders: bool
) -> str:
    iterations = ", ".join(f"`{split.name}`: {split.iteration}" for split in splits)
    placeholder = (
        "included (`placeholder` = true, a black 224x224 image in `images` mode)"
        if include_placeholders
        else "left out"
    )
    return (
        f"""# ImageNet-Clean

ImageNet-Clean is ILSVRC2012 ImageNet with its labelling mistakes corrected and its ambiguous images
removed by the automated heuristics of Kertész (2021): model consensus, explainability (CAMs) and
confident learning. This repository was produced by the ImageNet-Clean DVC pipeline.

- **Mode**: {MODE_TEXT[mode]}
- **Configs**: `default` is the cleaned split (kept and fixed images with their new labels);
  `ledger` is the decision ledger: one row per original image with its action (keep, fix, remove,
  skip) and the evidence behind it. They join on `image_id`.
- **Cleanup iteration** per split: {iterations}. Each published iteration is a tagged revision
  (`iteration-<k>`) of this repository.
- **Placeholders**: classes emptied by the category merges keep one black placeholder image in the
  pipeline's cleaned split so that the 1000-class interface stays; here they are {placeholder}.
- **Labels** are indices into the 1000 ILSVRC2012 classes in sorted-wnid order (the usual ImageNet
  order), published as `ClassLabel`; the two classes named "crane" carry their wnid in the name.
"""
        + _agreement(splits)
        + _evidence(splits)
    )


def _evidence(splits: Sequence[SplitSummary]) -> str:
    """How strong the evidence was, estimated without any reference (metrics `evidence`)."""
    cells = [
        f"`{split.name}`: label noise {e['noise']:.1%}, expected label accuracy "
        f"{e['expected_label_accuracy_before']:.1%} before -> "
        f"{e['expected_label_accuracy_after']:.1%} after"
        for split in splits
        if isinstance(e := split.metrics.get("evidence"), Mapping)
        and all(
            isinstance(e.get(k), (int, float))
            for k in ("noise", "expected_label_accuracy_before", "expected_label_accuracy_after")
        )
    ]
    if not cells:
        return ""
    return (
        "- **Evidence strength** (estimated from the models alone, no reference): "
        + "; ".join(cells)
        + ".\n"
    )


def _agreement(splits: Sequence[SplitSummary]) -> str:
    """The headline: agreement with human reference labels before -> after per split (metrics
    `reference.agreement_before/after`, percent), with a warning where cleanup lowered it; empty
    when no split measured it."""
    pairs = {split.name: _reference_pair(split.metrics) for split in splits}
    if not any(pairs.values()):
        return ""
    cells = "; ".join(
        f"`{name}`: {pair[0]:.2f} % before -> {pair[1]:.2f} % after cleanup"
        if pair
        else f"`{name}`: not measured"
        for name, pair in pairs.items()
    )
    warnings = [
        f"\n**Warning**: on `{name}` the cleanup lowered agreement with the human reference "
        f"labels ({pair[0]:.2f} % -> {pair[1]:.2f} %): its fixes and removals disagree "
        "with people more often than the original labels do; check the ledger's decisions "
        "before relying on them."
        for name, pair in pairs.items()
        if pair and pair[1] < pair[0]
    ]
    return (
        "\n".join(
            [
                f"- **Agreement with human labels** (the evaluate stage's reference labels): "
                f"{cells}.",
                *warnings,
            ]
        )
        + "\n"
    )


def _reference_pair(metrics: Mapping[str, Any]) -> tuple[float, float] | None:
    reference = metrics.get("reference")
    flat = flatten(reference) if isinstance(reference, Mapping) else {}
    before, after = flat.get("agreement_before"), flat.get("agreement_after")
    return None if before is None or after is None else (float(before), float(after))


def _paper_rules(options: StrategyOptions) -> str:
    return (
        "`paper` (Kertész 2021): a sample is **fixed** when |L'| >= h1 with fewer than 3 "
        "distinct candidates, **removed** when it has >= h2 distinct candidates, or when >= h3 "
        "models miss its label in their top-5, unless GradCAM / GradCAM++ / ScoreCAM heatmaps of "
        "a model that hits the label show it inside the ground-truth boxes (**exemption**)."
    )


def _consensus_rules(options: StrategyOptions) -> str:
    c = options.consensus
    return (
        "`consensus`: **fix** to the ensemble's best other class when its mean probability is "
        f">= {c.clear} and the label's < {c.support}; keep the label with a **secondary label** "
        f"when both reach {c.secondary}; **remove** a questioned label (CL majority h1 or top-5 "
        f"consensus h3) the ensemble does not support, unless the CAMs exempt it, at most "
        f"{c.max_remove:.0%} of the rows, weakest first."
    )


def _expected_benefit_rules(options: StrategyOptions) -> str:
    e = options.expected_benefit
    veto = ", unless the CAMs find the label in its boxes" if e.cam_veto else ""
    return (
        "`expected_benefit`: from the calibrated ensemble of every model x view and the split's "
        "label-noise rate eps, the posterior that each label is right; **fix** only where the new "
        f"class is right with estimated probability >= {e.precision}; **remove** only labels at "
        f"least {e.removal_margin} x as likely wrong as the split's average (P(wrong) >= "
        f"{e.removal_margin} eps){veto}, at most {e.max_remove:.0%} of the rows, least likely "
        "first; **no secondary labels** (single-label evidence cannot show that an image "
        "holds two classes; candidates are reviewed); rows where "
        f"an action would be right with P >= {e.review} stay as they are and are flagged for "
        "review (ledger `review`); every decision has its estimated probability of being right "
        "(ledger `confidence`)."
    )


STRATEGY_RULES: dict[str, Callable[[StrategyOptions], str]] = {
    "paper": _paper_rules,
    "consensus": _consensus_rules,
    "expected_benefit": _expected_benefit_rules,
}
"""The card's description of each decision strategy, with the knobs as run."""


def _method(context: CardContext, splits: Sequence[SplitSummary]) -> str:
    used = sorted({context.strategies[s.name] for s in splits if s.name in context.strategies})
    lines = [
        "## How it was made",
        "",
        "Per split, each model's softmax predictions vote: confident learning (cleanlab, "
        "`prune_by_noise_rate`) flags samples and proposes candidates L', and the top-5 "
        "consensus counts the models that miss the label. Then the split's decision strategy "
        "decides, the paper's Table A.1 category merges apply, and human overrides from the "
        "review page win over both.",
        "",
        *[f"- {STRATEGY_RULES[name](context.options)}" for name in used if name in STRATEGY_RULES],
        "",
    ]
    if context.models:
        lines += ["| model | timm spec |", "|---|---|"]
        lines += [f"| {name} | `{spec}` |" for name, spec in context.models]
        lines.append("")
    lines += [
        "| split | source layout | strategy | fn | h1 | h2 | h3 |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in splits:
        row = context.methods.get(split.name, {})
        lines.append(
            f"| {split.name} | {row.get('layout', '?')} | "
            f"{context.strategies.get(split.name, '?')} | "
            + " | ".join(str(row.get(key, "?")) for key in ("fn", "h1", "h2", "h3"))
            + " |"
        )
    explain = ", ".join(
        f"{key}={context.explain[key]}"
        for key in ("methods", "heat", "min_area", "min_methods")
        if key in context.explain
    )
    if explain:
        lines += ["", f"Explainability: {explain}."]
    if context.merges is not None:
        lines += ["", f"Category merges (Table A.1): {'on' if context.merges else 'off'}."]
    return "\n".join(lines) + "\n"


def _fields(infos: Mapping[str, DatasetInfo]) -> str:
    lines = ["## Fields", ""]
    for config, info in infos.items():
        described = ", ".join(
            f"`{name}` ({type(feature).__name__})"
            for name, feature in (info.features or {}).items()
        )
        lines.append(f"- `{config}`: {described}.")
    lines += [
        "",
        "`label` is the label after fixes and merges; `original_label` the ImageNet label "
        "(null for placeholders). `secondary_labels` are other classes the evidence supports "
        "for an image that shows several (a list of ClassLabel, usually empty). In the ledger, "
        "`new_label` is null for removed and skipped images, `cl_candidates` are class "
        "indices (one per model that flagged the image), "
        "`top5_misses` counts the models whose top-5 misses the label, and `reason` says why. "
        "`duplicate_group` (both configs) is the image's group of exact or near duplicates "
        "(`data/duplicates/<group>.parquet` in the pipeline), null outside every group; the "
        "ledger's `issues` lists image-quality findings. "
        "`boxes` are the ImageNet boxes ([xmin, ymin, xmax, ymax], original pixels) of the "
        "original annotation.",
        "",
    ]
    return "\n".join(lines)


def _loading(context: CardContext, splits: Sequence[SplitSummary], mode: str) -> str:
    split = splits[0].name if splits else "val"
    repo = context.repo_id
    images = (
        'clean[0]["image"]  # a PIL image; the ledger has no pixels: join it on image_id'
        if mode == "images"
        else "# this revision is a labels overlay: join it onto your ImageNet copy (below)"
    )
    return f"""## How to load

```python
from datasets import load_dataset

clean = load_dataset("{repo}", split="{split}")                # the cleaned split
ledger = load_dataset("{repo}", "ledger", split="{split}")     # every decision, with its evidence
label_names = clean.features["label"].names
{images}
```

Pin an iteration with `revision="iteration-<k>"`.

**Labels overlay onto your own ImageNet copy** (the `labels` mode; `path` is relative to the split's
root in the layout the pipeline ingested, e.g. the Kaggle `ILSVRC/Data/CLS-LOC/val/...`):

```python
import os
from datasets import Image, load_dataset

IMAGENET_ROOT = "/data/imagenet"   # your copy, same layout
clean = load_dataset("{repo}", split="{split}")
clean = clean.map(lambda row: {{"image": os.path.join(IMAGENET_ROOT, row["path"])}})
clean = clean.cast_column("image", Image())    # decoded lazily from your files

# or by image_id, whatever your layout (ILSVRC2012 file names are <image_id>.JPEG):
files = {{os.path.splitext(name)[0]: os.path.join(dirpath, name)
         for dirpath, _, names in os.walk(IMAGENET_ROOT) for name in names}}
clean = clean.map(lambda row: {{"image": files[row["image_id"]]}}).cast_column("image", Image())
```
"""


def _provenance(splits: Sequence[SplitSummary]) -> str:
    lines = [
        "## Provenance and licence",
        "",
        "Produced by the `publish` stage of the ImageNet-Clean pipeline (a reproduction of "
        "Kertész 2021 as a DVC pipeline) from these inputs:",
        "",
        "| split | input | sha256 |",
        "|---|---|---|",
    ]
    for split in splits:
        lines += [
            f"| {split.name} | `{name}` | `{digest}` |" for name, digest in split.sha256.items()
        ]
    lines += [
        "",
        "The images and the original labels are ImageNet's (ILSVRC2012): use them under the "
        "ImageNet terms of access (non-commercial research and education, "
        "https://image-net.org/download.php). The corrections (labels, ledger) are derived "
        "data published with this repository under the same terms (licence: other).",
        "",
    ]
    return "\n".join(lines)
