"""Model folders: ``model.keras`` + ``manifest.json`` (DESIGN §4), shipped and user models,
and loading of the study's legacy ``.h5`` files.

Shipped models live in ``<repo>/models/<name>/``; models a user trains or uploads go to
``$CVS_HOME/models/<name>/`` (default ``<repo>/.cvs``), which git ignores.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvs_core.landmarks import SCHEMA_VERSION

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS_DIR = REPO_ROOT / "models"
MANIFEST = "manifest.json"
LOCAL_MANIFEST = "manifest.local.json"  # written when packed weights are unpacked on this machine
WEIGHTS = "model.keras"
DEMO_MODELS = ("unet_heatmap", "inception_resnet_v2")


def cvs_home() -> Path:
    return Path(os.environ.get("CVS_HOME", REPO_ROOT / ".cvs"))


def user_models_dir() -> Path:
    return cvs_home() / "models"


class ModelError(ValueError):
    """A model folder or file that cannot be used, with the reason."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
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


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so readers in other processes never see a partial file."""
    tmp = Path(path).with_name(Path(path).name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


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
        v = float(obj)
        if not np.isfinite(v):
            return None
        return round(v, digits) if digits is not None else v
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_manifest(folder: Path, manifest: dict) -> None:
    (Path(folder) / MANIFEST).write_text(json.dumps(to_jsonable(manifest), indent=2) + "\n")


def base_manifest(name: str, architecture: str, builder_kwargs: dict, preprocess, codec, **extra) -> dict:
    """Manifest fields every model folder has (DESIGN §4)."""
    import keras

    return {
        "name": name,
        "architecture": architecture,
        "builder_kwargs": builder_kwargs,
        "input_size": list(preprocess.input_size) if preprocess.input_size else None,
        "preprocess": preprocess.to_dict(),
        "codec": codec.to_dict(),
        "landmark_schema": SCHEMA_VERSION,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def save_model_folder(model, folder: Path, manifest: dict) -> Path:
    """Write ``model.keras`` and ``manifest.json`` (with the weights' sha256) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / WEIGHTS)
    manifest = dict(manifest)
    manifest["weights_sha256"] = sha256_file(folder / WEIGHTS)
    manifest["n_params"] = int(model.count_params())
    write_manifest(folder, manifest)
    return folder


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ModelError(f"{folder} is not a model folder: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
    missing = [k for k in ("architecture", "preprocess", "codec") if k not in manifest]
    if missing:
        raise ModelError(f"{path} lacks the field(s) {missing}")
    if manifest.get("landmark_schema", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ModelError(f"{path}: landmark schema {manifest['landmark_schema']!r} is not {SCHEMA_VERSION!r}")
    return manifest


def resolve_model(name_or_dir: str | Path) -> Path:
    """A model name (user models first, then shipped) or a folder path → the folder."""
    p = Path(name_or_dir)
    if p.is_dir() and (p / MANIFEST).is_file():
        return p
    for base in (user_models_dir(), SHIPPED_MODELS_DIR):
        if (base / str(name_or_dir) / MANIFEST).is_file():
            return base / str(name_or_dir)
    known = ", ".join(m.name for m in list_models()) or "none"
    raise ModelError(f"no model named {str(name_or_dir)!r} (known: {known}); pass a model folder or a name")


@dataclass
class ModelInfo:
    name: str
    folder: Path
    manifest: dict
    shipped: bool

    @property
    def ready(self) -> bool:
        return (self.folder / WEIGHTS).is_file()


def list_models() -> list[ModelInfo]:
    """Every registered model (shipped first), skipping folders with unreadable manifests."""
    out = []
    for base, shipped in ((SHIPPED_MODELS_DIR, True), (user_models_dir(), False)):
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            if (folder / MANIFEST).is_file():
                try:
                    out.append(ModelInfo(folder.name, folder, read_manifest(folder), shipped))
                except ModelError:
                    continue
    return out


def load_keras_model(folder: Path, verify: bool = True):
    """Load ``model.keras`` of a model folder in safe mode, checking the sha256 in the manifest."""
    import keras

    from cvs_core.networks import CUSTOM_OBJECTS

    folder = Path(folder)
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        if manifest.get("packed_weights"):
            from cvs_core.packing import unpack_model_folder
            unpack_model_folder(folder)
        else:
            raise ModelError(f"{weights} is missing")
    expected = manifest.get("weights_sha256")
    if expected is None and (folder / LOCAL_MANIFEST).is_file():
        expected = json.loads((folder / LOCAL_MANIFEST).read_text()).get("weights_sha256")
    if verify and expected and sha256_file(weights) != expected:
        raise ModelError(f"{weights} does not match the sha256 in its manifest (file changed or corrupt)")
    try:
        return keras.saving.load_model(weights, custom_objects=CUSTOM_OBJECTS, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - keras raises many types for bad files
        raise ModelError(f"could not load {weights}: {exc}") from exc


def load_legacy_h5(path: Path, architecture: str | None = None, builder_kwargs: dict | None = None):
    """Load one of the study's ``.h5`` files.

    A full model (architecture + weights, saved by TF 2.x Keras) loads with the Dice loss as a
    custom object and ``compile=False``. A weights-only file needs ``architecture`` (a
    ``networks.BUILDERS`` name) and its builder arguments, so the model is rebuilt, then filled.
    """
    import h5py
    import keras

    from cvs_core.networks import CUSTOM_OBJECTS, build_model

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            full_model = "model_config" in f.attrs
    except OSError as exc:
        raise ModelError(f"{path.name} is not an HDF5 (.h5) file: {exc}") from exc
    if full_model:
        try:
            return keras.saving.load_model(path, custom_objects={**CUSTOM_OBJECTS, **_legacy_layers()},
                                           compile=False)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"could not load the full model in {path.name}: {exc}") from exc
    if architecture is None:
        raise ModelError(f"{path.name} holds weights only; say which architecture it belongs to")
    from cvs_core.limits import LimitError, check_builder_kwargs
    try:  # bounded before building: {"n_filters": 1024} would allocate > 5 GB
        builder_kwargs = check_builder_kwargs(builder_kwargs)
    except LimitError as exc:
        raise ModelError(str(exc)) from None
    model = build_model(architecture, **(builder_kwargs or {}))
    try:
        model.load_weights(path)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"the weights in {path.name} do not fit {architecture} {builder_kwargs or ''}: {exc}") from exc
    return model


def _legacy_layers() -> dict:
    """Keras 3 stand-ins for layers whose TF 2.x configs carry arguments Keras 3 rejects."""
    import keras

    class Conv2DTranspose(keras.layers.Conv2DTranspose):
        def __init__(self, *args, groups=1, **kwargs):  # TF 2.x wrote groups=1; Keras 3 has no such argument
            if groups != 1:
                raise ModelError("grouped transposed convolutions are not supported")
            super().__init__(*args, **kwargs)

    return {"Conv2DTranspose": Conv2DTranspose}


def register_model_folder(src: Path, name: str, overwrite: bool = False) -> Path:
    """Copy a model folder into the user models dir under ``name``."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ModelError(f"invalid model name {name!r}")
    if name in DEMO_MODELS or (SHIPPED_MODELS_DIR / name).exists():
        raise ModelError(f"{name!r} is the name of a shipped model; choose another")
    read_manifest(src)
    dst = user_models_dir() / name
    if dst.exists():
        if not overwrite:
            raise ModelError(f"a model named {name!r} exists already")
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)
    manifest = read_manifest(dst)
    manifest["name"] = name
    write_manifest(dst, manifest)
    return dst


def delete_model(name: str) -> None:
    """Delete a user model (shipped models cannot be deleted from the app).

    ``name`` must be a plain folder name whose folder resolves directly inside the user-models folder
    (no ``..``, separators, symlinks out); anything else raises :class:`ModelError`."""
    root = user_models_dir().resolve()
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ModelError(f"invalid model name {name!r}")
    folder = user_models_dir() / name
    if folder.is_symlink() or folder.resolve().parent != root:
        raise ModelError(f"model {name!r} is not inside the user-models folder {root}")
    if not (folder / MANIFEST).is_file():
        raise ModelError(f"no user model named {name!r} (shipped models cannot be deleted)")
    shutil.rmtree(folder)


def ensure_demo_models(verbose: bool = False) -> list[Path]:
    """Make sure each shipped demo model has its ``model.keras`` (unpacking packed weights)."""
    ready = []
    for name in DEMO_MODELS:
        folder = SHIPPED_MODELS_DIR / name
        if not (folder / MANIFEST).is_file():
            if verbose:
                print(f"demo model {name}: missing from {SHIPPED_MODELS_DIR}")
            continue
        manifest = read_manifest(folder)
        if not (folder / WEIGHTS).is_file() and manifest.get("packed_weights"):
            from cvs_core.packing import unpack_model_folder
            if verbose:
                print(f"demo model {name}: unpacking packed weights …")
            unpack_model_folder(folder)
        if verbose:
            print(f"demo model {name}: ready ({folder})")
        ready.append(folder)
    return ready
