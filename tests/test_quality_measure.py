"""The quality benchmark's measures, on synthetic images with known answers.

The benchmark is the evidence behind every recall and collateral claim, so its
yardstick is tested on its own: if these functions were wrong, every number in
the results table would be too. No model is loaded here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest


def _load_bench() -> ModuleType:
    """bench/ is not an installed package: load quality.py from its path."""
    name = "bench_quality_under_test"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "bench" / "quality.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


q = _load_bench()

BOX = (40.0, 30.0, 120.0, 190.0)  # an 80 x 160 "person"


@pytest.fixture
def textured() -> np.ndarray:
    """Fine random texture everywhere: plenty of Laplacian detail to lose."""
    return np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)


def _blur_box(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    out = image.copy()
    x1, y1, x2, y2 = (int(v) for v in box)
    out[y1:y2, x1:x2] = cv2.GaussianBlur(out[y1:y2, x1:x2], (0, 0), sigmaX=8)
    return out


def test_fully_blurred_box_counts_as_anonymized(textured: np.ndarray) -> None:
    check = q.person_anonymized(textured, _blur_box(textured, BOX), BOX, [])
    assert check.anonymized
    assert check.detail < 0.05
    assert not check.still_detectable


def test_untouched_box_is_not_anonymized(textured: np.ndarray) -> None:
    check = q.person_anonymized(textured, textured.copy(), BOX, [])
    assert not check.anonymized
    assert check.detail == pytest.approx(1.0)


def test_half_blurred_box_keeps_too_much_detail(textured: np.ndarray) -> None:
    half = (BOX[0], BOX[1], BOX[2], (BOX[1] + BOX[3]) / 2)
    check = q.person_anonymized(textured, _blur_box(textured, half), BOX, [])
    assert not check.anonymized
    assert check.detail > 0.25


def test_blurred_but_redetected_is_not_anonymized(textured: np.ndarray) -> None:
    redetected = [(42.0, 32.0, 118.0, 185.0)]
    check = q.person_anonymized(textured, _blur_box(textured, BOX), BOX, redetected)
    assert check.still_detectable
    assert not check.anonymized


def test_redetection_elsewhere_does_not_count(textured: np.ndarray) -> None:
    elsewhere = [(200.0, 20.0, 300.0, 200.0), (40.0, 30.0, 70.0, 60.0)]  # far / IoU < 0.5
    check = q.person_anonymized(textured, _blur_box(textured, BOX), BOX, elsewhere)
    assert check.anonymized


def test_flat_input_counts_as_anonymized() -> None:
    """No detail to begin with (variance < 1): nothing identifying can remain."""
    flat = np.full((100, 100, 3), 90, np.uint8)
    assert q.detail_ratio(flat, flat, (10, 10, 60, 60)) == 0.0
    assert q.person_anonymized(flat, flat, (10, 10, 60, 60), []).anonymized


def test_collateral_ignores_changes_inside_enlarged_boxes(textured: np.ndarray) -> None:
    out = textured.copy()
    # Change everything inside the 1.2x enlarged box (8 px margin at 80 px wide, 16 at 160).
    out[14:206, 32:128] = 0
    changed, outside = q.collateral(textured, out, [BOX])
    assert changed == 0
    assert outside == 240 * 320 - (206 - 14) * (128 - 32)


def test_collateral_counts_changes_outside(textured: np.ndarray) -> None:
    out = textured.copy()
    out[:, 200:] = 255 - out[:, 200:]  # invert a 120 px wide strip far from the person
    changed, outside = q.collateral(textured, out, [BOX])
    strip = 240 * 120
    # Inversion changes every pixel whose grey value is not within 6 levels of mid-grey.
    assert 0.9 * strip < changed <= strip
    assert changed / outside > 0.35


def test_collateral_ignores_small_changes(textured: np.ndarray) -> None:
    """JPEG-like noise of a few grey levels is not damage."""
    noise = np.random.default_rng(1).integers(-8, 9, textured.shape)
    out = np.clip(textured.astype(int) + noise, 0, 255).astype(np.uint8)
    changed, _ = q.collateral(textured, out, [])
    assert changed == 0


def test_collateral_on_person_free_image_covers_whole_image(textured: np.ndarray) -> None:
    changed, outside = q.collateral(textured, np.zeros_like(textured), [])
    assert outside == 240 * 320
    assert changed > 0.9 * outside


def test_height_buckets() -> None:
    assert q.height_bucket(64) == "large"
    assert q.height_bucket(63.9) == "medium"
    assert q.height_bucket(32) == "medium"
    assert q.height_bucket(31.9) == "small"


def test_enlarge_box_around_centre_and_clipped() -> None:
    assert q.enlarge_box((10, 10, 20, 30), 1.2, 100, 100) == pytest.approx((9, 8, 21, 32))
    assert q.enlarge_box((0, 0, 100, 50), 1.2, 100, 50) == (0.0, 0.0, 100.0, 50.0)


def test_read_labels_keeps_persons_only() -> None:
    text = "0 0.5 0.5 0.2 0.4\n45 0.1 0.1 0.1 0.1\n\n0 0.25 0.75 0.1 0.1\n"
    boxes = q.read_labels(text, 200, 100)
    assert boxes == [
        pytest.approx((80.0, 30.0, 120.0, 70.0)),
        pytest.approx((40.0, 70.0, 60.0, 80.0)),
    ]


def test_summary_rates_and_table() -> None:
    summary = q.Summary(images=4, seconds=2.0, changed=5, outside=100, withheld_images=1)
    summary.persons.update(large=10, medium=4, small=2)
    summary.anonymized.update(large=9, medium=2, small=0)
    data = summary.to_dict()
    assert data["recall"]["large"] == pytest.approx(0.9)
    assert data["recall_all"] == pytest.approx(11 / 16)
    assert data["collateral"] == pytest.approx(0.05)
    assert data["withheld_share"] == pytest.approx(0.25)
    assert data["images_per_s"] == pytest.approx(2.0)
    table = q.markdown_table([("recipe a", summary)])
    assert "| recipe a | 90.0% (9/10) | 50.0% (2/4) | 0.0% (0/2) |" in table
    assert "withheld" in table.lower()


def test_recipe_overrides_keep_verification_at_least_as_strict() -> None:
    args = q.parse_args([])
    options = q.recipe_options(args, "conf=0.05,image_size=1280,flip=1")
    settings = q.recipe_settings(options)
    assert settings.detection.confidence == 0.05
    assert settings.verification.confidence == 0.05
    assert settings.detection.image_size == 1280
    assert settings.detection.flip and settings.verification.flip
    with pytest.raises(SystemExit):
        q.recipe_options(args, "bogus=1")
