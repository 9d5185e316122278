"""Decoding untrusted image bytes and encoding metadata-free outputs.

Decoding applies the EXIF orientation first, so people are found and hidden
in the orientation a viewer displays. Anything that cannot be decoded safely
is rejected with a reason rather than guessed at. Encoding goes through
OpenCV, which writes pixels only: no EXIF, GPS, XMP, IPTC, ICC or text chunks
survive into an output.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Our own pixel limit is checked from the header before any decoding; PIL's
# global bomb guard is lifted so it does not pre-empt that clearer error.
Image.MAX_IMAGE_PIXELS = None

SUPPORTED_SUFFIXES = {
    ".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png", ".webp": ".webp",
    ".tif": ".tiff", ".tiff": ".tiff", ".bmp": ".bmp", ".gif": ".png",
}


class ImageRejected(ValueError):
    """An input that is not processed, with a reason code for the manifest."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class DecodedImage:
    pixels: np.ndarray  # BGR uint8, H x W x 3, displayed orientation
    alpha: np.ndarray | None  # uint8 H x W, when the source had transparency
    source_format: str

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in SUPPORTED_SUFFIXES


def output_suffix(name: str) -> str:
    """The suffix an output is encoded with (same as the input where we can write it)."""
    return SUPPORTED_SUFFIXES.get(PurePosixPath(name).suffix.lower(), ".png")


def decode_image(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode ``data`` to BGR pixels, or raise :class:`ImageRejected`."""
    if not data:
        raise ImageRejected("empty_file", "the file has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_an_image", "the bytes are not a recognised image format") from exc
    except Exception as exc:
        raise ImageRejected("unreadable", f"cannot open image: {exc}") from exc
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageRejected("empty_image", f"image has size {width}x{height}")
        if width * height > max_pixels:
            raise ImageRejected(
                "too_many_pixels",
                f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
            )
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise ImageRejected(
                "multi_frame",
                f"image has {frames} frames; only single-frame images are anonymized, "
                "so none of it is published",
            )
        source_format = image.format or "UNKNOWN"
        try:
            image.load()
            oriented = ImageOps.exif_transpose(image)
        except Exception as exc:
            raise ImageRejected("truncated_or_corrupt", f"cannot decode image data: {exc}") from exc
        return _to_bgr(oriented, source_format)


def _to_bgr(image: Image.Image, source_format: str) -> DecodedImage:
    alpha = None
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        raw = np.asarray(image, dtype=np.float64)
        top = max(float(raw.max()), 1.0)
        scale = 255.0 / (65535.0 if top > 255 else 255.0)
        gray = np.clip(raw * scale, 0, 255).astype(np.uint8)
        return DecodedImage(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), None, source_format)
    if mode == "F":
        raw = np.asarray(image, dtype=np.float64)
        gray = np.clip(raw, 0, 255).astype(np.uint8)
        return DecodedImage(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), None, source_format)
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"))
        alpha = np.ascontiguousarray(rgba[:, :, 3])
        rgb = rgba[:, :, :3]
    else:
        rgb = np.asarray(image.convert("RGB"))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    return DecodedImage(bgr, alpha, source_format)


def encode_image(pixels: np.ndarray, suffix: str, alpha: np.ndarray | None = None) -> bytes:
    """Encode BGR pixels (plus optional alpha) to ``suffix``'s format with no metadata."""
    suffix = suffix.lower()
    if alpha is not None and suffix in (".png", ".webp", ".tiff"):
        pixels = np.dstack([pixels, alpha])
    params: list[int] = []
    if suffix == ".jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 95]
    ok, buffer = cv2.imencode(suffix, pixels, params)
    if not ok:
        raise ImageRejected("encode_failed", f"OpenCV could not encode a {suffix} image")
    return buffer.tobytes()
