"""Evaluation reports: CSV and JSON tables, a text summary, and charts — PNG drawn with matplotlib
(Agg backend, no display needed), self-contained HTML with plotly.

Every function takes ``results``: model name → :class:`cvs_core.evaluate.Score` (attributes
``summary``, ``per_image``, ``per_landmark``, ``errors_px (N, 19)`` in ROI px).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from cvs_core import metrics
from cvs_core.landmarks import N_LANDMARKS, NAMES
from cvs_core.registry import to_jsonable, write_text_atomic

PALETTE = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880"]
SDR_KEYS = tuple(str(float(r)) for r in metrics.SDR_RADII_MM)

Progress = Callable[[int, int], None]


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


# ----------------------------------------------------------------------------- chart data
def pck_curve_data(errors_px: np.ndarray, spacing_mm: float, max_mm: float, n: int = 201):
    """``(thresholds_mm (n,), pck (n,))`` on [0, max_mm] for errors ``(N, 19)`` in ROI px."""
    t = np.linspace(0.0, max_mm, n)
    return t, metrics.pck_curve(errors_px, t, unit="mm", spacing_mm=spacing_mm)


def _curve_max(threshold_mm: float) -> float:
    return max(4.0, 2.5 * threshold_mm)


def _errors_mm(results: Mapping, spacing_mm: float) -> dict[str, np.ndarray]:
    """Model → radial errors ``(N, 19)`` in mm, NaN where a landmark was missed."""
    return {name: np.where(np.isfinite(r.errors_px), r.errors_px * spacing_mm, np.nan) for name, r in results.items()}


# ----------------------------------------------------------------------------- PNG (matplotlib)
def _figure(width_in: float, height_in: float):
    """A matplotlib Figure on the Agg canvas (no pyplot: no global state, safe in threads)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white")
    return path


def pck_curve_png(results: Mapping, spacing_mm: float, threshold_mm: float, path: Path) -> Path:
    """PCK curves of all models as a 1000×600 PNG, the threshold marked, PCK and AUC in the legend."""
    tmax = _curve_max(threshold_mm)
    fig = _figure(10, 6)
    ax = fig.add_subplot()
    for i, (name, res) in enumerate(results.items()):
        t, p = pck_curve_data(res.errors_px, spacing_mm, tmax)
        s = res.summary
        ax.plot(t, p, color=_color(i), lw=2,
                label=f"{name}  PCK@{threshold_mm:g}mm={s['pck']:.1%}  AUC={s['pck_auc']:.3f}")
    ax.axvline(threshold_mm, color="#555555", ls="--", lw=1)
    ax.annotate(f"{threshold_mm:g} mm", (threshold_mm, 1.0), xytext=(4, -12), textcoords="offset points",
                color="#555555")
    ax.set(title="PCK curve (same-index landmarks)", xlabel="threshold (mm)",
           ylabel="PCK (share of landmarks within threshold)", xlim=(0, tmax), ylim=(0, 1.02))
    ax.grid(color="#e6e6e6")
    if results:
        ax.legend(loc="lower right")
    return _save_png(fig, path)


def landmark_box_png(results: Mapping, spacing_mm: float, threshold_mm: float, path: Path) -> Path:
    """Per-landmark radial errors (mm) as boxes (quartiles, whiskers 1.5 IQR, outliers), models side
    by side per landmark, as a 1300×620 PNG; missed landmarks are left out."""
    errs = _errors_mm(results, spacing_mm)
    fig = _figure(13, 6.2)
    ax = fig.add_subplot()
    width = 0.8 / max(len(errs), 1)
    for j, (name, e) in enumerate(errs.items()):
        color = _color(j)
        data = [col[np.isfinite(col)] for col in e.T]
        keep = [k for k, d in enumerate(data) if len(d)]
        if not keep:
            continue
        pos = np.arange(1, N_LANDMARKS + 1)[keep] - 0.4 + width * (j + 0.5)
        ax.boxplot([data[k] for k in keep], positions=pos, widths=width * 0.8, whis=1.5, patch_artist=True,
                   manage_ticks=False, boxprops=dict(facecolor=color, alpha=0.35, edgecolor=color),
                   whiskerprops=dict(color=color), capprops=dict(color=color),
                   medianprops=dict(color="#1e1e1e", lw=2),
                   flierprops=dict(marker="o", ms=3, markerfacecolor=color, markeredgecolor=color))
        ax.plot([], [], color=color, lw=6, alpha=0.6, label=name)  # legend entry
    allv = np.concatenate([e[np.isfinite(e)] for e in errs.values()] + [np.array([threshold_mm])])
    ymax = max(float(np.percentile(allv, 99.5)) * 1.1, threshold_mm * 1.2, 0.5)
    ax.axhline(threshold_mm, color="#5a5a5a", ls="--", lw=1)
    ax.annotate(f"{threshold_mm:g} mm", (N_LANDMARKS + 0.5, threshold_mm), xytext=(-40, 4),
                textcoords="offset points", color="#5a5a5a")
    ax.set(title="Error per landmark (box: quartiles, whiskers: 1.5 IQR)", xlabel="landmark",
           ylabel="radial error (mm)", xlim=(0.5, N_LANDMARKS + 0.5), ylim=(0, ymax))
    ax.set_xticks(range(1, N_LANDMARKS + 1), list(NAMES), fontsize=8)
    ax.grid(axis="y", color="#e6e6e6")
    if errs:
        ax.legend(loc="upper right")
    return _save_png(fig, path)


# ----------------------------------------------------------------------------- HTML (plotly)
def pck_curve_figure(results: Mapping, spacing_mm: float, threshold_mm: float):
    """Plotly figure of the PCK curves, threshold marked."""
    import plotly.graph_objects as go

    tmax = _curve_max(threshold_mm)
    fig = go.Figure()
    for i, (name, res) in enumerate(results.items()):
        t, p = pck_curve_data(res.errors_px, spacing_mm, tmax)
        fig.add_trace(go.Scatter(x=t, y=p, mode="lines", name=name, line=dict(color=_color(i)),
                                 hovertemplate="%{x:.2f} mm: %{y:.1%}<extra>" + name + "</extra>"))
    fig.add_vline(x=threshold_mm, line_dash="dash", line_color="#555",
                  annotation_text=f"{threshold_mm:g} mm", annotation_position="top right")
    fig.update_layout(title="PCK curve (same-index landmarks)", xaxis_title="threshold (mm)",
                      yaxis_title="PCK", yaxis=dict(range=[0, 1.02], tickformat=".0%"), template="plotly_white")
    return fig


def landmark_box_figure(results: Mapping, spacing_mm: float, threshold_mm: float):
    """Plotly box plot of the per-landmark errors (mm), models grouped per landmark."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, e) in enumerate(_errors_mm(results, spacing_mm).items()):
        xs = np.repeat(np.array(NAMES)[None], e.shape[0], axis=0).ravel()
        ys = e.ravel()
        ok = np.isfinite(ys)
        fig.add_trace(go.Box(x=xs[ok], y=ys[ok], name=name, marker_color=_color(i), boxpoints="outliers"))
    fig.add_hline(y=threshold_mm, line_dash="dash", line_color="#555", annotation_text=f"{threshold_mm:g} mm")
    fig.update_layout(title="Error per landmark", boxmode="group", xaxis_title="landmark",
                      yaxis_title="radial error (mm)", template="plotly_white")
    return fig


def write_plots(results: Mapping, spacing_mm: float, threshold_mm: float, out: Path) -> list[Path]:
    """``pck_curve`` and ``landmark_errors`` as PNG (matplotlib) and self-contained HTML (plotly, no CDN)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [pck_curve_png(results, spacing_mm, threshold_mm, out / "pck_curve.png"),
             landmark_box_png(results, spacing_mm, threshold_mm, out / "landmark_errors.png")]
    for fig, name in ((pck_curve_figure(results, spacing_mm, threshold_mm), "pck_curve.html"),
                      (landmark_box_figure(results, spacing_mm, threshold_mm), "landmark_errors.html")):
        fig.write_html(out / name, include_plotlyjs=True, full_html=True)
        paths.append(out / name)
    return paths


# ----------------------------------------------------------------------------- tables
def write_report(results: Mapping, out: Path, spacing_mm: float, threshold_mm: float, plots: bool = True) -> dict:
    """Write ``per_image.csv``, ``per_landmark.csv``, ``summary.json`` (strict JSON: NaN → null)
    and, with ``plots``, the charts into ``out``. Returns the summaries (model → dict)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pd.concat([r.per_image for r in results.values()], ignore_index=True).to_csv(out / "per_image.csv", index=False)
    pd.concat([r.per_landmark for r in results.values()], ignore_index=True).to_csv(
        out / "per_landmark.csv", index=False, float_format="%.6g")
    summary = {name: r.summary for name, r in results.items()}
    import json

    write_text_atomic(out / "summary.json", json.dumps(to_jsonable(summary), indent=2) + "\n")
    if plots:
        write_plots(results, spacing_mm, threshold_mm, out)
    return summary


def summary_table(summary: Mapping[str, dict], threshold_mm: float) -> pd.DataFrame:
    """One row per model: n, MRE px/mm, SDR at 2/2.5/3/4 mm, PCK at ``threshold_mm``, stage
    agreement (with the labels when there are stage labels, else with stages from the true
    landmarks), ms per image, cached. Shares are 0..1; None/NaN where not measured."""
    rows = []
    for name, s in summary.items():
        sa = s.get("stage_agreement", {})
        rows.append({
            "model": name, "n": s["n_images"], "MRE px": s["mre_px"], "MRE mm": s["mre_mm"],
            **{f"SDR{float(k):g}": s["sdr"][k] for k in SDR_KEYS},
            f"PCK@{threshold_mm:g}mm": s["pck"],
            "stage": sa.get("pred_vs_label", sa.get("pred_vs_true_landmarks")),
            "ms/img": s.get("ms_per_image"), "cached": bool(s.get("cached")),
        })
    return pd.DataFrame(rows)


def format_summary(summary: Mapping[str, dict], threshold_mm: float) -> str:
    """:func:`summary_table` as fixed-width text for the terminal, with notes."""
    table = summary_table(summary, threshold_mm)
    pck_col = f"PCK@{threshold_mm:g}mm"
    head = (f"{'model':<24} {'n':>5} {'MRE px':>8} {'MRE mm':>8} {'SDR2':>7} {'SDR2.5':>7} {'SDR3':>7} {'SDR4':>7} "
            f"{pck_col:>10} {'stage':>7} {'ms/img':>8}")
    lines = [head, "-" * len(head)]

    def pct(v):
        return "   n/a" if v is None or v != v else f"{v:6.1%}"

    def num(v, fmt):
        return "n/a" if v is None or v != v else format(v, fmt)

    for r in table.to_dict("records"):
        lines.append(f"{r['model'][:24]:<24} {r['n']:>5} {num(r['MRE px'], '.2f'):>8} {num(r['MRE mm'], '.3f'):>8} "
                     + " ".join(f"{pct(r[k]):>7}" for k in ("SDR2", "SDR2.5", "SDR3", "SDR4"))
                     + f" {pct(r[pck_col]):>10} {pct(r['stage']):>7} {num(r['ms/img'], '.1f'):>8}"
                     + ("  (cached)" if r["cached"] else ""))
    lines.append("stage = CS agreement of stages from predicted landmarks with the labels "
                 "(or with stages from the true landmarks when there are no labels)")
    lines.append("legacy study metrics are in summary.json under 'legacy' (not comparable with PCK/SDR; see its note)")
    return "\n".join(lines)


def stderr_progress(label: str) -> Progress:
    """A ``progress(done, total)`` that draws a bar on stderr."""
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        frac = done / total if total else 1.0
        bar = "#" * int(30 * frac)
        rate = done / max(time.perf_counter() - t0, 1e-9)
        sys.stderr.write(f"\r{label} [{bar:<30}] {done}/{total} ({rate:.1f} img/s)")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return progress
