"""Readers for other CVM landmark formats, converted to the study CSV (``cvs convert``).

* **iCVM text** (LM-PCVMNet's iCVM-900 release): one case per ``.txt`` file, UTF-8 —
  13 lines ``x,y`` (pixels in the case's image, y down) in the order C2 inferior posterior, middle,
  anterior; C3 superior posterior, superior anterior; C3 inferior posterior, middle, anterior;
  C4 superior posterior, superior anterior; C4 inferior posterior, middle, anterior — i.e. ours
  1, 2, 3, 4, 6, 9, 10, 11, 12, 14, 17, 18, 19 (:data:`ICVM_ORDER`) — then a line ``csN`` (the
  expert stage), then optional metadata lines (an unused number, the patient's sex).
* **labelme JSON** (the cvmt format): ``shapes`` with one polygon per vertebra — C2 with 3 points
  (its inferior border), C3 and C4 with 5 points (superior posterior and anterior corners, inferior
  posterior, middle and anterior points). The vertebra comes from ``group_id`` 2/3/4 or a label
  naming it ("C3", "c3", "vertebra_3"); otherwise polygons are taken top to bottom. The points are
  assigned by geometry, not by their order in the polygon: along the posterior→anterior direction
  (``facing``: the side the patient faces, "right" = anterior at larger x) the ends of the C2 border
  are the extreme points and its middle point the remaining one; for C3/C4 the two points highest in
  the image (after levelling by the tilt of the C2 border, when there is one) are the superior
  corners, the other three the inferior border, each ordered posterior → anterior. ``point`` shapes labelled with our landmark names ("C3sp") or numbers
  ("9") are read as they are. Missing landmarks stay empty (→ the 13-landmark scheme).

Every reader returns ``(names, landmarks (N, 19, 2) float64 with NaN where absent, extra
DataFrame)``; problems raise :class:`FormatError` naming the file and line.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cvs_core.landmarks import N_LANDMARKS, NAME_TO_INDEX0

# Our 1-based landmark number of each iCVM line, in file order.
ICVM_ORDER = (1, 2, 3, 4, 6, 9, 10, 11, 12, 14, 17, 18, 19)


class FormatError(ValueError):
    """A file that does not follow the format it was read as."""


def _files(inputs, suffix: str) -> list[Path]:
    out = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix.lower() == suffix and p.is_file())
        elif path.is_file():
            out.append(path)
        else:
            raise FormatError(f"{path}: no such file or folder")
    if not out:
        raise FormatError(f"no {suffix} files in {', '.join(map(str, inputs))}")
    return out


# ----------------------------------------------------------------------------- iCVM
def read_icvm_text(path) -> tuple[np.ndarray, dict]:
    """One iCVM case → ``(landmarks (19, 2) with NaN at 5, 7, 8, 13, 15, 16, {"cs_stage": "CSn",
    "sex": …})``. Raises FormatError naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text ({exc})") from None
    lines = [ln.strip() for ln in lines if ln.strip()]
    if len(lines) < len(ICVM_ORDER) + 1:
        raise FormatError(f"{path}: expected 13 'x,y' lines and a 'csN' line, found {len(lines)} non-empty lines")
    lm = np.full((N_LANDMARKS, 2), np.nan)
    for k, (number, line) in enumerate(zip(ICVM_ORDER, lines)):
        parts = [p for p in re.split(r"[,\s;]+", line) if p]
        try:
            x, y = (float(v) for v in parts)
        except ValueError:
            raise FormatError(f"{path}, line {k + 1}: expected 'x,y', got {line!r}") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise FormatError(f"{path}, line {k + 1}: coordinates must be finite, got {line!r}")
        lm[number - 1] = (x, y)
    stage_line = lines[len(ICVM_ORDER)]
    m = re.fullmatch(r"(?i)cs\s*([1-6])", stage_line)
    if not m:
        raise FormatError(f"{path}, line 14: expected the stage 'cs1'..'cs6', got {stage_line!r}")
    meta = {"cs_stage": f"CS{m.group(1)}"}
    rest = lines[len(ICVM_ORDER) + 1:]
    if len(rest) >= 2:
        meta["sex"] = {"女": "F", "男": "M"}.get(rest[1], rest[1])
    return lm, meta


def read_icvm(inputs) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """iCVM ``.txt`` files or folders of them → ``(names, landmarks (N, 19, 2), extra)``; the names
    are the file stems (the images are not distributed), extra holds ``cs_stage`` and ``sex``."""
    names, lms, rows = [], [], []
    for path in _files(inputs if isinstance(inputs, (list, tuple)) else [inputs], ".txt"):
        lm, meta = read_icvm_text(path)
        names.append(path.stem)
        lms.append(lm)
        rows.append(meta)
    return names, np.asarray(lms), pd.DataFrame(rows)


# ----------------------------------------------------------------------------- labelme
_VERTEBRA_LABEL = re.compile(r"(?i)^(?:c|vertebra|cv)?[\s_\-]*([234])$")


def _vertebra_of(shape: dict) -> int | None:
    gid = shape.get("group_id")
    if gid in (2, 3, 4):
        return int(gid)
    m = _VERTEBRA_LABEL.match(str(shape.get("label", "")).strip())
    return int(m.group(1)) if m else None


def _assign(points: np.ndarray, vertebra: int, sign: float, where: str, tilt: float = 0.0) -> dict[int, np.ndarray]:
    """Polygon points of one vertebra → {1-based landmark: (x, y)} by geometry (module notes).
    tilt : the column's tilt in radians (angle of the C2 border, posterior → anterior), 0 if unknown."""
    c, s = np.cos(tilt), np.sin(tilt)
    # coordinates in the levelled frame: u along the column's posterior→anterior axis, v downwards
    d = points - points.mean(axis=0)
    u = sign * d[:, 0] * c + d[:, 1] * s * 1.0
    v = -sign * d[:, 0] * s + d[:, 1] * c
    if vertebra == 2:
        if len(points) != 3:
            raise FormatError(f"{where}: the C2 polygon needs 3 points (inferior border), has {len(points)}")
        order = np.argsort(u, kind="stable")
        return {1: points[order[0]], 2: points[order[1]], 3: points[order[2]]}
    if len(points) != 5:
        raise FormatError(f"{where}: the C{vertebra} polygon needs 5 points (2 superior corners, 3 inferior "
                          f"border points), has {len(points)}")
    top = list(np.argsort(v, kind="stable")[:2])
    bottom = [i for i in range(5) if i not in top]
    sup = sorted(top, key=lambda i: u[i])
    inf = sorted(bottom, key=lambda i: u[i])
    base = 4 if vertebra == 3 else 12
    return {base: points[sup[0]], base + 2: points[sup[1]],
            base + 5: points[inf[0]], base + 6: points[inf[1]], base + 7: points[inf[2]]}


def _tilt(points: np.ndarray, sign: float) -> float:
    """Angle (radians) of the posterior→anterior chord of a C2 border in the facing-adjusted frame."""
    along = sign * points[:, 0]
    p, a = points[np.argmin(along)], points[np.argmax(along)]
    return float(np.arctan2(a[1] - p[1], sign * (a[0] - p[0])))


def read_labelme_json(path, facing: str = "right") -> np.ndarray:
    """One labelme file → landmarks (19, 2), NaN where absent (module notes). Raises FormatError."""
    path = Path(path)
    if facing not in ("right", "left"):
        raise ValueError(f"facing must be 'right' or 'left', got {facing!r}")
    sign = 1.0 if facing == "right" else -1.0
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a labelme JSON file ({exc})") from None
    shapes = data.get("shapes") if isinstance(data, dict) else None
    if not isinstance(shapes, list):
        raise FormatError(f"{path}: no 'shapes' list (not a labelme file)")
    lm = np.full((N_LANDMARKS, 2), np.nan)
    polygons = []
    for k, shape in enumerate(shapes):
        pts = np.asarray(shape.get("points", []), dtype=np.float64)
        kind = shape.get("shape_type", "polygon")
        where = f"{path}, shape {k + 1} ({shape.get('label', '')!r})"
        if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
            raise FormatError(f"{where}: points must be a list of [x, y] numbers")
        if kind == "point":
            label = str(shape.get("label", "")).strip()
            idx = NAME_TO_INDEX0.get(label)
            if idx is None and label.isdigit() and 1 <= int(label) <= N_LANDMARKS:
                idx = int(label) - 1
            if idx is None:
                raise FormatError(f"{where}: a point label must be a landmark name (C2ip … C4ia) or 1..19")
            lm[idx] = pts[0]
        elif kind in ("polygon", "linestrip", "line"):
            polygons.append((k, shape, pts, where))
    if polygons:
        named = [_vertebra_of(sh) for _, sh, _, _ in polygons]
        if any(v is None for v in named):
            if len(polygons) != 3:
                raise FormatError(f"{path}: {len(polygons)} polygons without a vertebra label or group_id 2/3/4; "
                                  "expected three (C2, C3, C4)")
            order = np.argsort([pts[:, 1].mean() for _, _, pts, _ in polygons])
            named = [None] * 3
            for rank, i in enumerate(order):
                named[i] = rank + 2
        if len(set(named)) != len(named):
            raise FormatError(f"{path}: more than one polygon for the same vertebra ({sorted(named)})")
        tilt = 0.0
        for vertebra, (_, _, pts, _) in zip(named, polygons):
            if vertebra == 2 and len(pts) == 3:
                tilt = _tilt(pts, sign)
        for vertebra, (_, _, pts, where) in zip(named, polygons):
            for number, xy in _assign(pts, vertebra, sign, where, tilt).items():
                lm[number - 1] = xy
    if np.isnan(lm).all():
        raise FormatError(f"{path}: no vertebra polygons or landmark points found")
    return lm


def read_labelme(inputs, facing: str = "right") -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """labelme JSON files or folders → ``(names, landmarks (N, 19, 2), extra)``; the name is the
    file's ``imagePath`` base name (else the JSON's stem); extra holds a ``cs_stage`` taken from
    ``flags`` (a true flag named "cs1".."cs6") when present."""
    names, lms, rows = [], [], []
    for path in _files(inputs if isinstance(inputs, (list, tuple)) else [inputs], ".json"):
        lms.append(read_labelme_json(path, facing))
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        image = str(data.get("imagePath") or "").replace("\\", "/").rsplit("/", 1)[-1]
        names.append(image or path.stem)
        flags = data.get("flags") or {}
        stage = [k for k, v in flags.items() if v and re.fullmatch(r"(?i)cs[1-6]", str(k))]
        rows.append({"cs_stage": stage[0].upper() if len(stage) == 1 else ""})
    extra = pd.DataFrame(rows)
    if not extra["cs_stage"].astype(bool).any():
        extra = extra.drop(columns="cs_stage")
    return names, np.asarray(lms), extra


def convert_command(args) -> int:
    """``cvs convert --from icvm|labelme INPUTS --out study.csv``."""
    from cvs_core.annotations import write_annotations

    if args.fmt == "icvm":
        names, lms, extra = read_icvm(args.inputs)
    else:
        names, lms, extra = read_labelme(args.inputs, args.facing)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise FormatError(f"duplicate image names after conversion: {dup[:5]}")
    out = write_annotations((names, lms, extra), args.out)
    n13 = int(np.isnan(lms).any(axis=(1, 2)).sum())
    print(f"converted {len(names)} {args.fmt} case(s) to {out}"
          + (f"; {n13} with empty landmarks (13-landmark scheme: 5, 7, 8, 13, 15, 16 empty)" if n13 else ""))
    return 0
