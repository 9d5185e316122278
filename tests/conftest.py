"""Shared fixtures: the real model (fetched offline), the sample images, the COCO slice.

The model directory defaults to the project's ``.cache/models`` so a fresh
clone's ``make test`` and CI use the weights that ``make`` fetched; no test
touches the network (``YOLO_OFFLINE=1``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
os.environ.setdefault("AIRFLOW_PRIVACY_MODEL_DIR", str(PROJECT / ".cache" / "models"))
os.environ["YOLO_OFFLINE"] = "1"

SAMPLES = Path(importlib.util.find_spec("ultralytics").origin).parent / "assets"
COCO = PROJECT.parent / "shared" / "datasets" / "coco128-train"


def image_dataset(count: int) -> dict[str, bytes]:
    """``count`` images keyed by name: the two samples, then COCO (or sample copies without it)."""
    images = {name: (SAMPLES / name).read_bytes() for name in ("bus.jpg", "zidane.jpg")}
    coco = sorted((COCO / "images").glob("*.jpg")) if COCO.is_dir() else []
    for path in coco[: count - len(images)]:
        images[f"coco/{path.name}"] = path.read_bytes()
    originals = list(images.items())
    while len(images) < count:
        name, data = originals[len(images) % len(originals)]
        images[f"copies/{len(images):02d}-{Path(name).name}"] = data
    return images


@pytest.fixture(scope="session")
def models() -> Path:
    """The default weights in the model directory, fetched (offline) if missing."""
    from airflow_privacy.core.models import DEFAULT_MODELS, fetch_model, model_dir

    for name in DEFAULT_MODELS:
        fetch_model(name, offline=True)
    return model_dir()


@pytest.fixture(scope="session")
def pipeline(models):
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.core.settings import RunSettings

    return Pipeline(RunSettings())


@pytest.fixture(scope="session")
def detector(pipeline):
    return pipeline.detector


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    """A source folder holding the ultralytics sample images (bus: 4 people, zidane: 2)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("bus.jpg", "zidane.jpg"):
        shutil.copy(SAMPLES / name, source / name)
    return source


from tests.airflow_env import airflow_home  # noqa: E402,F401
from tests.s3_server import (  # noqa: E402,F401
    isolated_s3_server,
    s3_bucket,
    s3_client,
    s3_fs,
    s3_server,
)
