"""The dataset card's two tables: decision counts per split (`## Counts`) and per-model accuracy on
the original and the cleaned labels (the paper's Table 1), from `metrics/<split>.json` in either of
the nestings evaluate has written, or counted from the ledger where metrics are absent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from stages.hub.card_inputs import SplitSummary

COUNT_KEYS = ("keep", "fix", "remove", "skip", "merge", "secondary", "override")
TABLE1 = (("top1", "original"), ("top1", "cleaned"), ("top5", "original"), ("top5", "cleaned"))


def _count(metrics: Mapping[str, Any], key: str) -> float | None:
    counts = metrics.get("counts")
    value = counts.get(key) if isinstance(counts, Mapping) else None
    if isinstance(value, Mapping):
        value = value.get("count", value.get("n"))
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def counts_table(splits: Sequence[SplitSummary]) -> str:
    """The card's `## Counts` section: actions per split, from metrics or the ledger."""
    lines = [
        "## Counts",
        "",
        "From `metrics/<split>.json` (evaluate stage) where present, else counted from the "
        "ledger; percentages of the split's images.",
        "",
        "| split | images | keep | fix | remove | skip | merge | secondary labels | overrides "
        "| placeholders | published rows |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split in splits:
        cells = []
        for key in COUNT_KEYS:
            value = _count(split.metrics, key)
            value = split.ledger_counts.get(key, 0) if value is None else value
            share = f" ({100 * value / split.manifest_rows:.2f} %)" if split.manifest_rows else ""
            cells.append(f"{value:,}{share}" if isinstance(value, int) else f"{value}{share}")
        lines.append(
            f"| {split.name} | {split.manifest_rows:,} | "
            + " | ".join(cells)
            + f" | {split.placeholders:,} | {split.default_rows:,} |"
        )
    return "\n".join(lines) + "\n"


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Nested metrics -> {"a.b.c": number} for every finite number in them."""
    if isinstance(value, Mapping):
        out: dict[str, float] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return {prefix or "value": value}
    return {}


def _table1_row(flat: Mapping[str, float]) -> dict[str, float]:
    """Name a model's metrics: `top1 original` whatever the nesting (original.top1 or
    top1.original), other keys with spaces for dots."""
    named = {}
    for key, value in flat.items():
        parts = key.split(".")
        pair = next(
            (
                f"{metric} {variant}"
                for metric, variant in TABLE1
                if sorted(parts) == sorted([metric, variant])
            ),
            None,
        )
        named[pair or " ".join(parts)] = value
    return named


def table1(splits: Sequence[SplitSummary]) -> str:
    """The card's per-model table (the paper's Table 1: top-1 / top-5 on the original and the
    cleaned labels)."""
    lines = [
        "## Model accuracy on original vs cleaned labels (the paper's Table 1)",
        "",
        "Top-1/top-5 (percent) of each model on the original labels and on the cleaned ones "
        "(kept and fixed images), as recorded by the evaluate stage.",
        "",
    ]
    for split in splits:
        models = split.metrics.get("models")
        rows = {
            str(name): _table1_row(flatten(entry))
            for name, entry in (models.items() if isinstance(models, Mapping) else ())
        }
        found = {key for row in rows.values() for key in row}
        first = [
            f"{metric} {variant}" for metric, variant in TABLE1 if f"{metric} {variant}" in found
        ]
        columns = first + sorted(found - set(first))
        if not columns:
            lines += [
                f"`{split.name}`: no per-model metrics recorded (metrics/{split.name}.json).",
                "",
            ]
            continue
        lines += [
            f"`{split.name}`:",
            "",
            "| model | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        lines += [
            f"| {name} | " + " | ".join(_number(row.get(key)) for key in columns) + " |"
            for name, row in rows.items()
        ]
        lines.append("")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.2f}"
