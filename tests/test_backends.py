"""Exported backends (ONNX Runtime, OpenVINO), their provenance, thread sizing, batch overlap.

No timing is asserted here (the throughput is bench/throughput.py's to measure);
what is checked is that the faster paths find the same people as the ``.pt``,
are made only from the pinned weights, and that overlapping images in a
batch changes nothing in its results.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import cv2
import pytest

from airflow_privacy.core import models as registry
from airflow_privacy.core.batch import run_batch
from airflow_privacy.core.detect import PersonDetector, backend_of, cpu_budget, default_lanes
from airflow_privacy.core.models import (
    ModelError,
    ensure_export,
    export_model,
    export_name,
    export_origin,
    provenance_path,
    resolve_model,
)
from airflow_privacy.core.workers import in_order
from airflow_privacy.storage import open_storage
from tests.conftest import SAMPLES

PT = "yolo11n-pose.pt"


@pytest.fixture(scope="session")
def onnx_model(models):
    """The ONNX export in the shared model directory (made once, as `make models` does)."""
    pytest.importorskip("onnx")  # the export's dependency; optional while .pt is the default
    return ensure_export(PT, "onnx")


def _same_people(reference, other, *, pixels=1.0, confidence=0.01):
    assert len(other) == len(reference)
    for expected, found in zip(reference, other, strict=True):
        assert found.box == pytest.approx(expected.box, abs=pixels)
        assert found.confidence == pytest.approx(expected.confidence, abs=confidence)
        assert (found.head_box is None) == (expected.head_box is None)


def test_export_names_map_back_to_their_source():
    assert export_name(PT, "onnx") == "yolo11n-pose.onnx"
    assert export_name(PT, "openvino") == "yolo11n-pose_openvino_model"
    assert export_origin("yolo11n-pose.onnx") == (PT, "onnx")
    assert export_origin("centerface.onnx") is None  # a model in its own right, not an export
    with pytest.raises(ModelError, match="unknown export format"):
        export_name(PT, "tflite")


def test_onnx_export_has_provenance_of_the_pinned_weights(onnx_model):
    record = json.loads(provenance_path(onnx_model).read_text())
    assert record["source"] == PT
    assert record["source_sha256"] == registry.KNOWN_MODELS[PT].sha256
    assert record["sha256"] == registry.digest_path(onnx_model)
    assert record["dynamic"] is True
    assert resolve_model("yolo11n-pose.onnx") == onnx_model


@pytest.fixture(scope="session")
def pt_detector(models):
    return PersonDetector(PT, backend="pytorch")


def test_the_default_runs_the_pinned_pt_as_its_onnx_export(detector, onnx_model):
    from airflow_privacy.core.settings import DEFAULT_MODEL

    assert DEFAULT_MODEL == PT and detector.backend == "onnx" and detector.path == onnx_model
    assert detector.source_sha256 == registry.KNOWN_MODELS[PT].sha256 != detector.sha256


def test_onnx_backend_finds_the_same_people_as_the_pt(pt_detector, onnx_model):
    detector = pt_detector
    assert detector.backend == "pytorch"
    exported = PersonDetector(str(onnx_model))
    assert exported.backend == "onnx" and exported.name == "yolo11n-pose.onnx"
    assert exported.source_sha256 == detector.sha256 == detector.source_sha256
    image = cv2.imread(str(SAMPLES / "bus.jpg"))
    for confidence, flip in ((0.25, False), (0.1, True)):
        reference = detector.detect(image, confidence=confidence, flip=flip)
        assert len(reference) >= 4
        _same_people(reference, exported.detect(image, confidence=confidence, flip=flip))


def test_onnx_runtime_is_sized_to_the_cpu_budget(onnx_model):
    exported = PersonDetector(str(onnx_model), threads=1)
    session = exported._model.predictor.model.backend.session
    assert session.get_session_options().intra_op_num_threads == 1
    assert 1 <= cpu_budget() <= (os.cpu_count() or 1)


def test_the_cpu_budget_is_split_into_lanes_only_for_the_exported_runtimes():
    assert default_lanes("onnx", "cpu", 2) == 2
    assert default_lanes("onnx", "cpu", 16) == 2  # two images at a time: what the drivers run
    assert default_lanes("onnx", "cpu", 1) == 1
    assert default_lanes("pytorch", "cpu", 8) == 1  # torch's threads are one process setting
    assert default_lanes("onnx", "cuda:0", 8) == 1


def test_lanes_share_one_session_and_run_side_by_side(onnx_model):
    """Two lanes of one thread: one ONNX Runtime session, calls at once, the same people."""
    lanes = PersonDetector(str(onnx_model), threads=2, lanes=2)
    assert (lanes.lanes, lanes.threads) == (2, 1)
    models = [lanes._idle.get() for _ in range(2)]
    sessions = {id(m.predictor.model.backend.session) for m in models}
    for model in models:
        lanes._idle.put(model)
    assert len(sessions) == 1
    assert models[0].predictor.model.backend.session.get_session_options() \
        .intra_op_num_threads == 1

    images = [cv2.imread(str(SAMPLES / name)) for name in ("bus.jpg", "zidane.jpg")] * 3
    single = PersonDetector(str(onnx_model), threads=1, lanes=1)
    expected = [single.detect(image, confidence=0.1, flip=True) for image in images]
    inside, most = 0, 0
    guard = threading.Lock()
    run = lanes._run

    def counting_run(model, *args, **kwargs):  # how many calls are in the network at once
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        try:
            time.sleep(0.02)
            return run(model, *args, **kwargs)
        finally:
            with guard:
                inside -= 1

    lanes._run = counting_run
    found: list = [None] * len(images)

    def detect(index: int) -> None:
        found[index] = lanes.detect(images[index], confidence=0.1, flip=True)

    threads = [threading.Thread(target=detect, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2  # never more calls at once than lanes, and both lanes were used
    for reference, people in zip(expected, found, strict=True):
        _same_people(reference, people, pixels=1e-3, confidence=1e-5)


def test_export_refuses_weights_that_do_not_match_the_pin(models, tmp_path, monkeypatch):
    monkeypatch.setenv(registry.MODEL_DIR_ENV, str(tmp_path))
    tampered = tmp_path / PT
    shutil.copy(models / PT, tampered)
    with open(tampered, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="refusing"):
        export_model(PT, "onnx")
    assert not (tmp_path / "yolo11n-pose.onnx").exists()


def test_export_of_an_unknown_model_is_refused(tmp_path):
    with pytest.raises(ModelError, match="cannot export"):
        export_model("centerface.onnx", "onnx", target_dir=tmp_path)


def test_a_changed_export_is_refused(onnx_model, tmp_path, monkeypatch):
    monkeypatch.setenv(registry.MODEL_DIR_ENV, str(tmp_path))
    copy = tmp_path / onnx_model.name
    shutil.copy(onnx_model, copy)
    shutil.copy(provenance_path(onnx_model), provenance_path(copy))
    assert resolve_model("yolo11n-pose.onnx") == copy
    with open(copy, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="provenance"):
        resolve_model("yolo11n-pose.onnx")


def test_missing_or_stale_exports_are_made_from_the_pt(onnx_model, tmp_path, monkeypatch):
    monkeypatch.setenv(registry.MODEL_DIR_ENV, str(tmp_path))
    made = []

    def fake_export(source, fmt, directory):
        made.append((source, fmt))
        return directory / export_name(source, fmt)

    monkeypatch.setattr(registry, "_export", fake_export)
    resolve_model("yolo11n-pose.onnx")  # missing
    copy = tmp_path / onnx_model.name
    shutil.copy(onnx_model, copy)
    record = json.loads(provenance_path(onnx_model).read_text())
    record["source_sha256"] = "0" * 64  # made from other weights than today's pin
    provenance_path(copy).write_text(json.dumps(record))
    resolve_model("yolo11n-pose.onnx")  # stale
    assert made == [(PT, "onnx"), (PT, "onnx")]


def test_backend_follows_the_model_path(tmp_path):
    assert backend_of(tmp_path / "m.pt") == "pytorch"
    assert backend_of(tmp_path / "m.onnx") == "onnx"
    folder = tmp_path / "m_openvino_model"
    folder.mkdir()
    assert backend_of(folder) == "openvino"


def test_a_plain_pass_on_the_same_pixels_is_reused_and_equals_a_fresh_one(detector):
    """Verifying an untouched image reuses detection's pass: same people, one pass fewer."""
    image = cv2.imread(str(SAMPLES / "bus.jpg"))
    detector._memo.clear()
    fresh = detector.detect(image, confidence=0.1, flip=True)
    detector._memo.clear()
    detector.detect(image, confidence=0.05, flip=False)  # detection's candidate pass
    passes, reused = detector.passes, detector.reused
    again = detector.detect(image.copy(), confidence=0.1, flip=True)
    assert (detector.passes, detector.reused) == (passes + 1, reused + 1)  # the flip alone ran
    assert [(p.box, p.confidence, p.head_box) for p in again] == [
        (p.box, p.confidence, p.head_box) for p in fresh]
    changed = image.copy()
    changed[0, 0, 0] ^= 1  # one bit: another image, a new pass
    detector.detect(changed, confidence=0.1, flip=False)
    detector.detect(image, confidence=0.01, flip=False)  # lower than remembered: a new pass
    assert detector.passes == passes + 3 and detector.reused == reused + 1


def test_an_unknown_backend_is_refused(models):
    from airflow_privacy.core.detect import runtime_model

    with pytest.raises(ModelError, match="unknown backend"):
        runtime_model(resolve_model(PT), "tensorrt")


def test_the_face_model_refuses_a_gpu_it_cannot_use(models, monkeypatch):
    import onnxruntime

    from airflow_privacy.core.faces import CenterFace, execution_providers

    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelError, match=r"\[gpu\] extra"):
        CenterFace(device="cuda:0")
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert execution_providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": "1"})


def test_openvino_backend_finds_the_same_people_as_the_pt(pt_detector, models):
    detector = pt_detector
    pytest.importorskip("openvino")
    exported = PersonDetector(str(export_model(PT, "openvino")))
    assert exported.backend == "openvino"
    image = cv2.imread(str(SAMPLES / "bus.jpg"))
    reference = detector.detect(image, confidence=0.1, flip=True)
    _same_people(reference, exported.detect(image, confidence=0.1, flip=True))


def test_models_export_command(onnx_model, capsys):
    from airflow_privacy.cli import main

    assert main(["models", "export", "--format", "onnx"]) == 0
    assert str(onnx_model) in capsys.readouterr().out


# -- the batch's overlap ----------------------------------------------------------------------


def test_in_order_keeps_order_and_bounds_the_window():
    running, peak, lock = 0, 0, threading.Lock()

    def job(key):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01 * (int(key) % 3))
        with lock:
            running -= 1
        return {"key": key}

    keys = [str(i) for i in range(12)]
    done = list(in_order(job, keys, workers=3))
    assert [k for k, _ in done] == keys and [r["key"] for _, r in done] == keys
    assert peak <= 3


def test_in_order_stops_at_the_first_failure():
    started = []

    def job(key):
        started.append(key)
        if key == "2":
            raise OSError("storage outage")
        time.sleep(0.01)
        return {}

    with pytest.raises(OSError, match="outage"):
        list(in_order(job, [str(i) for i in range(50)], workers=2))
    assert len(started) < 10  # the rest were never started


def test_overlapped_batch_equals_the_sequential_one(pipeline, sample_dir, tmp_path):
    out = tmp_path / "out"

    def run(workers):
        shutil.rmtree(out, ignore_errors=True)
        result = run_batch(open_storage(str(sample_dir)), open_storage(str(out / "release")),
                           open_storage(str(out / "report")), pipeline, workers=workers)
        records = list(result.records)  # read from the report before the next run replaces it
        for record in records:
            record.pop("timings_ms", None)
        return records, sorted(p.name for p in (out / "release").iterdir())

    assert run(1) == run(2)
