"""Evaluation reports: the PNG charts (matplotlib), HTML (plotly), tables and the text summary."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from cvs_core import reports
from cvs_core.evaluate import PredictionSet, score
from cvs_core.landmarks import N_LANDMARKS


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(3)
    true = 100 + rng.uniform(0, 300, (6, N_LANDMARKS, 2))
    good = true + rng.normal(0, 2.0, true.shape)
    bad = true + rng.normal(0, 12.0, true.shape)
    bad[0, :4] = np.nan  # missed landmarks
    names = [f"im{i}.png" for i in range(6)]
    out = {}
    for name, pred in (("good", good), ("bad", bad)):
        out[name] = score(PredictionSet(name, names, pred, np.ones((6, N_LANDMARKS)), true, 3.0), 0.25, 2.0)
    return out


def test_png_charts_have_the_documented_size_and_differ_per_model(results, tmp_path):
    pck = reports.pck_curve_png(results, 0.25, 2.0, tmp_path / "pck.png")
    box = reports.landmark_box_png(results, 0.25, 2.0, tmp_path / "box.png")
    a, b = cv2.imread(str(pck)), cv2.imread(str(box))
    assert a.shape == (600, 1000, 3) and b.shape == (620, 1300, 3)
    assert (a < 250).mean() > 0.01 and (b < 250).mean() > 0.01  # something is drawn
    one = reports.pck_curve_png({"good": results["good"]}, 0.25, 2.0, tmp_path / "one.png")
    assert not np.array_equal(cv2.imread(str(one)), a)


def test_a_model_that_missed_everything_still_charts(results, tmp_path):
    r = results["bad"]
    empty = score(PredictionSet("none", r.prediction_set.names, np.full_like(r.prediction_set.pred, np.nan),
                                r.prediction_set.confidence, r.prediction_set.true, 1.0), 0.25, 2.0)
    paths = reports.write_plots({"none": empty, **results}, 0.25, 2.0, tmp_path)
    assert [p.name for p in paths] == ["pck_curve.png", "landmark_errors.png", "pck_curve.html",
                                       "landmark_errors.html"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_report_tables_and_summary(results, tmp_path):
    summary = reports.write_report(results, tmp_path, 0.25, 2.0, plots=False)
    assert json.loads((tmp_path / "summary.json").read_text()).keys() == {"good", "bad"}
    assert len(pd.read_csv(tmp_path / "per_image.csv")) == 12
    table = reports.summary_table(summary, 2.0)
    assert list(table["model"]) == ["good", "bad"]
    assert table.loc[0, "MRE px"] < table.loc[1, "MRE px"] and table.loc[0, "PCK@2mm"] > table.loc[1, "PCK@2mm"]
    text = reports.format_summary(summary, 2.0)
    assert text.splitlines()[0].split()[:4] == ["model", "n", "MRE", "px"]
    assert f"{summary['good']['mre_px']:.2f}" in text and "PCK@2mm" in text
