"""The benchmark's yardstick: pure measures of one anonymized image against its labels.

Everything here takes pixels, boxes and label text and returns numbers; no
model is loaded and nothing of the product is called except its box
arithmetic. That keeps the measures testable on synthetic images
(``tests/test_quality_measure.py``) and stable while the code they judge
changes. The runners (``bench/quality.py``, the COCO gate test) feed them.

Recall (is every labelled person hidden?):

* a labelled person is *anonymized* when the detail inside its box drops
  below 25 % (variance of the Laplacian of the grey crop, output / input;
  an input with variance < 1 counts as anonymized) AND no re-detection on
  the output (YOLO, conf 0.25, 640 px, no flip) overlaps it with IoU >= 0.5;
* *still detectable*: a labelled person with such an overlapping re-detection.

Precision (what did it cost the rest of the image?):

* *collateral*: share of pixels outside the 1.2x-enlarged labelled person
  boxes whose grey value changed by more than 12 levels;
* a person-free image is *altered* when more than 0.5 % of its pixels changed
  by more than 12 levels;
* a labelled non-person object is *damaged* when more than 25 % of its pixels
  outside the enlarged person boxes changed by more than 12 levels (objects
  lying entirely inside person boxes are not counted);
* a *false region* is an anonymized region less than 10 % of whose area lies
  inside the labelled person boxes (their union, so a crowd region that spans
  several small people is not false).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from airflow_privacy.core.geometry import Box, covered_fraction, iou, region_mask, to_pixels

PERSON_CLASS = 0
MAX_DETAIL = 0.25  # output/input Laplacian variance below this = detail gone
MATCH_IOU = 0.5  # a re-detection this close to a labelled person still finds them
MEASURE_CONFIDENCE = 0.25  # the re-detector's threshold: ultralytics' own default
ENLARGE = 1.2  # labelled boxes are loose at the edges: hair, limbs, shadows
CHANGE_LEVELS = 12  # grey-level change that counts as damage (JPEG q95 noise stays below)
ALTERED_SHARE = 0.005  # a person-free image with more changed pixels than this was altered
DAMAGED_SHARE = 0.25  # an object with more of its visible pixels changed than this is damaged
FALSE_REGION_OVERLAP = 0.1  # a region with less of its area on labelled persons is false

BUCKETS = (("large", "≥64 px"), ("medium", "32–64 px"), ("small", "<32 px"))


# --- labels and boxes -------------------------------------------------------------------------


def read_objects(text: str, width: int, height: int) -> list[tuple[int, Box]]:
    """``(class, pixel box)`` for every line of a YOLO label file: all 80 COCO classes."""
    objects: list[tuple[int, Box]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        cx, cy, w, h = (float(v) for v in parts[1:5])
        x1, y1 = (cx - w / 2) * width, (cy - h / 2) * height
        objects.append((int(float(parts[0])), (x1, y1, x1 + w * width, y1 + h * height)))
    return objects


def read_labels(
    text: str, width: int, height: int, classes: Iterable[int] = (PERSON_CLASS,)
) -> list[Box]:
    """Pixel boxes of the wanted classes (persons by default) from a YOLO label file's text."""
    wanted = set(classes)
    return [box for cls, box in read_objects(text, width, height) if cls in wanted]


def has_person(text: str) -> bool:
    """Whether a label file's text holds a person: picks the person-free images."""
    return any(cls == PERSON_CLASS for cls, _ in read_objects(text, 1, 1))


def height_bucket(height: float) -> str:
    """Size class of a person: small people are where detectors fail first."""
    if height >= 64:
        return "large"
    if height >= 32:
        return "medium"
    return "small"


def enlarge_box(box: Box, factor: float, width: int, height: int) -> Box:
    """``box`` scaled by ``factor`` around its centre, clipped to the image."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * factor / 2, (box[3] - box[1]) * factor / 2
    return (
        max(0.0, cx - hw), max(0.0, cy - hh),
        min(float(width), cx + hw), min(float(height), cy + hh),
    )


def person_zone(
    person_boxes: Sequence[Box], width: int, height: int, factor: float = ENLARGE
) -> np.ndarray:
    """Mask of the enlarged person boxes: where changes are the job, not collateral."""
    return region_mask([enlarge_box(b, factor, width, height) for b in person_boxes], width, height)


def best_iou(box: Box, others: Sequence[Box]) -> float:
    return max((iou(box, other) for other in others), default=0.0)


# --- pixels -----------------------------------------------------------------------------------


def _gray(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)


def changed_mask(
    original: np.ndarray, output: np.ndarray, levels: int = CHANGE_LEVELS
) -> np.ndarray:
    """Pixels whose grey value moved by more than ``levels``: below that is codec noise."""
    if original.shape[:2] != output.shape[:2]:
        raise ValueError(f"output shape {output.shape} differs from input {original.shape}")
    diff = np.abs(_gray(output).astype(np.int16) - _gray(original).astype(np.int16))
    return diff > levels


def detail_ratio(original: np.ndarray, output: np.ndarray, box: Box) -> float:
    """Laplacian variance inside ``box``, output / input (0 when the input had none).

    Deliberately re-implemented rather than imported from ``verify``: the
    benchmark must not move when the code it judges changes.
    """
    height, width = original.shape[:2]
    x1, y1, x2, y2 = to_pixels(box, width, height)
    if x2 <= x1 or y2 <= y1:
        return 0.0
    before = float(cv2.Laplacian(_gray(original[y1:y2, x1:x2]), cv2.CV_64F).var())
    if before < 1.0:
        return 0.0
    after = float(cv2.Laplacian(_gray(output[y1:y2, x1:x2]), cv2.CV_64F).var())
    return after / before


# --- recall -----------------------------------------------------------------------------------


@dataclass
class PersonCheck:
    """The verdict on one labelled person, with the two numbers behind it."""

    anonymized: bool
    detail: float
    redetection_iou: float

    @property
    def still_detectable(self) -> bool:
        return self.redetection_iou >= MATCH_IOU


def person_anonymized(
    original: np.ndarray,
    output: np.ndarray,
    box: Box,
    redetections: Sequence[Box],
    *,
    max_detail: float = MAX_DETAIL,
    match_iou: float = MATCH_IOU,
) -> PersonCheck:
    """Whether the labelled person ``box`` is anonymized on ``output``."""
    detail = detail_ratio(original, output, box)
    overlap = best_iou(box, redetections)
    return PersonCheck(detail < max_detail and overlap < match_iou, detail, overlap)


# --- precision --------------------------------------------------------------------------------


def collateral(
    original: np.ndarray,
    output: np.ndarray,
    person_boxes: Sequence[Box],
    *,
    factor: float = ENLARGE,
    levels: int = CHANGE_LEVELS,
) -> tuple[int, int]:
    """``(changed, outside)`` pixel counts outside the enlarged person boxes.

    Counts, not a ratio, so that images can aggregate by pixels as well as by image.
    """
    height, width = original.shape[:2]
    changed = changed_mask(original, output, levels)
    outside = ~person_zone(person_boxes, width, height, factor)
    return int((changed & outside).sum()), int(outside.sum())


def image_altered(
    original: np.ndarray,
    output: np.ndarray,
    *,
    max_share: float = ALTERED_SHARE,
    levels: int = CHANGE_LEVELS,
) -> bool:
    """Whether a (person-free) image was visibly altered: > ``max_share`` of pixels changed."""
    return float(changed_mask(original, output, levels).mean()) > max_share


def object_damage(changed: np.ndarray, zone: np.ndarray, box: Box) -> float | None:
    """Share of ``box``'s pixels outside ``zone`` that ``changed``; None when none lie outside.

    ``changed`` and ``zone`` are the image's masks (:func:`changed_mask`,
    :func:`person_zone`): a chair a person sits on is expected to be blurred
    where the person is, and only its visible rest counts.
    """
    height, width = changed.shape
    x1, y1, x2, y2 = to_pixels(box, width, height)
    visible = ~zone[y1:y2, x1:x2]
    count = int(visible.sum())
    if count == 0:
        return None
    return int((changed[y1:y2, x1:x2] & visible).sum()) / count


def objects_damaged(
    original: np.ndarray,
    output: np.ndarray,
    objects: Sequence[tuple[int, Box]],
    *,
    max_share: float = DAMAGED_SHARE,
    factor: float = ENLARGE,
    levels: int = CHANGE_LEVELS,
) -> tuple[int, int]:
    """``(damaged, counted)`` labelled non-person objects (all classes but 0)."""
    height, width = original.shape[:2]
    persons = [box for cls, box in objects if cls == PERSON_CLASS]
    changed = changed_mask(original, output, levels)
    zone = person_zone(persons, width, height, factor)
    damaged = counted = 0
    for cls, box in objects:
        if cls == PERSON_CLASS:
            continue
        share = object_damage(changed, zone, box)
        if share is None:
            continue
        counted += 1
        damaged += share > max_share
    return damaged, counted


def false_regions(
    regions: Sequence[Box],
    person_boxes: Sequence[Box],
    width: int,
    height: int,
    *,
    min_overlap: float = FALSE_REGION_OVERLAP,
) -> int:
    """Anonymized regions with less than ``min_overlap`` of their area on labelled persons."""
    persons = region_mask(person_boxes, width, height)
    return sum(covered_fraction(region, persons) < min_overlap for region in regions)


def dismissed_candidates(record: Mapping[str, Any]) -> int:
    """Candidates the pipeline looked at and decided were not persons (0 before it said so)."""
    return sum(1 for c in record.get("candidates") or [] if c.get("decision") == "dismissed")


# --- one image --------------------------------------------------------------------------------


@dataclass
class ImageMeasures:
    """Every measure of one image; ``published`` False leaves the pixel measures empty."""

    published: bool
    persons: int
    regions: int
    dismissed: int
    checks: list[tuple[Box, PersonCheck]] = field(default_factory=list)
    changed: int = 0
    outside: int = 0
    altered: bool = False
    objects_damaged: int = 0
    objects_counted: int = 0
    false_regions: int = 0
    unchanged_claim_false: bool = False

    @property
    def person_free(self) -> bool:
        return self.persons == 0

    @property
    def collateral_share(self) -> float | None:
        return self.changed / self.outside if self.outside else None


def measure_image(
    original: np.ndarray,
    output: np.ndarray | None,
    labels: str,
    regions: Sequence[Box],
    redetections: Sequence[Box],
    record: Mapping[str, Any] | None = None,
) -> ImageMeasures:
    """All measures of one image: ``output`` None means it was withheld (not published).

    ``original`` and ``output`` are both in displayed orientation; ``record``
    is the pipeline's manifest record (for the candidates it dismissed and
    its ``pixels_unchanged`` claim, which is checked against the pixels).
    """
    record = record or {}
    height, width = original.shape[:2]
    objects = read_objects(labels, width, height)
    persons = [box for cls, box in objects if cls == PERSON_CLASS]
    result = ImageMeasures(output is not None, len(persons), len(regions),
                           dismissed_candidates(record))
    if output is None:
        return result
    result.checks = [(box, person_anonymized(original, output, box, redetections))
                     for box in persons]
    result.changed, result.outside = collateral(original, output, persons)
    result.altered = not persons and image_altered(original, output)
    result.objects_damaged, result.objects_counted = objects_damaged(original, output, objects)
    result.false_regions = false_regions(regions, persons, width, height)
    if record.get("pixels_unchanged"):
        result.unchanged_claim_false = not np.array_equal(original, output)
    return result
