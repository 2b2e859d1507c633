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
    """A horizontal stacked bar chart of `class_table` for people (PNG), each bar labelled with its
    count; when no class has more than one image changed, it says so (the classes are then only
    the first by index, nothing stands out). `empty` is shown when nothing was fixed or removed."""
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
        for y, total in enumerate(left):
            ax.text(total, y, f" {int(total)}", va="center", fontsize="small")
        ax.set_xlim(0, max(left) * 1.15 + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel(classes_axis(table))
        ax.legend(loc="lower right")
    save(plt, fig, target)


def classes_axis(table: pd.DataFrame) -> str:
    """The per-class chart's axis label; with every class at one image it says that nothing stands
    out (the classes shown are then merely the first by index)."""
    per_class = table.groupby("class")["count"].sum()
    if len(per_class) and per_class.max() <= 1:
        return "images fixed or removed: one per class, no class stands out (first by index)"
    return "images fixed or removed (by the label before this iteration)"


def empty_note(metrics: Mapping[str, Any]) -> str:
    """The note a class chart shows when an iteration fixed and removed nothing."""
    carried = metrics["counts"]["remove_carried"]
    return f"no new fixes or removals in iteration {metrics['iteration']}" + (
        f" ({carried} removed in earlier iterations)" if carried else ""
    )


ROUND_SERIES = {
    "counts": ["fix", "remove_new", "secondary"],
    "agreement": ["agreement_before", "agreement_after"],
}
"""The rounds plot's panels and their series (columns of the rounds table)."""


def write_rounds(table: pd.DataFrame, folder: Path, split: str) -> None:
    """`<split>-rounds-counts.csv` and `<split>-rounds-agreement.csv` (iteration,series,value) and
    a PNG of both: one line per series over the iterations, or, while there is one iteration only,
    bars labelled with their values (a line of one dot shows nothing)."""
    plt, (fig, _axes) = figure(5)
    fig.clear()
    for k, (name, columns) in enumerate(ROUND_SERIES.items()):
        long = table.melt(id_vars="iteration", value_vars=columns, var_name="series")
        long = long.dropna(subset=["value"])
        with formats.atomic_path(folder / f"{split}-rounds-{name}.csv") as tmp:
            long.to_csv(tmp, index=False, lineterminator="\n")
        ax = fig.add_subplot(1, 2, k + 1)
        if rounds_form(table) == "bars":
            _round_bars(ax, long, columns)
            ax.set_xlabel(f"iteration {int(table['iteration'].iloc[0])}")
        else:
            for column in columns:
                ax.plot(table["iteration"], table[column], marker="o", label=column)
            ax.set_xlabel("iteration")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(loc="best", fontsize="small")
        ax.set_title(f"{split}: {name} per iteration")
    save(plt, fig, folder / f"{split}-rounds.png")


def rounds_form(table: pd.DataFrame) -> str:
    """`bars` while the rounds table holds one iteration, `lines` from two on."""
    return "bars" if table["iteration"].nunique() < 2 else "lines"


def _round_bars(ax: Any, long: pd.DataFrame, columns: list[str]) -> None:
    """One labelled bar per series of a single iteration (a missing value: no bar, `n/a`)."""
    values = dict(zip(long["series"], long["value"]))
    heights = [float(values.get(c, 0.0)) for c in columns]
    ax.bar(columns, heights, color=[f"C{i}" for i in range(len(columns))])
    for x, column in enumerate(columns):
        text = f"{values[column]:g}" if column in values else "n/a"
        ax.text(x, heights[x], text, ha="center", va="bottom", fontsize="small")
    ax.tick_params(axis="x", labelsize="small")
