"""Confirmation before destruction: a weak person candidate changes pixels only with evidence.

The detector is asked for more than it is sure of (down to
``candidate_confidence``), so that small and partly hidden people are not
missed; but a weak signal alone must not destroy pixels (a zebra or a plate of
food read as a "person" at 0.12 gets blurred whole). Every candidate therefore
gets a decision and the evidence behind it:

* **veto**: a box covering more than ``large_share`` of the frame with fewer
  than ``large_min_keypoints`` visible pose keypoints is dismissed whatever its
  score (the zebra, the plate of food);
* **face**: the independent face model (run by verification anyway) finds a
  face inside it;
* **confident**: its score is ``confident`` or more; at detection, also a box
  at the detection threshold that touches the frame's edge without filling it
  (a person cut off by the frame has no context to re-score a crop with);
* **crop**: re-detected at ``crop_confidence`` or more on an upscaled crop of
  the box with context (a 40 px person becomes a 300 px one; a texture stays
  a texture). This is the evidence that separates people from look-alikes.

A candidate without any of these is *dismissed*: recorded in the manifest
with its scores and why, never silently dropped, and it changes no pixel. The
same review runs on the candidates verification re-detects on the output, so
the rule is written once (:class:`Confirmer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from airflow_privacy.core.detect import PersonDetection, PersonDetector
from airflow_privacy.core.geometry import Box, box_area, clip_box, iou
from airflow_privacy.core.settings import ConfirmationSettings

CONFIRMED, DISMISSED = "confirmed", "dismissed"
CROP_FLOOR = 0.05  # the crop pass reports down to here; the decision uses crop_confidence


@dataclass
class Candidate:
    """A person the detector proposed, with the decision taken on it and why."""

    person: PersonDetection
    stage: str  # "detect" or "verify"
    decision: str = DISMISSED
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def confirmed(self) -> bool:
        return self.decision == CONFIRMED

    def to_record(self) -> dict[str, Any]:
        return {
            "box": [round(v, 2) for v in self.person.box],
            "confidence": round(self.person.confidence, 4),
            "stage": self.stage,
            "decision": self.decision,
            "reason": self.reason,
            "evidence": self.evidence,
        }


def visible_keypoints(person: PersonDetection, min_confidence: float) -> int:
    """How many of the person's pose keypoints the model sees at ``min_confidence``."""
    if person.keypoints is None:
        return 0
    return int((person.keypoints[:, 2] >= min_confidence).sum())


def context_crop(box: Box, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The box grown ``scale`` times around its centre (context), as integer pixels."""
    dx = (box[2] - box[0]) * (scale - 1) / 2
    dy = (box[3] - box[1]) * (scale - 1) / 2
    x1, y1, x2, y2 = clip_box((box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy), width, height)
    return int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2))


class Confirmer:
    """Decides which candidates may change pixels (see the module docstring)."""

    def __init__(
        self,
        detector: PersonDetector,
        settings: ConfirmationSettings,
        *,
        confident_at: float,
        keypoint_confidence: float,
        keypointer: PersonDetector | None = None,
    ) -> None:
        self.detector = detector
        self.settings = settings
        self.confident_at = confident_at
        self.keypoint_confidence = keypoint_confidence
        self.keypointer = keypointer  # a pose model, when the detector gives no keypoints

    def review(
        self,
        pixels: np.ndarray,
        people: Sequence[PersonDetection],
        stage: str,
        faces: Sequence[tuple[Box, float]] = (),
    ) -> list[Candidate]:
        """A decision for each of ``people``; the cheapest evidence is looked at first.

        ``faces``: the face model's faces on ``pixels`` where they were found
        anyway (verification); detection does not pay a face pass for this.
        """
        s = self.settings
        height, width = pixels.shape[:2]
        frame = float(width * height)
        if self.keypointer is not None and people:
            people = attach_keypoints(self.keypointer, pixels, people)
        candidates = [Candidate(person, stage) for person in people]
        undecided: list[Candidate] = []
        for candidate in candidates:
            person = candidate.person
            share = box_area(person.box) / frame if frame else 0.0
            keypoints = visible_keypoints(person, self.keypoint_confidence)
            candidate.evidence = {"frame_share": round(share, 4), "keypoints": keypoints}
            inside = [c for box, c in faces if _face_inside(box, person.box, s.face_max_share)]
            if inside:
                candidate.evidence["face"] = round(max(inside), 4)
            if not s.enabled:
                self._decide(candidate, CONFIRMED, "confirmation off")
            elif share > s.large_share and keypoints < s.large_min_keypoints:
                self._decide(candidate, DISMISSED, (
                    f"covers {share:.0%} of the frame with {keypoints} visible keypoints "
                    f"(< {s.large_min_keypoints}); confidence {person.confidence:.2f}"))
            elif inside:
                self._decide(candidate, CONFIRMED, f"face inside ({max(inside):.2f})")
            elif person.confidence >= s.confident:
                self._decide(candidate, CONFIRMED, f"confident ({person.confidence:.2f})")
            elif (stage == "detect" and person.confidence >= self.confident_at
                  and share <= s.large_share and _at_edge(person.box, width, height)):
                self._decide(candidate, CONFIRMED,
                             f"cut off by the frame's edge ({person.confidence:.2f})")
            else:
                undecided.append(candidate)
        if undecided:
            self._by_crop(pixels, undecided)
        return candidates

    def _by_crop(self, pixels: np.ndarray, undecided: list[Candidate]) -> None:
        """Re-score each candidate on an upscaled crop with context; one batched model call."""
        height, width = pixels.shape[:2]
        s = self.settings
        crops = [context_crop(c.person.box, s.crop_scale, width, height) for c in undecided]
        found = self.detector.detect_each(
            [np.ascontiguousarray(pixels[y1:y2, x1:x2]) for x1, y1, x2, y2 in crops],
            confidence=CROP_FLOOR, image_size=s.crop_size,
        )
        for candidate, (x1, y1, _, _), people in zip(undecided, crops, found, strict=True):
            b = candidate.person.box
            local = (b[0] - x1, b[1] - y1, b[2] - x1, b[3] - y1)
            score = max((p.confidence for p in people if iou(p.box, local) >= 0.5), default=0.0)
            candidate.evidence["crop"] = round(score, 4)
            if score >= s.crop_confidence:
                self._decide(candidate, CONFIRMED, f"crop re-score {score:.2f}")
            else:
                self._decide(candidate, DISMISSED, (
                    f"confidence {candidate.person.confidence:.2f} below the confident level, "
                    f"crop re-score {score:.2f} < {s.crop_confidence}, no face inside"))

    @staticmethod
    def _decide(candidate: Candidate, decision: str, reason: str) -> None:
        candidate.decision, candidate.reason = decision, reason


def attach_keypoints(
    pose: PersonDetector, pixels: np.ndarray, people: Sequence[PersonDetection]
) -> list[PersonDetection]:
    """``people`` (from a detect-only model) with the keypoints and head box of the pose
    model's best matching person (IoU >= 0.5); one pose pass for all of them."""
    posed = pose.detect(pixels, confidence=CROP_FLOOR, flip=False)
    out: list[PersonDetection] = []
    for person in people:
        match = max(posed, key=lambda p: iou(p.box, person.box), default=None)
        if match is not None and iou(match.box, person.box) >= 0.5:
            person = replace(person, keypoints=match.keypoints, head_box=match.head_box)
        out.append(person)
    return out


def _at_edge(box: Box, width: int, height: int, margin: float = 2.0) -> bool:
    """The box touches the frame: part of the person lies outside the picture."""
    return (box[0] <= margin or box[1] <= margin
            or box[2] >= width - margin or box[3] >= height - margin)


def _face_inside(face: Box, person: Box, max_share: float) -> bool:
    """The face's centre lies in the person's box and the face is a part of it, not all of it."""
    cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    if not (person[0] <= cx <= person[2] and person[1] <= cy <= person[3]):
        return False
    area = box_area(person)
    return area > 0 and box_area(face) <= max_share * area
