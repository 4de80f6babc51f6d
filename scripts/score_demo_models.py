"""Measure the shipped demo models and write the numbers into their manifests (``metrics``).

    .venv/bin/python scripts/score_demo_models.py

- ``heldout_phantoms``: 200 phantoms rendered with seed 999 (never used in training or model
  selection; training used seed-1 phantoms and validation seeds 10,000,000+), nominal 0.25 mm/px;
- ``public_images``: the two labelled public ROI images LC (1) and LC (11) — both were in the
  training data (repeated with augmentation), so this is not a generalisation measure;
- ``training_validation``: the best validation MRE recorded while training (ROI px).
"""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cvs_core import evaluate  # noqa: E402
from cvs_core.registry import DEMO_MODELS, SHIPPED_MODELS_DIR, ensure_demo_models, read_manifest, write_manifest  # noqa: E402

KEYS = ("n_images", "mre_px", "mre_mm", "sd_px", "sdr", "pck", "pck_threshold_mm", "pck_auc",
        "coordinate_mae", "n_missing", "stage_agreement", "legacy", "ms_per_image")


def _pick(summary: dict) -> dict:
    return {k: summary[k] for k in KEYS if k in summary}


def main() -> int:
    ensure_demo_models()
    datasets = {
        "heldout_phantoms": (evaluate.phantom_dataset(200, seed=999), "200 phantoms, seed 999, never seen in training"),
        "public_images": (evaluate.samples_dataset(), "LC (1) and LC (11): IN the training data (augmented) — "
                                                      "not a generalisation measure; LC (11) has 3 labels below the ROI"),
    }
    for name in DEMO_MODELS:
        folder = SHIPPED_MODELS_DIR / name
        manifest = read_manifest(folder)
        metrics = {"training_validation": {"best_val_mre_px": manifest["metrics"].get("best_val_mre_px",
                   manifest["metrics"].get("training_validation", {}).get("best_val_mre_px"))}}
        for key, (dataset, note) in datasets.items():
            res = evaluate.evaluate_models([folder], dataset, use_cache=False)[name]
            metrics[key] = {**_pick(res.summary), "spacing_mm": dataset.spacing_mm, "note": note}
            print(name, key, json.dumps({k: metrics[key][k] for k in ("mre_px", "sdr", "stage_agreement")
                                         if k in metrics[key]}))
        manifest["metrics"] = metrics
        write_manifest(folder, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
