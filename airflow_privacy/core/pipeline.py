"""The per-image chain: decode -> detect -> anonymize -> verify (-> remediate).

Each step is a method of :class:`Pipeline` so the Airflow operators can run
them as separate tasks, while the CLI runs :meth:`Pipeline.process` on one
image at a time. Verification always looks at the *encoded* output, i.e. the
exact bytes that would be published, never at an in-memory approximation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from airflow_privacy.core.anonymize import AnonymizationMethod, make_method
from airflow_privacy.core.detect import PersonDetection, PersonDetector
from airflow_privacy.core.geometry import Box, crowd_boxes, pad_box
from airflow_privacy.core.images import (
    DecodedImage,
    ImageRejected,
    decode_image,
    encode_image,
    output_suffix,
    sha256_bytes,
)
from airflow_privacy.core.settings import RunSettings
from airflow_privacy.core.verify import FaceFinder, Residual, VerificationResult, Verifier

FACE_PADDING = 0.3  # face boxes are tight around the skin; hair and ears lie outside

STATUS_VERIFIED = "verified"
STATUS_QUARANTINED = "quarantined"
STATUS_ERROR = "error"


@dataclass
class Region:
    """An area that is anonymized, and why."""

    box: Box
    origin: str  # person | head | person-no-face-keypoints | remediation-person | ...

    def to_record(self) -> dict[str, Any]:
        return {"box": [round(v, 1) for v in self.box], "origin": self.origin}


@dataclass
class ImageOutcome:
    """What happened to one input: its manifest record and, if any, the output bytes."""

    record: dict[str, Any]
    output: bytes | None = None

    @property
    def status(self) -> str:
        return str(self.record["status"])


@dataclass
class Verified:
    output: bytes
    pixels: np.ndarray
    regions: list[Region]
    result: VerificationResult
    rounds: int
    history: list[dict[str, Any]] = field(default_factory=list)


def plan_regions(
    detections: Sequence[PersonDetection],
    target: str,
    padding: float,
    width: int,
    height: int,
    crowd_gap: float | None = None,
) -> list[Region]:
    """The regions to anonymize for ``target``.

    For the head target, a person with no visible face keypoint (back turned,
    face cut off, too small for keypoints) gets the whole person: we cannot
    say where the head is, so the safe region is all of them.

    For the person target, people standing side by side (``crowd_gap``) are
    also hidden as one row, see :func:`~airflow_privacy.core.geometry.crowd_boxes`.
    """
    regions: list[Region] = []
    for person in detections:
        if target == "head" and person.head_box is not None:
            regions.append(Region(pad_box(person.head_box, padding, width, height), "head"))
        elif target == "head":
            regions.append(
                Region(pad_box(person.box, padding, width, height), "person-no-face-keypoints")
            )
        else:
            regions.append(Region(pad_box(person.box, padding, width, height), "person"))
    if target == "person" and crowd_gap is not None:
        regions += [
            Region(box, "crowd")
            for box in crowd_boxes([r.box for r in regions], crowd_gap)
        ]
    return regions


def remediation_regions(
    residuals: Sequence[Residual], padding: float, width: int, height: int
) -> list[Region]:
    return [
        Region(
            pad_box(r.box, FACE_PADDING if r.kind == "face" else padding, width, height),
            f"remediation-{r.kind}",
        )
        for r in residuals
    ]


class Pipeline:
    """Everything needed to anonymize and verify images under one :class:`RunSettings`."""

    def __init__(
        self,
        settings: RunSettings,
        *,
        method: AnonymizationMethod | None = None,
        face_finder: FaceFinder | None = None,
        detector: PersonDetector | None = None,
    ) -> None:
        self.settings = settings.validate()
        d = settings.detection
        self.detector = detector or PersonDetector(
            d.model,
            model_sha256=d.model_sha256,
            classes=d.classes,
            image_size=d.image_size,
            keypoint_confidence=d.keypoint_confidence,
            merge_iou=d.merge_iou,
            device=d.device,
        )
        self.method = method or make_method(settings.anonymization.method)
        v = settings.verification
        if face_finder is None and v.faces:
            from airflow_privacy.core.faces import CenterFace

            face_finder = CenterFace(
                v.face_model, confidence=v.face_confidence, input_size=v.face_input_size,
                threads=getattr(self.detector, "threads", None),  # the CPUs we may use
            )
        self.face_finder = face_finder
        self.verifier = Verifier(
            self.detector, settings.verification, settings.anonymization.target, face_finder
        )

    # -- the steps ---------------------------------------------------------------------------

    def decode(self, data: bytes) -> DecodedImage:
        return decode_image(data, max_pixels=self.settings.max_pixels)

    def detect(self, image: DecodedImage) -> list[PersonDetection]:
        d = self.settings.detection
        return self.detector.detect(image.pixels, confidence=d.confidence, flip=d.flip)

    def plan(self, image: DecodedImage, detections: Sequence[PersonDetection]) -> list[Region]:
        a = self.settings.anonymization
        return plan_regions(
            detections, a.target, a.padding, image.width, image.height, a.crowd_gap
        )

    def anonymize(self, image: DecodedImage, regions: Sequence[Region]) -> np.ndarray:
        return self.method.apply(image.pixels, [r.box for r in regions])

    def encode(self, pixels: np.ndarray, image: DecodedImage, name: str) -> bytes:
        return encode_image(pixels, output_suffix(name), image.alpha)

    def verify(
        self, image: DecodedImage, output: bytes, regions: Sequence[Region], name: str
    ) -> Verified:
        """Verify ``output``; anonymize what it finds uncovered and verify again, bounded.

        Each round's findings are kept in ``history`` for the manifest. What is
        still failing after ``remediation_rounds`` is the caller's to quarantine.
        """
        regions = list(regions)
        pixels = _decode_output(output)
        history: list[dict[str, Any]] = []
        rounds = 0
        while True:
            result = self.verifier.verify(image.pixels, pixels, [r.box for r in regions])
            history.append(result.to_record())
            if result.passed or rounds >= self.settings.verification.remediation_rounds:
                return Verified(output, pixels, regions, result, rounds, history)
            extra = remediation_regions(
                result.residuals, self.settings.anonymization.padding, image.width, image.height
            )
            stale = [regions[i] for i in result.retention_failures]
            if not extra and not stale:
                return Verified(output, pixels, regions, result, rounds, history)
            rounds += 1
            regions += extra
            pixels = self.method.apply(pixels, [r.box for r in extra + stale])
            output = self.encode(pixels, image, name)
            pixels = _decode_output(output)

    # -- the whole chain for one image --------------------------------------------------------

    def process(self, key: str, data: bytes) -> ImageOutcome:
        """Run every step on one input; never raises for a bad image, records why instead."""
        timings: dict[str, float] = {}
        record = self.base_record(key, data)
        clock = time.perf_counter()
        try:
            image = self.decode(data)
            timings["decode"] = _ms(clock)
            record.update(width=image.width, height=image.height, format=image.source_format,
                          decode_notes=list(image.notes))
            clock = time.perf_counter()
            detections = self.detect(image)
            timings["detect"] = _ms(clock)
            clock = time.perf_counter()
            regions = self.plan(image, detections)
            output = self.encode(self.anonymize(image, regions), image, key)
            timings["anonymize"] = _ms(clock)
            clock = time.perf_counter()
            verified = self.verify(image, output, regions, key)
            timings["verify"] = _ms(clock)
        except ImageRejected as exc:
            record.update(status=STATUS_ERROR, error={"code": exc.code, "message": exc.message})
            record["timings_ms"] = timings
            return ImageOutcome(record)
        record.update(self.result_fields(detections, verified))
        record["timings_ms"] = timings
        return ImageOutcome(record, verified.output)

    def base_record(self, key: str, data: bytes) -> dict[str, Any]:
        from airflow_privacy import __version__

        return {
            "source": key,
            "status": None,
            "input_sha256": sha256_bytes(data),
            "input_bytes": len(data),
            "output_sha256": None,
            "width": None,
            "height": None,
            "format": None,
            "detections": [],
            "persons_detected": 0,
            "regions": [],
            "method": self.method.describe(),
            "target": self.settings.anonymization.target,
            "verification": None,
            "model": {"name": self.detector.name, "sha256": self.detector.sha256},
            "face_model": (
                {"name": self.face_finder.name, "sha256": getattr(self.face_finder, "sha256", None)}
                if self.face_finder
                else None
            ),
            "package_version": __version__,
            "settings_key": self.settings.key(),
            "metadata_stripped": None,
            "error": None,
        }

    def result_fields(
        self, detections: Sequence[PersonDetection], verified: Verified
    ) -> dict[str, Any]:
        passed = verified.result.passed
        return {
            "status": STATUS_VERIFIED if passed else STATUS_QUARANTINED,
            "output_sha256": sha256_bytes(verified.output),
            "detections": [d.to_record() for d in detections],
            "persons_detected": len(detections),
            "regions": [r.to_record() for r in verified.regions],
            "verification": {
                **verified.result.to_record(),
                "remediation_rounds": verified.rounds,
                "rounds": verified.history,
                "settings": {
                    "confidence": self.settings.verification.confidence,
                    "flip": self.settings.verification.flip,
                    "covered_max_confidence": self.settings.verification.covered_max_confidence,
                    "min_coverage": self.settings.verification.min_coverage,
                    "max_retention": self.settings.verification.max_retention,
                    "faces": self.settings.verification.faces,
                    "face_confidence": self.settings.verification.face_confidence,
                },
            },
            "metadata_stripped": True,
            "error": None
            if passed
            else {"code": "verification_failed", "message": "; ".join(verified.result.reasons())},
        }


def _decode_output(output: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(output, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise ImageRejected("encode_failed", "the encoded output could not be decoded again")
    return pixels


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)
