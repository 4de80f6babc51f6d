"""Small file helpers every module shares: checksums, tolerant JSON reads, atomic writes, and the
one JSON cleaner (numpy → Python, NaN/inf → null). Imports nothing from the package."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path) -> dict:
    """A JSON file as a dict; ``{}`` when it is missing or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path next to ``path`` (same suffix, so writers that check it are happy);
    when the block succeeds, rename it over ``path`` (atomic on POSIX and Windows), so readers in
    other threads or processes never see a partial file. On error the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON atomically (:func:`atomic_path`)."""
    write_text_atomic(path, json.dumps(data, indent=2))


def json_float(v, digits: int | None = None) -> float | None:
    """A number as a JSON-safe float: ``None`` for NaN/inf, rounded to ``digits`` when given."""
    v = float(v)
    if not np.isfinite(v):
        return None
    return round(v, digits) if digits is not None else v


def to_jsonable(obj, digits: int | None = None):
    """Nested dicts/lists/numpy values → strict JSON types: numpy scalars and arrays to Python,
    paths to strings, NaN/inf to None; floats rounded to ``digits`` when given."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), digits)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return json_float(obj, digits)
    if isinstance(obj, Path):
        return str(obj)
    return obj
