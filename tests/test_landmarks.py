from cvs_core.landmarks import LANDMARKS, NAMES, OUTLINES, SCHEMA_VERSION, csv_columns


def test_schema_matches_design_table():
    assert len(LANDMARKS) == 19 and SCHEMA_VERSION
    assert NAMES[:3] == ("C2ip", "C2im", "C2ia")
    assert NAMES[3:11] == ("C3sp", "C3sm", "C3sa", "C3mp", "C3ma", "C3ip", "C3im", "C3ia")
    assert NAMES[11] == "C4sp" and NAMES[18] == "C4ia"
    assert [lm.index for lm in LANDMARKS] == list(range(1, 20))
    assert OUTLINES["C3"] == (4, 5, 6, 8, 11, 10, 9, 7, 4)
    assert csv_columns()[:2] == ["1_x", "1_y"] and csv_columns()[-1] == "19_y" and len(csv_columns()) == 38
