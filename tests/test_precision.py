"""Precision on real photos: what is not a person is left untouched, people still are hidden.

A dataset whose food photos and zebras come out blurred is not releasable; the
confirmation step (``core/confirm.py``) and the untouched path
(``core/untouched.py``) are what keep them intact. Each test runs the real
model on real COCO photos through the whole flow.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from airflow_privacy.core.images import decode_image, encode_image
from airflow_privacy.core.untouched import strip_jpeg
from tests.conftest import COCO, SAMPLES

pytestmark = pytest.mark.skipif(not COCO.is_dir(), reason="../shared/datasets not present")

ZEBRAS = "000000000034.jpg"
SANDWICH = "000000000142.jpg"  # a plate of food on which the pose model proposes "people"
CHANGED = 12  # grey levels: a changed pixel, as the benchmark counts it


def _grey(pixels: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY).astype(int)


@pytest.mark.parametrize("name", [ZEBRAS, SANDWICH])
def test_a_person_free_photo_comes_out_pixel_identical_without_metadata(pipeline, name):
    data = (COCO / "images" / name).read_bytes()
    outcome = pipeline.process(name, data)
    record = outcome.record
    assert record["status"] == "verified" and record["regions"] == []
    assert record["pixels_unchanged"] is True
    assert np.array_equal(decode_image(outcome.output).pixels, decode_image(data).pixels)
    assert outcome.output == strip_jpeg(data) and b"Exif" not in outcome.output[:4096]


def test_weak_person_candidates_on_food_are_dismissed_and_recorded(pipeline):
    record = pipeline.process(SANDWICH, (COCO / "images" / SANDWICH).read_bytes()).record
    dismissed = [c for c in record["candidates"] if c["decision"] == "dismissed"]
    assert dismissed, "the food photo's look-alike candidates are the point of this test"
    for candidate in dismissed:
        assert candidate["reason"] and {"frame_share", "keypoints"} <= set(candidate["evidence"])
    assert record["persons_detected"] == 0


def test_a_real_person_beside_the_food_is_hidden_and_the_food_is_not(pipeline):
    food = decode_image((COCO / "images" / SANDWICH).read_bytes()).pixels
    bus = decode_image((SAMPLES / "bus.jpg").read_bytes()).pixels
    person = bus[380:920, 40:250]  # the man on the left of bus.jpg, with some street
    scale = food.shape[0] / person.shape[0]
    person = cv2.resize(person, (round(person.shape[1] * scale), food.shape[0]))
    scene = np.ascontiguousarray(np.hstack([food, person]))
    outcome = pipeline.process("scene.png", encode_image(scene, ".png"))
    assert outcome.status == "verified", outcome.record["error"]
    out = decode_image(outcome.output).pixels
    width = food.shape[1]
    changed = np.abs(_grey(out) - _grey(scene)) > CHANGED
    assert changed[:, width:].mean() > 0.3, "the person must be anonymized"
    assert changed[:, : width - 40].mean() < 0.005, "the food must be left alone"
