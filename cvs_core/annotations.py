"""The study's annotation CSV: ``image_name,1_x,1_y,…,19_x,19_y`` plus optional extra columns.

Coordinates are ``(x, y)`` pixels (integer or float) in the frame of the image named in the row
(the ROI image in the study). Extra columns (``cs_stage``, ``split`` …) are kept in row order and
written back after the coordinate columns.

Reading validates everything and raises one :class:`AnnotationError` listing *all* problems
(row number counted from 1 over data rows, the image name, and the column). A landmark is inside
an image of ``W × H`` px when ``0 ≤ x < W`` and ``0 ≤ y < H``.
"""
from __future__ import annotations

import io
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable, Sequence, Union

import numpy as np
import pandas as pd

from cvs_core.landmarks import N_LANDMARKS, NAMES, csv_columns

NAME_COLUMN = "image_name"
COORD_COLUMNS: tuple[str, ...] = tuple(csv_columns())
MISSING_IMAGE_POLICIES = ("error", "skip", "ignore")
MAX_LISTED_PROBLEMS = 20

CsvSource = Union[str, os.PathLike, io.IOBase, pd.DataFrame]


class AnnotationError(ValueError):
    """Problems found in an annotation file. ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(format_problems(source, self.problems))


def format_problems(source: str, problems: Sequence[str], limit: int = MAX_LISTED_PROBLEMS) -> str:
    """One message: a header line, then up to ``limit`` problems, then how many were left out."""
    n = len(problems)
    lines = [f"{source}: {n} problem{'s' if n != 1 else ''} in the annotations:"]
    lines += [f"  - {p}" for p in problems[:limit]]
    if n > limit:
        lines.append(f"  ... and {n - limit} more")
    return "\n".join(lines)


@dataclass
class AnnotationSet:
    """Landmarks of N images.

    names: N image names (file names relative to the image folder).
    landmarks: ``(N, 19, 2)`` float64, (x, y) pixels, landmark order of ``landmarks.NAMES``.
    extra: the non-coordinate columns (N rows, same order), index 0..N-1.
    source: where it was read from. skipped: ``"name: reason"`` for rows dropped while reading.
    warnings: problems downgraded to warnings (``check_bounds="warn"``).
    """

    names: list[str]
    landmarks: np.ndarray
    extra: pd.DataFrame = field(default_factory=pd.DataFrame)
    source: str = ""
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.names = [str(n) for n in self.names]
        self.landmarks = np.asarray(self.landmarks, dtype=np.float64)
        if self.landmarks.ndim == 2 and self.landmarks.shape == (N_LANDMARKS, 2):
            self.landmarks = self.landmarks[None]
        if self.landmarks.shape != (len(self.names), N_LANDMARKS, 2):
            raise ValueError(f"landmarks must be shaped ({len(self.names)}, {N_LANDMARKS}, 2) for "
                             f"{len(self.names)} names, got {self.landmarks.shape}")
        if self.extra is None or (len(self.extra.columns) == 0 and len(self.extra) != len(self.names)):
            self.extra = pd.DataFrame(index=pd.RangeIndex(len(self.names)))
        if len(self.extra) != len(self.names):
            raise ValueError(f"extra has {len(self.extra)} rows for {len(self.names)} names")
        self.extra = self.extra.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx) -> "AnnotationSet":
        """Rows selected by an int, a slice, a sequence of ints or a boolean mask (order kept as given)."""
        if isinstance(idx, (int, np.integer)):
            idx = [int(idx)]
        rows = np.arange(len(self))[idx]
        return AnnotationSet(names=[self.names[i] for i in rows], landmarks=self.landmarks[rows].copy(),
                             extra=self.extra.iloc[rows].reset_index(drop=True), source=self.source,
                             skipped=list(self.skipped), warnings=list(self.warnings))

    def index(self, name: str) -> int:
        """Row of an image name (``ValueError`` if absent)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"no annotations for {name!r} in {self.source or 'this set'}") from None

    def get(self, name: str) -> np.ndarray:
        """``(19, 2)`` landmarks of one image by name."""
        return self.landmarks[self.index(name)]

    def to_frame(self) -> pd.DataFrame:
        """The study table: ``image_name``, ``1_x … 19_y``, then the extra columns."""
        return landmarks_to_frame(self.names, self.landmarks, self.extra)


# --- column checks -------------------------------------------------------------------------

_COORD_LIKE = [
    re.compile(r"^\D*?(\d+)[\s_.\-]*([xy])$", re.IGNORECASE),   # 1x, 1-x, L1_X, p1.x
    re.compile(r"^([xy])[\s_.\-]*(\d+)$", re.IGNORECASE),        # x1, X_1
]


def _suggest(column: str) -> str | None:
    """The standard column a misnamed one probably means (``'1x'`` → ``'1_x'``), else None."""
    text = column.strip()
    for pattern in _COORD_LIKE:
        m = pattern.match(text)
        if m:
            a, b = m.groups()
            number, axis = (a, b) if a.isdigit() else (b, a)
            candidate = f"{int(number)}_{axis.lower()}"
            if candidate in COORD_COLUMNS:
                return candidate
    squashed = re.sub(r"[^a-z]", "", text.lower())
    if squashed in ("imagename", "image", "name", "filename", "file", "img", "imagefile"):
        return NAME_COLUMN
    return None


def check_columns(columns: Iterable[str]) -> list[str]:
    """Problems with a CSV header (empty list when it has ``image_name`` and all 38 coordinates)."""
    columns = [str(c) for c in columns]
    problems = []
    present = set(columns)
    for col in columns:
        base = re.sub(r"\.\d+$", "", col)  # pandas renames repeated headers to 'x.1'
        if base != col and base in present:
            problems.append(f"column '{base}' appears more than once")
    required = [NAME_COLUMN, *COORD_COLUMNS]
    missing = [c for c in required if c not in present]
    if missing:
        hints = {}
        for col in columns:
            if col in required:
                continue
            target = _suggest(col)
            if target in missing:
                hints[target] = col
        for target, col in hints.items():
            problems.append(f"column '{col}' should be named '{target}'")
        still = [c for c in missing if c not in hints]
        if still:
            problems.append(f"missing column{'s' if len(still) > 1 else ''}: {', '.join(still)} "
                            f"(expected image_name,1_x,1_y,...,{N_LANDMARKS}_x,{N_LANDMARKS}_y)")
    return problems


# --- value checks --------------------------------------------------------------------------

def _row_label(i: int, name: str) -> str:
    return f"row {i + 1} ('{name}')" if name else f"row {i + 1}"


def _parse_coordinate(text: str) -> tuple[float, str | None]:
    """A cell's value and a problem description (None when it is a finite number)."""
    text = text.strip()
    if text == "":
        return math.nan, "is empty"
    try:
        value = float(text)
    except ValueError:
        return math.nan, f"'{text}' is not a number"
    if math.isnan(value):
        return math.nan, "is NaN"
    if math.isinf(value):
        return math.nan, f"'{text}' is not finite"
    return value, None


def _landmark_label(k: int) -> str:
    return f"landmark {k + 1} ({NAMES[k]})"


def validate_landmarks(landmarks: np.ndarray, size: tuple[int, int] | None = None,
                       names: Sequence[str] | None = None) -> list[str]:
    """Problems in ``(N, 19, 2)`` or ``(19, 2)`` (x, y) landmarks: non-finite, negative, or outside
    an image of ``size = (width, height)`` (``0 ≤ x < width``, ``0 ≤ y < height``)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim == 2:
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[1:] != (N_LANDMARKS, 2):
        return [f"landmarks must be shaped (N, {N_LANDMARKS}, 2), got {np.shape(landmarks)}"]
    names = list(names) if names is not None else [""] * len(pts)
    problems = []
    for i, row in enumerate(pts):
        where = _row_label(i, names[i])
        for k, (x, y) in enumerate(row):
            for axis, v in (("x", x), ("y", y)):
                col = f"{k + 1}_{axis}"
                if not np.isfinite(v):
                    problems.append(f"{where}, column {col}: value is not finite")
                elif v < 0:
                    problems.append(f"{where}, column {col}: coordinate {v:g} is negative")
            if size is not None and np.isfinite([x, y]).all() and x >= 0 and y >= 0:
                w, h = size
                if x >= w or y >= h:
                    problems.append(f"{where}: {_landmark_label(k)} at ({x:g}, {y:g}) lies outside "
                                    f"the {w}×{h} image")
    return problems


def _unsafe_name(name: str) -> bool:
    """True for absolute paths or names that climb out of the image folder."""
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or ".." in pure.parts:
            return True
    return False


# --- reading -------------------------------------------------------------------------------

def _load_text(src: CsvSource) -> tuple[str, str]:
    """CSV text and a source label from a path, a text/binary buffer, or a DataFrame."""
    if isinstance(src, pd.DataFrame):
        return src.to_csv(index=False), "<DataFrame>"
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise AnnotationError(str(src), [f"file not found: {src}"])
        if path.is_dir():
            raise AnnotationError(str(src), ["is a directory, not a CSV file"])
        raw: bytes | str = path.read_bytes()
        label = str(src)
    elif hasattr(src, "read"):
        label = str(getattr(src, "name", "") or "<uploaded CSV>")
        raw = src.getvalue() if hasattr(src, "getvalue") else src.read()
    else:
        raise TypeError(f"expected a path, a file object or a DataFrame, got {type(src).__name__}")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            raw = bytes(raw).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise AnnotationError(label, [f"is not UTF-8 text ({exc})"]) from exc
    return raw.lstrip("\ufeff"), label


# Landmarks that the common 13-landmark scheme of CVM datasets lacks (ours 5, 7, 8, 13, 15, 16).
SCHEME_13_ABSENT = (5, 7, 8, 13, 15, 16)


def _read_annotations(src: CsvSource, image_dir, missing_images: str, check_bounds: bool | str,
                      optional_landmarks: Iterable[int] = (),
                      allow_missing: bool = False) -> tuple[AnnotationSet | None, list[str], str]:
    """Parse and validate; returns ``(set or None, problems, source label)``."""
    optional = {int(k) for k in optional_landmarks}
    if missing_images not in MISSING_IMAGE_POLICIES:
        raise ValueError(f"missing_images must be one of {MISSING_IMAGE_POLICIES}, got {missing_images!r}")
    if check_bounds not in (True, False, "warn"):
        raise ValueError(f"check_bounds must be True, False or 'warn', got {check_bounds!r}")
    text, label = _load_text(src)
    if not text.strip():
        return None, ["is empty (no header, no rows)"], label
    try:
        with warnings.catch_warnings():
            # index_col=False: rows longer than the header are an error, not a silent index column.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True,
                                index_col=False)
    except pd.errors.ParserWarning:
        return None, ["is not a readable CSV (some rows have more fields than the header)"], label
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        return None, [f"is not a readable CSV ({str(exc).strip()})"], label
    table.columns = [str(c).strip() for c in table.columns]
    problems = check_columns(table.columns)
    if problems:
        return None, problems, label
    if len(table) == 0:
        return None, ["has a header but no data rows"], label

    names = [str(v).strip() for v in table[NAME_COLUMN]]
    coords = np.full((len(table), len(COORD_COLUMNS)), np.nan)
    cells = table[list(COORD_COLUMNS)].to_numpy()
    first_row: dict[str, int] = {}
    for i, name in enumerate(names):
        where = _row_label(i, name)
        if not name:
            problems.append(f"{where}, column {NAME_COLUMN}: image name is empty")
        elif name in first_row:
            problems.append(f"image_name '{name}' is duplicated: rows {first_row[name] + 1} and {i + 1}")
        else:
            first_row[name] = i
            if _unsafe_name(name):
                problems.append(f"{where}, column {NAME_COLUMN}: must be a relative path inside the image folder")
        empty_optional = {k for k in optional
                          if not str(cells[i, 2 * k - 2]).strip() and not str(cells[i, 2 * k - 1]).strip()}
        for j, col in enumerate(COORD_COLUMNS):
            if j // 2 + 1 in empty_optional:
                continue  # both cells empty: an absent landmark of the 13-landmark scheme (NaN)
            value, problem = _parse_coordinate(str(cells[i, j]))
            if problem == "is empty" and optional and j // 2 + 1 not in optional:
                problem = (f"is empty (only landmarks {', '.join(map(str, sorted(optional)))} may be left "
                           f"empty: the 13-landmark scheme)")
            if problem == "is empty" and allow_missing:
                partner = COORD_COLUMNS[j ^ 1]  # the other coordinate of the same landmark
                if str(cells[i, j ^ 1]).strip() != "":
                    problems.append(f"{where}, column {col}: is empty but {partner} is not")
                coords[i, j] = math.nan
                continue
            if problem:
                problems.append(f"{where}, column {col}: {problem}")
            elif value < 0:
                problems.append(f"{where}, column {col}: coordinate {value:g} is negative")
            coords[i, j] = value
    landmarks = coords.reshape(len(table), N_LANDMARKS, 2)

    keep = np.ones(len(table), dtype=bool)
    skipped: list[str] = []
    outside: list[str] = []
    if image_dir is not None:
        from cvs_core.imaging import ImageError, image_size

        folder = Path(image_dir)
        for i, name in enumerate(names):
            if not name or _unsafe_name(name):
                continue
            path = folder / name
            where = _row_label(i, name)
            if not path.is_file():
                if missing_images == "error":
                    problems.append(f"{where}: image file not found: {path}")
                elif missing_images == "skip":
                    keep[i] = False
                    skipped.append(f"{name}: image file not found in {folder}")
                continue
            if not check_bounds:
                continue
            try:
                size = image_size(path)
            except ImageError as exc:
                problems.append(f"{where}: image cannot be read: {exc}")
                continue
            row = landmarks[i]
            w, h = size
            for k, (x, y) in enumerate(row):
                if np.isfinite([x, y]).all() and x >= 0 and y >= 0 and (x >= w or y >= h):
                    outside.append(f"{where}, columns {k + 1}_x/{k + 1}_y: {_landmark_label(k)} at "
                                    f"({x:g}, {y:g}) lies outside the {w}×{h} image")

    extra_cols = [c for c in table.columns if c != NAME_COLUMN and c not in COORD_COLUMNS]
    if extra_cols:
        # Re-parse the extra columns with pandas' type inference (numbers stay numbers).
        extra = pd.read_csv(io.StringIO(text), usecols=lambda c: str(c).strip() in extra_cols,
                            skipinitialspace=True, index_col=False)
        extra.columns = [str(c).strip() for c in extra.columns]
    else:
        extra = pd.DataFrame(index=pd.RangeIndex(len(table)))
    bound_warnings: list[str] = []
    if check_bounds == "warn":
        bound_warnings = outside
    else:
        problems += outside
    aset = AnnotationSet(names=[n for n, k in zip(names, keep) if k], landmarks=landmarks[keep],
                         extra=extra[keep].reset_index(drop=True), source=label, skipped=skipped,
                         warnings=bound_warnings)
    return aset, problems, label


def read_annotations(path_or_buffer: CsvSource, image_dir: str | os.PathLike | None = None,
                     missing_images: str = "error", check_bounds: bool | str = True,
                     optional_landmarks: Iterable[int] = (), allow_missing: bool = False) -> AnnotationSet:
    """Read and validate a study CSV → :class:`AnnotationSet` (landmarks ``(N, 19, 2)`` float64).

    image_dir: folder holding the images named in ``image_name``; when given, each image must exist
    (``missing_images``: ``"error"``; ``"skip"`` drops the row and records it in ``skipped``;
    ``"ignore"`` keeps it unchecked) and, with ``check_bounds``, every landmark must lie inside it
    (size read from the image header); ``check_bounds="warn"`` records those in ``warnings``
    instead (the study's own ``LC (11).jpg`` has C4's inferior corners below its 600-px ROI).
    optional_landmarks: 1-based landmarks whose two cells may both be empty (→ NaN), e.g.
    :data:`SCHEME_13_ABSENT` for 13-landmark files (staging and evaluation accept those; training
    needs all 19). Any other empty cell stays a problem naming its row and column.
    ``allow_missing=True`` accepts any landmark whose two cells are both empty (label files that
    annotate a subset, with gaps that differ per image): NaN, not scored by
    ``metrics.radial_errors(..., missing_truth="skip")``.
    Raises :class:`AnnotationError` listing all problems.
    """
    aset, problems, label = _read_annotations(path_or_buffer, image_dir, missing_images, check_bounds,
                                              optional_landmarks, allow_missing)
    if problems or aset is None:
        raise AnnotationError(label, problems)
    return aset


def validate_annotations(path_or_buffer: CsvSource, image_dir: str | os.PathLike | None = None,
                         missing_images: str = "error", check_bounds: bool | str = True,
                         optional_landmarks: Iterable[int] = ()) -> list[str]:
    """The problems :func:`read_annotations` would raise, as a list (empty when the file is fine)."""
    return _read_annotations(path_or_buffer, image_dir, missing_images, check_bounds, optional_landmarks)[1]


# --- writing -------------------------------------------------------------------------------

def landmarks_to_frame(names: Sequence[str], landmarks: np.ndarray,
                       extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """``names`` (N) + landmarks ``(N, 19, 2)`` (x, y) (+ extra, N rows) → the study table.

    Coordinate columns are int64 when every value is integral, else float64.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim == 2:
        pts = pts[None]
    names = [str(n) for n in names]
    if pts.shape != (len(names), N_LANDMARKS, 2):
        raise ValueError(f"landmarks must be shaped ({len(names)}, {N_LANDMARKS}, 2), got {pts.shape}")
    flat = pts.reshape(len(names), 2 * N_LANDMARKS)
    if flat.size and np.isfinite(flat).all() and np.all(flat == np.round(flat)):
        flat = flat.astype(np.int64)
    frame = pd.DataFrame(flat, columns=list(COORD_COLUMNS))
    frame.insert(0, NAME_COLUMN, names)
    if extra is not None and len(extra.columns):
        if len(extra) != len(names):
            raise ValueError(f"extra has {len(extra)} rows for {len(names)} names")
        clash = [c for c in extra.columns if c in frame.columns]
        if clash:
            raise ValueError(f"extra columns clash with the standard ones: {clash}")
        frame = pd.concat([frame, extra.reset_index(drop=True)], axis=1)
    return frame


def _as_set(data) -> AnnotationSet:
    if isinstance(data, AnnotationSet):
        return data
    if isinstance(data, tuple) and len(data) in (2, 3):
        return AnnotationSet(names=list(data[0]), landmarks=data[1],
                             extra=data[2] if len(data) == 3 and data[2] is not None else pd.DataFrame())
    raise TypeError("expected an AnnotationSet or a (names, landmarks[, extra]) tuple")


def format_annotations(data) -> str:
    """CSV text of an AnnotationSet or ``(names, landmarks[, extra])``; integers when every
    coordinate is integral, otherwise floats with 3 decimals; NaN coordinates are written empty."""
    frame = _as_set(data).to_frame()
    coords = frame[list(COORD_COLUMNS)]
    if not all(pd.api.types.is_integer_dtype(t) for t in coords.dtypes):
        frame[list(COORD_COLUMNS)] = coords.map(lambda v: "" if not np.isfinite(v) else f"{v:.3f}")
    return frame.to_csv(index=False, lineterminator="\n")


def write_annotations(data, path: str | os.PathLike) -> Path:
    """Write an AnnotationSet or ``(names, landmarks[, extra])`` to ``path`` in the study format
    (see :func:`format_annotations`); reading it back gives the same table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_annotations(data), encoding="utf-8")
    return path
