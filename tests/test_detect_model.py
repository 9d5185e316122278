"""A detect-only model (the official yolo11n.pt / yolo11s.pt) with the pose model beside it.

The official detect checkpoints are fetched by name, online, against their pins;
their bytes cannot be had here, so the code path is tested with an untrained
detect model that ultralytics builds offline from its own ``yolo11n.yaml``.
"""

from __future__ import annotations

import pytest

from airflow_privacy.core.models import (
    DEFAULT_MODELS,
    KNOWN_MODELS,
    configure_ultralytics,
    fetch_model,
    sha256_file,
)
from airflow_privacy.core.pipeline import Pipeline
from airflow_privacy.core.settings import RunSettings
from airflow_privacy.exceptions import ModelError
from tests.conftest import SAMPLES

POSE_SHA256 = "869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0"


@pytest.fixture(scope="module")
def untrained_detect_model(tmp_path_factory):
    configure_ultralytics()
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("detect") / "yolo11n-untrained.pt"
    YOLO("yolo11n.yaml").save(str(path))
    return path


def test_the_official_detect_checkpoints_are_pinned_and_never_fetched_offline(tmp_path):
    assert KNOWN_MODELS["yolo11n.pt"].sha256.startswith("0ebbc80d")
    assert KNOWN_MODELS["yolo11n.pt"].size == 5_613_764
    assert KNOWN_MODELS["yolo11s.pt"].sha256.startswith("85a76fe8")
    assert KNOWN_MODELS["yolo11s.pt"].size == 19_313_732
    assert "yolo11n.pt" not in DEFAULT_MODELS and "yolo11n-pose.pt" in DEFAULT_MODELS
    with pytest.raises(ModelError, match="no offline source"):
        fetch_model("yolo11n.pt", offline=True, target_dir=tmp_path)
    assert not (tmp_path / "yolo11n.pt").exists()


def test_a_detect_model_runs_the_flow_with_the_pose_model_for_keypoints(
    models, untrained_detect_model
):
    settings = RunSettings.from_dict({"detection": {
        "model": str(untrained_detect_model),
        "model_sha256": sha256_file(untrained_detect_model),
    }})
    pipeline = Pipeline(settings)
    outcome = pipeline.process("zidane.jpg", (SAMPLES / "zidane.jpg").read_bytes())
    record = outcome.record
    assert pipeline.detector.task == "detect"
    assert pipeline.keypointer is not None and pipeline.keypointer.task == "pose"
    assert record["model"]["name"] == untrained_detect_model.name
    assert record["model"]["keypoints"] == {"name": "yolo11n-pose.pt", "sha256": POSE_SHA256}
    # The untrained model finds no one; the independent face check still guards the output.
    assert record["status"] in ("verified", "quarantined")
    assert record["verification"]["rounds"], "verification ran"
    if record["status"] == "verified":
        assert {r["origin"] for r in record["regions"]} == {"remediation-face"}


def test_keypoints_come_from_the_pose_model_for_a_detect_models_boxes(models):
    from airflow_privacy.core.confirm import attach_keypoints
    from airflow_privacy.core.detect import PersonDetection

    pipeline = Pipeline(RunSettings())
    image = pipeline.decode((SAMPLES / "bus.jpg").read_bytes())
    posed = pipeline.detect(image)
    bare = [PersonDetection(p.box, p.confidence) for p in posed]  # as a detect model gives
    attached = attach_keypoints(pipeline.detector, image.pixels, bare)
    assert all(p.keypoints is not None for p in attached)
    assert [p.head_box for p in attached] == [p.head_box for p in posed]
    far = [PersonDetection((0.0, 0.0, 5.0, 5.0), 0.9)]  # nobody there: nothing attached
    assert attach_keypoints(pipeline.detector, image.pixels, far)[0].keypoints is None
