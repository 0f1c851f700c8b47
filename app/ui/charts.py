"""Plotly figures for the playground: loss curves with theory floors and earlier runs,
singular-value spectra, effective rank over time, and decision regions of the 2-D classifier.

The functions take plain data (metric rows, arrays) and return `go.Figure` objects, so
they hold no Streamlit state. Non-finite values are dropped, so a diverged run keeps
its last finite point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

RUN_COLORS = {"LoRA": "#1f77b4", "NoRA": "#d62728"}
FALLBACK_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2")
CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
FLOOR_STYLES = (("#333333", "dash"), ("#7f7f7f", "dot"), ("#bcbd22", "dashdot"))

# Points per trace; longer histories are thinned evenly so the browser stays responsive.
MAX_POINTS = 1500
# Training points drawn over each decision map.
MAX_SCATTER = 400
CHART_HEIGHT = 340
# Opacity of the validation curves of earlier runs, drawn under the live ones.
PAST_OPACITY = 0.3


@dataclass(frozen=True)
class FloorLine:
    """A horizontal theory line on the loss chart."""

    value: float
    label: str


def run_color(name: str, index: int = 0) -> str:
    """Return the fixed colour of a run name, or a fallback colour by position."""
    return RUN_COLORS.get(name, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


def _finite(value: object, positive: bool = False) -> bool:
    if value is None or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value):
        return False
    return value > 0 if positive else True


def series(rows: Sequence[Mapping], key: str, *, positive: bool = False,
           max_points: int = MAX_POINTS) -> tuple[list[int], list[float]]:
    """Return the (step, value) pairs of `key` with finite values, thinned to `max_points`.

    Args:
        rows: metric rows with a "step" entry.
        key: the metric to extract, e.g. "val_loss".
        positive: drop values <= 0 too (for log axes, and for an undefined effective rank).
        max_points: keep at most this many points, always including the last one.
    """
    points = [(row["step"], float(row[key])) for row in rows
              if _finite(row.get(key), positive)]
    if len(points) > max_points:
        stride = math.ceil(len(points) / max_points)
        points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    steps = [step for step, _ in points]
    values = [value for _, value in points]
    return steps, values


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    fig.update_layout(_layout_spec(title, x_title, y_title))
    return fig


def _layout_spec(title: str, x_title: str, y_title: str) -> dict:
    return {"title": {"text": title}, "height": CHART_HEIGHT,
            "margin": {"l": 10, "r": 10, "t": 50, "b": 10},
            "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0.0},
            "xaxis": {"title": {"text": x_title}}, "yaxis": {"title": {"text": y_title}}}


def _figure(traces: list[dict], layout: dict) -> go.Figure:
    # One validation of a plain spec with numpy arrays costs a few ms. Building the same
    # figure with add_trace and update_layout validates every call and took about 10 times
    # longer, which matters at two redraws per second.
    return go.Figure({"data": traces, "layout": layout})


def _line(steps: Sequence[int], values: Sequence[float], **spec) -> dict:
    return {"type": "scatter", "x": np.asarray(steps), "y": np.asarray(values, dtype=float),
            **spec}


def loss_figure(histories: Mapping[str, Sequence[Mapping]], floors: Sequence[FloorLine] = (),
                *, log_y: bool = False, diverged: Mapping[str, int | None] | None = None,
                y_title: str = "loss", past: Sequence = ()) -> go.Figure:
    """Draw train and validation loss of every run, with the theory floors as dashed lines.

    Args:
        histories: run name → metric rows with "step", "train_loss" and "val_loss".
        floors: horizontal lines; on a log axis, lines at or below zero are left out.
        log_y: use a logarithmic loss axis.
        diverged: run name → step at which it diverged (None if it did not).
        y_title: the loss axis title, e.g. "MSE".
        past: validation curves of earlier runs (`app.ui.history.PastRun`), drawn dimmed.
    """
    traces: list[dict] = []
    shapes: list[dict] = []
    last_step = 1
    for curve in past:
        points = [(s, v) for s, v in zip(curve.steps, curve.val_loss) if _finite(v, log_y)]
        if not points:
            continue
        traces.append(_line([s for s, _ in points], [v for _, v in points], mode="lines",
                            name=curve.label, opacity=PAST_OPACITY, legendgroup="past",
                            legendrank=2000, line={"color": run_color(curve.run_name),
                                                   "width": 1.5, "dash": "dot"}))
        last_step = max(last_step, points[-1][0])
    for index, (name, rows) in enumerate(histories.items()):
        color = run_color(name, index)
        steps, values = series(rows, "train_loss", positive=log_y)
        traces.append(_line(steps, values, mode="lines", name=f"{name} train", opacity=0.45,
                            line={"color": color, "width": 1}))
        val_steps, val_values = series(rows, "val_loss", positive=log_y)
        traces.append(_line(val_steps, val_values, mode="lines+markers",
                            name=f"{name} validation", line={"color": color, "width": 2.5},
                            marker={"size": 4}))
        last_step = max([last_step, *steps[-1:], *val_steps[-1:]])
        at = (diverged or {}).get(name)
        if at is not None:
            last_step = max(last_step, at)
            shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": at, "x1": at,
                           "y0": 0, "y1": 1, "line": {"color": color, "dash": "dot", "width": 1}})

    for index, floor in enumerate(floors):
        if not _finite(floor.value, positive=log_y):
            continue
        color, dash = FLOOR_STYLES[index % len(FLOOR_STYLES)]
        traces.append(_line([0, last_step], [floor.value, floor.value], mode="lines",
                            name=floor.label, line={"color": color, "dash": dash, "width": 1.5},
                            hovertemplate=f"{floor.label}: %{{y:.4g}}<extra></extra>"))

    layout = _layout_spec("Loss", "step", y_title)
    layout["shapes"] = shapes
    if log_y:
        layout["yaxis"]["type"] = "log"
    return _figure(traces, layout)


# Horizontal extent of the two panels of the spectra figure, as fractions of its width.
SPECTRA_DOMAINS = ((0.0, 0.44), (0.56, 1.0))


def spectra_figure(output_view: Mapping[str, np.ndarray | None],
                   weight_view: Mapping[str, np.ndarray | None]) -> go.Figure:
    """Draw normalised singular values as bars: output view of every run, weight view of LoRA.

    Args:
        output_view: run name → normalised spectrum of the centred adapter outputs Δy, or
            None when there is none: all zero (step 0), non-finite, or not measured yet.
        weight_view: run name → normalised spectrum of ΔW = s·BA (linear adapters only).
    """
    traces: list[dict] = []
    empty = []
    for column, view in ((1, output_view), (2, weight_view)):
        axis = "" if column == 1 else "2"
        for index, (name, values) in enumerate(view.items()):
            if values is None or len(values) == 0:
                empty.append(name)
                continue
            traces.append({"type": "bar", "x": np.arange(1, len(values) + 1),
                           "y": np.asarray(values, dtype=float), "name": name,
                           "marker": {"color": run_color(name, index)}, "opacity": 0.8,
                           "legendgroup": name, "showlegend": column == 1,
                           "xaxis": f"x{axis}", "yaxis": f"y{axis}"})
    layout = _layout_spec("Normalised singular values (sum to 1)", "index i", "σᵢ / Σσ")
    (left_low, left_high), (right_low, right_high) = SPECTRA_DOMAINS
    layout["xaxis"]["domain"] = [left_low, left_high]
    layout["xaxis2"] = {"domain": [right_low, right_high], "anchor": "y2",
                        "title": {"text": "index i"}}
    layout["yaxis"]["anchor"] = "x"
    layout["yaxis2"] = {"anchor": "x2"}
    titles = [(sum(SPECTRA_DOMAINS[0]) / 2, "output view Δy (both)"),
              (sum(SPECTRA_DOMAINS[1]) / 2, "weight view ΔW = s·BA (LoRA)")]
    layout["annotations"] = [{"text": text, "x": x, "y": 1.0, "xref": "paper", "yref": "paper",
                              "xanchor": "center", "yanchor": "bottom", "showarrow": False,
                              "font": {"size": 14}} for x, text in titles]
    # Below the plots, so it does not collide with the subplot titles.
    layout.update(barmode="group", bargap=0.15,
                  legend={"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0.0})
    if empty:
        names = ", ".join(dict.fromkeys(empty))
        layout["annotations"].append({"text": f"no spectrum yet: {names}", "showarrow": False,
                                      "xref": "paper", "yref": "paper", "x": 1.0, "y": -0.3,
                                      "xanchor": "right", "font": {"size": 11}})
    return _figure(traces, layout)


def effective_rank_figure(histories: Mapping[str, Sequence[Mapping]],
                          ranks: Mapping[str, int] | None = None) -> go.Figure:
    """Draw the effective rank exp(H(σ/Σσ)) of every run over the training steps.

    Solid lines are the output view; the dotted line is LoRA's weight view. Steps with an
    all-zero update have no effective rank and are left out.

    Args:
        histories: run name → metric rows with "effective_rank_output" and
            "effective_rank_weight".
        ranks: run name → rank r, drawn as a thin line: the most any view can reach.
    """
    traces: list[dict] = []
    for index, (name, rows) in enumerate(histories.items()):
        color = run_color(name, index)
        steps, values = series(rows, "effective_rank_output", positive=True)
        traces.append(_line(steps, values, mode="lines+markers", name=f"{name} output",
                            line={"color": color, "width": 2}, marker={"size": 4}))
        steps, values = series(rows, "effective_rank_weight", positive=True)
        if values:
            traces.append(_line(steps, values, mode="lines", name=f"{name} weight",
                                line={"color": color, "width": 1.5, "dash": "dot"}))
    layout = _layout_spec("Effective rank", "step", "exp(entropy)")
    layout["shapes"] = [{"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1,
                         "y0": r, "y1": r, "opacity": 0.5,
                         "line": {"color": run_color(name, index), "width": 0.8, "dash": "dash"}}
                        for index, (name, r) in enumerate((ranks or {}).items())]
    layout["yaxis"]["rangemode"] = "tozero"
    return _figure(traces, layout)


def decision_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                    points: np.ndarray, labels: np.ndarray) -> go.Figure:
    """Draw the decision regions of several models side by side, over the training points.

    Args:
        panels: (title, xx, yy, probs) per model, as returned by `decision_grid`: xx and
            yy are the grid axes (R,), probs is (R, R, n_classes) with probs[i, j] at
            (xx[j], yy[i]).
        points: (N, 2) inputs to scatter.
        labels: (N,) integer classes of the points.
    """
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels],
                        horizontal_spacing=0.04, shared_yaxes=True)
    if len(points) > MAX_SCATTER:
        keep = np.linspace(0, len(points) - 1, MAX_SCATTER).astype(int)
        points, labels = points[keep], labels[keep]
    for column, (_, xx, yy, probs) in enumerate(panels, start=1):
        n_classes = probs.shape[-1]
        if n_classes == 2:
            fig.add_trace(go.Contour(
                x=xx, y=yy, z=probs[..., 1], zmin=0.0, zmax=1.0, showscale=False,
                colorscale=[[0.0, CLASS_COLORS[0]], [0.5, "#ffffff"], [1.0, CLASS_COLORS[1]]],
                contours=dict(start=0.0, end=1.0, size=0.1), opacity=0.55,
                line=dict(width=0), hoverinfo="skip", showlegend=False), row=1, col=column)
            fig.add_trace(go.Contour(
                x=xx, y=yy, z=probs[..., 1], showscale=False, contours_coloring="none",
                contours=dict(start=0.5, end=0.5, size=1.0), line=dict(color="black", width=2),
                hoverinfo="skip", showlegend=False), row=1, col=column)
        else:
            # One colour band per class: the argmax map on a stepped colour scale.
            scale = []
            for k in range(n_classes):
                scale += [[k / n_classes, CLASS_COLORS[k]], [(k + 1) / n_classes, CLASS_COLORS[k]]]
            fig.add_trace(go.Heatmap(
                x=xx, y=yy, z=probs.argmax(axis=-1), zmin=-0.5, zmax=n_classes - 0.5,
                colorscale=scale, showscale=False, opacity=0.45, hoverinfo="skip",
                showlegend=False), row=1, col=column)
        for k in range(n_classes):
            chosen = labels == k
            fig.add_trace(go.Scatter(
                x=points[chosen, 0], y=points[chosen, 1], mode="markers",
                marker=dict(color=CLASS_COLORS[k], size=5, line=dict(color="white", width=0.5)),
                name=f"class {k}", legendgroup=f"class {k}", showlegend=column == 1),
                row=1, col=column)
        fig.update_xaxes(range=[float(xx[0]), float(xx[-1])], row=1, col=column)
        fig.update_yaxes(range=[float(yy[0]), float(yy[-1])], row=1, col=column,
                         scaleanchor=f"x{column if column > 1 else ''}", scaleratio=1)
    boundary = "; black line: p = 0.5" if panels and panels[0][3].shape[-1] == 2 else ""
    _layout(fig, f"Decision regions (training points on top{boundary})", "", "")
    fig.update_layout(height=CHART_HEIGHT + 40,
                      legend=dict(orientation="h", yanchor="top", y=-0.08, x=0.0))
    return fig
