"""Annotation datasets: correct model predictions image by image and never lose the work.

A dataset is a folder ``$CVS_HOME/datasets/<name>/`` (the app's data root, see
:func:`cvs_core.registry.cvs_home`)::

    images/        the images (PNG/JPEG/TIFF/BMP/DICOM), flat
    labels.csv     the study format: image_name, 1_x … 19_y, then status, confidence, model, who, when
    state.json     resume position, per-image undo stacks, dataset settings (ROI preset)
    training/      snapshots of the corrected rows, one per fine-tuning run

Landmarks are ``(19, 2)`` (x, y) float pixels in the frame of the image *file* (the ROI crop for a
ROI dataset, the full cephalogram for a full one). Every change is written at once with a
temporary file + ``os.replace``, so a crash or a restart never leaves a half-written file; readers
in other processes see either the old or the new version.

Per-image status: ``predicted`` (a model's landmarks, not yet checked), ``corrected`` (a person
moved at least one landmark, or accepted the prediction), ``skipped``. Images without a row have
no landmarks yet. "Next image" picks the least confident prediction first among the images that
are neither corrected nor skipped (active learning).

This module never imports Streamlit; the Annotate page calls into it.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import re
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cvs_core.annotations import COORD_COLUMNS, NAME_COLUMN, AnnotationError, format_annotations, read_annotations
from cvs_core.imaging import SUPPORTED_EXTENSIONS, ImageError, image_size
from cvs_core.landmarks import N_LANDMARKS
from cvs_core.registry import cvs_home

STATUSES = ("predicted", "corrected", "skipped")
META_COLUMNS = ("status", "confidence", "model", "who", "when")
LABELS = "labels.csv"
STATE = "state.json"
IMAGES = "images"
MAX_UNDO = 200              # undo steps kept per image
ROI_MODES = ("none", "seed")  # "none": the images are ROI crops; "seed": full cephalograms, the study's crop
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _().\-]{0,79}$")

_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


class AnnotationStoreError(ValueError):
    """A dataset, file or request that cannot be used; the message says why."""


def _lock(folder: Path) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(Path(folder).resolve()), threading.RLock())


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via ``path.<pid>.<thread>.tmp`` + ``os.replace`` (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def datasets_root() -> Path:
    """``$CVS_HOME/datasets`` (created on demand)."""
    root = cvs_home() / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    return root


def list_datasets() -> list[str]:
    """Names of the datasets under :func:`datasets_root`, sorted."""
    return sorted((d.name for d in datasets_root().iterdir() if (d / IMAGES).is_dir()), key=_natural_key)


def check_dataset_name(name: str) -> str:
    """``name`` stripped, or :class:`AnnotationStoreError` if it is not a plain folder name."""
    name = (name or "").strip()
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise AnnotationStoreError(f"invalid dataset name {name!r}: use letters, digits, spaces, _ ( ) . - "
                                   "(at most 80 characters, starting with a letter or digit)")
    return name


def safe_image_name(name: str) -> str:
    """The base name of an uploaded file if it is a supported image with a plain name, else raise."""
    base = PurePosixPath(str(name).replace("\\", "/")).name
    if not base or base.startswith(".") or not _NAME_RE.match(base):
        raise AnnotationStoreError(f"unusable image file name {name!r}")
    if Path(base).suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise AnnotationStoreError(f"{base}: not a supported image type ({', '.join(SUPPORTED_EXTENSIONS)})")
    return base


@dataclass
class ImageRecord:
    """One image's row. landmarks: ``(19, 2)`` (x, y) in the image file's frame, or None when the
    image has no row yet (status ``None``). confidence: mean per-landmark model confidence in
    [0, 1] at prediction time (NaN when the model gives none)."""

    name: str
    status: str | None
    landmarks: np.ndarray | None
    confidence: float = math.nan
    model: str = ""
    who: str = ""
    when: str = ""

    @property
    def complete(self) -> bool:
        """True when the record has all 19 landmarks and every coordinate is finite."""
        return self.landmarks is not None and bool(np.isfinite(self.landmarks).all())

    @property
    def has_confidence(self) -> bool:
        """True when the prediction came with a (finite) confidence."""
        return math.isfinite(self.confidence)

    def point(self, index0: int) -> tuple[float, float]:
        """Landmark ``index0`` (0-based) as ``(x, y)`` floats, or ``(0.0, 0.0)`` when it is missing."""
        if self.landmarks is None or not np.isfinite(self.landmarks[index0]).all():
            return 0.0, 0.0
        return float(self.landmarks[index0][0]), float(self.landmarks[index0][1])


def crop_around_landmarks(image: np.ndarray, landmarks: np.ndarray, margin: float = 25):
    """Crop ``image`` (H, W[, C]) to the landmarks' bounding box plus ``margin`` px on every side
    (clipped to the image). Returns ``(crop, landmarks_in_crop)``; landmarks are ``(N, 2)`` (x, y)."""
    lms = np.asarray(landmarks, dtype=float)
    h, w = image.shape[:2]
    x0, y0 = np.floor(lms.min(axis=0) - margin).astype(int).clip(0)
    x1 = int(min(w, np.ceil(lms[:, 0].max() + margin)))
    y1 = int(min(h, np.ceil(lms[:, 1].max() + margin)))
    return image[y0:y1, x0:x1], lms - (x0, y0)


class AnnotationStore:
    """One dataset folder. Thread-safe within a process (one lock per folder); every mutating
    call re-reads nothing and writes ``labels.csv`` and ``state.json`` atomically before returning.

    Create with :meth:`create` / :meth:`open`; all landmarks are ``(19, 2)`` arrays."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        if not (self.folder / IMAGES).is_dir():
            raise AnnotationStoreError(f"{self.folder} is not an annotation dataset (no {IMAGES}/ folder)")
        self._lock = _lock(self.folder)
        self._records: dict[str, ImageRecord] = {}
        self._state: dict = {}
        self.reload()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, name: str, root: Path | None = None, roi: str = "none") -> "AnnotationStore":
        """A new, empty dataset ``<root>/<name>`` (``root`` defaults to :func:`datasets_root`)."""
        name = check_dataset_name(name)
        if roi not in ROI_MODES:
            raise AnnotationStoreError(f"roi must be one of {ROI_MODES}, got {roi!r}")
        folder = Path(root or datasets_root()) / name
        if folder.exists():
            raise AnnotationStoreError(f"a dataset named {name!r} exists already")
        (folder / IMAGES).mkdir(parents=True)
        _atomic_write(folder / STATE, json.dumps({"roi": roi, "position": None, "undo": {},
                                                  "created": _now()}, indent=1).encode())
        return cls(folder)

    @classmethod
    def open(cls, name: str, root: Path | None = None) -> "AnnotationStore":
        return cls(Path(root or datasets_root()) / check_dataset_name(name))

    def reload(self) -> None:
        """Re-read ``labels.csv`` and ``state.json`` (e.g. after another process changed them).

        Raises :class:`AnnotationStoreError` naming the file and the problems for a bad CSV."""
        with self._lock:
            self._records = self._read_labels()
            try:
                self._state = json.loads((self.folder / STATE).read_text())
            except FileNotFoundError:
                self._state = {}
            except (OSError, json.JSONDecodeError) as exc:
                raise AnnotationStoreError(f"{self.folder / STATE} is not readable JSON: {exc}") from None
            self._state.setdefault("undo", {})
            self._state.setdefault("roi", "none")

    def _read_labels(self) -> dict[str, ImageRecord]:
        path = self.folder / LABELS
        if not path.is_file():
            return {}
        try:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise AnnotationStoreError(f"{path}: not a readable CSV ({exc})") from None
        out = {}
        if "status" in raw.columns and set(COORD_COLUMNS) <= set(raw.columns):
            # skipped images that never had landmarks: status row with all coordinates empty
            blank = (raw["status"] == "skipped") & (raw[list(COORD_COLUMNS)].apply(lambda c: c.str.strip() == "").all(axis=1))
            for _, row in raw[blank].iterrows():
                out[str(row[NAME_COLUMN])] = ImageRecord(str(row[NAME_COLUMN]), "skipped",
                                                         np.full((N_LANDMARKS, 2), np.nan), math.nan, "",
                                                         str(row.get("who", "")), str(row.get("when", "")))
            raw = raw[~blank].reset_index(drop=True)
        try:
            aset = read_annotations(raw, check_bounds=False)
        except AnnotationError as exc:
            raise AnnotationStoreError(f"the dataset's labels file {path} is broken:\n{exc}") from None
        extra = aset.extra
        problems = []
        for i, name in enumerate(aset.names):
            row = extra.iloc[i] if len(extra.columns) else {}
            status = str(row.get("status", "corrected") if hasattr(row, "get") else "corrected")
            if status not in STATUSES:
                problems.append(f"row {i + 1} ({name}): status {status!r} is not one of {STATUSES}")
                continue
            conf = pd.to_numeric(row.get("confidence", math.nan), errors="coerce") if hasattr(row, "get") else math.nan

            def text(key):
                v = row.get(key, "") if hasattr(row, "get") else ""
                return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)

            out[name] = ImageRecord(name, status, aset.landmarks[i].copy(),
                                    float(conf) if conf is not None and np.isfinite(conf) else math.nan,
                                    text("model"), text("who"), text("when"))
        if problems:
            raise AnnotationStoreError(f"{path}: " + "; ".join(problems))
        return out

    # ------------------------------------------------------------------ reading
    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def images_dir(self) -> Path:
        return self.folder / IMAGES

    @property
    def roi(self) -> str:
        """The ROI preset the model must use on these images: "none" (ROI crops) or "seed"."""
        return self._state.get("roi", "none")

    def image_names(self) -> list[str]:
        """The dataset's image files, in natural order (``LC (2)`` before ``LC (10)``)."""
        return sorted((p.name for p in self.images_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS and not p.name.startswith(".")),
                      key=_natural_key)

    def image_path(self, name: str) -> Path:
        path = self.images_dir / safe_image_name(name)
        if not path.is_file():
            raise AnnotationStoreError(f"no image {name!r} in dataset {self.name!r}")
        return path

    def record(self, name: str) -> ImageRecord:
        """The image's record (status None and landmarks None when it has no row yet)."""
        with self._lock:
            rec = self._records.get(name)
            if rec is None:
                self.image_path(name)
                return ImageRecord(name, None, None)
            return ImageRecord(rec.name, rec.status, rec.landmarks.copy(), rec.confidence, rec.model, rec.who, rec.when)

    def landmarks(self, name: str) -> np.ndarray | None:
        """``(19, 2)`` landmarks of an image in its file's frame, or None."""
        return self.record(name).landmarks

    def unpredicted(self) -> list[str]:
        """Images without a row (the model has not been run on them yet)."""
        with self._lock:
            return [n for n in self.image_names() if n not in self._records]

    def counts(self) -> dict[str, int]:
        """``{"total", "predicted", "corrected", "skipped", "unlabelled"}`` image counts."""
        with self._lock:
            names = self.image_names()
            out = {"total": len(names), **{s: 0 for s in STATUSES}, "unlabelled": 0}
            for n in names:
                rec = self._records.get(n)
                out[rec.status if rec else "unlabelled"] += 1
            return out

    def to_frame(self, statuses: tuple[str, ...] = STATUSES) -> pd.DataFrame:
        """The labels table (study columns + ``status, confidence, model, who, when``), rows in
        image order, only rows whose status is in ``statuses``."""
        with self._lock:
            recs = [self._records[n] for n in self.image_names() if n in self._records
                    and self._records[n].status in statuses]
            return self._frame(recs)

    @staticmethod
    def _frame(recs: list[ImageRecord]) -> pd.DataFrame:
        from cvs_core.annotations import landmarks_to_frame

        pts = np.stack([r.landmarks for r in recs]) if recs else np.zeros((0, N_LANDMARKS, 2))
        extra = pd.DataFrame({"status": [r.status for r in recs],
                              "confidence": [round(r.confidence, 4) if np.isfinite(r.confidence) else math.nan
                                             for r in recs],
                              "model": [r.model for r in recs], "who": [r.who for r in recs],
                              "when": [r.when for r in recs]})
        return landmarks_to_frame([r.name for r in recs], np.round(pts, 2), extra)

    # ------------------------------------------------------------------ navigation
    def next_image(self, exclude: str | None = None) -> str | None:
        """The image to look at next: images without a row first (in order), then the ``predicted``
        ones by ascending confidence (least confident first; unknown confidence after known), never
        corrected or skipped ones. ``exclude`` (usually the current image) is only returned when
        nothing else is left. None when every image is corrected or skipped."""
        with self._lock:
            names = self.image_names()
            todo = [n for n in names if n not in self._records]
            order = {n: i for i, n in enumerate(names)}
            preds = [r for r in self._records.values() if r.status == "predicted" and r.name in order]
            preds.sort(key=lambda r: (not np.isfinite(r.confidence),
                                      r.confidence if np.isfinite(r.confidence) else 0.0, order[r.name]))
            ranked = todo + [r.name for r in preds]
            for n in ranked:
                if n != exclude:
                    return n
            return ranked[0] if ranked else None

    @property
    def position(self) -> str | None:
        """The image the user was on (resume point), if it still exists."""
        pos = self._state.get("position")
        return pos if pos and (self.images_dir / pos).is_file() else None

    def set_position(self, name: str) -> None:
        with self._lock:
            self.image_path(name)
            if self._state.get("position") != name:
                self._state["position"] = name
                self._save_state()

    # ------------------------------------------------------------------ changes
    def set_prediction(self, name: str, landmarks, confidence=None, model: str = "") -> bool:
        """Store a model's landmarks for an image that has no row or only a prediction (corrected
        and skipped images are left alone; returns False then). ``confidence``: ``(19,)`` per
        landmark or a scalar; its mean (NaNs ignored) is kept for the active-learning order."""
        pts = self._check_points(landmarks)
        conf = np.asarray(confidence if confidence is not None else np.nan, dtype=np.float64).ravel()
        mean = float(np.nanmean(conf)) if np.isfinite(conf).any() else math.nan
        with self._lock:
            self.image_path(name)
            rec = self._records.get(name)
            if rec is not None and rec.status != "predicted":
                return False
            self._records[name] = ImageRecord(name, "predicted", pts, mean, model, "model", _now())
            self._state["undo"].pop(name, None)
            self._save()
            return True

    def move_landmark(self, name: str, index0: int, x: float, y: float, who: str = "") -> ImageRecord:
        """Move landmark ``index0`` (0-based) of an image to ``(x, y)`` (its file's frame); the image
        becomes ``corrected``. The previous state goes on the image's undo stack."""
        if not 0 <= int(index0) < N_LANDMARKS:
            raise AnnotationStoreError(f"landmark index {index0} is outside 0..{N_LANDMARKS - 1}")
        if not (np.isfinite(x) and np.isfinite(y)):
            raise AnnotationStoreError(f"landmark {int(index0) + 1}: coordinates must be finite, got ({x}, {y})")
        with self._lock:
            rec = self._require(name)
            pts = rec.landmarks.copy()
            pts[int(index0)] = (float(x), float(y))
            return self._change(rec, pts, "corrected", who)

    def set_landmarks(self, name: str, landmarks, who: str = "", status: str = "corrected") -> ImageRecord:
        """Replace all 19 landmarks of an image (undoable), e.g. to accept a prediction unchanged."""
        if status not in STATUSES:
            raise AnnotationStoreError(f"status must be one of {STATUSES}, got {status!r}")
        pts = self._check_points(landmarks)
        with self._lock:
            self.image_path(name)
            rec = self._records.get(name) or ImageRecord(name, None, pts.copy())
            return self._change(rec, pts, status, who)

    def accept(self, name: str, who: str = "") -> ImageRecord:
        """Mark an image's current landmarks as checked (``corrected``) without moving any."""
        with self._lock:
            rec = self._require(name)
            return self._change(rec, rec.landmarks.copy(), "corrected", who)

    def skip(self, name: str, who: str = "") -> ImageRecord:
        """Mark an image ``skipped`` (unusable, or to leave for later); undoable. An image without
        landmarks gets NaN coordinates (written as empty cells)."""
        with self._lock:
            self.image_path(name)
            rec = self._records.get(name) or ImageRecord(name, None, np.full((N_LANDMARKS, 2), np.nan))
            return self._change(rec, rec.landmarks.copy(), "skipped", who)

    def undo(self, name: str) -> bool:
        """Restore the image's state before its last change (landmarks, status, who, when).
        Returns False when there is nothing to undo."""
        with self._lock:
            stack = self._state["undo"].get(name) or []
            if not stack:
                return False
            prev = stack.pop()
            if prev["status"] is None:
                self._records.pop(name, None)
            else:
                pts = np.array([[np.nan if v is None else v for v in p] for p in prev["landmarks"]], dtype=np.float64)
                self._records[name] = ImageRecord(name, prev["status"], pts, _f(prev.get("confidence")),
                                                  prev.get("model", ""), prev.get("who", ""), prev.get("when", ""))
            self._save()
            return True

    def finetune_runs(self) -> list[dict]:
        """Fine-tuning runs started on this dataset: ``[{"run", "name", "base", "started"}]``, oldest first."""
        return list(self._state.get("finetune_runs", []))

    def undo_depth(self, name: str) -> int:
        return len(self._state["undo"].get(name) or [])

    def _require(self, name: str) -> ImageRecord:
        rec = self._records.get(name)
        if rec is None:
            self.image_path(name)
            raise AnnotationStoreError(f"{name} has no landmarks yet: run the model on it first")
        return rec

    def _change(self, rec: ImageRecord, pts: np.ndarray, status: str, who: str) -> ImageRecord:
        stack = self._state["undo"].setdefault(rec.name, [])
        stack.append({"status": rec.status,
                      "landmarks": None if rec.landmarks is None else
                      [[None if not np.isfinite(v) else float(v) for v in p] for p in rec.landmarks],
                      "confidence": None if not np.isfinite(rec.confidence) else rec.confidence,
                      "model": rec.model, "who": rec.who, "when": rec.when})
        del stack[:-MAX_UNDO]
        new = ImageRecord(rec.name, status, pts, rec.confidence, rec.model, who.strip() or "anonymous", _now())
        self._records[rec.name] = new
        self._state["position"] = rec.name
        self._save()
        return ImageRecord(new.name, new.status, new.landmarks.copy(), new.confidence, new.model, new.who, new.when)

    @staticmethod
    def _check_points(landmarks) -> np.ndarray:
        pts = np.asarray(landmarks, dtype=np.float64)
        if pts.shape != (N_LANDMARKS, 2):
            raise AnnotationStoreError(f"landmarks must be shaped ({N_LANDMARKS}, 2), got {pts.shape}")
        return pts.copy()

    def _save(self) -> None:
        """Write labels.csv, then state.json. If a write fails, the in-memory view is re-read from
        disk (the files still hold the previous version) and the error is raised."""
        try:
            text = format_annotations(_frame_as_set(self._frame(
                [self._records[n] for n in sorted(self._records, key=_natural_key)])))
            _atomic_write(self.folder / LABELS, text.encode("utf-8"))
            self._save_state()
        except BaseException:
            self.reload()
            raise

    def _save_state(self) -> None:
        _atomic_write(self.folder / STATE, json.dumps(self._state, indent=1).encode())

    # ------------------------------------------------------------------ adding images
    def add_image(self, name: str, data: bytes) -> str:
        """Add one uploaded image (validated from its header: type, size limits). Returns the name
        it got; an existing image of that name is kept and the upload refused."""
        base = safe_image_name(name)
        try:
            image_size(data, name=base)
        except ImageError as exc:
            raise AnnotationStoreError(str(exc)) from None
        with self._lock:
            target = self.images_dir / base
            if target.exists():
                raise AnnotationStoreError(f"{base} is already in dataset {self.name!r}")
            _atomic_write(target, bytes(data))
        return base

    def add_zip(self, data: bytes) -> tuple[list[str], list[str]]:
        """Add the images of an uploaded zip, with the same safety limits as training uploads
        (:mod:`cvs_core.runs`: size, member count, compression ratio, no absolute/``..`` paths or
        symlinks). Folders inside the zip are flattened. Returns ``(added names, notes)`` where
        notes say what was left out and why."""
        from cvs_core import runs
        from cvs_core.limits import limits

        max_unpacked = limits().max_unpacked_bytes
        try:
            zf, members = runs.open_checked_zip(data)
        except runs.DatasetZipError as exc:
            raise AnnotationStoreError(str(exc)) from None
        added, notes, total = [], [], 0
        for m in members:
            try:
                rel = runs.checked_member_path(m)
            except runs.DatasetZipError as exc:
                raise AnnotationStoreError(str(exc)) from None
            if rel is None:
                continue
            if rel.suffix.lower() not in SUPPORTED_EXTENSIONS:
                notes.append(f"{m.filename}: not an image, left out")
                continue
            total += m.file_size
            if total > max_unpacked:
                raise AnnotationStoreError("the zip's images unpack to more than the size limit")
            try:
                with zf.open(m) as src:
                    blob = src.read(max_unpacked + 1)
            except (zipfile.BadZipFile, OSError) as exc:
                raise AnnotationStoreError(f"corrupt zip member {m.filename!r}: {exc}") from None
            try:
                added.append(self.add_image(rel.name, blob))
            except AnnotationStoreError as exc:
                notes.append(str(exc))
        return added, notes

    # ------------------------------------------------------------------ export
    def export_csv(self, statuses: tuple[str, ...] = STATUSES) -> bytes:
        """The labels as study-format CSV bytes (with the status columns), rows in image order."""
        return format_annotations(_frame_as_set(self.to_frame(statuses))).encode("utf-8")

    def export_zip(self) -> bytes:
        """A zip of ``<name>/labels.csv`` and ``<name>/images/*`` (readable by the Training page's
        dataset upload and by :func:`cvs_core.runs.extract_dataset_zip`)."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{self.name}/{LABELS}", self.export_csv())
            for n in self.image_names():
                zf.write(self.images_dir / n, f"{self.name}/{IMAGES}/{n}", compress_type=zipfile.ZIP_STORED)
        return buf.getvalue()

    def corrected_snapshot(self) -> Path:
        """Write the corrected rows to ``training/corrected-<time>.csv`` (a frozen copy for a
        training run, so later corrections do not change a running job) and return its path."""
        frame = self.to_frame(("corrected",))
        if not len(frame):
            raise AnnotationStoreError("no corrected images yet: correct (or accept) at least one image first")
        folder = self.folder / "training"
        folder.mkdir(exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        path = folder / f"corrected-{stamp}.csv"
        _atomic_write(path, format_annotations(_frame_as_set(frame)).encode("utf-8"))
        return path


def _f(v) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _frame_as_set(frame: pd.DataFrame):
    """A labels DataFrame → ``(names, landmarks (N, 19, 2), extra)`` for ``format_annotations``."""
    names = frame[NAME_COLUMN].astype(str).tolist()
    pts = frame[list(COORD_COLUMNS)].to_numpy(dtype=np.float64).reshape(len(frame), N_LANDMARKS, 2)
    extra = frame.drop(columns=[NAME_COLUMN, *COORD_COLUMNS]).reset_index(drop=True)
    return names, pts, extra


def predict_missing(store: AnnotationStore, predictor, batch: int = 4, progress=None) -> int:
    """Run ``predictor`` (a :class:`cvs_core.predict.Predictor`) on the images without a row and store
    its landmarks (in each image file's frame) and confidences as ``predicted``. ``progress(done,
    total)`` is called after each batch. Returns how many images were predicted; unreadable images
    are skipped (status ``skipped``, who ``unreadable``)."""
    from cvs_core.imaging import read_image

    todo = store.unpredicted()
    done = 0
    for start in range(0, len(todo), batch):
        names, images = [], []
        for n in todo[start:start + batch]:
            try:
                images.append(read_image(store.image_path(n)).as_uint8())
                names.append(n)
            except ImageError:
                store.skip(n, who="unreadable")
        if images:
            for n, pred in zip(names, predictor.predict_batch(images, roi=None if store.roi == "none" else store.roi)):
                store.set_prediction(n, pred.landmarks, pred.confidence, model=getattr(predictor, "name", ""))
                done += 1
        if progress:
            progress(min(start + batch, len(todo)), len(todo))
    return done


# ---------------------------------------------------------------------- fine-tuning
@dataclass
class FinetuneSettings:
    """A fine-tuning run on a dataset's corrected images, starting from a registered model.

    base: model name or folder to start from (``init_from``); its architecture, preprocessing,
    network size and heatmap sigma are reused so the weights fit. epochs, lr, batch_size: the
    usual; repeat: how often each corrected image appears (augmented) per epoch. name: the name
    the finished model is registered under (default ``<dataset>_ft``)."""

    base: str = "unet_heatmap"
    epochs: int = 10
    lr: float = 2e-4
    batch_size: int = 4
    repeat: int = 8
    augment: bool = True
    name: str | None = None
    time_limit_s: float | None = None


def finetune_config(store: AnnotationStore, settings: FinetuneSettings = FinetuneSettings()):
    """The :class:`cvs_core.train.TrainConfig` of a fine-tuning run on the corrected images (writes
    the frozen CSV snapshot it trains on)."""
    from cvs_core.registry import read_manifest, resolve_model
    from cvs_core.train import ARCHITECTURES, TrainConfig

    base = resolve_model(settings.base)
    manifest = read_manifest(base)
    arch = manifest["architecture"]
    if arch not in ARCHITECTURES:
        raise AnnotationStoreError(f"model {settings.base!r} has architecture {arch!r}, which cannot be fine-tuned "
                                   f"here (trainable: {', '.join(ARCHITECTURES)})")
    csv = store.corrected_snapshot()
    pre = dict(manifest["preprocess"])
    if store.roi != "none":  # full cephalograms: the model crops the ROI itself, as the Predictor does
        from cvs_core.preprocess import SEED_ROI_SCALE

        pre["roi"] = store.roi
        pre["roi_scale"] = SEED_ROI_SCALE if store.roi == "seed" else 1.0
    kwargs = {k: v for k, v in (manifest.get("builder_kwargs") or {}).items() if k != "imagenet"}
    sigma = float((manifest.get("codec") or {}).get("sigma", 2.0))
    return TrainConfig(model=arch, preset="improved", epochs=int(settings.epochs), lr=float(settings.lr),
                       batch_size=int(settings.batch_size), csv=str(csv), images=str(store.images_dir),
                       repeat_csv=int(settings.repeat), augment=bool(settings.augment), preprocess=pre,
                       builder_kwargs=kwargs, heatmap_sigma=sigma, init_from=str(base),
                       time_limit_s=settings.time_limit_s, name=settings.name or f"{store.name}_ft")


def start_finetune(store: AnnotationStore, settings: FinetuneSettings = FinetuneSettings()) -> str:
    """Start a background training run (:func:`cvs_core.runs.start_run`) on the corrected images;
    returns the run id. Record it in the dataset so the page can follow and register it."""
    from cvs_core import runs

    config = finetune_config(store, settings)
    run_id = runs.start_run(config)
    with store._lock:
        store._state.setdefault("finetune_runs", []).append({"run": run_id, "name": config.name,
                                                            "base": settings.base, "started": _now()})
        store._save_state()
    return run_id


def finish_finetune(run_id: str, name: str, base: str | None = None) -> dict:
    """Follow a fine-tuning run: once it has succeeded, register its model as ``name`` (a user
    model, listed by :func:`cvs_core.registry.list_models`, hence by Compare). Decode-only codec
    options of ``base`` (e.g. the heatmap shape prior) are copied, since training does not set them.
    Returns the run's info (``registered_as`` set once registered). Idempotent."""
    from cvs_core import runs
    from cvs_core.registry import ModelError, read_manifest, resolve_model, write_manifest

    info = runs.run_info(run_id)
    if info["status"] != "succeeded" or info.get("registered_as"):
        return info
    try:
        folder = runs.register_run_model(run_id, name)
    except ModelError as exc:
        if "exists already" not in str(exc):
            raise
        folder = runs.register_run_model(run_id, f"{name}_{run_id[-4:]}")
    if base:
        base_codec = read_manifest(resolve_model(base)).get("codec") or {}
        manifest = read_manifest(folder)
        codec = manifest.get("codec") or {}
        if base_codec.get("kind") == codec.get("kind") and "shape_prior" in base_codec \
                and codec.get("shape_prior") != base_codec["shape_prior"]:
            codec["shape_prior"] = base_codec["shape_prior"]
            manifest["codec"] = codec
            manifest.setdefault("notes", []).append(f"decode option shape_prior copied from base model {base}")
            write_manifest(folder, manifest)
    return runs.run_info(run_id)
