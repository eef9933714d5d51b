"""Statistical figures (seaborn over matplotlib): rates with intervals, paired deltas, distributions, curves.

Each function returns a matplotlib Figure; notebooks show and save it. Intervals are computed by the
library (Wilson, paired bootstrap) and drawn as given: seaborn draws, it does not estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
PALETTE = "colorblind"


def rates_with_intervals(summary: pd.DataFrame, title: str, measures: Sequence[str] = ("valid", "parsed")) -> Figure:
    """Grouped bars per column of `summary` (rows `<m>_rate`, `<m>_ci_low`, `<m>_ci_high`), with whiskers."""
    rows = [
        {
            "group": g,
            "measure": m,
            "rate": summary.loc[f"{m}_rate", g],
            "lo": summary.loc[f"{m}_ci_low", g],
            "hi": summary.loc[f"{m}_ci_high", g],
        }
        for g in summary.columns
        for m in measures
        if f"{m}_ci_low" in summary.index
    ]
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(summary.columns) + 3), 3.8))
    sns.barplot(df, x="group", y="rate", hue="measure", palette=PALETTE, errorbar=None, ax=ax)
    for bar_group, m in zip(ax.containers, df.measure.unique()):
        part = df[df.measure == m]
        xs = [b.get_x() + b.get_width() / 2 for b in bar_group]
        ax.errorbar(
            xs, part.rate, yerr=[part.rate - part.lo, part.hi - part.rate], fmt="none", ecolor="#333", capsize=3, lw=1
        )
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("")
    ax.set_ylabel("share of samples")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def paired_deltas(deltas: pd.DataFrame, title: str, unit: str = "points") -> Figure:
    """A forest plot: one row per comparison (index), its delta and 95% interval (columns delta, ci_low, ci_high)."""
    df = deltas.reset_index(names="comparison")
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.42 * len(df)))
    y = np.arange(len(df))
    ax.errorbar(df.delta, y, xerr=[df.delta - df.ci_low, df.ci_high - df.delta], fmt="o", color="#4C72B0", capsize=3)
    ax.axvline(0, color="#C44E52", lw=1, ls="--")
    ax.set_yticks(y, df.comparison)
    ax.invert_yaxis()
    ax.set_xlabel(f"paired difference ({unit}), 95% interval")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def distributions(series: Mapping[str, Sequence[float]], xlabel: str, title: str) -> Figure:
    """Overlaid histograms with density curves, one per named series."""
    df = pd.DataFrame([{"value": float(v), "series": f"{k} (n={len(vs)})"} for k, vs in series.items() for v in vs])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if len(df):
        sns.histplot(
            df,
            x="value",
            hue="series",
            stat="density",
            common_norm=False,
            kde=len(df) > 5,
            element="step",
            palette=PALETTE,
            ax=ax,
        )
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def curve_with_band(
    df: pd.DataFrame, x: str, y: str, lo: str, hi: str, hue: str, xlabel: str, ylabel: str, title: str
) -> Figure:
    """Lines per `hue` over `x` with a shaded interval band (lo, hi) around each."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.lineplot(df, x=x, y=y, hue=hue, marker="o", palette=PALETTE, ax=ax)
    colors = dict(zip(df[hue].unique(), sns.color_palette(PALETTE)))
    for name, part in df.groupby(hue, sort=False):
        ax.fill_between(part[x], part[lo], part[hi], alpha=0.15, color=colors[name])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig
