"""What the dataset card reports, read from the pipeline's outputs and params.yaml: the provenance
(`CardContext`: models, thresholds, strategies and their knobs) and each published split's figures
(`SplitSummary`: counts from the ledger, metrics/<split>.json, checksums of the inputs). Reading
tolerates absent metrics and params sections; `stages.hub.card` renders what is read here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.contracts import formats
from stages.contracts.errors import ConfigError
from stages.contracts.params import resolve_threshold
from stages.method.decisions import StrategyOptions
from stages.method.evidence_strength import StrengthConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CardContext:
    """What the card says about how the data was made (from params.yaml; see `card_context`)."""

    repo_id: str = "imagenet-clean/imagenet-clean"
    models: tuple[tuple[str, str], ...] = ()
    methods: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    explain: Mapping[str, Any] = field(default_factory=dict)
    merges: bool | None = None
    strategies: Mapping[str, str] = field(default_factory=dict)
    options: StrategyOptions = field(default_factory=StrategyOptions)


@dataclass(frozen=True)
class SplitSummary:
    """One published split as the card reports it."""

    name: str
    iteration: int
    manifest_rows: int
    ledger_counts: Mapping[str, int]
    default_rows: int
    placeholders: int
    metrics: Mapping[str, Any]
    sha256: Mapping[str, str]


def read_metrics(path: Path | None) -> dict[str, Any]:
    """metrics/<split>.json as a dict; {} (with a log line) when absent or unreadable."""
    if path is None or not Path(path).is_file():
        logger.info("no metrics file %s; the card counts from the ledger", path)
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        logger.warning(
            "metrics file %s is unreadable (%s); the card counts from the ledger", path, error
        )
        return {}
    return data if isinstance(data, dict) else {}


def _true_count(column: pa.ChunkedArray) -> int:
    return int(pc.sum(pc.fill_null(column, False).cast(pa.int64())).as_py() or 0)


def summarize_split(
    name: str,
    default: pa.Table,
    ledger: pa.Table,
    *,
    clean: Path,
    metrics: Path | None,
    sources: Mapping[str, Path],
) -> SplitSummary:
    """What the card reports of a split: counts, iteration, metrics and input checksums.

    default / ledger: the published tables; clean: the cleaned split file (placeholders counted
    there, published or not); sources: input name -> file, checksummed for provenance.
    """
    actions = pc.value_counts(ledger.column("action")).to_pylist()
    counts = {item["values"]: item["counts"] for item in actions if item["values"] is not None}
    if "merged" in ledger.column_names:
        counts["merge"] = _true_count(ledger.column("merged"))
    if "override" in ledger.column_names:
        counts["override"] = _true_count(ledger.column("override"))
    if "secondary_labels" in ledger.column_names:
        lengths = pc.fill_null(pc.list_value_length(ledger.column("secondary_labels")), 0)
        counts["secondary"] = int(pc.sum(pc.greater(lengths, 0)).as_py() or 0)
    columns = ledger.column_names
    iteration = pc.max(ledger.column("iteration")).as_py() if "iteration" in columns else None
    placeholders = pq.read_table(clean, columns=["placeholder"]).column("placeholder")
    return SplitSummary(
        name=name,
        iteration=int(iteration or 0),
        manifest_rows=ledger.num_rows,
        ledger_counts=counts,
        default_rows=default.num_rows,
        placeholders=_true_count(placeholders),
        metrics=read_metrics(metrics),
        sha256={label: formats.file_sha256(path) for label, path in sources.items()},
    )


def card_context(params: Mapping[str, Any], *, repo_id: str) -> CardContext:
    """Read the card's provenance from params.yaml, tolerating absent sections."""
    models = params.get("models") or {}
    names = list((params.get("predict") or {}).get("models") or [])
    specs = tuple((name, str((models.get(name) or {}).get("spec", "?"))) for name in names)
    methods = {}
    for split, split_params in (params.get("splits") or {}).items():
        decide = (params.get("decide") or {}).get(split) or {}
        vote = (params.get("vote") or {}).get(split) or {}
        row = {"layout": str(split_params.get("layout", "?")), "fn": str(vote.get("fn", "?"))}
        for key in ("h1", "h2", "h3"):
            row[key] = _threshold_text(decide.get(key), len(names), key)
        methods[split] = row
    merges = ((params.get("decide") or {}).get("merges") or {}).get("enabled")
    strategies = {}
    for split in methods:
        try:
            strategies[split] = StrengthConfig.from_params(params, split).strategy
        except ConfigError:
            continue
    try:
        options = StrategyOptions.from_params(params)
    except ConfigError:
        options = StrategyOptions()
    return CardContext(
        repo_id=repo_id,
        models=specs,
        methods=methods,
        explain=dict(params.get("explain") or {}),
        merges=merges,
        strategies=strategies,
        options=options,
    )


def _threshold_text(value: Any, n_models: int, name: str) -> str:
    if value is None:
        return "?"
    try:
        count = resolve_threshold(value, n_models, name=name)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if str(value) == str(count) else f"{value} (= {count})"
