"""Pictures, figures and small report tables for the app — computed here, only displayed by pages.

No Streamlit import. Everything takes plain arrays:

* images are greyscale ``(H, W)`` uint8 (rows, columns) unless said otherwise;
* landmarks are ``(19, 2)`` float ``(x, y)`` pixels in the frame of the image they are drawn on,
  pixel-centre convention (integer ``i`` is the centre of pixel ``i``, as in ``cvs_core.preprocess``);
  NaN marks a landmark a model did not find (it is simply not drawn).

Plotly figures carry the image as a compressed JPEG data URI (``go.Image(source=...)``) rather than a
``z`` matrix, so a 600×250 ROI costs ~20 kB on the wire instead of ~1 MB of JSON. The PNG export
(:func:`overlay_png`) is drawn with OpenCV, so no kaleido/browser is needed.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cvs_core.landmarks import LANDMARKS, N_LANDMARKS, NAMES, OUTLINES

MODEL_COLORS = ("#4fc3f7", "#ff8a65", "#aed581", "#ba68c8", "#fff176")
TRUTH_COLOR = "#ffe082"
TEMPLATE = "plotly_dark"


# ----------------------------------------------------------------------------- images
def _to_uint8_grey_or_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


def downscale(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """Shrink ``(H, W[, C])`` so its longer side is at most ``max_side`` (INTER_AREA).
    Returns ``(image, scale)``; scale is 1.0 when nothing changed."""
    if not max_side or max(image.shape[:2]) <= max_side:
        return image, 1.0
    s = max_side / max(image.shape[:2])
    h, w = image.shape[:2]
    out = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return out, s


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 90, max_side: int | None = None) -> bytes:
    """Encode ``(H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA uint8 as JPEG or PNG bytes."""
    img = _to_uint8_grey_or_rgb(image)
    img, _ = downscale(img, max_side)
    if img.ndim == 3:  # OpenCV wants BGR(A)
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    if not ok:
        raise ValueError("image encoding failed")
    return buf.tobytes()


def data_uri(image: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> str:
    """``data:image/...;base64,`` URI of an image (for ``go.Image(source=...)``)."""
    mime = "jpeg" if fmt == "jpeg" else "png"
    return f"data:image/{mime};base64," + base64.b64encode(encode_image(image, fmt, quality)).decode("ascii")


def response_rgba(response: np.ndarray, colormap: int = cv2.COLORMAP_INFERNO, floor: float = 0.04) -> np.ndarray:
    """A response map ``(H, W)`` in [0, 1] → RGBA uint8 ``(H, W, 4)``: colour-mapped, alpha = response
    (values below ``floor`` fully transparent), so it can be laid over the image."""
    r = np.clip(np.nan_to_num(np.asarray(response, np.float32)), 0, 1)
    peak = float(r.max())
    scaled = r / peak if peak > 1e-6 else r
    rgb = cv2.cvtColor(cv2.applyColorMap((scaled * 255).astype(np.uint8), colormap), cv2.COLOR_BGR2RGB)
    alpha = np.where(scaled < floor, 0, np.sqrt(scaled)) * 255
    return np.dstack([rgb, alpha.astype(np.uint8)])


def difference_rgb(before: np.ndarray, after: np.ndarray, gain: float = 2.0) -> np.ndarray:
    """Signed difference ``after − before`` of two uint8 ``(H, W)`` images as RGB ``(H, W, 3)``:
    orange where the image got brighter, blue where it got darker, black where unchanged."""
    d = after.astype(np.int16) - before.astype(np.int16)
    pos = np.clip(d * gain, 0, 255).astype(np.uint8)
    neg = np.clip(-d * gain, 0, 255).astype(np.uint8)
    return np.dstack([pos, (pos.astype(np.uint16) * 6 // 10 + neg.astype(np.uint16) * 6 // 10).astype(np.uint8), neg])


def draw_box(image: np.ndarray, box, color: str = "#4fc3f7", thickness: int | None = None) -> np.ndarray:
    """Grey ``(H, W)`` uint8 → RGB with the rectangle ``[x0, y0, x1, y1]`` (pixel edges) drawn on it."""
    rgb = cv2.cvtColor(_to_uint8_grey_or_rgb(image), cv2.COLOR_GRAY2RGB) if np.ndim(image) == 2 else image.copy()
    x0, y0, x1, y1 = (int(v) for v in box)
    t = thickness or max(2, int(round(max(rgb.shape[:2]) / 250)))
    c = _hex_to_bgr(color)[::-1]
    cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), c, t)
    return rgb


def histogram_counts(image: np.ndarray) -> np.ndarray:
    """256-bin grey-level histogram of a uint8 image, as fractions ``(256,)``."""
    counts = np.bincount(np.asarray(image, np.uint8).ravel(), minlength=256).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


# ----------------------------------------------------------------------------- landmark figures
@dataclass
class PointLayer:
    """One set of landmarks to draw.

    landmarks: ``(19, 2)`` (x, y) in the drawn image's frame (NaN rows are skipped).
    confidence: ``(19,)`` or None (shown on hover). truth: draw as ground truth (crosses, no numbers).
    """

    name: str
    landmarks: np.ndarray
    color: str
    confidence: np.ndarray | None = None
    truth: bool = False


def _outline_xy(landmarks: np.ndarray) -> tuple[list, list]:
    xs, ys = [], []
    for idx in OUTLINES.values():
        for i in idx:
            xs.append(float(landmarks[i - 1, 0]))
            ys.append(float(landmarks[i - 1, 1]))
        xs.append(None)
        ys.append(None)
    return xs, ys


def _hover(layer: PointLayer) -> list[str]:
    out = []
    for k, lm in enumerate(LANDMARKS):
        conf = ""
        if layer.confidence is not None and np.isfinite(layer.confidence[k]):
            conf = f"<br>confidence {layer.confidence[k]:.2f}"
        out.append(f"<b>{lm.index} {lm.name}</b> · {layer.name}<br>{lm.description}"
                   f"<br>x {layer.landmarks[k, 0]:.1f}, y {layer.landmarks[k, 1]:.1f} px{conf}")
    return out


def landmark_figure(image: np.ndarray, layers: list[PointLayer], response: np.ndarray | None = None,
                    response_opacity: float = 0.5, response_name: str = "heatmap",
                    title: str | None = None, height: int = 640, show_numbers: bool | str = True,
                    show_outlines: bool = True, quality: int = 90, zoom_margin: float | None = None,
                    legend: bool = True) -> go.Figure:
    """The ROI image with landmark markers (number labels; name, position and confidence on hover),
    vertebra outlines (docs/architecture.md#the-19-landmarks) and an optional response map (``(H, W)`` in [0, 1]) on top.
    zoom_margin: when set, the initial view is the landmarks' bounding box plus this many pixels
    (the whole image stays reachable by zooming out / double-click). The view always includes
    landmarks that fall outside the image. legend: False hides the legend (e.g. under a title).
    show_numbers: True (every model's points), "first" (only the first layer's: no overlapping labels
    when two models agree) or False."""
    img = _to_uint8_grey_or_rgb(image)
    h, w = img.shape[:2]
    fig = go.Figure()
    fig.add_trace(go.Image(source=data_uri(img, "jpeg", quality), x0=0, y0=0, dx=1, dy=1,
                           hoverinfo="skip", name="image"))
    if response is not None and response_opacity > 0:
        fig.add_trace(go.Image(source=data_uri(response_rgba(response), "png"), x0=0, y0=0, dx=1, dy=1,
                               opacity=float(response_opacity), hoverinfo="skip", name=response_name))
    for layer in layers:
        pts = np.asarray(layer.landmarks, np.float64)
        if show_outlines and not layer.truth:
            ox, oy = _outline_xy(pts)
            fig.add_trace(go.Scatter(x=ox, y=oy, mode="lines", line=dict(color=layer.color, width=1.6),
                                     opacity=0.75, hoverinfo="skip", showlegend=False, legendgroup=layer.name))
        if layer.truth:
            marker = dict(symbol="x-thin", size=11, line=dict(width=2.4, color=layer.color), color=layer.color)
            mode = "markers"
        else:
            marker = dict(symbol="circle", size=8, color=layer.color, line=dict(width=1, color="#111"))
            numbered = show_numbers is True or (show_numbers == "first" and layer is layers[0])
            mode = "markers+text" if numbered else "markers"
        fig.add_trace(go.Scatter(
            x=pts[:, 0], y=pts[:, 1], mode=mode, marker=marker, name=layer.name, legendgroup=layer.name,
            text=[str(i + 1) for i in range(N_LANDMARKS)] if mode == "markers+text" else None,
            textposition="middle left" if len(layers) < 2 or layer is layers[0] else "middle right",
            textfont=dict(size=10, color=layer.color),
            hovertext=_hover(layer), hoverinfo="text"))
    pts_all = np.concatenate([np.asarray(lay.landmarks, np.float64) for lay in layers]) if layers else np.zeros((0, 2))
    pts_all = pts_all[np.isfinite(pts_all).all(axis=1)] if len(pts_all) else pts_all
    # The view always includes every point, also those outside the image (padded by 12 px).
    lo, hi = np.array([-0.5, -0.5]), np.array([w - 0.5, h - 0.5])
    if len(pts_all):
        lo, hi = np.minimum(lo, pts_all.min(0) - 12), np.maximum(hi, pts_all.max(0) + 12)
    x_range, y_range = [float(lo[0]), float(hi[0])], [float(hi[1]), float(lo[1])]
    if zoom_margin is not None and len(pts_all):
        x0, y0 = np.maximum(pts_all.min(0) - zoom_margin, lo)
        x1, y1 = np.minimum(pts_all.max(0) + zoom_margin, hi)
        x_range, y_range = [float(x0), float(x1)], [float(y1), float(y0)]
    fig.update_xaxes(visible=False, range=x_range, constrain="domain")
    fig.update_yaxes(visible=False, range=y_range, scaleanchor="x", constrain="domain")
    fig.update_layout(template=TEMPLATE, height=height, margin=dict(l=0, r=0, t=36 if title else 8, b=0),
                      title=dict(text=title, x=0.01, font=dict(size=14)) if title else None,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0, bgcolor="rgba(0,0,0,0)"),
                      showlegend=legend, dragmode="pan", hoverlabel=dict(namelength=-1), uirevision="keep")
    return fig


def _hex_to_bgr(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    r, g, b = (int(c[i:i + 2], 16) for i in (0, 2, 4))
    return b, g, r


def render_overlay(image: np.ndarray, layers: list[PointLayer], response: np.ndarray | None = None,
                   response_opacity: float = 0.5, scale: float = 2.0, legend: bool = True) -> np.ndarray:
    """The same picture as :func:`landmark_figure`, drawn with OpenCV → RGB uint8
    ``(round(H'·scale), round(W'·scale), 3)``, where ``H' × W'`` is the image padded (dark grey) just
    enough to show every landmark (``H × W`` when all lie inside)."""
    img = _to_uint8_grey_or_rgb(image)
    base = img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3:
        base = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    # Points outside the image: pad the canvas (dark grey) so they are drawn, not cut off.
    pad_l = pad_t = pad_r = pad_b = 0
    pts_all = np.concatenate([np.asarray(lay.landmarks, np.float64) for lay in layers]) if layers else np.zeros((0, 2))
    pts_all = pts_all[np.isfinite(pts_all).all(axis=1)]
    if len(pts_all):
        bh, bw = base.shape[:2]
        pad_l = int(np.ceil(max(0.0, -pts_all[:, 0].min() + 10)))
        pad_t = int(np.ceil(max(0.0, -pts_all[:, 1].min() + 10)))
        pad_r = int(np.ceil(max(0.0, pts_all[:, 0].max() - bw + 10)))
        pad_b = int(np.ceil(max(0.0, pts_all[:, 1].max() - bh + 10)))
        pad_l, pad_t, pad_r, pad_b = (0 if v <= 10 else v for v in (pad_l, pad_t, pad_r, pad_b))
    if pad_l or pad_t or pad_r or pad_b:
        base = cv2.copyMakeBorder(base, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_CONSTANT, value=(48, 48, 48))
        if response is not None:
            response = cv2.copyMakeBorder(np.asarray(response, np.float32), pad_t, pad_b, pad_l, pad_r,
                                          cv2.BORDER_CONSTANT, value=0)
        layers = [PointLayer(lay.name, np.asarray(lay.landmarks, np.float64) + [pad_l, pad_t], lay.color,
                             lay.confidence, lay.truth) for lay in layers]
    h, w = base.shape[:2]
    out_wh = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = cv2.resize(base, out_wh, interpolation=cv2.INTER_CUBIC).astype(np.float32)
    if response is not None and response_opacity > 0:
        rgba = cv2.resize(response_rgba(response), out_wh, interpolation=cv2.INTER_LINEAR).astype(np.float32)
        a = rgba[..., 3:4] / 255.0 * float(response_opacity)
        canvas = canvas * (1 - a) + rgba[..., [2, 1, 0]] * a
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)

    def px(p):  # pixel-centre convention: centre of pixel i maps to (i + 0.5)·s − 0.5
        return (int(round((p[0] + 0.5) * scale - 0.5)), int(round((p[1] + 0.5) * scale - 0.5)))

    radius = max(2, int(round(2.2 * scale)))
    for n, layer in enumerate(layers):
        color = _hex_to_bgr(layer.color)
        pts = np.asarray(layer.landmarks, np.float64)
        ok = np.isfinite(pts).all(axis=1)
        if not layer.truth:
            for idx in OUTLINES.values():
                seg = [i - 1 for i in idx]
                for a_, b_ in zip(seg[:-1], seg[1:]):
                    if ok[a_] and ok[b_]:
                        cv2.line(canvas, px(pts[a_]), px(pts[b_]), color, 1, cv2.LINE_AA)
        for k in range(N_LANDMARKS):
            if not ok[k]:
                continue
            c = px(pts[k])
            if layer.truth:
                d = radius + 1
                cv2.line(canvas, (c[0] - d, c[1] - d), (c[0] + d, c[1] + d), color, 2, cv2.LINE_AA)
                cv2.line(canvas, (c[0] - d, c[1] + d), (c[0] + d, c[1] - d), color, 2, cv2.LINE_AA)
            else:
                cv2.circle(canvas, c, radius, color, -1, cv2.LINE_AA)
                cv2.circle(canvas, c, radius, (20, 20, 20), 1, cv2.LINE_AA)
                label = str(k + 1)
                (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.32 * scale, 1)
                offset = -(tw + radius + 3) if n == 0 else radius + 3
                cv2.putText(canvas, label, (c[0] + offset, c[1] + th // 2), cv2.FONT_HERSHEY_SIMPLEX,
                            0.32 * scale, color, 1, cv2.LINE_AA)
    if legend and layers:
        y = 8
        box_w = 34 + max(cv2.getTextSize(lay.name, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] for lay in layers)
        box_h = 8 + len(layers) * int(12 * scale / 2 + 8)
        patch = canvas[4:4 + box_h, 4:4 + box_w].astype(np.float32)  # dark backdrop: legible on bright bone
        canvas[4:4 + box_h, 4:4 + box_w] = (patch * 0.35).astype(np.uint8)
        for layer in layers:
            y += int(12 * scale / 2 + 8)
            cv2.rectangle(canvas, (8, y - 10), (20, y + 2), _hex_to_bgr(layer.color), -1)
            cv2.putText(canvas, layer.name, (26, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (240, 240, 240), 1, cv2.LINE_AA)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)


def overlay_png(image: np.ndarray, layers: list[PointLayer], response: np.ndarray | None = None,
                response_opacity: float = 0.5, scale: float = 2.0) -> bytes:
    """:func:`render_overlay` encoded as PNG bytes (the Compare page's download)."""
    return encode_image(render_overlay(image, layers, response, response_opacity, scale), "png")


# ----------------------------------------------------------------------------- metric figures
def _base_layout(fig: go.Figure, height: int, title: str | None = None) -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      title=dict(text=title, x=0.01, font=dict(size=14)) if title else None,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def pck_curve_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], threshold: float, unit_label: str,
                     colors: dict[str, str] | None = None, height: int = 360) -> go.Figure:
    """PCK (%) against the threshold per model, with the current threshold marked.
    curves: model → (thresholds (T,), PCK fractions (T,))."""
    fig = go.Figure()
    for i, (name, (t, p)) in enumerate(curves.items()):
        color = (colors or {}).get(name, MODEL_COLORS[i % len(MODEL_COLORS)])
        fig.add_trace(go.Scatter(x=t, y=np.asarray(p) * 100, mode="lines", name=name,
                                 line=dict(color=color, width=2.5),
                                 hovertemplate=f"{name}<br>t=%{{x:.3g}} {unit_label}<br>PCK %{{y:.1f}}%<extra></extra>"))
    fig.add_vline(x=threshold, line=dict(color="#eeeeee", dash="dash", width=1.5),
                  annotation_text=f"t = {threshold:.3g} {unit_label}", annotation_position="bottom right")
    fig.update_xaxes(title=f"threshold ({unit_label})", rangemode="tozero")
    fig.update_yaxes(title="PCK (%)", range=[0, 101])
    return _base_layout(fig, height)


def per_landmark_figure(values: dict[str, np.ndarray], ylabel: str = "PCK (%)", percent: bool = True,
                        colors: dict[str, str] | None = None, height: int = 320) -> go.Figure:
    """Grouped bars per landmark (1–19, named) per model. values: model → (19,)."""
    fig = go.Figure()
    labels = [f"{i + 1} {n}" for i, n in enumerate(NAMES)]
    for i, (name, v) in enumerate(values.items()):
        color = (colors or {}).get(name, MODEL_COLORS[i % len(MODEL_COLORS)])
        y = np.asarray(v, np.float64) * (100 if percent else 1)
        fig.add_trace(go.Bar(x=labels, y=y, name=name, marker_color=color,
                             hovertemplate=f"{name}<br>%{{x}}<br>%{{y:.1f}}<extra></extra>"))
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_yaxes(title=ylabel, range=[0, 101] if percent else None)
    fig.update_xaxes(tickangle=-45)
    return _base_layout(fig, height)


def histogram_figure(images: dict[str, np.ndarray], height: int = 220,
                     colors: tuple[str, ...] = ("#90a4ae", "#4fc3f7")) -> go.Figure:
    """Grey-level histograms (fraction of pixels per level, 256 bins) of several uint8 images."""
    fig = go.Figure()
    x = np.arange(256)
    for i, (name, img) in enumerate(images.items()):
        fig.add_trace(go.Scatter(x=x, y=histogram_counts(img) * 100, mode="lines", name=name,
                                 line=dict(color=colors[i % len(colors)], width=1.5, shape="hvh"),
                                 fill="tozeroy", opacity=0.7, hoverinfo="skip"))
    fig.update_xaxes(title="grey level", range=[0, 255])
    fig.update_yaxes(title="% of pixels")
    return _base_layout(fig, height)


def histogram_image(images: dict[str, np.ndarray], size: tuple[int, int] = (760, 170),
                    colors: tuple[str, ...] = ("#90a4ae", "#4fc3f7"), background: str = "#0e1117") -> np.ndarray:
    """Grey-level histograms of uint8 images drawn with OpenCV → RGB ``(h, w, 3)`` (size is (w, h)).

    A cheap picture for pages that re-render on every slider move (a plotly chart costs the browser
    tens of milliseconds per update; an image costs almost nothing). Curves are scaled to the
    99th-percentile bin so a spike at 0 or 255 does not flatten the rest."""
    w, h = size
    pad_l, pad_b, pad_t = 8, 18, 22
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas[:] = _hex_to_bgr(background)
    hists = {k: histogram_counts(v) for k, v in images.items()}
    top = max(float(np.percentile(np.concatenate(list(hists.values())), 99.5)), 1e-9) * 1.1
    plot_w, plot_h = w - 2 * pad_l, h - pad_b - pad_t
    xs = pad_l + np.arange(256) * plot_w / 255.0
    for i, (name, hist) in enumerate(hists.items()):
        ys = pad_t + plot_h - np.clip(hist / top, 0, 1) * plot_h
        poly = np.concatenate([[[pad_l, pad_t + plot_h]], np.stack([xs, ys], 1), [[pad_l + plot_w, pad_t + plot_h]]])
        layer = canvas.copy()
        color = _hex_to_bgr(colors[i % len(colors)])
        cv2.fillPoly(layer, [np.round(poly).astype(np.int32)], color, cv2.LINE_AA)
        canvas = cv2.addWeighted(layer, 0.35, canvas, 0.65, 0)
        cv2.polylines(canvas, [np.round(np.stack([xs, ys], 1)).astype(np.int32)], False, color, 1, cv2.LINE_AA)
        cv2.rectangle(canvas, (pad_l + 4 + 90 * i, 6), (pad_l + 14 + 90 * i, 16), color, -1)
        cv2.putText(canvas, name, (pad_l + 20 + 90 * i, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (230, 230, 230), 1,
                    cv2.LINE_AA)
    cv2.line(canvas, (pad_l, pad_t + plot_h), (pad_l + plot_w, pad_t + plot_h), (90, 90, 90), 1)
    for level in (0, 64, 128, 192, 255):
        x = int(round(pad_l + level * plot_w / 255))
        cv2.putText(canvas, str(level), (min(x, w - 26), h - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (150, 150, 150), 1,
                    cv2.LINE_AA)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)


def training_curves_figure(metrics: pd.DataFrame, height: int = 320) -> go.Figure:
    """Loss curves (left) and validation landmark error in ROI px (right) from a run's metrics.csv."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "validation MRE (ROI px)"),
                        horizontal_spacing=0.1)
    if metrics is not None and len(metrics) and "epoch" in metrics:
        for col, color in (("loss", MODEL_COLORS[0]), ("val_loss", MODEL_COLORS[1])):
            if col in metrics:
                fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics[col], name=col, mode="lines+markers",
                                         line=dict(color=color)), row=1, col=1)
        if "val_mre_px" in metrics:
            fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["val_mre_px"], name="val MRE px",
                                     mode="lines+markers", line=dict(color=MODEL_COLORS[2])), row=1, col=2)
    n_epochs = int(metrics["epoch"].max()) if metrics is not None and len(metrics) and "epoch" in metrics else 1
    # whole epochs only (no 1.5), about eight ticks at most
    fig.update_xaxes(title="epoch", tickmode="linear", tick0=1, dtick=max(1, -(-n_epochs // 8)))
    _base_layout(fig, height)
    # legend under the plots: above them it covers the subplot titles
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.28, x=0), margin=dict(b=70, t=30))
    return fig


# ----------------------------------------------------------------------------- tables and reports
def error_summary(pred: np.ndarray, truth: np.ndarray, spacing_mm: float | None) -> dict:
    """MRE (px, mm), SD, share within 2 mm, and missing count for one image's (19, 2) prediction."""
    e = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(truth, np.float64), axis=1)
    finite = np.isfinite(e)
    out = {"mre_px": float(e[finite].mean()) if finite.any() else None,
           "sd_px": float(e[finite].std()) if finite.any() else None,
           "n_missing": int((~finite).sum())}
    if spacing_mm:
        out["mre_mm"] = None if out["mre_px"] is None else out["mre_px"] * spacing_mm
        out["within_2mm"] = float((np.where(finite, e, np.inf) * spacing_mm <= 2.0).mean())
    return out


def json_report(image: dict, models: dict[str, dict], truth: np.ndarray | None, spacing_mm: float | None,
                frame: str = "roi") -> dict:
    """A JSON-serialisable report of one comparison.

    image: description (source, name, size, roi …). models: name → {"landmarks": (19, 2),
    "confidence": (19,), "stage": StageResult.to_dict() or None, "ms": float, "manifest": {...}}.
    NaN/inf become null; floats are rounded to 4 decimals."""
    from cvs_core.registry import to_jsonable

    return to_jsonable({
        "schema": "cvs-compare-report/1",
        "frame": frame,
        "spacing_mm_per_px": spacing_mm,
        "landmark_names": list(NAMES),
        "image": image,
        "truth": truth,
        "models": models,
    }, digits=4)


def rendered_mask_dice(pred: np.ndarray, true: np.ndarray, roi_size=(600, 250), mask_size=(256, 256)) -> dict:
    """Dice and the study's Dice loss on the study's 256×256 square masks rendered from predicted and
    true ROI landmarks ``(N, 19, 2)`` (:class:`~cvs_core.codecs.MaskCodec`; missing predictions draw
    nothing). The same rendering as ``evaluate.legacy_unet_pck_from_landmarks``, so any model —
    regression ones included — gets a Dice comparable with the study's U-Net loss. Returns
    ``{"dice": thresholded Dice, "dice_loss": 1 − soft Dice}``."""
    from cvs_core.codecs import render_study_masks
    from cvs_core.metrics import dice, dice_loss_value

    pm = render_study_masks(pred, roi_size, mask_size)
    tm = render_study_masks(true, roi_size, mask_size)
    return {"dice": dice(pm, tm), "dice_loss": float(np.mean([dice_loss_value(a, b) for a, b in zip(pm, tm)]))}


STUDY_TABLE = pd.DataFrame([
    {"model": "U-Net (study)", "PCK reported": "85%", "loss / error": "Dice loss 0.25",
     "PCK definition": "blob within 5 px of any true blob (256×256 masks)"},
    {"model": "InceptionResNetV2 (study)", "PCK reported": "75%", "loss / error": "MAE 15.2",
     "PCK definition": "same landmark < 40 ROI px (≈10 mm)"},
])


def headline_mre_px(metrics: dict) -> float | None:
    """The one MRE (ROI px) to show for a model: held-out phantoms when measured, else the best
    validation MRE recorded while training."""
    metrics = metrics or {}
    held = metrics.get("heldout_phantoms") or {}
    if held.get("mre_px") is not None:
        return float(held["mre_px"])
    best = metrics.get("best_val_mre_px", (metrics.get("training_validation") or {}).get("best_val_mre_px"))
    return None if best is None else float(best)


def manifest_metrics_table(metrics: dict) -> pd.DataFrame:
    """One row per evaluation stored in a manifest's ``metrics`` (entries with ``mre_px``):
    dataset, images, MRE px / mm, SDR@2 mm, PCK, stage agreement and the note saying what the data was."""
    rows = []
    for key, m in (metrics or {}).items():
        if not isinstance(m, dict) or m.get("mre_px") is None:
            continue
        stage = m.get("stage_agreement") or {}
        agree = stage.get("pred_vs_label", stage.get("pred_vs_true_landmarks")) if isinstance(stage, dict) else None
        rows.append({"evaluation": key.replace("_", " "), "images": m.get("n_images"),
                     "MRE px": m.get("mre_px"), "MRE mm": m.get("mre_mm"),
                     "SDR 2 mm": (m.get("sdr") or {}).get("2.0"), "stage agreement": agree,
                     "note": m.get("note", "")})
    return pd.DataFrame(rows)
