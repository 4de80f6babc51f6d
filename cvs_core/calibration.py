"""Calibrating and measuring CVM staging against expert stages (issue 10).

Two ways to turn the seven staging measurements (:data:`cvs_core.staging.FEATURES`: concavity
depth/chord of C2, C3, C4; AH/PH and H/W of C3 and C4) into a CS stage are fitted here:

* **rules** — the McNamara & Franchi CS table of :mod:`cvs_core.staging` with its thresholds
  fitted: per-border concavity cut-offs (C2, C3, C4), the trapezoid AH/PH cut-off and the square
  H/W range, by coordinate search over fixed grids (start: the textbook values; each sweep sets one
  threshold at a time to the middle of the grid values that maximise the objective, default
  "exact + within-one agreement" = exact agreement minus the share of misses by two or more
  stages; up to 6 sweeps). Interpretable: the result is still the CS table.
* **learned** — a proportional-odds ordinal logistic regression (:class:`~cvs_core.staging.OrdinalModel`)
  on the standardised measurements, fitted by L-BFGS with a small L2 penalty on the weights:
  one weight per measurement and five cut-points.

Agreement is measured with stratified k-fold cross-validation (:func:`stratified_folds`): every
fitted number is fitted inside each fold on the training part only, the held-out part is staged
with it, and the pooled held-out predictions give exact and within-one agreement, Cohen's
quadratic-weighted kappa and the 6×6 confusion matrix (rows = expert stage, columns = predicted).
The config that ships is then fitted once on all cases; its stored ``agreement`` is the
cross-validated one (an estimate for unseen cases), never the agreement on the cases it was fitted on.

Arrays: landmarks ``(N, 19, 2)`` (x, y) pixels; features ``X (N, 7)`` in ``FEATURES`` order;
stages ``(N,)`` int 1..6.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cvs_core import staging
from cvs_core.staging import FEATURES, STAGE_TABLE, OrdinalModel, StagingConfig

STAGES = tuple(STAGE_TABLE)  # 1..6
OBJECTIVES = ("exact", "exact+within1", "kappa")
RULE_PARAMS = ("concavity_ratio_c2", "concavity_ratio_c3", "concavity_ratio_c4", "trapezoid_ratio",
               "square_low", "square_high")
GRIDS = {
    "concavity_ratio_c2": np.round(np.arange(0.005, 0.1201, 0.005), 4),
    "concavity_ratio_c3": np.round(np.arange(0.005, 0.1201, 0.005), 4),
    "concavity_ratio_c4": np.round(np.arange(0.005, 0.1201, 0.005), 4),
    "trapezoid_ratio": np.round(np.arange(0.60, 1.0001, 0.01), 4),
    "square_low": np.round(np.arange(0.70, 1.0001, 0.01), 4),
    "square_high": np.round(np.arange(0.85, 1.2001, 0.01), 4),
}


@dataclass
class CalibrationOptions:
    """method : "rules" (fit the CS-table thresholds) or "learned" (ordinal logistic model).
    folds : k of the stratified k-fold CV; seed : fold assignment seed.
    objective : what the threshold search maximises ("exact", "exact+within1", "kappa").
    l2 : L2 penalty on the standardised weights of the learned model.
    sweeps : maximum coordinate-search sweeps."""

    method: str = "rules"
    folds: int = 5
    seed: int = 0
    objective: str = "exact+within1"
    l2: float = 1.0
    sweeps: int = 6

    def __post_init__(self):
        if self.method not in ("rules", "learned"):
            raise ValueError(f"method must be 'rules' or 'learned', got {self.method!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not (isinstance(self.folds, int) and self.folds >= 2):
            raise ValueError(f"folds must be an integer >= 2, got {self.folds!r}")


# ----------------------------------------------------------------------------- data
def parse_stage(value) -> int | None:
    """'cs3', 'CS3', 3, '3', 3.0 → 3; anything else (or outside 1..6) → None."""
    text = str(value).strip().upper().removeprefix("CS").strip()
    try:
        s = float(text)
    except ValueError:
        return None
    return int(s) if s.is_integer() and 1 <= s <= 6 else None


def truth_stages(extra, column: str, source: str = "CSV") -> np.ndarray:
    """The expert stages of an annotation set's extra columns → (N,) int 1..6.
    Raises ValueError listing every row whose stage is missing or not CS1..CS6."""
    if column not in extra.columns:
        have = ", ".join(map(str, extra.columns)) or "none"
        raise ValueError(f"{source}: no column {column!r} with the expert stages (extra columns: {have})")
    out, bad = [], []
    for i, v in enumerate(extra[column].tolist()):
        s = parse_stage(v)
        if s is None:
            bad.append(f"row {i + 1}: {column} {v!r} is not a stage CS1..CS6")
        out.append(s or 0)
    if bad:
        raise ValueError(f"{source}: {len(bad)} row(s) without a usable expert stage:\n  - "
                         + "\n  - ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""))
    return np.asarray(out, dtype=np.int64)


def feature_matrix(landmarks, body_points: str = "corners", names=None) -> np.ndarray:
    """(N, 19, 2) landmarks → (N, 7) measurements in ``FEATURES`` order.
    Raises ValueError naming the rows (by name when given) that cannot be measured."""
    lms = np.asarray(landmarks, dtype=np.float64)
    if lms.ndim != 3 or lms.shape[1:] != (19, 2):
        raise ValueError(f"landmarks must be shaped (N, 19, 2), got {lms.shape}")
    X = np.zeros((len(lms), len(FEATURES)))
    bad = []
    for i, lm in enumerate(lms):
        try:
            X[i] = staging.features_of(staging.measure(lm, None, body_points))
        except ValueError as exc:
            bad.append(f"row {i + 1}{f' ({names[i]!r})' if names is not None else ''}: {exc}")
    if bad:
        raise ValueError(f"{len(bad)} landmark set(s) cannot be measured:\n  - " + "\n  - ".join(bad[:20]))
    return X


def stratified_folds(y, k: int = 5, seed: int = 0) -> np.ndarray:
    """(N,) fold index 0..k-1: each stage's cases shuffled (seeded) and dealt round-robin, so every
    fold holds the same share of each stage (±1 case)."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(y), dtype=np.int64)
    offset = 0
    for s in np.unique(y):
        idx = np.flatnonzero(y == s)
        rng.shuffle(idx)
        folds[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return folds


# ----------------------------------------------------------------------------- agreement
def confusion_matrix(truth, pred) -> np.ndarray:
    """(6, 6) counts: rows expert stage CS1..CS6, columns predicted CS1..CS6."""
    m = np.zeros((6, 6), dtype=np.int64)
    np.add.at(m, (np.asarray(truth) - 1, np.asarray(pred) - 1), 1)
    return m


def quadratic_weighted_kappa(truth, pred) -> float:
    """Cohen's kappa with quadratic weights (i − j)² / 25 over the six stages."""
    o = confusion_matrix(truth, pred).astype(np.float64)
    n = o.sum()
    if n == 0:
        return float("nan")
    i = np.arange(6)
    w = (i[:, None] - i[None, :]) ** 2 / 25.0
    e = np.outer(o.sum(axis=1), o.sum(axis=0)) / n
    denom = (w * e).sum()
    return float(1.0 - (w * o).sum() / denom) if denom > 0 else float("nan")


def agreement(truth, pred, method: str = "") -> dict:
    """Exact / within-one agreement, quadratic-weighted kappa, confusion and per-stage numbers.

    per_stage["CSk"]: n_called (cases predicted CSk), exact (share of those the expert also
    called CSk), within_one (share within one stage), n_expert (expert CSk cases), recall
    (share of those predicted CSk)."""
    truth = np.asarray(truth, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if truth.shape != pred.shape or truth.ndim != 1:
        raise ValueError(f"truth and pred must be equal-length 1-D arrays, got {truth.shape}, {pred.shape}")
    per_stage = {}
    for s in STAGES:
        called = pred == s
        expert = truth == s
        per_stage[f"CS{s}"] = {
            "n_called": int(called.sum()),
            "exact": float(np.mean(truth[called] == s)) if called.any() else None,
            "within_one": float(np.mean(np.abs(truth[called] - s) <= 1)) if called.any() else None,
            "n_expert": int(expert.sum()),
            "recall": float(np.mean(pred[expert] == s)) if expert.any() else None,
        }
    out = {
        "n": int(len(truth)),
        "exact": float(np.mean(pred == truth)) if len(truth) else None,
        "within_one": float(np.mean(np.abs(pred - truth) <= 1)) if len(truth) else None,
        "kappa_qw": quadratic_weighted_kappa(truth, pred),
        "confusion": confusion_matrix(truth, pred).tolist(),
        "per_stage": per_stage,
        "method": method,
    }
    out["summary"] = (f"exact {out['exact']:.1%}, within one {out['within_one']:.1%}, "
                      f"quadratic-weighted kappa {out['kappa_qw']:.3f} (n={out['n']}"
                      + (f"; {method}" if method else "") + ")")
    return out


def format_agreement(rep: dict) -> str:
    """Text block: the summary line and the confusion matrix."""
    lines = [rep["summary"], "confusion (rows expert, columns predicted):",
             "        " + " ".join(f"{'CS' + str(s):>5}" for s in STAGES)]
    for s, row in zip(STAGES, rep["confusion"]):
        lines.append(f"  CS{s}  " + " ".join(f"{v:>5d}" for v in row))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- vectorised rules
_T, _H, _S, _V = range(4)
_SHAPE_CODE = {staging.TRAPEZOID: _T, staging.HORIZONTAL: _H, staging.SQUARE: _S, staging.VERTICAL: _V}


def _shapes(ah_ph, h_w, tr, lo, hi):
    s = np.where(h_w > hi, _V, np.where(h_w >= lo, _S, _H))
    return np.where(ah_ph < tr, _T, s)


def _shape_dist(ah_ph, h_w, target, tr, lo, hi):
    if target == _T:
        return np.maximum(0.0, ah_ph - tr) / tr
    d = np.maximum(0.0, tr - ah_ph) / tr
    if target == _H:
        return d + np.maximum(0.0, h_w - lo) / lo
    if target == _S:
        return d + np.maximum(0.0, lo - h_w) / lo + np.maximum(0.0, h_w - hi) / hi
    return d + np.maximum(0.0, hi - h_w) / hi


def rule_stages(X, config: StagingConfig) -> np.ndarray:
    """The CS-table stage (exact row, else nearest as in :func:`staging.stage_landmarks`) of every
    row of X (N, 7), vectorised; ratio mode only. Equal to ``stage_landmarks(...).stage`` of the
    rules (tested)."""
    if config.concavity_mode != "ratio":
        raise ValueError("vectorised staging supports concavity_mode='ratio' only")
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    cuts = [config.concavity_cut(v) for v in staging.VERTEBRAE]
    flags = [X[:, i] >= cuts[i] for i in range(3)]
    tr, lo, hi = config.trapezoid_ratio, config.square_low, config.square_high
    shp = {"C3": _shapes(X[:, 3], X[:, 5], tr, lo, hi), "C4": _shapes(X[:, 4], X[:, 6], tr, lo, hi)}
    cols = {"C3": (3, 5), "C4": (4, 6)}
    n_bad = np.zeros((6, n))
    dist = np.zeros((6, n))
    for j, s in enumerate(STAGES):
        want, options = STAGE_TABLE[s]
        for i in range(3):
            bad = flags[i] != want[i]
            n_bad[j] += bad
            dist[j] += np.where(bad, np.abs(X[:, i] - cuts[i]) / cuts[i], 0.0)
        best_n = best_d = None
        for allowed3, allowed4 in options:
            o_n = np.zeros(n)
            o_d = np.zeros(n)
            for v, allowed in (("C3", allowed3), ("C4", allowed4)):
                codes = [_SHAPE_CODE[a] for a in allowed]
                bad = ~np.isin(shp[v], codes)
                a_col, h_col = cols[v]
                o_n += bad
                o_d += np.where(bad, np.min([_shape_dist(X[:, a_col], X[:, h_col], c, tr, lo, hi)
                                             for c in codes], axis=0), 0.0)
            if best_n is None:
                best_n, best_d = o_n, o_d
            else:
                better = (o_n < best_n) | ((o_n == best_n) & (o_d < best_d))
                best_n, best_d = np.where(better, o_n, best_n), np.where(better, o_d, best_d)
        n_bad[j] += best_n
        dist[j] += best_d
    order = np.lexsort((np.broadcast_to(np.arange(6)[:, None], (6, n)), dist, n_bad), axis=0)
    return order[0] + 1


def predict_stages(X, config: StagingConfig) -> np.ndarray:
    """(N, 7) measurements → (N,) stages with the config's method."""
    if config.method == "learned":
        return config.learned.predict(X)
    return rule_stages(X, config)


# ----------------------------------------------------------------------------- fitting
def _score(objective: str, truth, pred) -> float:
    if objective == "exact":
        return float(np.mean(pred == truth))
    if objective == "kappa":
        return quadratic_weighted_kappa(truth, pred)
    return float(np.mean(pred == truth) + np.mean(np.abs(pred - truth) <= 1))


def fit_thresholds(X, y, objective: str = "exact+within1", start: StagingConfig | None = None,
                   sweeps: int = 6, body_points: str = "corners") -> StagingConfig:
    """Coordinate search of the rule thresholds (module docstring) → a rules config.
    X (N, 7), y (N,) stages 1..6."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    base = start or StagingConfig()
    p = {k: getattr(base, k) if getattr(base, k) is not None else base.concavity_ratio for k in RULE_PARAMS}

    def make(q):
        return replace(base, **q, body_points=body_points, method="rules", learned=None)

    best = _score(objective, y, rule_stages(X, make(p)))
    for _ in range(sweeps):
        improved = False
        for key in RULE_PARAMS:
            values, scores = [], []
            for v in GRIDS[key]:
                q = dict(p, **{key: float(v)})
                if q["square_low"] > q["square_high"]:
                    continue
                values.append(float(v))
                scores.append(_score(objective, y, rule_stages(X, make(q))))
            scores = np.asarray(scores)
            top = np.flatnonzero(scores >= scores.max() - 1e-12)
            choice = values[top[len(top) // 2]]  # the middle of the best plateau
            if scores.max() > best + 1e-12:
                improved = True
            if scores.max() >= best - 1e-12:
                p[key] = choice
                best = float(scores.max())
        if not improved:
            break
    return make(p)


def fit_ordinal(X, y, l2: float = 1.0) -> OrdinalModel:
    """Proportional-odds ordinal logistic regression (L-BFGS, L2 on the standardised weights)."""
    from scipy.optimize import minimize

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    Z = (X - mean) / scale
    d = Z.shape[1]
    rows = np.arange(len(Z))

    def unpack(theta):
        inc = np.exp(theta[d + 1:])
        return theta[:d], np.concatenate([[theta[d]], theta[d] + np.cumsum(inc)])

    def nll(theta):
        w, cuts = unpack(theta)
        eta = Z @ w
        cdf = 1.0 / (1.0 + np.exp(-(cuts[None, :] - eta[:, None])))
        cdf = np.hstack([np.zeros((len(Z), 1)), cdf, np.ones((len(Z), 1))])
        p = cdf[rows, y] - cdf[rows, y - 1]
        return -np.sum(np.log(np.clip(p, 1e-12, None))) + 0.5 * l2 * np.sum(w ** 2)

    theta0 = np.concatenate([np.zeros(d), [-2.0], np.zeros(4)])
    res = minimize(nll, theta0, method="L-BFGS-B")
    w, cuts = unpack(res.x)
    return OrdinalModel(features=list(FEATURES), mean=mean.tolist(), scale=scale.tolist(),
                        coef=w.tolist(), cutpoints=cuts.tolist())


def fit(X, y, options: CalibrationOptions) -> StagingConfig:
    """Fit one config on (X, y) with the options' method."""
    if options.method == "learned":
        model = fit_ordinal(X, y, options.l2)
        return StagingConfig(body_points="corners", method="learned", learned=model, name="learned")
    return replace(fit_thresholds(X, y, options.objective, sweeps=options.sweeps), name="calibrated")


def cross_validate(X, y, options: CalibrationOptions, fixed: StagingConfig | None = None) -> np.ndarray:
    """Held-out predictions (N,) of stratified k-fold CV: fitted inside every fold, or the
    ``fixed`` config (nothing fitted, e.g. the textbook thresholds) applied to each fold."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    folds = stratified_folds(y, options.folds, options.seed)
    pred = np.zeros(len(y), dtype=np.int64)
    for k in range(options.folds):
        test = folds == k
        cfg = fixed if fixed is not None else fit(X[~test], y[~test], options)
        pred[test] = predict_stages(X[test], cfg)
    return pred


def calibrate(landmarks, stages, options: CalibrationOptions | None = None, source: str = "",
              command: str = "") -> tuple[StagingConfig, dict]:
    """Cross-validate and fit a staging config on expert-staged landmark sets.

    landmarks (N, 19, 2) (13-landmark sets allowed), stages (N,) 1..6.
    Returns ``(config fitted on all cases with provenance and the CV agreement, report)`` where
    report = {"cv": agreement of the held-out predictions, "resubstitution": agreement on the
    cases it was fitted on (optimistic, for reference), "textbook_cv": the textbook thresholds
    on the same folds, "options": …}.
    """
    options = options or CalibrationOptions()
    y = np.asarray(stages, dtype=np.int64)
    if len(y) != len(landmarks):
        raise ValueError(f"{len(y)} stages for {len(landmarks)} landmark sets")
    counts = np.bincount(y, minlength=7)[1:]
    if (counts < options.folds).any():
        few = [f"CS{s}: {c}" for s, c in zip(STAGES, counts) if c < options.folds]
        raise ValueError(f"stratified {options.folds}-fold CV needs at least {options.folds} cases of every "
                         f"stage; have {', '.join(few)}")
    X = feature_matrix(landmarks, "corners")
    cv_label = f"stratified {options.folds}-fold CV, seed {options.seed}, fitted inside each fold"
    cv = agreement(y, cross_validate(X, y, options), cv_label)
    tb = StagingConfig(body_points="corners")
    textbook_cv = agreement(y, cross_validate(X, y, options, fixed=tb), "textbook thresholds, nothing fitted")
    config = fit(X, y, options)
    if options.method == "learned":  # the rule thresholds that explain a learned stage: calibrated too
        rules = fit_thresholds(X, y, options.objective, sweeps=options.sweeps)
        config = replace(rules, method="learned", learned=config.learned, name="learned")
    resub = agreement(y, predict_stages(X, config), "resubstitution: fitted and scored on the same cases (optimistic)")
    config.provenance = {
        "fitted_on": source or f"{len(y)} expert-staged landmark sets",
        "n_cases": int(len(y)),
        "stage_counts": {f"CS{s}": int(c) for s, c in zip(STAGES, counts)},
        "method": ("ordinal logistic regression (proportional odds), L2 " + f"{options.l2:g}"
                   if options.method == "learned" else
                   f"coordinate search of the CS-table thresholds maximising {options.objective}"),
        "measurements": list(FEATURES) + ["H and W from the corners (body_points='corners')"],
        "validation": cv_label,
        "date": _dt.date.today().isoformat(),
        "command": command,
    }
    config.agreement = cv
    report = {"cv": cv, "resubstitution": resub, "textbook_cv": textbook_cv,
              "options": {"method": options.method, "folds": options.folds, "seed": options.seed,
                          "objective": options.objective, "l2": options.l2}}
    return config, report


# ----------------------------------------------------------------------------- reports
def confusion_figure(rep: dict, title: str = "CVM stage agreement"):
    """A plotly heatmap of the confusion matrix (rows expert, columns predicted)."""
    import plotly.graph_objects as go

    labels = [f"CS{s}" for s in STAGES]
    z = np.asarray(rep["confusion"])
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, colorscale="Blues", text=z, texttemplate="%{text}",
                               hovertemplate="expert %{y}, predicted %{x}: %{z}<extra></extra>"))
    fig.update_layout(title=f"{title}<br><sup>{rep['summary']}</sup>", xaxis_title="predicted stage",
                      yaxis_title="expert stage", yaxis_autorange="reversed", width=620, height=560)
    return fig


def write_confusion_png(rep: dict, path, title: str = "CVM stage agreement") -> Path:
    """The confusion matrix as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.asarray(rep["confusion"])
    fig, ax = plt.subplots(figsize=(6.2, 5.6), dpi=110)
    ax.imshow(z, cmap="Blues")
    labels = [f"CS{s}" for s in STAGES]
    ax.set_xticks(range(6), labels)
    ax.set_yticks(range(6), labels)
    ax.set_xlabel("predicted stage")
    ax.set_ylabel("expert stage")
    top = z.max() if z.size else 0
    for i in range(6):
        for j in range(6):
            ax.text(j, i, str(z[i, j]), ha="center", va="center",
                    color="white" if top and z[i, j] > 0.6 * top else "black")
    ax.set_title(f"{title}\n" + rep['summary'].replace(' (n=', '\n(n='), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_agreement_report(rep: dict, prefix, title: str = "CVM stage agreement") -> list[Path]:
    """Write ``{prefix}.json``, ``{prefix}_confusion.html`` (plotly) and ``{prefix}_confusion.png``."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    js = prefix.with_name(prefix.name + ".json")
    js.write_text(json.dumps(staging._jsonable(rep), indent=1) + "\n", encoding="utf-8")
    html = prefix.with_name(prefix.name + "_confusion.html")
    confusion_figure(rep, title).write_html(html, include_plotlyjs=True)  # self-contained, no CDN
    png = write_confusion_png(rep, prefix.with_name(prefix.name + "_confusion.png"), title)
    return [js, html, png]


def load_labelled(csv, truth_column: str = "cs_stage"):
    """A study CSV with an expert-stage column (13-landmark rows allowed) →
    ``(names, landmarks (N, 19, 2), stages (N,))``."""
    from cvs_core.annotations import read_annotations

    aset = read_annotations(csv, optional_landmarks=staging.DERIVED_FROM_CORNERS)
    return list(aset.names), aset.landmarks, truth_stages(aset.extra, truth_column, str(csv))


def calibrate_command(args) -> int:
    """``cvs stage-calibrate --csv labelled.csv --out staging.json [--method rules|learned]``."""
    names, lms, y = load_labelled(args.csv, args.truth_column)
    options = CalibrationOptions(method=args.method, folds=args.folds, seed=args.seed, objective=args.objective)
    command = (f"cvs stage-calibrate --csv {Path(args.csv).name} --out {Path(args.out).name} --method {args.method} "
               f"--folds {args.folds} --seed {args.seed} --objective {args.objective}")
    config, report = calibrate(lms, y, options, source=f"{Path(args.csv).name} ({len(y)} cases)", command=command)
    if getattr(args, "name", None):
        config.name = args.name
    out = staging.save_config(config, args.out)
    prefix = Path(args.out).with_suffix("")
    paths = write_agreement_report(report["cv"], prefix.with_name(prefix.name + "_cv"),
                                   f"{config.name}: cross-validated agreement with experts")
    (prefix.with_name(prefix.name + "_report.json")).write_text(
        json.dumps(staging._jsonable(report), indent=1) + "\n", encoding="utf-8")
    print(f"calibrated {args.method} staging on {len(y)} expert-staged cases from {args.csv}")
    print(config.thresholds_text() if args.method == "rules" else "learned ordinal model: "
          + ", ".join(f"{f} {w:+.2f}" for f, w in zip(FEATURES, config.learned.coef)))
    print("cross-validated (held-out folds):")
    print(format_agreement(report["cv"]))
    print("textbook thresholds on the same cases: " + report["textbook_cv"]["summary"])
    print("on the cases it was fitted on (optimistic): " + report["resubstitution"]["summary"])
    print(f"wrote {out} and {', '.join(str(p) for p in paths)}")
    return 0
