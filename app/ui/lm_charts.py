"""Plotly figures of the Language-model page: perplexity, effective-rank heatmaps per block
and target, and the averaged normalised spectrum of LoRA against NoRA.

Like `app.ui.charts`, the functions take plain data and return `go.Figure` objects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.ui.charts import CHART_HEIGHT, run_color, series
from app.ui.lm_spectra import RankGrid


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    fig.update_layout(title=title, height=CHART_HEIGHT, margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0.0),
                      xaxis_title=x_title, yaxis_title=y_title)
    return fig


def _log_axis(fig: go.Figure, low: int, high: int) -> None:
    """Make the y axis logarithmic with labelled ticks at 1, 2 and 5 × 10^low to 10^high.

    Plotly's own labels on a log axis that spans about one decade are bare digits
    without their decade ("2, 5, 0.1, 2").
    """
    ticks = [m * 10.0 ** e for e in range(low, high + 1) for m in (1, 2, 5)
             if m * 10.0 ** e <= 10.0 ** high]
    fig.update_yaxes(type="log", tickvals=ticks, tickformat="~g")


def perplexity_figure(histories: Mapping[str, Sequence[Mapping]],
                      diverged: Mapping[str, int | None] | None = None) -> go.Figure:
    """Draw the validation perplexity exp(loss) of every run, on a log axis when it spans decades.

    Overflowed (infinite) and missing values are left out, so a diverged run ends at its
    last finite point and a dotted line marks the step where it diverged.

    Args:
        histories: run name → metric rows with "step" and "val_perplexity".
        diverged: run name → step at which it diverged (None if it did not).
    """
    fig = go.Figure()
    shown: list[float] = []
    for index, (name, rows) in enumerate(histories.items()):
        color = run_color(name, index)
        steps, values = series(rows, "val_perplexity", positive=True)
        shown += values
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers",
                                 name=f"{name} validation", line=dict(color=color, width=2.5),
                                 marker=dict(size=4)))
        at = (diverged or {}).get(name)
        if at is not None:
            fig.add_vline(x=at, line=dict(color=color, dash="dot", width=1))
    _layout(fig, "Validation perplexity", "step", "exp(loss)")
    if shown and max(shown) > 10 * min(shown):
        # A log axis only where the values span more than a decade, because 1-2-5 ticks
        # would leave a narrow range (style shift: 5.4 to 6.3) without any label.
        _log_axis(fig, math.floor(math.log10(min(shown))), math.ceil(math.log10(max(shown))))
    return fig


def rank_heatmap_figure(grids: Mapping[str, RankGrid | None], ranks: Mapping[str, int],
                        step: int) -> go.Figure:
    """Draw the effective rank of every adapted module as blocks × targets, one panel per run.

    The colour scale runs from 1 to the largest rank r, the range of an effective rank.
    Empty cells have no spectrum: an all-zero update (step 0) or a non-finite one.

    Args:
        grids: run name → its grid, or None for a run without spectra (diverged).
        ranks: run name → rank r.
        step: the measured step, shown in the title.
    """
    names = list(grids)
    titles = [f"{name} (r={ranks.get(name, '?')})" if grids[name] is not None
              else f"{name}: no spectrum (diverged)" for name in names]
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=titles,
                        horizontal_spacing=0.08, shared_yaxes=True)
    top = max([1, *ranks.values()])
    for column, name in enumerate(names, start=1):
        grid = grids[name]
        if grid is None:
            continue
        text = [["" if math.isnan(v) else f"{v:.1f}" for v in row] for row in grid.values]
        fig.add_trace(go.Heatmap(
            z=grid.values, x=grid.targets, y=[f"block {layer}" for layer in grid.layers],
            zmin=1.0, zmax=float(top), coloraxis="coloraxis", text=text,
            texttemplate="%{text}", hovertemplate=(f"{name}<br>%{{y}} %{{x}}<br>"
                                                   "effective rank %{z:.2f}<extra></extra>")),
            row=1, col=column)
    height = CHART_HEIGHT + 20 * max((len(g.layers) for g in grids.values() if g), default=0)
    fig.update_layout(title=f"Effective rank per block and target, step {step}",
                      height=min(height, 3 * CHART_HEIGHT),
                      margin=dict(l=10, r=10, t=70, b=10),
                      coloraxis=dict(colorscale="Viridis", cmin=1.0, cmax=float(top),
                                     colorbar=dict(title="eff. rank", thickness=12)))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-30)
    return fig


def average_spectrum_figure(averages: Mapping[str, np.ndarray | None], step: int,
                            *, log_y: bool = True) -> go.Figure:
    """Draw the normalised singular values σᵢ/Σσ averaged over every adapted module.

    This is the output-view summary the NoRA paper plots: a flat curve uses its r
    directions evenly, a steep one has collapsed onto a few.

    Args:
        averages: run name → averaged normalised spectrum, or None (all-zero update).
        step: the measured step, shown in the title.
        log_y: logarithmic σ axis, which shows the tail; zero values are left out.
    """
    fig = go.Figure()
    missing = []
    for index, (name, values) in enumerate(averages.items()):
        if values is None or len(values) == 0:
            missing.append(name)
            continue
        positions = np.arange(1, len(values) + 1)
        keep = values > 0 if log_y else np.ones_like(values, dtype=bool)
        fig.add_trace(go.Scatter(x=positions[keep], y=values[keep], mode="lines+markers",
                                 name=name, line=dict(color=run_color(name, index), width=2),
                                 marker=dict(size=5)))
    _layout(fig, f"Averaged normalised spectrum, step {step}", "index i", "σᵢ / Σσ")
    if log_y:
        _log_axis(fig, -4, 0)
    if len(missing) == len(averages):
        # Without data Plotly would pick an arbitrary range; σᵢ/Σσ lies in (0, 1].
        fig.update_yaxes(range=[-3, 0] if log_y else [0, 1])
    if missing:
        fig.add_annotation(text=f"no spectrum: {', '.join(missing)} (all-zero update or diverged)",
                           showarrow=False, xref="paper", yref="paper", x=1.0, y=0.02,
                           xanchor="right", font=dict(size=11))
    return fig


__all__ = ["average_spectrum_figure", "perplexity_figure", "rank_heatmap_figure"]
