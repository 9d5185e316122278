"""CenterFace, the verifier's independent face opinion, on real weights and real images.

These run the pinned model because the point of the face finder is what the
real network sees: a mocked detector would test nothing about whether blurred
faces stop being faces.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from airflow_privacy.core.anonymize import Blur
from airflow_privacy.core.faces import CenterFace, decode, dynamic_model_bytes, network_size
from airflow_privacy.core.geometry import iou, non_max_suppression, pad_box
from airflow_privacy.core.models import resolve_model


def _assets() -> Path:
    """The ultralytics package's sample images, found without importing torch."""
    spec = importlib.util.find_spec("ultralytics")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "assets"


@pytest.fixture(scope="module", autouse=True)
def _model_dir(models):
    """The weights ``make`` fetched (the session's ``models`` fixture): a broken fetch must
    fail these tests, never skip them."""
    resolve_model("centerface.onnx")  # raises ModelError: missing, truncated or not pinned


@pytest.fixture(scope="module")
def finder() -> CenterFace:
    return CenterFace(threads=1)


def _read(name: str) -> np.ndarray:
    image = cv2.imread(str(_assets() / name))
    assert image is not None, name
    return image


def test_finds_both_faces_on_zidane(finder: CenterFace) -> None:
    faces = finder.detect(_read("zidane.jpg"))
    assert len(faces) == 2
    # Upstream-known positions (1280x720): Zidane left of centre, Ancelotti top right.
    expected = [(551, 237, 672, 430), (917, 102, 1057, 279)]
    for box in expected:
        assert max(iou(box, found) for found, _ in faces) > 0.7
    assert all(score >= 0.5 for _, score in faces)


def test_finds_faces_on_bus(finder: CenterFace) -> None:
    faces = finder.detect(_read("bus.jpg"))
    assert len(faces) >= 2
    for (x1, y1, x2, y2), _ in faces:
        assert 0 <= x1 < x2 <= 810 and 0 <= y1 < y2 <= 1080


def test_channel_order_matters(finder: CenterFace) -> None:
    """The network wants RGB; the class takes BGR and converts, so scores are the high ones."""
    image = _read("zidane.jpg")
    right = sorted(score for _, score in finder.detect(image))
    assert right[0] > 0.7


def test_nothing_on_flat_or_noise(finder: CenterFace) -> None:
    flat = np.full((480, 640, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert finder.detect(flat) == []
    assert finder.detect(noise) == []


def test_blurred_person_hides_the_face(finder: CenterFace) -> None:
    image = _read("zidane.jpg")
    height, width = image.shape[:2]
    # Person boxes as the pose model finds them on this image, padded like the pipeline does.
    people = [(140, 204, 1042, 714), (744, 37, 1142, 710)]
    regions = [pad_box(box, 0.1, width, height) for box in people]
    blurred = Blur().apply(image, regions)
    assert finder.detect(blurred) == []


def test_grey_and_bgra_inputs(finder: CenterFace) -> None:
    image = _read("zidane.jpg")
    assert len(finder.detect(cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))) == 2
    assert isinstance(finder.detect(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)), list)


def test_identity_attributes(finder: CenterFace) -> None:
    assert finder.name == "centerface.onnx"
    assert finder.sha256 == "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
    assert finder.describe()["input_size"] == 640


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        CenterFace(confidence=0.0)
    with pytest.raises(ValueError):
        CenterFace(input_size=16)


def test_dynamic_model_accepts_any_size() -> None:
    """The rewritten graph runs at sizes other than the declared 32x32, batch 1."""
    import onnxruntime

    data = dynamic_model_bytes(resolve_model("centerface.onnx").read_bytes())
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input.1" and inp.shape[0] == "B"
    heat = session.run(["537"], {"input.1": np.zeros((1, 3, 64, 96), np.float32)})[0]
    assert heat.shape == (1, 1, 16, 24)


def test_network_size_is_multiple_of_32() -> None:
    assert network_size(1280, 720, 640) == (640, 384)
    assert network_size(810, 1080, 640) == (480, 640)
    assert network_size(100, 50, None) == (128, 64)


def test_decode_matches_upstream_loop() -> None:
    """The vectorized decode gives upstream's boxes for faces away from the border."""
    rng = np.random.default_rng(1)
    h, w = 20, 30
    heat = np.zeros((1, 1, h, w), np.float32)
    heat[0, 0, 5, 7], heat[0, 0, 14, 22] = 0.9, 0.6
    scale = rng.uniform(1.0, 1.5, (1, 2, h, w)).astype(np.float32)
    offset = rng.uniform(0, 1, (1, 2, h, w)).astype(np.float32)
    marks = rng.uniform(0, 1, (1, 10, h, w)).astype(np.float32)
    boxes, points = decode(heat, scale, offset, marks, (h * 4, w * 4), 0.5)
    assert boxes.shape == (2, 5) and points.shape == (2, 10)
    for (r, c), box, lm in zip([(5, 7), (14, 22)], boxes, points, strict=True):
        s0, s1 = np.exp(scale[0, 0, r, c]) * 4, np.exp(scale[0, 1, r, c]) * 4
        x1 = (c + offset[0, 1, r, c] + 0.5) * 4 - s1 / 2
        y1 = (r + offset[0, 0, r, c] + 0.5) * 4 - s0 / 2
        np.testing.assert_allclose(box, [x1, y1, x1 + s1, y1 + s0, heat[0, 0, r, c]], rtol=1e-5)
        np.testing.assert_allclose(lm[0], marks[0, 1, r, c] * s1 + x1, rtol=1e-5)
        np.testing.assert_allclose(lm[1], marks[0, 0, r, c] * s0 + y1, rtol=1e-5)


def test_nms_keeps_best_of_overlapping() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.6, 0.9, 0.5], np.float32)
    assert non_max_suppression(boxes, scores, 0.3) == [1, 2]
