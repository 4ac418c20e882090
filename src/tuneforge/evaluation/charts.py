"""The report's charts as inline SVG (matplotlib, no display, no files): training curves and scores with intervals.

Text stays text in the SVG (`svg.fonttype: none`): the page stays small and searchable, and the browser draws it in
the page's own font. Fixed ids and no date make the same run render to the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
from matplotlib.figure import Figure

STYLE: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "tuneforge",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "legend.frameon": False,
}
# One colour per model, the same in every chart and in the page's tables (report.html.j2 uses these too).
COLOURS = ["#8a8f98", "#1f6feb", "#d97706", "#059669", "#9333ea", "#dc2626"]


def svg(figure: Figure) -> str:
    """The figure as an <svg> element to inline into HTML (no XML prolog, no fixed size: it scales to its box)."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float = 5.2, height: float = 2.6) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def curve(
    title: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    ylabel: str,
    log_y: bool = False,
    from_zero: bool = False,
) -> str:
    """Lines of (x=step, y) per named series; a series of at most a few points is drawn with markers."""
    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]  # its keys are typed as literals
        figure = _figure()
        axes = figure.add_subplot()
        for i, (name, (xs, ys)) in enumerate(series.items()):
            marker = "o" if len(xs) <= 30 else None
            axes.plot(list(xs), list(ys), label=name, color=COLOURS[(i + 1) % len(COLOURS)], marker=marker, ms=3)
        axes.set_title(title, loc="left")
        axes.set_xlabel("optimizer step")
        axes.set_ylabel(ylabel)
        if log_y:
            axes.set_yscale("log")
        elif from_zero:
            axes.set_ylim(bottom=0)
        if len(series) > 1:
            axes.legend()
        return svg(figure)


def score_bars(
    metrics: list[str],
    models: list[str],
    scores: dict[str, dict[str, Any]],
    intervals: dict[str, dict[str, Any]],
    labels: dict[str, str] | None = None,
) -> str:
    """Horizontal bars per metric and model, with the 95% interval as an error bar (scores on a 0-1 scale)."""
    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]  # its keys are typed as literals
        figure = _figure(5.2, 0.5 + 0.32 * len(metrics) * len(models))
        axes = figure.add_subplot()
        height = 0.8 / len(models)
        for m, model in enumerate(models):
            positions: list[float] = []
            values: list[float] = []
            errors: list[list[float]] = [[], []]
            for k, metric in enumerate(metrics):
                value = scores.get(model, {}).get(metric)
                if value is None:
                    continue
                low, high = intervals.get(model, {}).get(metric, [value, value])
                positions.append(k + (m - (len(models) - 1) / 2) * height)
                values.append(value)
                errors[0].append(max(value - low, 0.0))
                errors[1].append(max(high - value, 0.0))
            axes.barh(positions, values, height=height * 0.9, xerr=errors, label=model, color=COLOURS[m % len(COLOURS)])
        axes.set_yticks(range(len(metrics)), [(labels or {}).get(m, m) for m in metrics])
        axes.invert_yaxis()
        axes.set_xlim(0, 1.05)
        axes.set_title("scores with 95% intervals", loc="left")
        figure.legend(loc="outside lower center", ncols=len(models))
        axes.grid(axis="y", visible=False)
        return svg(figure)


def histograms(title: str, edges: Sequence[float], counts: Mapping[str, Sequence[int]], xlabel: str) -> str:
    """Step histograms of several named series on shared bin edges (a reward model's chosen against rejected)."""
    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]  # its keys are typed as literals
        figure = _figure()
        axes = figure.add_subplot()
        for i, (name, values) in enumerate(counts.items()):
            axes.stairs(list(values), list(edges), label=name, color=COLOURS[(i + 1) % len(COLOURS)], linewidth=1.5)
        axes.set_title(title, loc="left")
        axes.set_xlabel(xlabel)
        axes.set_ylabel("answers")
        axes.legend()
        return svg(figure)
