"""Finding people: the YOLO11 model wrapped for recall-oriented person detection.

One :class:`PersonDetector` serves both the detection stage and the
verification re-detection (with stricter settings), so the two can never use
different pre-processing by accident. Ultralytics is imported lazily: Airflow
imports DAG files on every parse and must not pay for torch there.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airflow_privacy.core.geometry import Box, clip_box, merge_duplicates
from airflow_privacy.core.models import model_dir, resolve_model, sha256_file

FACE_KEYPOINTS = slice(0, 5)  # COCO: nose, left eye, right eye, left ear, right ear


@dataclass
class PersonDetection:
    box: Box
    confidence: float
    head_box: Box | None = None  # None: no face keypoint visible (or not a pose model)
    keypoints: np.ndarray | None = field(default=None, repr=False)

    def to_record(self) -> dict[str, Any]:
        return {
            "box": [round(v, 1) for v in self.box],
            "confidence": round(self.confidence, 4),
            "head_box": [round(v, 1) for v in self.head_box] if self.head_box else None,
        }


def configure_ultralytics() -> None:
    """Keep ultralytics offline and its settings inside the project's cache.

    Set by the project, not the user: ultralytics otherwise writes settings to
    the home directory and may try to download fonts or weights.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(model_dir().parent / "ultralytics"))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)


def _undo_pil_patch() -> None:
    """Give ``PIL.Image.open`` back its own behaviour after importing ultralytics.

    Ultralytics replaces it with a wrapper that, on any unidentified file,
    tries to pip-install a HEIF plugin at run time. We decode untrusted bytes
    ourselves and hand the model arrays, so that wrapper would only turn our
    clear "not an image" rejection into a package installation attempt.
    """
    import sys

    from PIL import Image

    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is not original:
        Image.open = original


def model_digest(path: Path) -> str:
    """sha256 of a weights file, or of the files of an exported model directory."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(child.relative_to(path).as_posix().encode())
        digest.update(sha256_file(child).encode())
    return digest.hexdigest()


def head_box(
    keypoints: np.ndarray, person: Box, min_confidence: float, width: int, height: int
) -> Box | None:
    """A box around the head from the face keypoints, or None when none is visible.

    The head's width is estimated from what is visible: 1.3x the ear-to-ear
    distance, else 2.5x the eye-to-eye distance (eyes sit about 0.4 of a head
    apart), else 2.5x the spread of the visible face keypoints; never less
    than a quarter of the person's width, or half of it when only one keypoint
    is visible (a standing person's shoulders are about two heads wide). The
    box extends further up than down: hair and forehead lie above the eyes.
    """
    face = keypoints[FACE_KEYPOINTS]
    seen = face[:, 2] >= min_confidence
    if not seen.any():
        return None
    visible = face[seen][:, :2]
    cx, cy = visible.mean(axis=0)
    person_width = person[2] - person[0]
    if seen.sum() == 1:
        side = 0.5 * person_width
    else:
        estimates = [2.5 * float(np.ptp(visible, axis=0).max())]
        if seen[3] and seen[4]:
            estimates.append(1.3 * float(np.linalg.norm(face[3, :2] - face[4, :2])))
        if seen[1] and seen[2]:
            estimates.append(2.5 * float(np.linalg.norm(face[1, :2] - face[2, :2])))
        side = max(0.25 * person_width, min(estimates))
    side = max(side, 8.0)
    return clip_box(
        (cx - side / 2, cy - 0.7 * side, cx + side / 2, cy + 0.6 * side), width, height
    )


class PersonDetector:
    """People (and their heads) on BGR images, with optional flip test-time augmentation."""

    def __init__(
        self,
        model: str,
        *,
        model_sha256: str | None = None,
        classes: tuple[int, ...] = (0,),
        image_size: int = 640,
        keypoint_confidence: float = 0.5,
        merge_iou: float = 0.6,
        device: str = "cpu",
    ) -> None:
        self.path = resolve_model(model, model_sha256)
        self.sha256 = model_digest(self.path)
        self.name = self.path.name
        self.classes = list(classes)
        self.image_size = image_size
        self.keypoint_confidence = keypoint_confidence
        self.merge_iou = merge_iou
        self.device = device
        configure_ultralytics()
        from ultralytics import YOLO

        _undo_pil_patch()

        try:
            self._model = YOLO(str(self.path))
        except Exception as exc:
            from airflow_privacy.core.models import ModelError

            raise ModelError(f"cannot load model {self.path}: {exc}") from exc

    def detect(self, pixels: np.ndarray, *, confidence: float, flip: bool) -> list[PersonDetection]:
        """All people at or above ``confidence``; with ``flip`` also on the mirrored image."""
        height, width = pixels.shape[:2]
        batch = [pixels, np.ascontiguousarray(pixels[:, ::-1])] if flip else [pixels]
        results = self._model.predict(
            batch,
            conf=confidence,
            classes=self.classes,
            imgsz=self.image_size,
            device=self.device,
            verbose=False,
        )
        found: list[PersonDetection] = []
        for index, result in enumerate(results):
            mirrored = index == 1
            if result.boxes is not None:
                boxes, scores = result.boxes.xyxy.cpu().numpy(), result.boxes.conf.cpu().numpy()
            else:
                boxes, scores = np.empty((0, 4)), np.empty(0)
            kpts = None
            if getattr(result, "keypoints", None) is not None and result.keypoints.data.numel():
                kpts = result.keypoints.data.cpu().numpy().copy()
            for i, (box, score) in enumerate(zip(boxes, scores, strict=True)):
                x1, y1, x2, y2 = (float(v) for v in box)
                points = kpts[i] if kpts is not None else None
                if mirrored:
                    x1, x2 = width - x2, width - x1
                    if points is not None:
                        points[:, 0] = width - points[:, 0]
                person = clip_box((x1, y1, x2, y2), width, height)
                head = (
                    head_box(points, person, self.keypoint_confidence, width, height)
                    if points is not None
                    else None
                )
                found.append(PersonDetection(person, float(score), head, points))
        if flip and found:
            keep = merge_duplicates([d.box for d in found], [d.confidence for d in found],
                                    self.merge_iou)
            found = [found[i] for i in keep]
        found.sort(key=lambda d: -d.confidence)
        return found
