"""cvs_core.annotations: the study CSV format, validation messages, and exact round trips."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pandas as pd
import pytest

from cvs_core.annotations import (COORD_COLUMNS, AnnotationError, AnnotationSet, check_columns,
                                  format_annotations, landmarks_to_frame, read_annotations,
                                  validate_annotations, validate_landmarks, write_annotations)
from cvs_core.landmarks import csv_columns


@pytest.fixture
def train_csv(samples_dir):
    return samples_dir / "train_data.csv"


@pytest.fixture
def train_table(train_csv) -> pd.DataFrame:
    """The sample train CSV as strings, ready to be broken in a test."""
    return pd.read_csv(train_csv, dtype=str, keep_default_na=False)


def write_table(table: pd.DataFrame, path) -> str:
    table.to_csv(path, index=False)
    return str(path)


def image_folder(tmp_path, sizes: dict[str, tuple[int, int]]):
    """A folder with grey PNGs of the given ``(width, height)`` per name."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name, (w, h) in sizes.items():
        cv2.imwrite(str(folder / name), np.full((h, w), 80, np.uint8))
    return folder


def simple_table(n: int = 3, value: int = 10) -> pd.DataFrame:
    rows = [[f"img{i}.png"] + [str(value + i)] * 38 for i in range(n)]
    return pd.DataFrame(rows, columns=["image_name", *csv_columns()])


# --- good files ------------------------------------------------------------------------------

def test_real_sample_csvs(samples_dir):
    train = read_annotations(samples_dir / "train_data.csv")
    test = read_annotations(samples_dir / "test_data.csv")
    assert train.landmarks.shape == (11, 19, 2) and test.landmarks.shape == (4, 19, 2)
    assert train.landmarks.dtype == np.float64
    assert len(train) == 11 and train.names[0] == "LC (1).jpg" and test.names[0] == "LC (475).jpg"
    np.testing.assert_array_equal(train.get("LC (1).jpg")[0], [163, 337])
    np.testing.assert_array_equal(train.get("LC (1).jpg")[18], [229, 472])
    assert list(train.extra.columns) == [] and train.skipped == [] and train.warnings == []


def test_real_samples_write_back_identically(samples_dir, tmp_path):
    for name in ("train_data.csv", "test_data.csv"):
        original = (samples_dir / name).read_text().replace("\r\n", "\n")
        aset = read_annotations(samples_dir / name)
        assert format_annotations(aset) == original
        out = write_annotations(aset, tmp_path / name)
        again = read_annotations(out)
        assert again.names == aset.names
        np.testing.assert_array_equal(again.landmarks, aset.landmarks)


def test_float_coordinates_round_trip_with_three_decimals(tmp_path):
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(0, 250, size=(4, 19, 2))
    names = [f"p{i}.png" for i in range(4)]
    path = write_annotations((names, landmarks), tmp_path / "pred.csv")
    text = path.read_text()
    assert f"{landmarks[0, 0, 0]:.3f}" in text
    back = read_annotations(path)
    np.testing.assert_allclose(back.landmarks, landmarks, atol=5e-4)
    assert format_annotations(back) == text  # stable once written


def test_extra_columns_preserved(tmp_path, train_table):
    table = train_table.copy()
    table.insert(1, "split", ["train"] * 10 + ["val"])  # an extra column between name and coordinates
    table["cs_stage"] = [str(1 + i % 6) for i in range(11)]
    table["note"] = [""] * 10 + ["blurred"]
    aset = read_annotations(write_table(table, tmp_path / "x.csv"))
    assert list(aset.extra.columns) == ["split", "cs_stage", "note"]
    assert aset.extra["cs_stage"].tolist() == [1 + i % 6 for i in range(11)]
    assert pd.api.types.is_integer_dtype(aset.extra["cs_stage"])
    assert aset.extra["split"].iloc[-1] == "val" and aset.extra["note"].iloc[-1] == "blurred"
    assert aset.landmarks.shape == (11, 19, 2)
    # Written in the study layout (coordinates right after the name), extras after; re-read identical.
    frame = aset.to_frame()
    assert list(frame.columns[:39]) == ["image_name", *csv_columns()]
    again = read_annotations(write_annotations(aset, tmp_path / "y.csv"))
    pd.testing.assert_frame_equal(again.extra, aset.extra)
    np.testing.assert_array_equal(again.landmarks, aset.landmarks)


def test_subset_and_lookup(train_csv):
    aset = read_annotations(train_csv)
    sub = aset.subset([9, 0])
    assert sub.names == ["LC (11).jpg", "LC (1).jpg"] and sub.landmarks.shape == (2, 19, 2)
    np.testing.assert_array_equal(sub.landmarks[1], aset.get("LC (1).jpg"))
    mask = np.array([n in ("LC (1).jpg", "LC (11).jpg") for n in aset.names])
    assert aset.subset(mask).names == ["LC (1).jpg", "LC (11).jpg"]
    assert len(aset.subset(slice(0, 3))) == 3 and aset.subset(4).names == [aset.names[4]]
    with pytest.raises(ValueError, match="no annotations for 'LC \\(2\\).jpg'"):
        aset.get("LC (2).jpg")


def test_landmarks_to_frame_types():
    pts = np.arange(2 * 19 * 2, dtype=float).reshape(2, 19, 2)
    frame = landmarks_to_frame(["a.png", "b.png"], pts, pd.DataFrame({"stage": ["CS1", "CS2"]}))
    assert list(frame.columns) == ["image_name", *csv_columns(), "stage"]
    assert frame["1_x"].dtype == np.int64 and frame.loc[1, "19_y"] == 75
    assert landmarks_to_frame(["a"], pts[0] + 0.5)["1_x"].dtype == np.float64
    with pytest.raises(ValueError, match=r"shaped \(3, 19, 2\)"):
        landmarks_to_frame(["a", "b", "c"], pts)


def test_dataframe_and_upload_sources(train_csv):
    table = pd.read_csv(train_csv)
    assert read_annotations(table).landmarks.shape == (11, 19, 2)
    upload = io.BytesIO(train_csv.read_bytes())
    upload.name = "uploaded.csv"
    aset = read_annotations(upload)
    assert aset.source == "uploaded.csv" and len(aset) == 11


def test_images_present_and_inside(tmp_path):
    table = simple_table(2)
    folder = image_folder(tmp_path, {"img0.png": (50, 60), "img1.png": (50, 60)})
    aset = read_annotations(write_table(table, tmp_path / "a.csv"), image_dir=folder)
    assert aset.names == ["img0.png", "img1.png"]


# --- bad files (each asserts its message) ----------------------------------------------------

def test_missing_columns_are_listed(tmp_path, train_table):
    path = write_table(train_table.drop(columns=["5_y", "7_x"]), tmp_path / "m.csv")
    with pytest.raises(AnnotationError, match=r"m\.csv: 1 problem .*\n  - missing columns: 5_y, 7_x"):
        read_annotations(path)


def test_misnamed_columns_get_suggestions(tmp_path, train_table):
    table = train_table.rename(columns={"1_x": "1x", "2_y": "Y2", "image_name": "Image Name"})
    with pytest.raises(AnnotationError) as info:
        read_annotations(write_table(table, tmp_path / "n.csv"))
    message = str(info.value)
    assert "column '1x' should be named '1_x'" in message
    assert "column 'Y2' should be named '2_y'" in message
    assert "column 'Image Name' should be named 'image_name'" in message
    assert "missing column" not in message


def test_nan_and_empty_values(tmp_path, train_table):
    table = train_table.copy()
    table.loc[2, "4_y"] = "NaN"
    table.loc[5, "19_x"] = ""
    with pytest.raises(AnnotationError) as info:
        read_annotations(write_table(table, tmp_path / "nan.csv"))
    message = str(info.value)
    assert "row 3 ('LC (102).jpg'), column 4_y: is NaN" in message
    assert "row 6 ('LC (105).jpg'), column 19_x: is empty" in message
    assert len(info.value.problems) == 2


def test_non_numeric_value(tmp_path, train_table):
    table = train_table.copy()
    table.loc[0, "3_x"] = "22l"
    with pytest.raises(AnnotationError, match=r"row 1 \('LC \(1\)\.jpg'\), column 3_x: '22l' is not a number"):
        read_annotations(write_table(table, tmp_path / "t.csv"))


def test_negative_coordinate(tmp_path, train_table):
    table = train_table.copy()
    table.loc[3, "8_x"] = "-5"
    with pytest.raises(AnnotationError, match=r"row 4 \('LC \(103\)\.jpg'\), column 8_x: coordinate -5 is negative"):
        read_annotations(write_table(table, tmp_path / "neg.csv"))


def test_duplicate_image_names(tmp_path, train_table):
    table = train_table.copy()
    table.loc[4, "image_name"] = table.loc[1, "image_name"]
    with pytest.raises(AnnotationError, match=r"image_name 'LC \(100\)\.jpg' is duplicated: rows 2 and 5"):
        read_annotations(write_table(table, tmp_path / "dup.csv"))


def test_out_of_image_coordinate(tmp_path):
    table = simple_table(2)
    table.loc[1, "6_x"] = "55"
    folder = image_folder(tmp_path, {"img0.png": (50, 60), "img1.png": (50, 60)})
    path = write_table(table, tmp_path / "o.csv")
    with pytest.raises(AnnotationError, match=r"row 2 \('img1\.png'\), columns 6_x/6_y: landmark 6 \(C3sa\) "
                                              r"at \(55, 11\) lies outside the 50×60 image"):
        read_annotations(path, image_dir=folder)
    assert len(read_annotations(path, image_dir=folder, check_bounds=False)) == 2


def test_real_sample_lc11_extends_below_its_roi(samples_dir):
    """A real data fact: C4's inferior border of LC (11) lies below the 600-px ROI image."""
    csv = samples_dir / "train_data.csv"
    with pytest.raises(AnnotationError) as info:
        read_annotations(csv, image_dir=samples_dir / "roi", missing_images="skip")
    assert info.value.problems == [
        f"row 10 ('LC (11).jpg'), columns {k}_x/{k}_y: landmark {k} ({name}) at ({x}, {y}) lies outside "
        "the 250×600 image"
        for k, name, x, y in ((17, "C4ip", 102, 607), (18, "C4im", 127, 611), (19, "C4ia", 150, 627))]
    aset = read_annotations(csv, image_dir=samples_dir / "roi", missing_images="skip", check_bounds="warn")
    assert aset.names == ["LC (1).jpg", "LC (11).jpg"] and len(aset.warnings) == 3
    # In the original cephalograms (ROI (x, y) → (2x, 2y + 800)) every point is inside.
    full = aset.landmarks * 2 + [0, 800]
    assert validate_landmarks(full, size=(1804, 2136)) == []


def test_missing_image_file_error(tmp_path):
    table = simple_table(3)
    folder = image_folder(tmp_path, {"img0.png": (50, 60)})
    path = write_table(table, tmp_path / "a.csv")
    with pytest.raises(AnnotationError) as info:
        read_annotations(path, image_dir=folder)
    assert info.value.problems == [f"row {i + 1} ('img{i}.png'): image file not found: {folder / f'img{i}.png'}"
                                   for i in (1, 2)]


def test_missing_image_file_skip_and_ignore(tmp_path):
    table = simple_table(3)
    table["split"] = ["a", "b", "c"]
    folder = image_folder(tmp_path, {"img1.png": (50, 60)})
    path = write_table(table, tmp_path / "a.csv")
    aset = read_annotations(path, image_dir=folder, missing_images="skip")
    assert aset.names == ["img1.png"] and aset.landmarks.shape == (1, 19, 2)
    assert aset.extra["split"].tolist() == ["b"]
    assert aset.skipped == [f"img0.png: image file not found in {folder}", f"img2.png: image file not found in {folder}"]
    assert len(read_annotations(path, image_dir=folder, missing_images="ignore")) == 3
    with pytest.raises(ValueError, match="missing_images must be one of"):
        read_annotations(path, image_dir=folder, missing_images="drop")


def test_unreadable_image_is_reported(tmp_path):
    folder = image_folder(tmp_path, {})
    (folder / "img0.png").write_bytes(b"")
    path = write_table(simple_table(1), tmp_path / "a.csv")
    with pytest.raises(AnnotationError, match=r"row 1 \('img0\.png'\): image cannot be read: .*is empty \(0 bytes\)"):
        read_annotations(path, image_dir=folder)


def test_all_problems_collected_in_one_error(tmp_path, train_table):
    table = train_table.copy()
    table.loc[0, "1_x"] = "abc"
    table.loc[1, "2_y"] = "-1"
    table.loc[2, "image_name"] = "LC (1).jpg"
    table.loc[3, "image_name"] = ""
    with pytest.raises(AnnotationError) as info:
        read_annotations(write_table(table, tmp_path / "many.csv"))
    problems = info.value.problems
    assert problems == [
        "row 1 ('LC (1).jpg'), column 1_x: 'abc' is not a number",
        "row 2 ('LC (100).jpg'), column 2_y: coordinate -1 is negative",
        "image_name 'LC (1).jpg' is duplicated: rows 1 and 3",
        "row 4, column image_name: image name is empty",
    ]
    assert str(info.value).startswith(f"{tmp_path / 'many.csv'}: 4 problems in the annotations:\n  - row 1")


def test_long_problem_lists_are_capped(tmp_path):
    table = simple_table(2)
    table[list(COORD_COLUMNS)] = "x"
    with pytest.raises(AnnotationError) as info:
        read_annotations(write_table(table, tmp_path / "bad.csv"))
    assert len(info.value.problems) == 76
    message = str(info.value)
    assert message.count("\n  - ") == 20 and message.endswith("  ... and 56 more")


def test_empty_header_only_and_ragged_files(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(AnnotationError, match=r"e\.csv: 1 problem.*\n  - is empty"):
        read_annotations(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text(",".join(["image_name", *csv_columns()]) + "\n")
    with pytest.raises(AnnotationError, match="has a header but no data rows"):
        read_annotations(tmp_path / "h.csv")
    text = ",".join(["image_name", *csv_columns()]) + "\n" + "a.png," + ",".join(["1"] * 40) + "\n"
    (tmp_path / "r.csv").write_text(text)
    with pytest.raises(AnnotationError, match="is not a readable CSV"):
        read_annotations(tmp_path / "r.csv")
    with pytest.raises(AnnotationError, match="file not found"):
        read_annotations(tmp_path / "none.csv")


def test_unsafe_image_names_rejected(tmp_path):
    table = simple_table(2)
    table.loc[0, "image_name"] = "../../etc/passwd"
    with pytest.raises(AnnotationError, match=r"row 1 .*must be a relative path inside the image folder"):
        read_annotations(write_table(table, tmp_path / "u.csv"), image_dir=tmp_path)


def test_duplicate_column(tmp_path):
    header = ",".join(["image_name", *csv_columns(), "1_x"])
    row = ",".join(["a.png"] + ["1"] * 39)
    (tmp_path / "d.csv").write_text(header + "\n" + row + "\n")
    with pytest.raises(AnnotationError, match=r"column '1_x' appears more than once"):
        read_annotations(tmp_path / "d.csv")


def test_validate_helpers(tmp_path, train_table):
    assert check_columns(["image_name", *csv_columns()]) == []
    assert check_columns(["image_name", *csv_columns()[:-1]]) == [
        "missing column: 19_y (expected image_name,1_x,1_y,...,19_x,19_y)"]
    table = train_table.copy()
    table.loc[0, "1_x"] = "?"
    assert validate_annotations(write_table(table, tmp_path / "v.csv")) == [
        "row 1 ('LC (1).jpg'), column 1_x: '?' is not a number"]
    pts = np.zeros((19, 2))
    pts[3] = [-1, 5]
    pts[4] = [10, 70]
    assert validate_landmarks(pts, size=(50, 60)) == [
        "row 1, column 4_x: coordinate -1 is negative",
        "row 1: landmark 5 (C3sm) at (10, 70) lies outside the 50×60 image"]


def test_annotation_set_checks_shapes():
    with pytest.raises(ValueError, match=r"shaped \(2, 19, 2\)"):
        AnnotationSet(names=["a", "b"], landmarks=np.zeros((3, 19, 2)))
    single = AnnotationSet(names=["a"], landmarks=np.zeros((19, 2)))
    assert single.landmarks.shape == (1, 19, 2) and single.extra.shape == (1, 0)
