"""The Training screen's form → a :class:`~cvs_core.train.TrainConfig`, without Streamlit.

Form defaults follow the architecture and preset; the model name is checked against the registry
before a run starts; the bundled-samples CSV is written once; CLAHE-lab settings are merged over the
preset's preprocessing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cvs_core.architectures import ARCHITECTURES
from cvs_core.train import TrainConfig, preset_defaults

DEFAULT_ARCH = "unet_heatmap"   # the fast one; the study's unet_seed has 37.6 M parameters
DEFAULT_SIZE = "tiny (fast demo)"
ARCH_HELP = {name: spec.help for name, spec in ARCHITECTURES.items()}  # one line per architecture for menus
SIZES = {"tiny (fast demo)": dict(base_filters=8, depth=3), "small": dict(base_filters=16, depth=4), "full": {}}
DATA_OPTIONS = ("Phantoms", "Bundled samples + phantoms", "Uploaded zip + phantoms")
_NOISE = re.compile(r"(cuda|cuInit|cuDNN|cuBLAS|cuFFT|TensorRT|oneDNN|computation placer|XLA service|"
                    r"StreamExecutor|tensorflow/core/util/port|absl::InitializeLog|Unable to register|"
                    r"could not open file to read NUMA|This TensorFlow binary is optimized|rebuild TensorFlow|"
                    r"WARNING: All log messages before absl)", re.IGNORECASE)


def architectures() -> tuple[str, ...]:
    """Architectures for the form, the default (fast) one first."""
    return (DEFAULT_ARCH,) + tuple(a for a in ARCHITECTURES if a != DEFAULT_ARCH)


def takes_size_options(arch: str) -> bool:
    """Whether the architecture's builder takes the :data:`SIZES` options (``base_filters``, ``depth``)."""
    import inspect

    from cvs_core.architectures import get_arch

    params = inspect.signature(get_arch(arch).build_fn).parameters
    return all(k in params for k in ("base_filters", "depth"))


def form_defaults(arch: str, preset: str) -> dict:
    """The form's epochs, learning rate, batch size and augmentation for an architecture and preset."""
    d = preset_defaults(arch, preset)
    return dict(epochs=int(d["epochs"]), lr=float(d["lr"]), batch_size=int(d["batch_size"]),
                augment=bool(d["augment"]))


def model_name_taken(name: str) -> bool:
    from cvs_core.registry import list_models

    return name in {m.name for m in list_models()}


def free_model_name(base: str) -> str:
    """``base`` when no registered model has that name, else ``base_2``, ``base_3`` …"""
    if not model_name_taken(base):
        return base
    k = 2
    while model_name_taken(f"{base}_{k}"):
        k += 1
    return f"{base}_{k}"


def samples_csv(samples_dir: Path, runs_root: Path) -> tuple[str, str]:
    """A labels CSV of the bundled samples that have images (LC (1), LC (11)), written once under
    ``runs_root/../uploads``. Returns (csv path, image folder)."""
    from cvs_core.annotations import write_annotations
    from cvs_core.evaluate import samples_dataset

    path = Path(runs_root).parent / "uploads" / "bundled_samples" / "labels.csv"
    if not path.is_file():
        ds = samples_dataset()
        write_annotations((ds.names, ds.landmarks), path)
    return str(path), str(Path(samples_dir) / "roi")


@dataclass
class TrainRequest:
    """What the form asks for. ``lab``: CLAHE-lab settings (PreprocessConfig fields) or None;
    ``zip_bytes``: the uploaded dataset zip when ``data`` is the zip option."""

    arch: str = DEFAULT_ARCH
    preset: str = "improved"
    size: str = DEFAULT_SIZE
    name: str = ""
    data: str = DATA_OPTIONS[0]
    phantoms: int = 64
    val_phantoms: int = 16
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 16
    augment: bool = True
    seed: int = 0
    lab: dict | None = None
    zip_bytes: bytes | None = field(default=None, repr=False)


def build_config(req: TrainRequest, samples_dir: Path) -> TrainConfig:
    """Validate a :class:`TrainRequest` and turn it into a TrainConfig. Raises ``ValueError`` with a
    sentence for the user (taken model name, missing zip, …)."""
    from cvs_core import runs

    name = req.name.strip() or None
    if name and model_name_taken(name):
        raise ValueError(f"a model named {name!r} is registered already: choose another name "
                         f"(e.g. {free_model_name(name)!r})")
    kwargs = dict(model=req.arch, preset=req.preset, epochs=int(req.epochs), lr=float(req.lr),
                  batch_size=int(req.batch_size), augment=bool(req.augment), phantoms=int(req.phantoms),
                  val_phantoms=int(req.val_phantoms), seed=int(req.seed), name=name)
    if takes_size_options(req.arch):
        kwargs["builder_kwargs"] = dict(SIZES[req.size])
    if req.data == DATA_OPTIONS[1]:
        kwargs["csv"], kwargs["images"] = samples_csv(samples_dir, runs.runs_dir())
        kwargs["repeat_csv"] = 8
    elif req.data == DATA_OPTIONS[2]:
        if not req.zip_bytes:
            raise ValueError("choose a dataset zip to upload (or pick another training data option)")
        csv_path, img_dir = runs.extract_dataset_zip(req.zip_bytes)
        kwargs["csv"], kwargs["images"] = str(csv_path), str(img_dir)
    if req.lab:
        pre = dict(preset_defaults(req.arch, req.preset)["preprocess"])
        pre.update(req.lab)
        kwargs["preprocess"] = pre
    return TrainConfig(**kwargs)


def runs_table(all_runs: list[dict]) -> list[dict]:
    """Rows for the runs table (plain text status: emoji do not render on every system font)."""
    return [{"run": r["id"], "status": r["status_text"], "model": r["model"], "progress": r["progress"],
             "epoch": f"{r['epoch']}/{r['epochs']}", "best val MRE px": r["best"],
             "registered as": r.get("registered_as") or "", "created": r["created"]} for r in all_runs]


def clean_log(text: str) -> str:
    """A run's log without TensorFlow/CUDA start-up noise (lines about CUDA, cuDNN, oneDNN, XLA …)."""
    return "\n".join(line for line in text.splitlines() if not _NOISE.search(line))


def mean_shape_baseline_px(n: int = 16, seed: int = 12345) -> float:
    """MRE (ROI px) of the trivial model that always answers the mean landmark shape, on ``n`` phantoms:
    the number a trained model's validation MRE must beat to have learnt anything from the image."""
    import numpy as np

    from cvs_core.landmarks import MEAN_SHAPE_ROI
    from cvs_core.synth import render_phantom

    mean = np.asarray(MEAN_SHAPE_ROI, np.float64)
    errors = [np.linalg.norm(render_phantom(seed + i).landmarks - mean, axis=1).mean() for i in range(n)]
    return float(np.mean(errors))
