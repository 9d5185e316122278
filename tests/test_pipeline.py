"""The per-image chain on the real sample images with the real model."""

import cv2
import numpy as np
import pytest

from airflow_privacy.core.geometry import is_covered, region_mask
from airflow_privacy.core.pipeline import Pipeline
from airflow_privacy.core.settings import RunSettings
from tests.conftest import SAMPLES


def _decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


@pytest.mark.parametrize("name, people", [("bus.jpg", 4), ("zidane.jpg", 2)])
def test_every_detected_person_is_inside_an_anonymized_region(pipeline, name, people):
    data = (SAMPLES / name).read_bytes()
    outcome = pipeline.process(name, data)
    record = outcome.record
    assert outcome.status == "verified", record["error"]
    assert record["persons_detected"] >= people
    original = _decode(data)
    published = _decode(outcome.output)
    mask = region_mask([r["box"] for r in record["regions"]], original.shape[1], original.shape[0])
    for detection in pipeline.detect(pipeline.decode(data)):
        assert is_covered(detection.box, mask, 1.0)
        x1, y1, x2, y2 = (int(v) for v in detection.box)
        diff = np.abs(published[y1:y2, x1:x2].astype(int) - original[y1:y2, x1:x2].astype(int))
        assert diff.mean() > 5
    assert record["verification"]["passed"] is True
    assert record["model"]["source_sha256"] == (  # the pinned .pt, whichever runtime ran it
        "869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0"
    )


def test_record_is_complete(pipeline):
    data = (SAMPLES / "bus.jpg").read_bytes()
    record = pipeline.process("bus.jpg", data).record
    for key in ("source", "input_sha256", "output_sha256", "width", "height", "detections",
                "regions", "method", "verification", "model", "package_version", "timings_ms",
                "settings_key"):
        assert record[key] is not None, key
    assert record["width"] == 810 and record["height"] == 1080
    assert {"box", "confidence"} <= set(record["detections"][0])
    assert record["method"]["name"] == "blur"


def test_head_target_keeps_bodies_and_hides_faces(models):
    head = Pipeline(RunSettings().with_overrides(target="head"))
    data = (SAMPLES / "zidane.jpg").read_bytes()
    outcome = head.process("zidane.jpg", data)
    assert outcome.status == "verified"
    origins = {r["origin"] for r in outcome.record["regions"]}
    assert "head" in origins
    area = sum((r["box"][2] - r["box"][0]) * (r["box"][3] - r["box"][1])
               for r in outcome.record["regions"])
    assert area < 0.5 * 1280 * 720  # far less than whole people


def test_person_without_face_keypoints_gets_whole_person_for_head_target(models):
    head = Pipeline(RunSettings().with_overrides(target="head"))
    outcome = head.process("bus.jpg", (SAMPLES / "bus.jpg").read_bytes())
    assert outcome.status == "verified", outcome.record["error"]
    assert "person-no-face-keypoints" in {r["origin"] for r in outcome.record["regions"]}


@pytest.mark.parametrize("method", ["pixelate", "fill"])
def test_other_methods_verify(models, method):
    p = Pipeline(RunSettings().with_overrides(method=method))
    outcome = p.process("bus.jpg", (SAMPLES / "bus.jpg").read_bytes())
    assert outcome.status == "verified", outcome.record["error"]


def test_bad_bytes_become_an_error_record(pipeline):
    outcome = pipeline.process("x.jpg", b"<html>not an image</html>")
    assert outcome.status == "error"
    assert outcome.output is None
    assert outcome.record["error"]["code"] == "not_an_image"


def test_output_carries_no_metadata(pipeline, tmp_path):
    from PIL import Image

    source = Image.open(SAMPLES / "bus.jpg")
    exif = source.getexif()
    exif[0x010E] = "Jane Doe at 12 Main Street"  # ImageDescription
    path = tmp_path / "tagged.jpg"
    source.save(path, exif=exif, comment=b"secret comment")
    outcome = pipeline.process("tagged.jpg", path.read_bytes())
    assert b"Jane Doe" not in outcome.output and b"secret comment" not in outcome.output
    assert b"Exif" not in outcome.output
