"""Box arithmetic shared by detection, anonymization and verification.

Boxes are ``(x1, y1, x2, y2)`` tuples of floats in pixel coordinates of the
image as displayed (EXIF orientation already applied).

"Covered" is defined once, here: a box is covered by a set of anonymized
regions when at least ``min_fraction`` of its area lies inside their union.
The union is rasterised on the pixel grid so overlapping regions are never
double counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

Box = tuple[float, float, float, float]


def box_area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def clip_box(box: Box, width: int, height: int) -> Box:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (
        min(max(x1, 0.0), float(width)),
        min(max(y1, 0.0), float(height)),
        min(max(x2, 0.0), float(width)),
        min(max(y2, 0.0), float(height)),
    )


def pad_box(box: Box, fraction: float, width: int, height: int) -> Box:
    """Grow a box by ``fraction`` of its own width/height on every side, clipped."""
    x1, y1, x2, y2 = box
    dx = (x2 - x1) * fraction
    dy = (y2 - y1) * fraction
    return clip_box((x1 - dx, y1 - dy, x2 + dx, y2 + dy), width, height)


def iou(a: Box, b: Box) -> float:
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix2 - ix1) * max(0.0, iy2 - iy1)
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def to_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds that contain the whole box (floor/ceil), clipped."""
    x1, y1, x2, y2 = clip_box(box, width, height)
    return int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)), int(np.ceil(y2))


def region_mask(regions: Iterable[Box], width: int, height: int) -> np.ndarray:
    """Boolean mask of the union of ``regions``."""
    mask = np.zeros((height, width), dtype=bool)
    for box in regions:
        x1, y1, x2, y2 = to_pixels(box, width, height)
        mask[y1:y2, x1:x2] = True
    return mask


def covered_fraction(box: Box, mask: np.ndarray) -> float:
    """Share of ``box``'s pixels that lie inside ``mask`` (1.0 for an empty box)."""
    height, width = mask.shape
    x1, y1, x2, y2 = to_pixels(box, width, height)
    if x2 <= x1 or y2 <= y1:
        return 1.0
    return float(mask[y1:y2, x1:x2].mean())


def is_covered(box: Box, mask: np.ndarray, min_fraction: float) -> bool:
    return covered_fraction(box, mask) >= min_fraction


def side_by_side(a: Box, b: Box, gap: float) -> bool:
    """Two people of similar height standing next to each other.

    Similar height (within 2x), overlapping vertically over at least half the
    shorter one, and at most ``gap`` x the shorter height apart horizontally.
    """
    ha, hb = a[3] - a[1], b[3] - b[1]
    short = min(ha, hb)
    if short <= 0 or max(ha, hb) > 2 * short:
        return False
    vertical = min(a[3], b[3]) - max(a[1], b[1])
    horizontal_gap = max(a[0], b[0]) - min(a[2], b[2])
    return vertical >= 0.5 * short and horizontal_gap <= gap * short


def crowd_boxes(boxes: Sequence[Box], gap: float) -> list[Box]:
    """Bounding boxes of groups of two or more people standing side by side.

    In a row of people a detector finds some and misses the occluded ones
    between them; hiding the whole row hides those too, at the cost of little
    more than the gaps between people.
    """
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if side_by_side(boxes[i], boxes[j], gap):
                parent[root(i)] = root(j)
    groups: dict[int, list[Box]] = {}
    for i, box in enumerate(boxes):
        groups.setdefault(root(i), []).append(box)
    return [
        (min(b[0] for b in g), min(b[1] for b in g), max(b[2] for b in g), max(b[3] for b in g))
        for g in groups.values()
        if len(g) > 1
    ]


def non_max_suppression(
    boxes: Sequence[Box] | np.ndarray, scores: Sequence[float] | np.ndarray, iou_threshold: float
) -> list[int]:
    """Greedy non-maximum suppression: indices of the boxes to keep, best score first.

    A box is dropped when its IoU with an already kept, better scored box reaches
    ``iou_threshold``; equal scores keep input order. The one implementation for
    both detectors: merging the same person found by the plain and the flipped
    pass, and CenterFace's overlapping face candidates.

    Arithmetic is done in the boxes' own float precision (float32 face boxes stay
    float32, Python floats are float64), with the same formula as :func:`iou`, so
    a threshold decision is the same as comparing :func:`iou` values one by one.
    """
    coords = np.asarray(boxes)
    coords = coords.astype(np.result_type(coords.dtype, np.float32), copy=False).reshape(-1, 4)
    x1, y1, x2, y2 = coords.T
    areas = np.maximum(0.0, x2 - x1) * np.maximum(0.0, y2 - y1)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        iw = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        ih = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        inter = iw * ih
        union = areas[best] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap < iou_threshold]
    return keep
