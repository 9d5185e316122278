import numpy as np
import pytest

from airflow_privacy.core.geometry import (
    clip_box,
    covered_fraction,
    iou,
    is_covered,
    non_max_suppression,
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


def test_non_max_suppression_keeps_best():
    boxes = [(0, 0, 10, 10), (1, 0, 11, 10), (50, 50, 60, 60)]
    keep = non_max_suppression(boxes, [0.5, 0.9, 0.3], 0.5)
    assert keep == [1, 2]
    assert all(type(i) is int for i in keep)
    assert non_max_suppression([], [], 0.5) == []


@pytest.mark.parametrize("dtype", [None, np.float32])
def test_non_max_suppression_equals_pairwise_iou_greedy(dtype):
    """The vectorised NMS decides exactly as comparing :func:`iou` box by box would."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        corners = rng.uniform(0, 100, (n, 2))
        sizes = rng.uniform(0, 40, (n, 2))
        boxes = np.concatenate([corners, corners + sizes], axis=1)
        scores = rng.choice([0.2, 0.5, 0.9], n) if n % 2 else rng.uniform(0, 1, n)
        if dtype is not None:
            boxes, scores = boxes.astype(dtype), scores.astype(dtype)
            as_tuples = [tuple(float(v) for v in b) for b in boxes]
        else:
            as_tuples = [tuple(b) for b in boxes.tolist()]
        order = sorted(range(n), key=lambda i: -scores[i])  # stable: ties keep input order
        expected: list[int] = []
        for i in order:
            if all(iou(as_tuples[i], as_tuples[k]) < 0.4 for k in expected):
                expected.append(i)
        arg = boxes if dtype is not None else as_tuples
        assert non_max_suppression(arg, scores.tolist() if dtype is None else scores, 0.4) \
            == expected


def test_people_side_by_side_form_one_crowd_box():
    from airflow_privacy.core.geometry import crowd_boxes

    row = [(0, 0, 10, 40), (14, 2, 24, 42), (60, 0, 70, 40)]  # third is far away
    assert crowd_boxes(row, 0.25) == [(0, 0, 24, 42)]
    assert crowd_boxes(row, 0.0) == []
    # one much taller person next to a small one is not a row
    assert crowd_boxes([(0, 0, 10, 100), (11, 60, 15, 90)], 0.25) == []
