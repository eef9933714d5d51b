"""Figures: each function returns a matplotlib Figure; notebooks show and save it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# No backend is forced: kernels use the inline backend (figures show in reports), scripts without
# a display fall back to Agg by themselves.
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def funnel(steps: Sequence[tuple[str, int]], title: str = "Snippet funnel") -> Figure:
    """Horizontal bars, one per step, with counts and share of the first step."""
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(steps)))
    names = [s for s, _ in steps][::-1]
    counts = [c for _, c in steps][::-1]
    bars = ax.barh(names, counts, color="#4C72B0")
    top = max(steps[0][1], 1)
    for bar, c in zip(bars, counts):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {c:,} ({100 * c / top:.0f}%)",
            va="center",
            fontsize=9,
        )
    ax.set_xlabel("items remaining (count)")
    ax.set_title(title)
    ax.set_xlim(0, top * 1.25)
    fig.tight_layout()
    return fig


def histograms(
    series: Mapping[str, Sequence[float]], xlabel: str, title: str, bins: int = 30, log_y: bool = False
) -> Figure:
    """Overlaid histograms of several named series on shared bins."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    values = [np.asarray(v, dtype=float) for v in series.values() if len(v)]
    if values:
        edges = np.histogram_bin_edges(np.concatenate(values), bins=bins)
        for name, v in series.items():
            if len(v):
                ax.hist(v, bins=edges, alpha=0.55, label=f"{name} (n={len(v)})")
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def bar(
    labels: Sequence[str],
    values: Sequence[float],
    ylabel: str,
    title: str,
    errors: Sequence[tuple[float, float]] | None = None,
    refs: Mapping[str, float] | None = None,
) -> Figure:
    """Bars with optional (low, high) interval whiskers and labelled horizontal reference lines."""
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(labels) + 2), 3.8))
    x = np.arange(len(labels))
    yerr = None
    if errors is not None:
        yerr = np.array(
            [[v - lo for v, (lo, _) in zip(values, errors)], [hi - v for v, (_, hi) in zip(values, errors)]]
        )
    ax.bar(x, values, yerr=yerr, capsize=4, color="#55A868")
    for name, y in (refs or {}).items():
        ax.axhline(y, ls="--", lw=1, color="#C44E52")
        ax.text(len(labels) - 0.5, y, f" {name}", va="bottom", ha="right", fontsize=8, color="#C44E52")
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def lines(xs: Sequence[float], series: Mapping[str, Sequence[float]], xlabel: str, ylabel: str, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, ys in series.items():
        ax.plot(xs[: len(ys)], ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    return fig


def heatmap(matrix: np.ndarray, labels: Sequence[str], title: str, cbar_label: str) -> Figure:
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(labels), 0.8 + 0.7 * len(labels)))
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label=cbar_label)
    ax.set_title(title)
    fig.tight_layout()
    return fig
