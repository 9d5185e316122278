"""Verification: re-detect on the anonymized output and refuse what still shows a person.

An output fails when

* a person re-detected at the verifier's (stricter) settings is not covered by
  the anonymized regions (for the ``head`` target: a re-detected person's head
  region, where the pose model still sees a face keypoint),
* for the ``person`` target, a person is re-detected inside the regions at
  ``covered_max_confidence`` or more: still a person at detection strength,
  so not anonymized,
* a face found by the independent face detector (when configured) is not covered, or
* an anonymized region keeps too much detail: :func:`detail_retention`
  (how much of the region's size-relative Laplacian detail survives) exceeds
  ``max_retention``.

"Covered" is :func:`airflow_privacy.core.geometry.is_covered`: at least
``min_coverage`` of the box's pixels lie inside the union of the regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from airflow_privacy.core.confirm import Candidate, Confirmer
from airflow_privacy.core.detect import PersonDetection, PersonDetector
from airflow_privacy.core.geometry import (
    Box,
    covered_fraction,
    non_max_suppression,
    region_mask,
    to_pixels,
)
from airflow_privacy.core.settings import Target, VerificationSettings


class FaceFinder(Protocol):
    """A second, independent opinion: anything that finds faces on a BGR image."""

    name: str

    def detect(self, pixels: np.ndarray) -> list[tuple[Box, float]]: ...


@dataclass
class Residual:
    """Something identifiable that verification found outside the anonymized regions."""

    kind: str  # "person", "head" or "face"
    box: Box
    confidence: float
    covered: float

    def to_record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "box": [round(v, 1) for v in self.box],
            "confidence": round(self.confidence, 4),
            "covered": round(self.covered, 3),
        }


@dataclass
class VerificationResult:
    residuals: list[Residual] = field(default_factory=list)
    retention: list[float] = field(default_factory=list)
    max_retention: float = 0.25
    redetections: int = 0
    reviewed: list[Candidate] = field(default_factory=list)  # uncovered re-detections

    @property
    def dismissed(self) -> list[Candidate]:
        return [c for c in self.reviewed if not c.confirmed]

    @property
    def retention_failures(self) -> list[int]:
        return [i for i, value in enumerate(self.retention) if value > self.max_retention]

    @property
    def passed(self) -> bool:
        return not self.residuals and not self.retention_failures

    def reasons(self) -> list[str]:
        reasons = [
            f"{r.kind} at {[round(v) for v in r.box]} re-detected (confidence "
            f"{r.confidence:.2f}, {r.covered:.0%} inside anonymized regions)"
            for r in self.residuals
        ]
        reasons += [
            f"region {i} keeps {self.retention[i]:.0%} of its detail "
            f"(limit {self.max_retention:.0%})"
            for i in self.retention_failures
        ]
        return reasons

    def to_record(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "residuals": [r.to_record() for r in self.residuals],
            "retention": [round(v, 4) for v in self.retention],
            "redetections": self.redetections,
            "dismissed": len(self.dismissed),
            "reasons": self.reasons(),
        }


RETENTION_SCALE = 64  # detail is judged at this size (longer side), relative to the region


def _region_gray(pixels: np.ndarray, box: Box) -> np.ndarray:
    height, width = pixels.shape[:2]
    x1, y1, x2, y2 = to_pixels(box, width, height)
    gray = cv2.cvtColor(pixels[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    h, w = gray.shape
    scale = min(1.0, RETENTION_SCALE / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray


def detail_retention(original: np.ndarray, anonymized: np.ndarray, box: Box) -> float:
    """Share of the region's detail that survives anonymization (0 = none, 1 = all).

    Detail is the Laplacian of the region shrunk to :data:`RETENTION_SCALE`
    pixels, so it is judged relative to the region's size: a light blur that
    leaves a large face recognisable still retains most of it. The ratio is
    the projection of the output's Laplacian onto the input's, divided by the
    input's energy; unlike a plain variance ratio it does not count the new
    edges a mosaic draws (they are not the person's detail), and an inverted
    image still counts as fully retained (absolute value).
    A region with no detail to begin with retains 0.
    """
    height, width = original.shape[:2]
    x1, y1, x2, y2 = to_pixels(box, width, height)
    if x2 - x1 < 3 or y2 - y1 < 3:
        return 0.0
    before = cv2.Laplacian(_region_gray(original, box), cv2.CV_64F)
    after = cv2.Laplacian(_region_gray(anonymized, box), cv2.CV_64F)
    before -= before.mean()
    after -= after.mean()
    energy = float((before * before).sum())
    if energy < before.size:  # less than unit variance: nothing to hide
        return 0.0
    return abs(float((before * after).sum())) / energy


class Verifier:
    """Checks an anonymized image against its original and its anonymized regions.

    Re-detected people outside the regions are reviewed by the same
    :class:`~airflow_privacy.core.confirm.Confirmer` as detection's candidates:
    a confirmed one is a residual (the output fails), a dismissed one is
    recorded in ``dismissed`` and changes nothing. Faces of the independent
    face model are the second opinion itself and always count.
    """

    def __init__(
        self,
        detector: PersonDetector,
        settings: VerificationSettings,
        target: Target,
        face_finder: FaceFinder | None = None,
        confirmer: Confirmer | None = None,
    ) -> None:
        self.detector = detector
        self.settings = settings
        self.target = target
        self.face_finder = face_finder
        self.confirmer = confirmer

    def verify(
        self, original: np.ndarray, anonymized: np.ndarray, regions: Sequence[Box]
    ) -> VerificationResult:
        height, width = anonymized.shape[:2]
        mask = region_mask(regions, width, height)
        result = VerificationResult(max_retention=self.settings.max_retention)
        people = self._redetect(anonymized)
        faces = self.face_finder.detect(anonymized) if self.face_finder is not None else []
        result.redetections = len(people)
        uncovered: list[tuple[PersonDetection, Box, str, float]] = []
        for person in people:
            if self.target == "head":
                if person.head_box is None:
                    continue  # no face keypoint visible: the face finder is the check here
                box, kind = person.head_box, "head"
            else:
                box, kind = person.box, "person"
            covered = covered_fraction(box, mask)
            # For the head target the body stays visible on purpose, so the
            # person's own confidence says nothing about the head: there the
            # face verifier and the retention check judge what is inside.
            still_a_person = (
                kind == "person" and person.confidence >= self.settings.covered_max_confidence
            )
            if covered < self.settings.min_coverage:
                uncovered.append((person, box, kind, covered))
            elif still_a_person:
                result.residuals.append(Residual(kind, box, person.confidence, covered))
        reviewed = (
            self.confirmer.review(anonymized, [u[0] for u in uncovered], "verify", faces)
            if self.confirmer is not None and uncovered
            else []
        )
        result.reviewed = reviewed
        for index, (person, box, kind, covered) in enumerate(uncovered):
            if reviewed and not reviewed[index].confirmed:
                continue
            result.residuals.append(Residual(kind, box, person.confidence, covered))
        for box, confidence in faces:
            covered = covered_fraction(box, mask)
            if covered < self.settings.min_coverage:
                result.residuals.append(Residual("face", box, confidence, covered))
        result.retention = [detail_retention(original, anonymized, box) for box in regions]
        return result

    def _redetect(self, pixels: np.ndarray) -> list[PersonDetection]:
        """People at the detector's own size and at every other size verification checks."""
        s = self.settings
        people = self.detector.detect(pixels, confidence=s.confidence, flip=s.flip)
        extra = [size for size in s.image_sizes if size != self.detector.image_size]
        for size in extra:
            people += self.detector.detect(pixels, confidence=s.confidence, flip=s.flip,
                                           image_size=size)
        if extra and len(people) > 1:
            keep = non_max_suppression([p.box for p in people], [p.confidence for p in people],
                                       self.detector.merge_iou)
            people = [people[i] for i in keep]
        return people
