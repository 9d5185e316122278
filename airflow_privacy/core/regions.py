"""Where pixels change: the regions planned from confirmed people and from verification.

A region is no larger than the person needs: the person's box grown by
``padding`` of its own size on each side (hair, limbs, a loose box edge), and
people are joined into one row-shaped region only where their boxes really
overlap (``crowd_gap``), since an occluded person between two others is what
the detector misses there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow_privacy.core.detect import PersonDetection
from airflow_privacy.core.geometry import Box, crowd_boxes, pad_box

FACE_PADDING = 0.3  # face boxes are tight around the skin; hair and ears lie outside


@dataclass
class Region:
    """An area that is anonymized, and why."""

    box: Box
    origin: str  # person | head | person-no-face-keypoints | crowd | remediation-person | ...

    def to_record(self) -> dict[str, Any]:
        return {"box": [round(v, 2) for v in self.box], "origin": self.origin}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Region:
        x1, y1, x2, y2 = (float(v) for v in record["box"])
        return cls((x1, y1, x2, y2), str(record["origin"]))


def plan_regions(
    people: Sequence[PersonDetection],
    target: str,
    padding: float,
    width: int,
    height: int,
    crowd_gap: float | None = None,
) -> list[Region]:
    """The regions that hide ``people`` (confirmed ones only) for ``target``.

    For the head target, a person with no visible face keypoint (back turned,
    face cut off, too small for keypoints) gets the whole person: we cannot
    say where the head is, so the safe region is all of them.
    """
    regions: list[Region] = []
    for person in people:
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
            Region(box, "crowd") for box in crowd_boxes([r.box for r in regions], crowd_gap)
        ]
    return regions


def remediation_regions(
    residuals: Sequence[Any], padding: float, width: int, height: int
) -> list[Region]:
    """Regions for what verification found and confirmed uncovered (a person or a face)."""
    return [
        Region(
            pad_box(r.box, FACE_PADDING if r.kind == "face" else padding, width, height),
            f"remediation-{r.kind}",
        )
        for r in residuals
    ]
