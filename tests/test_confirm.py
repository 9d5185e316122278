"""The confirmation rules, one by one, on synthetic candidates.

The crop re-score is a model call; here a stand-in detector answers it with a
chosen score, so each rule is tested alone. The rules on real photos are in
``tests/test_precision.py``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from airflow_privacy.core.confirm import CONFIRMED, DISMISSED, Confirmer, context_crop
from airflow_privacy.core.detect import PersonDetection
from airflow_privacy.core.settings import ConfirmationSettings

WIDTH, HEIGHT = 640, 480
PIXELS = np.zeros((HEIGHT, WIDTH, 3), np.uint8)


class CropScorer:
    """Answers every crop with one person filling the candidate's box at ``score``."""

    def __init__(self, score: float) -> None:
        self.score = score
        self.crops: list[tuple[int, int]] = []

    def detect_each(self, images, *, confidence, image_size):
        found = []
        for image in images:
            h, w = image.shape[:2]
            self.crops.append((w, h))
            # the candidate sits in the middle third of a 1.5x crop
            box = (w / 6, h / 6, w * 5 / 6, h * 5 / 6)
            found.append([PersonDetection(box, self.score)] if self.score >= confidence else [])
        return found


def keypoints(visible: int) -> np.ndarray:
    points = np.zeros((17, 3), np.float32)
    points[:visible, 2] = 0.9
    return points


def person(box, confidence, visible=0) -> PersonDetection:
    return PersonDetection(box, confidence, None, keypoints(visible))


def review(people, stage="detect", crop=0.0, faces=(), **settings):
    scorer = CropScorer(crop)
    confirmer = Confirmer(scorer, ConfirmationSettings(**settings), confident_at=0.25,
                          keypoint_confidence=0.5)
    return confirmer.review(PIXELS, people, stage, faces), scorer


SMALL = (300.0, 200.0, 340.0, 280.0)  # 40 x 80 px, away from the edges
EDGE = (0.0, 200.0, 40.0, 280.0)  # touching the left edge
LARGE = (20.0, 20.0, 600.0, 460.0)  # most of the frame


def test_a_confident_candidate_is_confirmed_without_a_crop():
    (candidate,), scorer = review([person(SMALL, 0.8)])
    assert candidate.decision == CONFIRMED and "confident" in candidate.reason
    assert scorer.crops == []


@pytest.mark.parametrize("score, decision", [(0.45, CONFIRMED), (0.3, DISMISSED)])
def test_a_weak_candidate_is_decided_by_its_crop_re_score(score, decision):
    (candidate,), scorer = review([person(SMALL, 0.12)], crop=score)
    assert candidate.decision == decision
    assert candidate.evidence["crop"] == pytest.approx(score)
    assert len(scorer.crops) == 1


def test_the_crop_is_the_box_grown_around_its_centre_with_context():
    assert context_crop(SMALL, 1.5, WIDTH, HEIGHT) == (290, 180, 350, 300)
    assert context_crop(EDGE, 1.5, WIDTH, HEIGHT)[0] == 0  # clipped to the frame


def test_a_frame_sized_box_needs_keypoints_whatever_its_score():
    (few,), _ = review([person(LARGE, 0.95, visible=3)], crop=0.9)
    (many,), _ = review([person(LARGE, 0.95, visible=8)])
    assert few.decision == DISMISSED and "of the frame" in few.reason
    assert many.decision == CONFIRMED


def test_a_person_cut_off_by_the_frame_is_taken_at_the_detection_threshold_only_at_detection():
    (at_detection,), _ = review([person(EDGE, 0.3)], stage="detect")
    (in_verification,), _ = review([person(EDGE, 0.3)], stage="verify")
    (weaker,), _ = review([person(EDGE, 0.2)], stage="detect")
    (frame_sized,), _ = review([person((0.0, 0.0, 600.0, 470.0), 0.3, visible=8)])
    assert at_detection.decision == CONFIRMED and "edge" in at_detection.reason
    assert in_verification.decision == DISMISSED
    assert weaker.decision == DISMISSED
    assert frame_sized.decision == DISMISSED  # the zebra case: it must earn a crop re-score


def test_a_re_detection_in_verification_is_confident_only_at_the_higher_level():
    (weak,), _ = review([person(SMALL, 0.4)], stage="verify")
    (strong,), _ = review([person(SMALL, 0.6)], stage="verify")
    assert weak.decision == DISMISSED and strong.decision == CONFIRMED


def test_a_face_inside_confirms_but_a_face_filling_the_box_does_not():
    inside = [((310.0, 205.0, 330.0, 225.0), 0.7)]
    filling = [((300.0, 200.0, 340.0, 280.0), 0.7)]
    (with_face,), _ = review([person(SMALL, 0.12)], stage="verify", faces=inside)
    (filled,), _ = review([person(SMALL, 0.12)], stage="verify", faces=filling)
    assert with_face.decision == CONFIRMED and with_face.evidence["face"] == 0.7
    assert filled.decision == DISMISSED


def test_every_candidate_is_recorded_with_its_evidence():
    people = [person(SMALL, 0.8), person(SMALL, 0.1), person(LARGE, 0.5)]
    reviewed, _ = review(people, crop=0.1)
    records = [c.to_record() for c in reviewed]
    assert [r["decision"] for r in records] == [CONFIRMED, DISMISSED, DISMISSED]
    for record in records:
        assert record["reason"] and record["stage"] == "detect"
        assert {"frame_share", "keypoints"} <= set(record["evidence"])


def test_confirmation_off_confirms_everything():
    (candidate,), _ = review([replace(person(LARGE, 0.06), keypoints=None)], enabled=False)
    assert candidate.decision == CONFIRMED
