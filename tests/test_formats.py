"""Readers of other CVM landmark formats (iCVM text, labelme JSON) and ``cvs convert``, on small
files written by the tests."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cvs_core import formats, staging
from cvs_core.annotations import SCHEME_13_ABSENT, read_annotations
from cvs_core.formats import ICVM_ORDER, FormatError, read_icvm, read_labelme, read_labelme_json

# 13 points of a real-looking case (x, y), in iCVM file order (ours 1, 2, 3, 4, 6, 9, 10, 11, 12, 14, 17, 18, 19)
POINTS = [(350, 486), (395, 478), (459, 478), (356, 530), (466, 553), (367, 612), (428, 613), (481, 619),
          (374, 661), (476, 694), (364, 736), (418, 750), (476, 767)]


def write_icvm(path, points=POINTS, stage="cs4", tail=("0", "女")):
    lines = [f"{x},{y}" for x, y in points] + [stage, *tail]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_icvm_order_is_the_13_landmark_scheme():
    assert ICVM_ORDER == staging.SCHEME_13
    assert sorted(set(range(1, 20)) - set(ICVM_ORDER)) == list(SCHEME_13_ABSENT)


def test_read_icvm_text(tmp_path):
    lm, meta = formats.read_icvm_text(write_icvm(tmp_path / "0007.txt"))
    assert meta == {"cs_stage": "CS4", "sex": "F"}
    for number, (x, y) in zip(ICVM_ORDER, POINTS):
        assert tuple(lm[number - 1]) == (x, y)
    assert np.isnan(lm[[k - 1 for k in SCHEME_13_ABSENT]]).all()


@pytest.mark.parametrize("lines, message", [
    (["1,2"] * 5, "expected 13 'x,y' lines"),
    ([f"{x},{y}" for x, y in POINTS[:4]] + ["12;"] + [f"{x},{y}" for x, y in POINTS[5:]] + ["cs2"], r"line 5: expected 'x,y'"),
    ([f"{x},{y}" for x, y in POINTS] + ["stage 2"], r"line 14: expected the stage 'cs1'..'cs6'"),
    ([f"{x},{y}" for x, y in POINTS] + ["cs7"], r"line 14"),
])
def test_bad_icvm_files(tmp_path, lines, message):
    path = tmp_path / "bad.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(FormatError, match=message):
        formats.read_icvm_text(path)


def test_cvs_convert_icvm_then_stage(tmp_path, capsys):
    from cvs_core.cli import main

    folder = tmp_path / "train"
    folder.mkdir()
    write_icvm(folder / "0001.txt", stage="cs1")
    shifted = [(x + 5, y - 3) for x, y in POINTS]
    write_icvm(folder / "0002.txt", shifted, stage="CS5", tail=())
    out = tmp_path / "icvm.csv"
    assert main(["convert", "--from", "icvm", str(folder), "--out", str(out)]) == 0
    assert "2 with empty landmarks" in capsys.readouterr().out
    aset = read_annotations(out, optional_landmarks=SCHEME_13_ABSENT)
    assert aset.names == ["0001", "0002"]
    assert list(aset.extra["cs_stage"]) == ["CS1", "CS5"]
    assert aset.landmarks[1, 0].tolist() == [355, 483]
    # the converted file stages (13-landmark path) and scores against its own stage column
    assert main(["stage", "--csv", str(out), "--out", str(tmp_path / "st.csv"), "--truth-column", "cs_stage"]) == 0
    df = pd.read_csv(tmp_path / "st.csv")
    assert len(df) == 2 and df["derived"].str.contains("corners").all()
    # a folder without .txt files is a clear error
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", "--from", "icvm", str(empty), "--out", str(out)]) == 2
    assert "no .txt files" in capsys.readouterr().err


# ----------------------------------------------------------------------------- labelme
def _truth_landmarks():
    lm = np.full((19, 2), np.nan)
    for number, xy in zip(ICVM_ORDER, POINTS):
        lm[number - 1] = xy
    return lm


def _rotate(lm, deg):
    a = np.deg2rad(deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.nanmean(lm, axis=0)
    return (lm - c) @ rot.T + c


def _polygons(lm, shuffle_seed=0, group_ids=True, mirror_width=None):
    """labelme shapes for C2 (1-2-3), C3 (4, 6, 9, 10, 11) and C4 (12, 14, 17, 18, 19), points in a
    shuffled order (the reader must not rely on it)."""
    rng = np.random.default_rng(shuffle_seed)
    pts = lm.copy()
    if mirror_width is not None:
        pts[:, 0] = mirror_width - pts[:, 0]
    shapes = []
    for vertebra, numbers in ((2, (1, 2, 3)), (3, (4, 6, 9, 10, 11)), (4, (12, 14, 17, 18, 19))):
        order = rng.permutation(len(numbers))
        shape = {"label": "c" if group_ids else f"C{vertebra}", "shape_type": "polygon", "flags": {},
                 "points": [pts[numbers[i] - 1].tolist() for i in order], "group_id": vertebra if group_ids else None}
        shapes.append(shape)
    rng.shuffle(shapes)
    return shapes


def write_labelme(path, shapes, image="..\\\\TrainingData\\\\001.jpeg", flags=None):
    path.write_text(json.dumps({"version": "5.0.1", "flags": flags or {}, "shapes": shapes, "imagePath": image,
                                "imageData": None, "imageHeight": 2400, "imageWidth": 1935}), encoding="utf-8")
    return path


@pytest.mark.parametrize("seed, tilt", [(0, 0), (1, 25), (2, -25)])
@pytest.mark.parametrize("group_ids", [True, False])
def test_labelme_polygons(tmp_path, seed, tilt, group_ids):
    truth = _rotate(_truth_landmarks(), tilt)
    path = write_labelme(tmp_path / "a.json", _polygons(truth, seed, group_ids))
    lm = read_labelme_json(path)
    np.testing.assert_array_equal(np.isnan(lm), np.isnan(truth))
    np.testing.assert_allclose(lm[np.isfinite(truth)], truth[np.isfinite(truth)])


def test_labelme_polygons_without_labels_are_taken_top_to_bottom(tmp_path):
    truth = _truth_landmarks()
    shapes = _polygons(truth, 3)
    for s in shapes:
        s["label"], s["group_id"] = "vertebra", None
    lm = read_labelme_json(write_labelme(tmp_path / "b.json", shapes))
    np.testing.assert_allclose(lm[np.isfinite(truth)], truth[np.isfinite(truth)])


def test_labelme_patient_facing_left(tmp_path):
    truth = _truth_landmarks()
    path = write_labelme(tmp_path / "m.json", _polygons(truth, 4, mirror_width=1000.0))
    lm = read_labelme_json(path, facing="left")
    mirrored = truth.copy()
    mirrored[:, 0] = 1000.0 - mirrored[:, 0]
    np.testing.assert_allclose(lm[np.isfinite(truth)], mirrored[np.isfinite(truth)])
    # and it stages like the original (staging is mirror-invariant)
    assert staging.stage_landmarks(lm).stage == staging.stage_landmarks(truth).stage


def test_labelme_points_by_name_and_errors(tmp_path):
    shapes = [{"label": "C3sm", "shape_type": "point", "points": [[10, 20]]},
              {"label": "7", "shape_type": "point", "points": [[11, 21]]}]
    lm = read_labelme_json(write_labelme(tmp_path / "p.json", shapes))
    assert lm[4].tolist() == [10, 20] and lm[6].tolist() == [11, 21]
    bad = _polygons(_truth_landmarks())
    next(s for s in bad if s["group_id"] == 3)["points"].pop()
    with pytest.raises(FormatError, match=r"the C3 polygon needs 5 points .* has 4"):
        read_labelme_json(write_labelme(tmp_path / "bad.json", bad))
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(FormatError, match="not a labelme JSON"):
        read_labelme_json(tmp_path / "x.json")
    with pytest.raises(FormatError, match="point label must be"):
        read_labelme_json(write_labelme(tmp_path / "q.json", [{"label": "tip", "shape_type": "point", "points": [[1, 2]]}]))


def test_cvs_convert_labelme(tmp_path, capsys):
    from cvs_core.cli import main

    truth = _truth_landmarks()
    write_labelme(tmp_path / "001.json", _polygons(truth, 0), flags={"cs3": True, "cs4": False})
    write_labelme(tmp_path / "002.json", _polygons(truth + 4, 1), image="002.png")
    out = tmp_path / "lm.csv"
    assert main(["convert", "--from", "labelme", str(tmp_path / "001.json"), str(tmp_path / "002.json"),
                 "--out", str(out)]) == 0
    aset = read_annotations(out, optional_landmarks=SCHEME_13_ABSENT)
    assert aset.names == ["001.jpeg", "002.png"]
    assert list(aset.extra["cs_stage"].fillna("")) == ["CS3", ""]
    np.testing.assert_allclose(aset.landmarks[1][np.isfinite(truth)], (truth + 4)[np.isfinite(truth)])
    names, lms, extra = read_labelme([tmp_path / "002.json"])
    assert "cs_stage" not in extra.columns and lms.shape == (1, 19, 2)
    names, lms, extra = read_icvm([write_icvm(tmp_path / "z.txt")])
    assert names == ["z"]
