"""Detection error trade-off (DET) curves, drawn on normal-deviate (probit) axes as in NIST plots.

On probit axes the miss / false-alarm trade-off of Gaussian-like score distributions is close
to a straight line, which makes systems and operating points far apart (1% vs 0.01% false
alarms) readable on one plot.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from scipy.special import ndtri

from stklia.evaluation.metrics import SortedTrials

TICKS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95)
MAX_POINTS = 2000  # points drawn per curve: enough for the eye, small PNGs for a million trials
LEGEND_WIDTH = 90  # characters per legend line: a sweep's run is named by all its differing overrides


def det_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(false-alarm rates, miss rates) of every threshold (SortedTrials.det_curve)."""
    return SortedTrials(scores, labels).det_curve()


def _thin(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most about max_points points, evenly spaced along the drawn path (keeps both ends)."""
    distance = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
    if len(x) <= max_points or distance[-1] == 0:
        return x, y
    keep = np.unique(np.concatenate((
        np.unique(np.floor(distance / distance[-1] * (max_points - 1)), return_index=True)[1], [len(x) - 1])))
    return x[keep], y[keep]


def det_figure(systems: Mapping[str, ArrayLike], labels: ArrayLike, title: str) -> Figure:
    """DET curves of one or several score sets of the same trials, each with its EER point marked."""
    labels = np.asarray(labels)
    n_tar = int(np.count_nonzero(labels == 1))
    lowest = max(TICKS[0], min(0.01, 0.5 / min(n_tar, len(labels) - n_tar)))  # finer than the data is noise
    sorted_trials = {name: SortedTrials(scores, labels) for name, scores in systems.items()}
    eers = {name: trials.eer()[0] for name, trials in sorted_trials.items()}
    highest = 0.6 if max(eers.values()) <= 0.4 else 0.98  # the usual NIST range, unless the system is poor
    low, high = ndtri(lowest), ndtri(highest)
    names = {name: textwrap.fill(f"{name} (EER {100 * eer:.2f}%)", LEGEND_WIDTH, subsequent_indent="    ")
             for name, eer in eers.items()}
    legend_lines = sum(text.count("\n") + 1 for text in names.values())
    # the legend goes under the plot, the figure growing with it, so that long names never cover the curves
    fig = Figure(figsize=(6.5, 5.5 + 0.16 * legend_lines), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([low, high], [low, high], color="0.8", linewidth=0.8, zorder=0)  # where miss = false alarm
    for name, trials in sorted_trials.items():
        false_alarm, miss = trials.det_curve()
        x, y = _thin(*ndtri(np.clip([false_alarm, miss], lowest / 2, 1 - lowest / 2)), MAX_POINTS)
        eer = eers[name]
        (line,) = ax.plot(x, y, linewidth=1.5, label=names[name])
        point = ndtri(np.clip(eer, lowest / 2, 1 - lowest / 2))
        ax.plot(point, point, "o", color=line.get_color(), markersize=6)
    ticks = [t for t in TICKS if lowest <= t <= highest]
    labels_text = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(ndtri(ticks), labels_text)
    ax.set_yticks(ndtri(ticks), labels_text)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("False alarm rate (%)")
    ax.set_ylabel("Miss rate (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, color="0.9")
    fig.legend(loc="outside lower center", fontsize=8)
    return fig
