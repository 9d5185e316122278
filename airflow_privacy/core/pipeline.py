"""What a run needs to process images: its settings and the models, loaded once, on first use.

:class:`Pipeline` holds no per-image state. The per-image steps live in
:mod:`airflow_privacy.core.flow` and take a pipeline as their tools;
:meth:`Pipeline.process` runs all of them on one image (the fused driver the
CLI batch and the benchmarks use), while the Airflow stages run the same
steps with checkpoints in between (:mod:`airflow_privacy.core.stages`).

Models load lazily: a retried Airflow stage whose inputs are all done, or a
batch of inputs that are all rejected before decoding, never loads torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from airflow_privacy.core.anonymize import AnonymizationMethod, make_method
from airflow_privacy.core.images import DecodedImage, decode_image, encode_image, output_suffix
from airflow_privacy.core.regions import Region, plan_regions
from airflow_privacy.core.settings import RunSettings

if TYPE_CHECKING:
    from airflow_privacy.core.confirm import Confirmer
    from airflow_privacy.core.detect import PersonDetection, PersonDetector
    from airflow_privacy.core.flow import ImageOutcome
    from airflow_privacy.core.verify import FaceFinder, Verifier


class Pipeline:
    """Everything needed to anonymize and verify images under one :class:`RunSettings`.

    ``method``, ``face_finder`` and ``detector`` replace the configured ones
    (tests use this to plant a weak method or share one loaded detector).
    """

    def __init__(
        self,
        settings: RunSettings,
        *,
        method: AnonymizationMethod | None = None,
        face_finder: FaceFinder | None = None,
        detector: PersonDetector | None = None,
    ) -> None:
        self.settings = settings.validate()
        self.method = method or make_method(settings.anonymization.method)
        if detector is not None:
            self.__dict__["detector"] = detector
        if face_finder is not None:
            self.__dict__["face_finder"] = face_finder

    # -- the models, on first use ---------------------------------------------------------------

    @cached_property
    def detector(self) -> PersonDetector:
        from airflow_privacy.core.detect import PersonDetector
        from airflow_privacy.core.heap import bound_heap

        bound_heap()  # this process now runs the image pipeline: see core/heap.py

        d = self.settings.detection
        return PersonDetector(
            d.model, model_sha256=d.model_sha256, classes=d.classes, image_size=d.image_size,
            keypoint_confidence=d.keypoint_confidence, merge_iou=d.merge_iou, device=d.device,
            backend=d.backend,
        )

    @cached_property
    def face_finder(self) -> FaceFinder | None:
        v = self.settings.verification
        if not v.faces:
            return None
        from airflow_privacy.core.faces import CenterFace

        return CenterFace(v.face_model, confidence=v.face_confidence,
                          input_size=v.face_input_size, threads=self.detector.threads,
                          device=self.settings.detection.device)

    @cached_property
    def keypointer(self) -> PersonDetector | None:
        """The pose model beside a detect-only model (None when the detector gives keypoints)."""
        if getattr(self.detector, "task", "pose") == "pose":
            return None
        from airflow_privacy.core.detect import PersonDetector

        d = self.settings.detection
        return PersonDetector(d.keypoint_model, image_size=d.image_size,
                              keypoint_confidence=d.keypoint_confidence, device=d.device)

    @cached_property
    def confirmer(self) -> Confirmer:
        from airflow_privacy.core.confirm import Confirmer

        d = self.settings.detection
        return Confirmer(self.detector, self.settings.confirmation, confident_at=d.confidence,
                         keypoint_confidence=d.keypoint_confidence, keypointer=self.keypointer)

    @cached_property
    def verifier(self) -> Verifier:
        from airflow_privacy.core.verify import Verifier

        return Verifier(self.detector, self.settings.verification,
                        self.settings.anonymization.target, self.face_finder, self.confirmer)

    def load(self) -> Pipeline:
        """Load every model now: a run that cannot verify must fail before it starts."""
        _ = self.detector, self.face_finder, self.confirmer, self.verifier
        return self

    def identity(self) -> dict[str, Any]:
        """The models as the manifest records them."""
        face, detector, pose = self.face_finder, self.detector, self.keypointer
        keypoints = {"keypoints": {"name": pose.name, "sha256": pose.sha256}} if pose else {}
        return {
            "model": {"name": detector.name, "sha256": detector.sha256,
                      "source_sha256": detector.source_sha256, "backend": detector.backend,
                      **keypoints},
            "face_model": (
                {"name": face.name, "sha256": getattr(face, "sha256", None)} if face else None
            ),
        }

    # -- single operations, for the flow and for tests -------------------------------------------

    def decode(self, data: bytes) -> DecodedImage:
        return decode_image(data, max_pixels=self.settings.max_pixels)

    def detect(self, image: DecodedImage) -> list[PersonDetection]:
        """People at the detection threshold, before confirmation."""
        d = self.settings.detection
        return self.detector.detect(image.pixels, confidence=d.confidence, flip=d.flip)

    def plan(self, image: DecodedImage, people: Sequence[PersonDetection]) -> list[Region]:
        a = self.settings.anonymization
        return plan_regions(people, a.target, a.padding, image.width, image.height, a.crowd_gap)

    def anonymize(self, image: DecodedImage, regions: Sequence[Region]) -> np.ndarray:
        return self.method.apply(image.pixels, [r.box for r in regions])

    def encode(self, pixels: np.ndarray, image: DecodedImage, name: str) -> bytes:
        return encode_image(pixels, output_suffix(name), image.alpha)

    def process(self, key: str, data: bytes, output_key: str | None = None) -> ImageOutcome:
        """The whole flow on one image; never raises for a bad image, records why instead."""
        from airflow_privacy.core import flow

        return flow.process(self, key, data, output_key)
