"""CVM stage (CS1–CS6) from the 19 cervical landmarks (McNamara & Franchi 2018;
docs/architecture.md#cvm-staging).

Geometry
--------
Every vertebra is measured in its own frame: the x axis runs along its inferior chord (posterior
end → anterior end) and the "up" axis is the chord's normal pointing *towards the vertebral body*.
All measurements are ratios or distances in that frame, so the stage does not change when the
whole landmark set is rotated, translated or scaled (pixel/mm distances scale, their ratios do
not). "Towards the body" is decided from the landmarks themselves — for C3/C4 the side where their
superior points lie, for C2 the side away from C3 — so a mirrored image (patient facing left)
stages the same too. In an upright image with y growing downwards this is simply "above".

* **Concavity** of an inferior border (C2 1-2-3, C3 9-10-11, C4 17-18-19): depth = signed distance
  of the middle point from the chord, positive when it lies above the chord (towards the body:
  a concave border); ratio = depth / chord length. Present when ratio ≥ ``concavity_ratio``
  (0.07) or, in ``concavity_mode="absolute"``, depth ≥ ``concavity_abs_mm`` (1.0 mm; needs the
  pixel spacing).
* **Body** of C3 / C4: AH, PH, H = signed distances of the superior anterior corner (6 / 14),
  superior posterior corner (4 / 12) and superior middle point (5 / 13) from the inferior chord's
  line (positive towards the body; equal to the plain distance for any real vertebra);
  W = |mp − ma| (7–8 / 15–16).
* **Shape class**, in this order of precedence:
  1. "trapezoid" if AH / PH < ``trapezoid_ratio`` (0.85) — the superior border slopes down from
     posterior to anterior;
  2. otherwise by H / W: "rectangular vertical" if > ``square_high`` (1.1), "square" if within
     [``square_low``, ``square_high``] (inclusive), "rectangular horizontal" if < ``square_low``.
  Trapezoid takes precedence over every H/W class, not only over horizontal (the definition:
  horizontal means "< 0.9 and not trapezoid"). A tall body can be wedge-shaped too (AH/PH < 0.85 with
  H/W ≥ 0.9); the slope of the superior border is the immaturity sign the CS table separates on,
  and the H/W classes describe bodies with a level superior border, so such a body is classed
  trapezoid and the confidence note flags it ("wedge-shaped but tall").

Stage table (docs/architecture.md#cvm-staging): concavity C2/C3/C4 and body shapes of C3 and C4 →

=====  ===============  =============================================================
CS1    no / no / no     both trapezoid
CS2    yes / no / no    both trapezoid
CS3    yes / yes / no   each trapezoid or rectangular horizontal
CS4    yes / yes / yes  both rectangular horizontal
CS5    yes / yes / yes  at least one square, the other square or rect. horizontal
CS6    yes / yes / yes  at least one rect. vertical, the other vertical or square
=====  ===============  =============================================================

The rows are mutually exclusive, so at most one fits. When none fits, the **nearest stage** is the
one with the fewest mismatched criteria (5 per stage: three concavity flags and the two body
shapes; for CS5/CS6 the better of the two "which one is square / vertical" assignments), ties
broken by the smaller summed distance of the measured values from the thresholds that would have
to move (relative: |ratio − 0.07| / 0.07 for a concavity flag; for a shape, how far AH/PH and H/W
lie outside the wanted class, each divided by its cut-off), then by the lower stage. The failed
rules of that stage are named in ``failed_rule``.

13-landmark schemes
-------------------
Most CVM datasets (iCVM/LM-PCVMNet, CVM_assessment, cvmt) mark 13 points: ours 1, 2, 3, 4, 6, 9,
10, 11, 12, 14, 17, 18, 19. The six others (5, 7, 8 of C3 and 13, 15, 16 of C4) are then derived
from the corners (:data:`DERIVED_FROM_CORNERS`): the superior middle point as the mid-point of the
superior corners (so H = (AH + PH) / 2) and the mid-border points as the mid-points of the
posterior / anterior corners (so W = distance between the mid-points of the posterior and anterior
borders). The result says so (``derived``). Any other missing landmark is an error naming it.
A calibrated config fitted on 13-landmark data sets ``body_points="corners"`` so that 19-landmark
sets are measured the same way as the data it was fitted on.

Configs
-------
:class:`StagingConfig` holds the thresholds (per-border concavity cut-offs optional), the method
("rules", or "learned": a proportional-odds ordinal logistic model on the same seven measurements,
:class:`OrdinalModel`), its provenance and its cross-validated agreement with experts. Shipped
configs (``cvs_core/data/staging_*.json``): ``"default"`` (rule thresholds calibrated on the 720
iCVM-900 training cases), ``"learned"`` and ``"textbook"`` (McNamara & Franchi thresholds).
``stage_landmarks(..., config=None)`` uses the shipped default; see :func:`load_config`.

Never use this module to label phantoms: a phantom's stage is the stage it was generated for
(docs/architecture.md#phantoms), otherwise the stage-agreement check would be circular.
"""
from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from cvs_core.landmarks import C2_INFERIOR, N_LANDMARKS, VERTEBRA_POINTS

CAVEAT = ("An estimate from landmark geometry; read it with the patient's age and sex — human raters "
          "agree on the CS stage less than half the time.")

GROWTH = {
    1: "prepubertal; mandibular growth peak ≈ 2 years away",
    2: "prepubertal; peak ≈ 1 year away",
    3: "circumpubertal; peak within the next year",
    4: "circumpubertal; peak 1–2 years ago",
    5: "postpubertal; peak ended ≥ 1 year ago",
    6: "postpubertal; peak ended ≥ 2 years ago",
}

TRAPEZOID = "trapezoid"
HORIZONTAL = "rectangular horizontal"
SQUARE = "square"
VERTICAL = "rectangular vertical"
SHAPES = (TRAPEZOID, HORIZONTAL, SQUARE, VERTICAL)
SHORT = {TRAPEZOID: "trapezoid", HORIZONTAL: "rect. horizontal", SQUARE: "square", VERTICAL: "rect. vertical"}

T, H, S, V = TRAPEZOID, HORIZONTAL, SQUARE, VERTICAL
# stage → (concavity C2, C3, C4), options of (allowed C3 shapes, allowed C4 shapes)
STAGE_TABLE: dict[int, tuple[tuple[bool, bool, bool], list[tuple[frozenset, frozenset]]]] = {
    1: ((False, False, False), [(frozenset({T}), frozenset({T}))]),
    2: ((True, False, False), [(frozenset({T}), frozenset({T}))]),
    3: ((True, True, False), [(frozenset({T, H}), frozenset({T, H}))]),
    4: ((True, True, True), [(frozenset({H}), frozenset({H}))]),
    5: ((True, True, True), [(frozenset({S}), frozenset({S, H})), (frozenset({S, H}), frozenset({S}))]),
    6: ((True, True, True), [(frozenset({V}), frozenset({V, S})), (frozenset({V, S}), frozenset({V}))]),
}
del T, H, S, V

VERTEBRAE = ("C2", "C3", "C4")
BORDERLINE_MARGIN = 0.10  # a measurement within 10 % of its cut-off makes an exact fit "borderline"

# Landmarks absent from the common 13-landmark scheme → the two corners whose mid-point replaces them.
DERIVED_FROM_CORNERS: dict[int, tuple[int, int]] = {5: (4, 6), 7: (4, 9), 8: (6, 11),
                                                    13: (12, 14), 15: (12, 17), 16: (14, 19)}
SCHEME_13 = tuple(i for i in range(1, N_LANDMARKS + 1) if i not in DERIVED_FROM_CORNERS)
# The seven measurements the stage decision uses (rules and learned model alike), in this order.
FEATURES = ("c2_concavity", "c3_concavity", "c4_concavity", "c3_ah_ph", "c4_ah_ph", "c3_h_w", "c4_h_w")
DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED = {"default": "staging_default.json", "calibrated": "staging_default.json",
           "learned": "staging_learned.json", "textbook": "staging_textbook.json"}
LEARNED_HIGH_PROBABILITY = 0.6  # learned method: below this top probability the call is "borderline"


@dataclass
class OrdinalModel:
    """Proportional-odds (cumulative logit) model: P(stage ≤ k) = σ(cut_k − w·z), z = (x − mean) / scale.

    features : names of the measurements in x (``FEATURES``); mean, scale, coef : (7,) lists;
    cutpoints : 5 increasing numbers separating CS1|CS2|…|CS6. One weight per measurement, so a
    positive weight means "larger value → later stage".
    """

    features: list
    mean: list
    scale: list
    coef: list
    cutpoints: list

    def __post_init__(self):
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n) or len(self.cutpoints) != 5:
            raise ValueError("ordinal model: mean/scale/coef need one value per feature and 5 cut-points")
        if list(self.features) != list(FEATURES):
            raise ValueError(f"ordinal model features must be {list(FEATURES)}, got {list(self.features)}")
        if np.any(np.diff(self.cutpoints) <= 0):
            raise ValueError("ordinal model cut-points must increase")

    def predict_proba(self, X) -> np.ndarray:
        """X : (N, 7) measurements in ``features`` order → (N, 6) probabilities of CS1..CS6."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        eta = ((X - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef)
        cdf = 1.0 / (1.0 + np.exp(-(np.asarray(self.cutpoints)[None, :] - eta[:, None])))
        cdf = np.hstack([np.zeros((len(X), 1)), cdf, np.ones((len(X), 1))])
        return np.clip(np.diff(cdf, axis=1), 0.0, 1.0)

    def predict(self, X) -> np.ndarray:
        """(N, 7) → (N,) stages 1..6 (most probable)."""
        return self.predict_proba(X).argmax(axis=1) + 1


@dataclass
class StagingConfig:
    """Every staging threshold (docs/architecture.md#cvm-staging; the trapezoid cut-off is an
    engineering default) plus how the config was made. ``StagingConfig()`` is the textbook
    (McNamara & Franchi) config.

    concavity_ratio : depth / chord at or above which an inferior border is concave.
    concavity_ratio_c2, _c3, _c4 : per-border overrides of ``concavity_ratio`` (None = use it).
    concavity_mode : "ratio" (scale-free, default) or "absolute" (depth ≥ ``concavity_abs_mm``;
        needs the pixel spacing).
    concavity_abs_mm : the absolute depth cut-off in mm.
    square_low, square_high : H/W range (inclusive) of a square body.
    trapezoid_ratio : AH/PH below which a body is a trapezoid.
    body_points : "auto" (H from 5 / 13 and W from 7–8 / 15–16 when present, else from the
        corners) or "corners" (always from the corners, as on 13-landmark data).
    method : "rules" (the CS table) or "learned" (``learned`` decides, the rules explain).
    learned : the :class:`OrdinalModel` (or its dict) for ``method="learned"``.
    name : short name shown with the stage ("textbook", "calibrated", …).
    provenance : where the numbers come from (data, date, command, fitting procedure).
    agreement : measured agreement with expert stages (see :func:`expert_agreement`).
    """

    concavity_ratio: float = 0.07
    concavity_mode: str = "ratio"
    concavity_abs_mm: float = 1.0
    square_low: float = 0.9
    square_high: float = 1.1
    trapezoid_ratio: float = 0.85
    concavity_ratio_c2: float | None = None
    concavity_ratio_c3: float | None = None
    concavity_ratio_c4: float | None = None
    body_points: str = "auto"
    method: str = "rules"
    learned: OrdinalModel | None = None
    name: str = "textbook"
    provenance: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.concavity_mode not in ("ratio", "absolute"):
            raise ValueError(f"concavity_mode must be 'ratio' or 'absolute', got {self.concavity_mode!r}")
        if not 0 < self.square_low <= self.square_high:
            raise ValueError(f"need 0 < square_low <= square_high, got {self.square_low}, {self.square_high}")
        for name in ("concavity_ratio", "concavity_abs_mm", "trapezoid_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for v in VERTEBRAE:
            value = getattr(self, f"concavity_ratio_{v.lower()}")
            if value is not None and not value > 0:
                raise ValueError(f"concavity_ratio_{v.lower()} must be > 0 or None, got {value}")
        if self.body_points not in ("auto", "corners"):
            raise ValueError(f"body_points must be 'auto' or 'corners', got {self.body_points!r}")
        if self.method not in ("rules", "learned"):
            raise ValueError(f"method must be 'rules' or 'learned', got {self.method!r}")
        if isinstance(self.learned, dict):
            self.learned = OrdinalModel(**self.learned)
        if self.method == "learned" and self.learned is None:
            raise ValueError("method='learned' needs a fitted model in 'learned' (see cvs stage-calibrate --method learned)")

    def concavity_cut(self, vertebra: str) -> float:
        """The depth/chord cut-off of one border ("C2", "C3" or "C4")."""
        value = getattr(self, f"concavity_ratio_{vertebra.lower()}")
        return self.concavity_ratio if value is None else value

    def thresholds_text(self) -> str:
        """One line with every threshold, for printing next to stages."""
        cuts = {v: self.concavity_cut(v) for v in VERTEBRAE}
        if len(set(cuts.values())) == 1:
            conc = f"concave ≥ {cuts['C2']:g}"
        else:
            conc = "concave ≥ " + "/".join(f"{cuts[v]:g}" for v in VERTEBRAE) + " (C2/C3/C4)"
        if self.concavity_mode == "absolute":
            conc = f"concave depth ≥ {self.concavity_abs_mm:g} mm"
        text = (f"[{self.name}] concavity = depth/chord ({conc}); body H/W square {self.square_low:g}–"
                f"{self.square_high:g}; trapezoid AH/PH < {self.trapezoid_ratio:g}")
        if self.body_points == "corners":
            text += "; H and W from the corners"
        if self.method == "learned":
            text += "; stage decided by the learned ordinal model (rules shown for explanation)"
        return text

    def to_dict(self) -> dict:
        """JSON-ready dict (the format of ``staging.json``)."""
        out = {"format": "cvs-staging-config", "version": 1}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = asdict(value) if isinstance(value, OrdinalModel) else value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "StagingConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        data = dict(data)
        data.pop("format", None)
        data.pop("version", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown staging config key(s): {unknown}")
        return cls(**data)


def save_config(config: StagingConfig, path) -> Path:
    """Write a config as JSON (``cvs stage --config`` and :func:`load_config` read it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(config.to_dict()), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _jsonable(obj):
    """numpy values → Python, NaN/inf → None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


@functools.lru_cache(maxsize=16)
def _load_shipped(filename: str) -> dict:
    return json.loads((DATA_DIR / filename).read_text(encoding="utf-8"))


def load_config(config=None) -> StagingConfig:
    """A :class:`StagingConfig` from None (the shipped default), a config (returned as is), a
    shipped name ("default" = "calibrated", "learned", "textbook") or a JSON file path.

    "textbook" falls back to ``StagingConfig()`` when its JSON (which adds the measured agreement)
    is absent. Raises ValueError for an unknown name or an unreadable file.
    """
    if isinstance(config, StagingConfig):
        return config
    if config is None:
        config = "default"
    if isinstance(config, dict):
        return StagingConfig.from_dict(config)
    text = str(config)
    if text in SHIPPED:
        try:
            return StagingConfig.from_dict(copy.deepcopy(_load_shipped(SHIPPED[text])))
        except FileNotFoundError:
            if text == "textbook":
                return StagingConfig()
            raise ValueError(f"the shipped staging config {SHIPPED[text]!r} is missing from {DATA_DIR}") from None
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"staging config {text!r} is neither a shipped name ({', '.join(SHIPPED)}) nor a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable staging config JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a staging config must be a JSON object")
    try:
        return StagingConfig.from_dict(data)
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from None


def textbook() -> StagingConfig:
    """The McNamara & Franchi thresholds (with their measured expert agreement when shipped)."""
    return load_config("textbook")


def expert_agreement(config=None) -> dict | None:
    """How often the config's stage agrees with expert stages, as measured (cross-validated for
    fitted configs) and stored in the config: ``{"summary": str, "n": int, "exact": float,
    "within_one": float, "kappa_qw": float, "per_stage": {"CS1": {"n_called", "exact",
    "within_one", "n_expert", "recall"}, …}, "confusion": 6×6 list (rows expert, columns
    predicted), "method": str}``, or None when the config was never measured.

    ``per_stage["CSk"]["exact"]`` answers "when this staging says CSk, how often did the expert
    say CSk too" — the number the Compare page shows next to a stage.
    """
    cfg = load_config(config)
    return cfg.agreement or None


@dataclass
class StageResult:
    """The stage of one landmark set with everything needed to show why.

    stage : 1..6; label : "CS1".."CS6".
    exact : True when the measured pattern fits that table row; False → nearest stage.
    confidence_level : "high" (exact, nothing near a cut-off), "borderline" (exact, but a
        measurement lies within 10 % of its cut-off) or "low" (no row fits).
    confidence : a one-line note explaining the level.
    failed_rule : the rule(s) of the chosen stage that the measurements break (None when exact).
    rationale : one line, e.g. "C2 concave (0.12), C3 concave (0.09), C4 flat (0.02); C3
        trapezoid, C4 rect. horizontal → CS3".
    growth : what the stage means for growth (the stage table, docs/architecture.md#cvm-staging).
    caveat : :data:`CAVEAT`, always shown with the stage.
    measurements : flat dict of floats (None where not available, e.g. mm without spacing).
    shapes : {"C3": shape, "C4": shape}; concavity : {"C2": bool, "C3": bool, "C4": bool}.
    mismatches : {"CS1": n, …} number of failed criteria per stage (0 for the exact one).
    nearest_alternative : the next-best stage (1..6) when the call is borderline or low
        (rules: the stage a single moved threshold / the fewest mismatches leads to; learned: the
        second most probable stage), else None.
    derived : note on landmarks derived from the corners (13-landmark sets), else None.
    method : "rules" or "learned"; config_name : the config's name.
    probabilities : {"CS1": p, …} for the learned method, else None.
    expert_agreement : the config's measured agreement for this stage (``per_stage`` entry of
        :func:`expert_agreement`), or None.
    """

    stage: int
    label: str
    exact: bool
    confidence_level: str
    confidence: str
    failed_rule: str | None
    rationale: str
    growth: str
    caveat: str
    measurements: dict
    shapes: dict
    concavity: dict
    mismatches: dict = field(default_factory=dict)
    nearest_alternative: int | None = None
    derived: str | None = None
    method: str = "rules"
    config_name: str = "textbook"
    probabilities: dict | None = None
    expert_agreement: dict | None = None

    @property
    def fit(self) -> str:
        """How the landmarks fit the stage table, in one word used by the CLI table, the stage CSV and
        the app: "exact" (a row fits, nothing near a cut-off), "borderline" (a row fits, but a
        measurement is within 10 % of a cut-off, or the learned model is unsure) or "nearest" (no row
        fits; the nearest stage)."""
        if not self.exact:
            return "nearest"
        return "exact" if self.confidence_level == "high" else "borderline"

    def to_dict(self) -> dict:
        """JSON-serialisable dict (with ``fit``)."""
        return {**asdict(self), "fit": self.fit}


def agreement_text(result: "StageResult") -> str | None:
    """One line for showing next to a stage: how often experts agreed when this staging said this
    stage (as measured for the config, cross-validated for fitted ones; the whole table is
    :func:`expert_agreement`), plus the nearest alternative when the call is borderline or fits no
    row. None when there is nothing to say. Example: "When the calibrated staging says CS4, experts
    said CS4 in 50 % of cases (within one stage 97 %, n=166). Borderline: CS3 is the nearest
    alternative."
    """
    a = result.expert_agreement
    alt = ""
    if result.nearest_alternative:
        why = "Borderline" if result.confidence_level == "borderline" else "No table row fits"
        alt = f" {why}: CS{result.nearest_alternative} is the nearest alternative."
    if not a or a.get("exact") is None:
        return alt.strip() or None
    return (f"When the {result.config_name} staging says {result.label}, experts said {result.label} in "
            f"{a['exact']:.0%} of cases (within one stage {a['within_one']:.0%}, n={a['n_called']})." + alt)


# ----------------------------------------------------------------------------- geometry
def _frame(p: np.ndarray, a: np.ndarray, towards: np.ndarray | None, away: np.ndarray | None):
    """Unit chord direction and unit normal pointing towards the body (see module notes)."""
    d = a - p
    chord = float(np.hypot(*d))
    if not chord > 0:
        raise ValueError("degenerate inferior border: its two ends coincide")
    u = d / chord
    n = np.array([u[1], -u[0]])  # "up" for an upright image with y down and x anterior
    side = 0.0
    if towards is not None:
        side = float(np.dot(towards - p, n))
    elif away is not None:
        side = -float(np.dot(away - p, n))
    if side < 0:
        n = -n
    return u, n, chord


def _pt(lm: np.ndarray, index1: int) -> np.ndarray:
    return lm[index1 - 1]


def complete_landmarks(landmarks, body_points: str = "auto") -> tuple[np.ndarray, list[int]]:
    """Fill the landmarks that the 13-landmark scheme lacks from the corners.

    landmarks : (19, 2) (x, y) pixels, NaN where absent. body_points : "auto" derives only the
    absent ones of :data:`DERIVED_FROM_CORNERS`; "corners" derives all six even when present.

    Returns ``(filled (19, 2) copy, sorted 1-based indices that were derived)``. Raises ValueError
    naming every missing landmark that cannot be derived (1, 2, 3, 4, 6, 9, 10, 11, 12, 14, 17, 18, 19).
    """
    lm = np.array(landmarks, dtype=np.float64)
    if lm.shape != (N_LANDMARKS, 2):
        raise ValueError(f"landmarks must be shaped ({N_LANDMARKS}, 2), got {lm.shape}")
    missing = sorted({int(i) + 1 for i in np.argwhere(~np.isfinite(lm))[:, 0]})
    essential = [i for i in missing if i not in DERIVED_FROM_CORNERS]
    if essential:
        raise ValueError(f"cannot stage: landmark(s) {essential} missing (NaN); only "
                         f"{', '.join(map(str, DERIVED_FROM_CORNERS))} may be absent (13-landmark scheme: "
                         f"they are derived from the corners)")
    derive = sorted(DERIVED_FROM_CORNERS) if body_points == "corners" else missing
    for i in derive:
        a, b = DERIVED_FROM_CORNERS[i]
        lm[i - 1] = 0.5 * (lm[a - 1] + lm[b - 1])
    return lm, list(derive)


def derived_note(derived: list[int]) -> str | None:
    """The sentence that goes with a stage measured on derived points (None when none were)."""
    if not derived:
        return None
    return (f"H and W of C3/C4 derived from the corners (landmark{'s' if len(derived) > 1 else ''} "
            f"{', '.join(map(str, derived))} {'taken as' if len(derived) > 1 else 'taken as a'} corner "
            f"mid-point{'s' if len(derived) > 1 else ''}: H = (AH + PH) / 2, W between the mid-points of the "
            f"posterior and anterior borders)")


def measure(landmarks, spacing_mm: float | None = None, body_points: str = "auto") -> dict:
    """Raw measurements of one landmark set (see the module docstring for definitions).

    landmarks : (19, 2) (x, y) pixels; 5, 7, 8, 13, 15, 16 may be NaN (derived from the corners,
    see :func:`complete_landmarks`, as are all six with ``body_points="corners"``).
    spacing_mm : mm per pixel or None.

    Returns a flat dict of floats: ``{v}_depth_px``, ``{v}_chord_px``, ``{v}_concavity``
    (depth / chord), ``{v}_depth_mm`` for v in c2, c3, c4; ``{v}_ah_px``, ``{v}_ph_px``,
    ``{v}_h_px``, ``{v}_w_px``, ``{v}_h_w``, ``{v}_ah_ph``, ``{v}_h_mm``, ``{v}_w_mm`` for v in
    c3, c4 (mm values None without spacing).
    """
    lm, _ = complete_landmarks(landmarks, body_points)
    if spacing_mm is not None and not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"pixel spacing must be > 0 mm/px, got {spacing_mm:g}")

    def mm(v):
        return None if spacing_mm is None else v * spacing_mm

    out: dict[str, float | None] = {}
    c3 = VERTEBRA_POINTS["C3"]
    c3_body = np.mean([_pt(lm, c3[k]) for k in ("sp", "sm", "sa", "mp", "ma")], axis=0)
    borders = {
        "c2": (C2_INFERIOR, None, c3_body),
    }
    for v in ("C3", "C4"):
        idx = VERTEBRA_POINTS[v]
        superior = np.mean([_pt(lm, idx[k]) for k in ("sp", "sm", "sa")], axis=0)
        borders[v.lower()] = ((idx["ip"], idx["im"], idx["ia"]), superior, None)

    for key, ((ip, im, ia), towards, away) in borders.items():
        p, m, a = _pt(lm, ip), _pt(lm, im), _pt(lm, ia)
        _u, n, chord = _frame(p, a, towards, away)
        depth = float(np.dot(m - p, n))
        out[f"{key}_depth_px"] = depth
        out[f"{key}_chord_px"] = chord
        out[f"{key}_concavity"] = depth / chord
        out[f"{key}_depth_mm"] = mm(depth)
        if key == "c2":
            continue
        idx = VERTEBRA_POINTS[key.upper()]
        ah = float(np.dot(_pt(lm, idx["sa"]) - p, n))
        ph = float(np.dot(_pt(lm, idx["sp"]) - p, n))
        h = float(np.dot(_pt(lm, idx["sm"]) - p, n))
        w = float(np.hypot(*(_pt(lm, idx["ma"]) - _pt(lm, idx["mp"]))))
        out[f"{key}_ah_px"] = ah
        out[f"{key}_ph_px"] = ph
        out[f"{key}_h_px"] = h
        out[f"{key}_w_px"] = w
        out[f"{key}_h_w"] = h / w if w > 0 else math.inf
        out[f"{key}_ah_ph"] = ah / ph if ph > 0 else math.inf
        out[f"{key}_h_mm"] = mm(h)
        out[f"{key}_w_mm"] = mm(w)
    return out


def classify_shape(ah_ph: float, h_w: float, config: StagingConfig | None = None) -> str:
    """Body shape class from AH/PH and H/W; trapezoid takes precedence (module docstring).
    config None → the textbook thresholds."""
    config = config or StagingConfig()
    if ah_ph < config.trapezoid_ratio:
        return TRAPEZOID
    if h_w > config.square_high:
        return VERTICAL
    if h_w >= config.square_low:
        return SQUARE
    return HORIZONTAL


def _shape_distance(ah_ph: float, h_w: float, target: str, cfg: StagingConfig) -> float:
    """How far (relative to the cut-offs) the measured ratios lie outside ``target``'s region."""
    tr, lo, hi = cfg.trapezoid_ratio, cfg.square_low, cfg.square_high
    if target == TRAPEZOID:
        return max(0.0, ah_ph - tr) / tr
    d = max(0.0, tr - ah_ph) / tr
    if target == HORIZONTAL:
        return d + max(0.0, h_w - lo) / lo
    if target == SQUARE:
        return d + max(0.0, lo - h_w) / lo + max(0.0, h_w - hi) / hi
    return d + max(0.0, hi - h_w) / hi  # VERTICAL


# ----------------------------------------------------------------------------- staging
def _check_mode(config: StagingConfig, spacing_mm) -> None:
    if config.concavity_mode == "absolute" and spacing_mm is None:
        raise ValueError("concavity_mode='absolute' compares depths in mm and needs the pixel spacing "
                         "(spacing_mm); pass it or use concavity_mode='ratio'")


def _concavity_value(meas: dict, key: str, cfg: StagingConfig, digits: int = 2) -> tuple[float, float, str]:
    """(measured value, cut-off, display) for one border's concavity test."""
    if cfg.concavity_mode == "absolute":
        v = meas[f"{key}_depth_mm"]
        return v, cfg.concavity_abs_mm, f"{v:.{digits - 1}f} mm"
    v = meas[f"{key}_concavity"]
    return v, cfg.concavity_cut(key.upper()), f"{v:.{digits}f}"


def _names(allowed: frozenset) -> str:
    return " or ".join(SHORT[s] for s in SHAPES if s in allowed)


def _score_stage(stage: int, flags: dict, shapes: dict, meas: dict, cfg: StagingConfig):
    """(mismatches, distance, failed-rule texts) of one stage row against the measurements."""
    want_flags, options = STAGE_TABLE[stage]
    n_bad, dist, failed = 0, 0.0, []
    for v, want in zip(VERTEBRAE, want_flags):
        if flags[v] != want:
            value, cut, shown = _concavity_value(meas, v.lower(), cfg, digits=3)
            n_bad += 1
            dist += abs(value - cut) / cut
            failed.append(f"{v} {'concave' if want else 'flat'} (measured {shown}, cut-off {cut:g})")
    best = None
    for allowed3, allowed4 in options:
        o_bad, o_dist, o_failed = 0, 0.0, []
        for v, allowed in (("C3", allowed3), ("C4", allowed4)):
            if shapes[v] in allowed:
                continue
            k = v.lower()
            ah_ph, h_w = meas[f"{k}_ah_ph"], meas[f"{k}_h_w"]
            o_bad += 1
            o_dist += min(_shape_distance(ah_ph, h_w, s, cfg) for s in allowed)
            o_failed.append(f"{v} {_names(allowed)} (is {SHORT[shapes[v]]}: AH/PH {ah_ph:.2f}, H/W {h_w:.2f})")
        if best is None or (o_bad, o_dist) < (best[0], best[1]):
            best = (o_bad, o_dist, o_failed)
    return n_bad + best[0], dist + best[1], failed + best[2]


def _borderline_notes(flags, shapes, meas, cfg) -> list[str]:
    notes = []
    for v in VERTEBRAE:
        value, cut, shown = _concavity_value(meas, v.lower(), cfg, digits=3)
        if abs(value - cut) <= BORDERLINE_MARGIN * cut:
            notes.append(f"{v} concavity {shown} is near its {cut:g} cut-off")
    for v in ("C3", "C4"):
        k = v.lower()
        ah_ph, h_w = meas[f"{k}_ah_ph"], meas[f"{k}_h_w"]
        if abs(ah_ph - cfg.trapezoid_ratio) <= BORDERLINE_MARGIN * cfg.trapezoid_ratio:
            notes.append(f"{v} AH/PH {ah_ph:.2f} is near the {cfg.trapezoid_ratio:g} trapezoid cut-off")
        if shapes[v] != TRAPEZOID:
            for cut in (cfg.square_low, cfg.square_high):
                if abs(h_w - cut) <= 0.5 * BORDERLINE_MARGIN * cut:
                    notes.append(f"{v} H/W {h_w:.2f} is near the {cut:g} cut-off")
        elif h_w >= cfg.square_low:
            notes.append(f"{v} is wedge-shaped but tall (H/W {h_w:.2f}); classed trapezoid")
    return notes


def features_of(meas: dict) -> np.ndarray:
    """The seven decision measurements (:data:`FEATURES` order) of a :func:`measure` dict → (7,)."""
    return np.array([meas[k] for k in FEATURES], dtype=np.float64)


def stage_landmarks(landmarks, spacing_mm: float | None = None,
                    config: StagingConfig | str | None = None) -> StageResult:
    """CVM stage of one landmark set.

    landmarks : (19, 2) (x, y) pixels, in any frame (rotation, translation and scale do not
        matter in the default ratio mode); 5, 7, 8, 13, 15, 16 may be NaN (13-landmark scheme).
    spacing_mm : mm per pixel; adds mm measurements and is required by
        ``concavity_mode="absolute"``.
    config : a :class:`StagingConfig`, a shipped name ("default", "learned", "textbook"), a JSON
        path, or None for the shipped default (:func:`load_config`).

    Returns a :class:`StageResult`. Raises ValueError for a wrong shape, missing landmarks that
    cannot be derived, a non-positive spacing, or absolute mode without spacing.
    """
    cfg = load_config(config)
    _check_mode(cfg, spacing_mm)
    filled, derived = complete_landmarks(landmarks, cfg.body_points)
    meas = measure(filled, spacing_mm)

    flags = {}
    for v in VERTEBRAE:
        value, cut, _ = _concavity_value(meas, v.lower(), cfg)
        flags[v] = bool(value >= cut)
    shapes = {v: classify_shape(meas[f"{v.lower()}_ah_ph"], meas[f"{v.lower()}_h_w"], cfg) for v in ("C3", "C4")}

    scores = {s: _score_stage(s, flags, shapes, meas, cfg) for s in STAGE_TABLE}
    ranked = sorted(STAGE_TABLE, key=lambda s: (scores[s][0], scores[s][1], s))
    probabilities = None
    if cfg.method == "learned":
        proba = cfg.learned.predict_proba(features_of(meas)[None])[0]
        probabilities = {f"CS{s}": float(p) for s, p in zip(STAGE_TABLE, proba)}
        order = [int(i) + 1 for i in np.argsort(-proba, kind="stable")]
        stage = order[0]
    else:
        stage = ranked[0]
    n_bad, _dist, failed = scores[stage]
    exact = n_bad == 0
    alternative = None

    if cfg.method == "learned":
        p1, p2 = proba[order[0] - 1], proba[order[1] - 1]
        level = "high" if p1 >= LEARNED_HIGH_PROBABILITY else "borderline"
        if level == "borderline":
            alternative = order[1]
        confidence = (f"learned model: CS{stage} {p1:.0%}, next CS{order[1]} {p2:.0%}; the CS table "
                      + ("fits this row exactly" if exact else f"is {n_bad} criterion{'s' if n_bad > 1 else ''} off"))
        failed_rule = None if exact else f"CS{stage} row needs " + "; ".join(failed)
    elif exact:
        notes = _borderline_notes(flags, shapes, meas, cfg)
        level = "borderline" if notes else "high"
        if notes:
            alternative = ranked[1]
        confidence = (f"fits the CS{stage} row exactly" + ("; borderline: " + "; ".join(notes) if notes
                                                            else "; no measurement near a cut-off"))
        failed_rule = None
    else:
        runner = ranked[1]
        alternative = runner
        level = "low"
        confidence = (f"no row fits exactly; CS{stage} is nearest ({n_bad} criterion{'s' if n_bad > 1 else ''} off), "
                      f"next CS{runner} ({scores[runner][0]} off)")
        failed_rule = f"CS{stage} needs " + "; ".join(failed)

    conc_text = ", ".join(f"{v} {'concave' if flags[v] else 'flat'} ({_concavity_value(meas, v.lower(), cfg)[2]})"
                          for v in VERTEBRAE)
    shape_text = f"C3 {SHORT[shapes['C3']]}, C4 {SHORT[shapes['C4']]}"
    if cfg.method == "learned":
        rationale = f"{conc_text}; {shape_text} → CS{stage} (learned model, {probabilities[f'CS{stage}']:.0%})"
    else:
        rationale = f"{conc_text}; {shape_text} → CS{stage}" + ("" if exact else " (nearest)")
    per_stage = (cfg.agreement or {}).get("per_stage") or {}

    return StageResult(
        stage=stage, label=f"CS{stage}", exact=exact, confidence_level=level, confidence=confidence,
        failed_rule=failed_rule, rationale=rationale, growth=GROWTH[stage], caveat=CAVEAT,
        measurements=meas, shapes=shapes, concavity=flags,
        mismatches={f"CS{s}": scores[s][0] for s in STAGE_TABLE},
        nearest_alternative=alternative, derived=derived_note(derived), method=cfg.method,
        config_name=cfg.name, probabilities=probabilities, expert_agreement=per_stage.get(f"CS{stage}"),
    )


def stage_many(landmarks, spacing_mm=None, config: StagingConfig | str | None = None) -> list[StageResult]:
    """Stage every set: landmarks (N, 19, 2); spacing_mm None, a scalar or (N,) → N results
    (config as in :func:`stage_landmarks`)."""
    config = load_config(config)
    lms = np.asarray(landmarks, dtype=np.float64)
    if lms.ndim != 3:
        raise ValueError(f"landmarks must be shaped (N, 19, 2), got {lms.shape}")
    if spacing_mm is None or np.ndim(spacing_mm) == 0:
        spacings = [spacing_mm] * len(lms)
    else:
        spacings = [float(s) for s in np.asarray(spacing_mm, dtype=np.float64).reshape(-1)]
        if len(spacings) != len(lms):
            raise ValueError(f"spacing_mm must be a scalar or one value per image ({len(lms)}), got {len(spacings)}")
    out = []
    for i, (lm, s) in enumerate(zip(lms, spacings)):
        try:
            out.append(stage_landmarks(lm, None if s is None else float(s), config))
        except ValueError as exc:
            raise ValueError(f"image index {i}: {exc}") from None
    return out


def results_to_frame(names, results: list[StageResult]):
    """One row per image: image_name, stage, label, fit (:attr:`StageResult.fit`), shapes, concavity
    flags, every measurement (rounded to 4 decimals), failed_rule, rationale (a pandas DataFrame)."""
    import pandas as pd

    names = list(names)
    if len(names) != len(results):
        raise ValueError(f"{len(names)} names for {len(results)} results")
    rows = []
    for name, r in zip(names, results):
        row = dict(image_name=name, stage=r.stage, label=r.label, fit=r.fit,
                   c2_concave=r.concavity["C2"], c3_concave=r.concavity["C3"], c4_concave=r.concavity["C4"],
                   c3_shape=r.shapes["C3"], c4_shape=r.shapes["C4"])
        row.update({k: round(float(v), 4) if isinstance(v, (float, np.floating)) else v
                    for k, v in r.measurements.items()})
        row.update(nearest_alternative=f"CS{r.nearest_alternative}" if r.nearest_alternative else "",
                   derived=r.derived or "", config=r.config_name,
                   failed_rule=r.failed_rule or "", rationale=r.rationale)
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- CLI
def format_table(names, results: list[StageResult]) -> str:
    """A fixed-width text table of stages with the measurements that decided them."""
    head = (f"{'image':<14} {'stage':<5} {'fit':<10} {'C2 conc':>7} {'C3 conc':>7} {'C4 conc':>7}  "
            f"{'C3 body (H/W, AH/PH)':<34} {'C4 body (H/W, AH/PH)':<34}")
    lines = [head, "-" * len(head)]
    for name, r in zip(names, results):
        m = r.measurements
        fit = r.fit
        if r.probabilities:  # learned method: the model's probability of the stage it chose
            fit = f"p {r.probabilities[r.label]:.2f}"

        def body(v):
            return f"{SHORT[r.shapes[v]]} ({m[f'{v.lower()}_h_w']:.2f}, {m[f'{v.lower()}_ah_ph']:.2f})"

        lines.append(f"{name[:14]:<14} {r.label:<5} {fit:<10} {m['c2_concavity']:>7.3f} {m['c3_concavity']:>7.3f} "
                     f"{m['c4_concavity']:>7.3f}  {body('C3'):<34} {body('C4'):<34}")
        if r.failed_rule:
            lines.append(f"{'':<14} ↳ {r.failed_rule}")
    return "\n".join(lines)


def stage_command(args) -> int:
    """``cvs stage --csv CSV [--spacing MM] [--config NAME|JSON] [--truth-column COL] --out FILE``:
    stage every row (13-landmark rows allowed), write a CSV, print a table; with a truth column
    also print and write the agreement with it (``{out}_agreement.json``, ``_confusion.html``,
    ``_confusion.png``)."""
    from cvs_core.annotations import read_annotations

    spacing = getattr(args, "spacing", None)
    cfg = load_config(getattr(args, "config", None))
    # validates the study format; raises listing every problem by row and column
    annotations = read_annotations(args.csv, optional_landmarks=DERIVED_FROM_CORNERS)
    names, lms = list(annotations.names), annotations.landmarks
    truth_column = getattr(args, "truth_column", None)
    truth = None
    if truth_column:
        from cvs_core.calibration import truth_stages

        truth = truth_stages(annotations.extra, truth_column, str(args.csv))
    results = stage_many(lms, spacing, cfg)
    frame = results_to_frame(names, results)
    if truth is not None:
        frame.insert(3, "truth", [f"CS{t}" for t in truth])
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)

    print(f"CVM stages for {len(names)} landmark sets from {args.csv}"
          + (f" (spacing {spacing:g} mm/px)" if spacing is not None else ""))
    print(cfg.thresholds_text())
    n_derived = sum(1 for r in results if r.derived)
    if n_derived and cfg.body_points != "corners":
        print(f"{n_derived} set(s) lack landmarks 5, 7, 8, 13, 15, 16 (13-landmark scheme): "
              "H and W of C3/C4 derived from the corners")
    print(format_table(names, results))
    counts = frame["label"].value_counts().sort_index()
    print("stages: " + ", ".join(f"{k} ×{v}" for k, v in counts.items())
          + f"; fit: {int((frame['fit'] == 'exact').sum())} exact, {int((frame['fit'] == 'borderline').sum())} "
          f"borderline, {int((frame['fit'] == 'nearest').sum())} nearest")
    stored = expert_agreement(cfg)
    if stored:
        print(f"this config against experts: {stored['summary']}")
    if truth is not None:
        from cvs_core.calibration import agreement, format_agreement, write_agreement_report

        rep = agreement(truth, np.array([r.stage for r in results]),
                        f"{cfg.name} staging vs column {truth_column}")
        print(format_agreement(rep))
        prefix = out.with_suffix("")
        paths = write_agreement_report(rep, prefix.with_name(prefix.name + "_agreement"),
                                       f"{cfg.name} staging vs {truth_column}")
        print("wrote " + ", ".join(str(p) for p in paths))
    print(CAVEAT)
    print(f"wrote {out}")
    return 0
