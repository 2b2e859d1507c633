"""Pictures of a split's figures for people: fixes and removals per class, counts and human
agreement per iteration (PNG, written atomically and byte-stable: no timestamps in the metadata)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.contracts import formats


def figure(height: float) -> tuple[Any, Any]:
    """The pyplot module (Agg backend) and a new (figure, axes) `height` inches tall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(8, height))


def save(plt: Any, fig: Any, target: str | Path) -> None:
    """Write `fig` as a byte-stable PNG at `target` (atomically), then close it."""
    fig.tight_layout()
    with formats.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_classes(table: pd.DataFrame, target: str | Path, *, title: str, empty: str) -> None:
    """A horizontal stacked bar chart of `class_table` for people (PNG); `empty` is shown when
    this iteration fixed and removed nothing."""
    classes = list(dict.fromkeys(table["class"]))[::-1]
    plt, (fig, ax) = figure(1.5 + 0.3 * max(1, len(classes)))
    ax.set_title(title)
    if not classes:
        ax.text(0.5, 0.5, empty, ha="center", va="center")
        ax.set_axis_off()
    else:
        wide = table.pivot(index="class", columns="action", values="count").reindex(classes)
        left = np.zeros(len(classes))
        for action, color in (("fix", "tab:blue"), ("remove", "tab:red")):
            ax.barh(classes, wide[action].to_numpy(), left=left, color=color, label=action)
            left = left + wide[action].to_numpy()
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("images")
        ax.legend(loc="lower right")
    save(plt, fig, target)


def empty_note(metrics: Mapping[str, Any]) -> str:
    """The note a class chart shows when an iteration fixed and removed nothing."""
    carried = metrics["counts"]["remove_carried"]
    return f"no new fixes or removals in iteration {metrics['iteration']}" + (
        f" ({carried} removed in earlier iterations)" if carried else ""
    )


def write_rounds(table: pd.DataFrame, folder: Path, split: str) -> None:
    """`<split>-rounds-counts.csv` and `<split>-rounds-agreement.csv` (iteration,series,value:
    the `rounds` DVC plot template draws one line per series) and a PNG of both."""
    series = {
        "counts": ["fix", "remove_new", "secondary"],
        "agreement": ["agreement_before", "agreement_after"],
    }
    plt, (fig, _axes) = figure(5)
    fig.clear()
    for k, (name, columns) in enumerate(series.items()):
        long = table.melt(id_vars="iteration", value_vars=columns, var_name="series")
        long = long.dropna(subset=["value"])
        with formats.atomic_path(folder / f"{split}-rounds-{name}.csv") as tmp:
            long.to_csv(tmp, index=False, lineterminator="\n")
        ax = fig.add_subplot(1, 2, k + 1)
        for column in columns:
            ax.plot(table["iteration"], table[column], marker="o", label=column)
        ax.set_xlabel("iteration")
        ax.set_title(f"{split}: {name} per iteration")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="best", fontsize="small")
    save(plt, fig, folder / f"{split}-rounds.png")
