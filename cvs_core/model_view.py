"""What the Models screen shows, without Streamlit: readable manifest parts and upload checks."""
from __future__ import annotations

from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"              # a .keras file is a zip archive
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"      # the study's .h5 files
MODEL_SUFFIXES = (".keras", ".h5")


def check_model_file(name: str, head: bytes) -> str:
    """The suffix (".keras" or ".h5") of an uploaded model file whose first bytes are ``head``.

    Raises ``ValueError`` with a sentence naming the file (never a temporary path) when the name
    or the content is not a Keras 3 archive / HDF5 file — e.g. a CSV renamed ``.keras``."""
    suffix = Path(name).suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ValueError(f"{name} is not a model file: upload a Keras 3 .keras file or one of the study's "
                         f".h5 files (got a {suffix or 'file without extension'})")
    if suffix == ".keras" and not head.startswith(ZIP_MAGIC):
        raise ValueError(f"{name} is not a Keras 3 .keras file (those are zip archives; this one starts with "
                         f"{head[:12]!r}). Was another file renamed?")
    if suffix == ".h5" and not head.startswith(HDF5_MAGIC):
        raise ValueError(f"{name} is not an HDF5 .h5 file (it starts with {head[:12]!r}). Was another file renamed?")
    return suffix


def display_folder(folder, shipped: bool) -> str:
    """A model folder as users may see it: ``models/<name>`` for a shipped model, ``<data dir>/…`` for
    the others (a hosted lab does not show its server's paths)."""
    from cvs_core.registry import cvs_home

    folder = Path(folder)
    if shipped:
        return f"models/{folder.name}"
    try:
        return f"<data dir>/{folder.resolve().relative_to(cvs_home().resolve()).as_posix()}"
    except ValueError:
        return folder.name


def weights_checksum(manifest: dict) -> str:
    """The weights' sha256 as recorded in a manifest: the Keras file's, or the packed int8 parts'."""
    if manifest.get("weights_sha256"):
        return f"`{manifest['weights_sha256']}`"
    packed = manifest.get("packed_weights") or {}
    files = packed.get("files") or []
    if files:
        first = files[0].get("sha256", "")[:16]
        return f"packed {packed.get('scheme', '')} weights in {len(files)} parts (sha256 of the first: `{first}…`)"
    return "not recorded"


def describe_inference(manifest: dict) -> str | None:
    """One line on how the model is run beyond its preprocessing (test-time shifts), or None."""
    from cvs_core.tta import TestTimeShifts

    try:
        shifts = TestTimeShifts.from_manifest(manifest)
    except (TypeError, ValueError) as exc:
        return f"inference settings not understood: {exc}"
    if shifts.step_px == 0:
        return None
    return (f"test-time shifts: each image runs as {len(shifts.offsets)} copies (as given and moved by "
            f"±{shifts.step_px} model px along both diagonals); the landmarks are the median of the copies "
            f"moved back")


def describe_training_data(data: dict | None) -> list[str]:
    """Readable lines for a manifest's ``training.data`` (CSV sources with rows and repeats, phantoms)."""
    data = data or {}
    lines = []
    for src in data.get("csv_sources") or []:
        rows, rep = src.get("rows"), src.get("repeat", 1)
        lines.append(f"{Path(str(src.get('csv'))).name}: {rows} images" + (f" × {rep} repeats" if rep and rep > 1 else ""))
    if data.get("phantoms_per_epoch"):
        lines.append(f"{data['phantoms_per_epoch']} fresh phantoms per epoch")
    if data.get("n_train_per_epoch"):
        lines.append(f"{data['n_train_per_epoch']} training images per epoch")
    if data.get("val_phantoms"):
        lines.append(f"{data['val_phantoms']} validation phantoms")
    for key in ("source", "note"):
        if data.get(key):
            lines.append(str(data[key]))
    if not lines:
        lines = [f"{k}: {v}" for k, v in data.items() if v not in (None, 0, "", [])] or ["not recorded"]
    return lines
