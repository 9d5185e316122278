import numpy as np
import pytest

from airflow_privacy.core.geometry import (
    clip_box,
    covered_fraction,
    iou,
    is_covered,
    merge_duplicates,
    pad_box,
    region_mask,
)


def test_pad_grows_by_fraction_and_clips():
    assert pad_box((10, 10, 20, 30), 0.1, 100, 100) == (9.0, 8.0, 21.0, 32.0)
    assert pad_box((0, 0, 50, 50), 0.5, 60, 60) == (0.0, 0.0, 60.0, 60.0)


def test_clip_returns_python_floats():
    box = clip_box((np.float32(-3), np.float32(2), np.float32(500), np.float32(7)), 100, 50)
    assert box == (0.0, 2.0, 100.0, 7.0)
    assert all(type(v) is float for v in box)


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_coverage_counts_the_union_once():
    mask = region_mask([(0, 0, 10, 20), (5, 0, 20, 20)], 40, 40)
    assert covered_fraction((0, 0, 20, 20), mask) == 1.0
    assert covered_fraction((0, 0, 40, 20), mask) == 0.5
    assert is_covered((0, 0, 20, 20), mask, 0.9)
    assert not is_covered((0, 0, 40, 20), mask, 0.9)


def test_partially_covered_person_is_not_covered():
    mask = region_mask([(0, 0, 10, 100)], 100, 100)
    assert covered_fraction((0, 0, 20, 100), mask) == 0.5


def test_merge_duplicates_keeps_best():
    boxes = [(0, 0, 10, 10), (1, 0, 11, 10), (50, 50, 60, 60)]
    keep = merge_duplicates(boxes, [0.5, 0.9, 0.3], 0.5)
    assert keep == [1, 2]


def test_people_side_by_side_form_one_crowd_box():
    from airflow_privacy.core.geometry import crowd_boxes

    row = [(0, 0, 10, 40), (14, 2, 24, 42), (60, 0, 70, 40)]  # third is far away
    assert crowd_boxes(row, 0.25) == [(0, 0, 24, 42)]
    assert crowd_boxes(row, 0.0) == []
    # one much taller person next to a small one is not a row
    assert crowd_boxes([(0, 0, 10, 100), (11, 60, 15, 90)], 0.25) == []
