"""Resource limits for a hosted lab, in one place, used by the CLI and the app alike.

:func:`limits` returns a :class:`Limits` whose every field can be overridden by an environment
variable (``CVS_LIMIT_<FIELD NAME IN CAPITALS>``, e.g. ``CVS_LIMIT_MAX_PIXELS=80000000``); the
values are read again on every call so a test or an operator can change them without a restart.

What is bounded, and where it is checked:

- **pixels and decoded bytes** of an image, from its header *before* any pixel is decoded
  (:func:`check_image_header`, called by ``imaging.read_image``): a 7000² float64 RGBA TIFF
  compresses to 1.6 MB but decodes to 1.5 GB, so the pixel count alone is not enough;
- **bytes per file** read from a path or an upload (:func:`read_file_bounded`): ``/dev/zero`` and
  other non-regular files are refused, a file is never read past the limit;
- **image aspect ratio** (a 10000×10 strip is not a radiograph; resizing it to the model's input
  would be meaningless);
- **zip uploads**: compressed bytes, members, total uncompressed bytes, per-member and overall
  compression ratio (``runs.extract_dataset_zip``); temporary extractions are deleted
  (:func:`runs.temporary_dataset`), kept ones are pruned to :attr:`Limits.max_uploads_bytes`;
- **builder arguments** of a weights-only ``.h5`` rebuild (:func:`check_builder_kwargs`):
  ``{"n_filters": 1024}`` would allocate > 5 GB;
- **ROI boxes** against the image they cut (:func:`check_roi_box`): a box may run past the image
  edge (it is padded) but by at most the image's own size;
- **the phantom cache** (:func:`evict_cache_folders`): oldest folders removed beyond
  :attr:`Limits.max_phantom_cache_bytes`;
- **concurrent jobs per user** (:func:`job_slot`);
- **evaluation worker processes** (:func:`check_eval_workers`, called by ``workers.WorkerPool``).

Every refusal raises :class:`LimitError` (a ``ValueError``) whose message names the limit and the
environment variable that raises it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
from dataclasses import dataclass, fields
from pathlib import Path

MB = 2 ** 20
GB = 2 ** 30


class LimitError(ValueError):
    """An input or request over one of the lab's resource limits; the message says which."""


@dataclass(frozen=True)
class Limits:
    """The lab's resource limits (defaults suit a shared 2–16 core server with ≥ 8 GB of memory)."""

    max_pixels: int = 50_000_000            # width × height of one image (from the header)
    max_decoded_bytes: int = 400 * MB       # width × height × samples × bytes per sample, as stored
    max_aspect_ratio: float = 20.0          # longer side / shorter side
    max_file_bytes: int = 200 * MB          # one image file or upload (matches server.maxUploadSize)
    max_zip_bytes: int = 500 * MB           # one uploaded dataset zip, compressed
    max_unpacked_bytes: int = 1 * GB        # all members of one zip, uncompressed
    max_zip_members: int = 20_000
    max_zip_member_ratio: float = 200.0     # uncompressed / compressed, per member
    max_zip_total_ratio: float = 50.0       # uncompressed / compressed, whole archive
    max_uploads_bytes: int = 4 * GB         # extracted datasets kept under $CVS_HOME/uploads
    max_builder_filters: int = 128          # n_filters / base_filters of a rebuilt architecture
    max_builder_depth: int = 6
    max_input_side: int = 1024              # input_size sides of a rebuilt architecture
    max_phantom_cache_bytes: int = 1 * GB   # $CVS_HOME/cache/phantoms_* folders together
    max_jobs_per_user: int = 2              # concurrent predictions/evaluations/runs of one user
    max_eval_workers: int = 16              # model processes of one evaluation (each holds the model)

    @staticmethod
    def env_name(field_name: str) -> str:
        return f"CVS_LIMIT_{field_name.upper()}"


def limits() -> Limits:
    """The limits in force: the defaults, each overridden by ``CVS_LIMIT_<NAME>`` when set.

    Raises :class:`LimitError` for an override that is not a positive number."""
    values = {}
    for f in fields(Limits):
        raw = os.environ.get(Limits.env_name(f.name))
        if raw is None or raw.strip() == "":
            continue
        try:
            value = float(raw) if f.type in ("float", float) else int(float(raw))
        except ValueError:
            raise LimitError(f"{Limits.env_name(f.name)}={raw!r} is not a number") from None
        if value <= 0:
            raise LimitError(f"{Limits.env_name(f.name)}={raw!r} must be positive")
        values[f.name] = value
    return Limits(**values)


def _size(n: float) -> str:
    if n >= GB:
        return f"{n / GB:.1f} GB"
    if n >= MB:
        return f"{n / MB:.1f} MB"
    return f"{int(n)} bytes"


def _hint(name: str) -> str:
    return f"(limit {Limits.env_name(name)})"


# ----------------------------------------------------------------------------- images
def check_image_header(label: str, width: int, height: int, samples: int = 1, bytes_per_sample: float = 1,
                       frames: int = 1, lim: Limits | None = None) -> None:
    """Refuse an image from its header, before decoding: pixel count, decoded bytes, aspect ratio.

    ``samples``: channels per pixel as stored (RGBA = 4); ``bytes_per_sample``: as stored (float64 = 8);
    ``frames``: frames/pages the decoder materialises at once."""
    lim = lim or limits()
    width, height = int(width), int(height)
    if width * height > lim.max_pixels:
        raise LimitError(f"'{label}' declares {width}×{height} = {width * height / 1e6:.1f} megapixels, over the "
                         f"{lim.max_pixels / 1e6:g}-megapixel limit {_hint('max_pixels')}; downscale it")
    decoded = width * height * max(1, int(samples)) * max(1.0, float(bytes_per_sample)) * max(1, int(frames))
    if decoded > lim.max_decoded_bytes:
        raise LimitError(f"'{label}' would decode to {_size(decoded)} ({width}×{height}, {samples} sample(s) of "
                         f"{bytes_per_sample:g} byte(s){f', {frames} frames' if frames > 1 else ''}), over the "
                         f"{_size(lim.max_decoded_bytes)} limit {_hint('max_decoded_bytes')}; save it as 8- or "
                         f"16-bit greyscale")
    if width and height and max(width, height) / min(width, height) > lim.max_aspect_ratio:
        raise LimitError(f"'{label}' is {width}×{height} px, an aspect ratio over {lim.max_aspect_ratio:g}:1 "
                         f"{_hint('max_aspect_ratio')}; a lateral cephalogram or vertebral ROI is never that thin")


def read_file_bounded(path: str | os.PathLike, label: str | None = None, lim: Limits | None = None) -> bytes:
    """Read a regular file of at most :attr:`Limits.max_file_bytes` bytes.

    Refuses devices, FIFOs and sockets (``/dev/zero`` would never end) and bigger files, without
    reading more than the limit + 1 bytes. Raises :class:`LimitError` (too big, not a regular file)
    or ``OSError`` (unreadable)."""
    lim = lim or limits()
    label = label or str(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise LimitError(f"'{label}' is not a regular file (a device, pipe or socket); give an image file")
    if st.st_size > lim.max_file_bytes:
        raise LimitError(f"'{label}' is {_size(st.st_size)}, over the {_size(lim.max_file_bytes)} per-file limit "
                         f"{_hint('max_file_bytes')}")
    with open(path, "rb") as f:
        data = f.read(lim.max_file_bytes + 1)
    if len(data) > lim.max_file_bytes:  # grew while reading
        raise LimitError(f"'{label}' is over the {_size(lim.max_file_bytes)} per-file limit {_hint('max_file_bytes')}")
    return data


def check_upload_bytes(label: str, n_bytes: int, lim: Limits | None = None) -> None:
    """Refuse an in-memory upload bigger than :attr:`Limits.max_file_bytes`."""
    lim = lim or limits()
    if n_bytes > lim.max_file_bytes:
        raise LimitError(f"'{label}' is {_size(n_bytes)}, over the {_size(lim.max_file_bytes)} per-file limit "
                         f"{_hint('max_file_bytes')}")


# ----------------------------------------------------------------------------- ROI boxes
def check_roi_box(box, image_hw: tuple[int, int], lim: Limits | None = None) -> list[int]:
    """Validate an ROI box ``[x0, y0, x1, y1]`` (input pixels) against an image of ``(H, W)``.

    The box must start inside the image and may run past its right/bottom edge (that part is padded
    black) by at most the image's own width/height, so the crop never exceeds 2·W × 2·H.
    Returns the box as ints; raises :class:`LimitError`."""
    h, w = int(image_hw[0]), int(image_hw[1])
    try:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    except (TypeError, ValueError, OverflowError):
        raise LimitError(f"ROI box must be four numbers x0,y0,x1,y1; got {box!r}") from None
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise LimitError(f"ROI box {[x0, y0, x1, y1]} must have 0 ≤ x0 < x1 and 0 ≤ y0 < y1")
    if x0 >= w or y0 >= h:
        raise LimitError(f"ROI box {[x0, y0, x1, y1]} starts outside the {w}×{h} image")
    if x1 - x0 > 2 * w or y1 - y0 > 2 * h or x1 > 2 * w or y1 > 2 * h:
        raise LimitError(f"ROI box {[x0, y0, x1, y1]} is far larger than the {w}×{h} image (at most twice its "
                         f"size); give a box inside the image")
    return [x0, y0, x1, y1]


# ----------------------------------------------------------------------------- builder arguments
_FILTER_KEYS = ("n_filters", "base_filters", "filters")
_DEPTH_KEYS = ("depth",)


def check_builder_kwargs(kwargs: dict | None, lim: Limits | None = None) -> dict:
    """Bound the arguments used to rebuild an architecture (weights-only ``.h5``, uploaded manifests).

    Filter counts ≤ :attr:`Limits.max_builder_filters`, depth ≤ :attr:`Limits.max_builder_depth`,
    ``input_size`` sides ≤ :attr:`Limits.max_input_side`; every value must be a plain number, bool,
    None or a short list of numbers. Returns the kwargs; raises :class:`LimitError`."""
    lim = lim or limits()
    kwargs = dict(kwargs or {})
    for key, value in kwargs.items():
        if isinstance(value, (list, tuple)):
            if len(value) > 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise LimitError(f"builder argument {key}={value!r} must be a short list of numbers")
        elif value is not None and not isinstance(value, (int, float, bool, str)):
            raise LimitError(f"builder argument {key}={value!r} has an unsupported type {type(value).__name__}")
        if isinstance(value, str) and len(value) > 64:
            raise LimitError(f"builder argument {key} is too long")
        if key in _FILTER_KEYS and not (isinstance(value, int) and 1 <= value <= lim.max_builder_filters):
            raise LimitError(f"builder argument {key}={value!r} must be an integer in 1…{lim.max_builder_filters} "
                             f"{_hint('max_builder_filters')}")
        if key in _DEPTH_KEYS and not (isinstance(value, int) and 1 <= value <= lim.max_builder_depth):
            raise LimitError(f"builder argument {key}={value!r} must be an integer in 1…{lim.max_builder_depth} "
                             f"{_hint('max_builder_depth')}")
        if key == "input_size":
            if not (isinstance(value, (list, tuple)) and len(value) == 2
                    and all(isinstance(v, int) and 8 <= v <= lim.max_input_side for v in value)):
                raise LimitError(f"builder argument input_size={value!r} must be two integers in "
                                 f"8…{lim.max_input_side} {_hint('max_input_side')}")
        if isinstance(value, float) and not (-1e6 < value < 1e6):
            raise LimitError(f"builder argument {key}={value!r} is out of range")
    return kwargs


# ----------------------------------------------------------------------------- caches on disk
def folder_bytes(folder: Path) -> int:
    """Total size of the regular files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def evict_cache_folders(folders: list[Path], max_bytes: int, keep: tuple[Path, ...] = ()) -> list[Path]:
    """Delete the least recently used of ``folders`` until they total at most ``max_bytes``.

    ``keep``: folders never deleted (the one just written). Recency is the folder's mtime (callers
    touch a folder when they use it). Returns the deleted folders."""
    keep_resolved = {Path(k).resolve() for k in keep}
    sized = [(f.stat().st_mtime, f, folder_bytes(f)) for f in folders if f.is_dir()]
    total = sum(s for _, _, s in sized)
    removed = []
    for _mtime, folder, size in sorted(sized, key=lambda t: t[0]):
        if total <= max_bytes:
            break
        if folder.resolve() in keep_resolved:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
        removed.append(folder)
    return removed


def evict_phantom_cache(cache_root: Path, keep: tuple[Path, ...] = (), lim: Limits | None = None) -> list[Path]:
    """Keep ``cache_root/phantoms_*`` within :attr:`Limits.max_phantom_cache_bytes` (LRU by mtime)."""
    lim = lim or limits()
    cache_root = Path(cache_root)
    if not cache_root.is_dir():
        return []
    folders = [p for p in cache_root.glob("phantoms_*") if p.is_dir() and ".tmp" not in p.name]
    return evict_cache_folders(folders, lim.max_phantom_cache_bytes, keep=keep)


# ----------------------------------------------------------------------------- jobs per user
_JOBS: dict[str, int] = {}
_JOBS_LOCK = threading.Condition()  # a slot given back wakes the callers waiting for one


def active_jobs(user: str) -> int:
    """How many :func:`job_slot` blocks ``user`` holds in this process."""
    with _JOBS_LOCK:
        return _JOBS.get(user, 0)


@contextlib.contextmanager
def job_slot(user: str, lim: Limits | None = None, wait_s: float = 0.0):
    """Hold one of ``user``'s :attr:`Limits.max_jobs_per_user` concurrent job slots (this process).

    When the user already holds all of them, waits up to ``wait_s`` seconds for one to be given back
    (short interactive jobs queue), then raises :class:`LimitError` (at once with ``wait_s=0``)::

        with limits.job_slot(user_id, wait_s=30):
            result = predictor.predict(image)
    """
    import time

    lim = lim or limits()
    deadline = time.monotonic() + max(0.0, float(wait_s))
    with _JOBS_LOCK:
        while (n := _JOBS.get(user, 0)) >= lim.max_jobs_per_user:
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
                raise LimitError(f"you already have {n} job(s) running{waited}; the limit is "
                                 f"{lim.max_jobs_per_user} per user {_hint('max_jobs_per_user')}. "
                                 "Wait for one to finish.")
            _JOBS_LOCK.wait(left)
        _JOBS[user] = n + 1
    try:
        yield
    finally:
        with _JOBS_LOCK:
            _JOBS[user] -= 1
            if _JOBS[user] <= 0:
                del _JOBS[user]
            _JOBS_LOCK.notify_all()


# ----------------------------------------------------------------------------- landmark coordinates
def check_eval_workers(n: int, lim: Limits | None = None) -> int:
    """``n`` model processes for one evaluation, between 1 and :attr:`Limits.max_eval_workers`."""
    lim = lim or limits()
    if not 1 <= int(n) <= lim.max_eval_workers:
        raise LimitError(f"evaluation workers must be between 1 and {lim.max_eval_workers}, got {n} "
                         f"{_hint('max_eval_workers')}")
    return int(n)


def check_landmarks(landmarks, image_hw: tuple[int, int] | None = None, label: str = "landmarks"):
    """Validate landmark coordinates ``(19, 2)`` or ``(N, 19, 2)`` (x, y) before drawing or scoring.

    Non-finite values are refused, and so are coordinates beyond ±(image side) around the image
    ``(H, W)`` when it is given (1e300 makes OpenCV's drawing raise ``cv2.error``), or beyond ±1e6
    px without an image. Missing landmarks must be given as NaN by the readers *before* this check
    is used for drawing; here every value must be finite. Returns the array as float64."""
    import numpy as np

    arr = np.asarray(landmarks, dtype=np.float64)
    if arr.shape[-1:] != (2,):
        raise LimitError(f"{label}: expected (…, 2) coordinates, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise LimitError(f"{label}: coordinates must be finite numbers (found NaN or infinity)")
    if image_hw is not None:
        h, w = int(image_hw[0]), int(image_hw[1])
        lo_x, hi_x, lo_y, hi_y = -w, 2 * w, -h, 2 * h
    else:
        lo_x = lo_y = -1e6
        hi_x = hi_y = 1e6
    bad = (arr[..., 0] < lo_x) | (arr[..., 0] > hi_x) | (arr[..., 1] < lo_y) | (arr[..., 1] > hi_y)
    if bad.any():
        idx = np.argwhere(bad)[0]
        x, y = arr[tuple(idx)]
        where = f"{image_hw[1]}×{image_hw[0]} image" if image_hw is not None else "±1e6 px range"
        raise LimitError(f"{label}: landmark {int(idx[-1]) + 1} at ({x:.4g}, {y:.4g}) is far outside the {where}")
    return arr
