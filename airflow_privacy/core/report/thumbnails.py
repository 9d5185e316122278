"""Thumbnails of *published* outputs for the report, as ``data:`` URIs.

Kept apart from the page so the one rule that matters here is easy to audit:
the only bytes ever decoded are the release object of a record, and only when
its sha256 is the verified ``output_sha256``. A source image, a quarantined or
withheld output, or a stale release object is never turned into pixels.
Encoding is deterministic (fixed JPEG quality, no timestamps), so the report
stays byte-for-byte reproducible.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from airflow_privacy.core.images import decode_pixels, sha256_bytes
from airflow_privacy.storage import Storage, StorageError

THUMBNAIL_QUALITY = 85
REGION_COLOR = (40, 40, 230)  # BGR: regions planned from detections
REMEDIATION_COLOR = (0, 160, 255)  # BGR: regions added by remediation


@dataclass
class Thumbnail:
    """A downscaled published output, or the reason there is none (``jpeg`` is None)."""

    jpeg: bytes | None
    width: int = 0
    height: int = 0
    note: str = ""

    @property
    def data_uri(self) -> str | None:
        """The JPEG as a ``data:`` URI, the only way the self-contained page can hold it."""
        if self.jpeg is None:
            return None
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


def thumbnail(release: Storage, record: dict[str, Any], key: str, size: int) -> Thumbnail:
    """The published object, downscaled, with its regions outlined; never any other bytes.

    The object must be byte-for-byte the verified output (sha256), so a stale or
    replaced release object is not presented as this record's result. Failures
    become a note: the report describes a release that already happened.
    """
    try:
        data = release.read(key)
    except StorageError as exc:
        return Thumbnail(None, note=f"not readable from the release: {exc}")
    if sha256_bytes(data) != record.get("output_sha256"):
        return Thumbnail(None, note="the release object is not the verified output; not shown")
    full_w, full_h = record.get("width"), record.get("height")
    known = isinstance(full_w, int) and isinstance(full_h, int) and full_w > 0 and full_h > 0
    flag = _reduced_flag(max(full_w, full_h) if known else 0, size)
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        pixels = None
    if pixels is None:
        pixels = decode_pixels(data)  # HEIC, AVIF: formats OpenCV cannot read
    if pixels is None:
        return Thumbnail(None, note="the published output could not be decoded")
    if not known:
        full_h, full_w = pixels.shape[:2]
    scale = min(1.0, size / max(full_w, full_h))
    width, height = max(1, round(full_w * scale)), max(1, round(full_h * scale))
    if pixels.shape[1] != width or pixels.shape[0] != height:
        pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    else:
        pixels = pixels.copy()
    _outline(pixels, record.get("regions") or [], full_w, full_h)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY])
    if not ok:
        return Thumbnail(None, note="the thumbnail could not be encoded")
    return Thumbnail(encoded.tobytes(), width, height)


def _outline(pixels: np.ndarray, regions: list[dict[str, Any]], full_w: int, full_h: int) -> None:
    """Draw each anonymized region's box so a reviewer sees what was covered, and by whom.

    Boxes are in full-image pixels (``full_w`` x ``full_h``); they are scaled to the
    thumbnail here.
    """
    height, width = pixels.shape[:2]
    thickness = max(1, round(max(width, height) / 128))
    for region in regions:
        box = region.get("box") or []
        if len(box) != 4:
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        remediation = str(region.get("origin", "")).startswith("remediation")
        cv2.rectangle(
            pixels,
            (round(x1 * width / full_w), round(y1 * height / full_h)),
            (round(x2 * width / full_w) - 1, round(y2 * height / full_h) - 1),
            REMEDIATION_COLOR if remediation else REGION_COLOR, thickness,
        )


def _reduced_flag(longer_side: int, size: int) -> int:
    """Decode JPEGs at 1/2, 1/4 or 1/8 scale when that still covers ``size``: far cheaper."""
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if longer_side // factor >= size:
            return flag
    return cv2.IMREAD_COLOR
