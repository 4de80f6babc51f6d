"""Figure of both demo models on the five public ROI images (docs/demo_on_real_samples.png).

LC (1) and LC (11) were in the demo models' training data (ground truth drawn as yellow crosses);
LC (2), LC (3) and LC (8) have no public labels and were never seen: they are checked by eye.

    .venv/bin/python scripts/real_sample_figure.py
"""
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cvs_core.annotations import read_annotations  # noqa: E402
from cvs_core.predict import Predictor  # noqa: E402
from cvs_core.viz import PointLayer, render_overlay  # noqa: E402


def main(out: Path = REPO / "docs" / "demo_on_real_samples.png") -> Path:
    samples = REPO / "data" / "samples"
    truth = read_annotations(samples / "train_data.csv", check_bounds=False)
    models = [Predictor.load("unet_heatmap"), Predictor.load("inception_resnet_v2")]
    colours = ["#4fc3f7", "#ff7043"]
    tiles = []
    for n in (1, 11, 2, 3, 8):
        name = f"LC ({n}).jpg"
        image = cv2.imread(str(samples / "roi" / name), cv2.IMREAD_GRAYSCALE)
        layers = [PointLayer(p.name, p.predict(image).landmarks, c) for p, c in zip(models, colours)]
        if name in truth.names:
            layers.append(PointLayer("truth", truth.get(name), "#ffd54f", truth=True))
        tile = render_overlay(image, layers, scale=1.0, legend=False)
        tile = cv2.cvtColor(tile, cv2.COLOR_RGB2BGR) if tile.ndim == 3 else tile
        label = name + (" (trained on)" if name in truth.names else " (unseen)")
        cv2.rectangle(tile, (0, 0), (tile.shape[1], 24), (0, 0, 0), -1)
        cv2.putText(tile, label, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    h = max(t.shape[0] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, h - t.shape[0], 0, 4, cv2.BORDER_CONSTANT) for t in tiles]
    cv2.imwrite(str(out), np.hstack(tiles))
    print(f"wrote {out}  (blue: unet_heatmap, orange: inception_resnet_v2, yellow x: ground truth)")
    return out


if __name__ == "__main__":
    main()
