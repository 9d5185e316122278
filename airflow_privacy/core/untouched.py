"""Publishing an image in which no one was confirmed: its pixels exactly, its metadata gone.

Re-encoding a JPEG that needs no change would alter every pixel a little and
lose quality for nothing, and a dataset's food photos must come out as they
went in. Metadata still goes (EXIF with GPS and camera serials, XMP, IPTC,
comments, trailers such as an appended motion-photo video), so the copy is
made at the container level where the format allows it:

* JPEG: the entropy-coded data is kept byte for byte; APPn segments other than
  JFIF (APP0) and Adobe (APP14, which says how to read the colours), comments
  and anything after the end-of-image marker are dropped;
* PNG: only the chunks that define pixels are kept (IHDR, PLTE, tRNS, IDAT, IEND);
* other formats are re-encoded losslessly (WebP lossless, TIFF, BMP, PNG).

The caller checks the result decodes to exactly the input's pixels
(:func:`same_pixels`) and falls back to the normal encoder if it does not (an
EXIF rotation, for one, cannot be kept without its EXIF).
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

from airflow_privacy.core.images import DecodedImage, ImageRejected, decode_image

_JPEG_KEEP_APP = {0xE0, 0xEE}  # JFIF, Adobe
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEEP = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}
_LOSSLESS = {".webp": [cv2.IMWRITE_WEBP_QUALITY, 101], ".png": [cv2.IMWRITE_PNG_COMPRESSION, 6]}


def strip_jpeg(data: bytes) -> bytes | None:
    """``data`` without metadata segments or trailing bytes, or None if it cannot be parsed."""
    if data[:2] != b"\xff\xd8":
        return None
    out, i, size = bytearray(b"\xff\xd8"), 2, len(data)
    while i + 2 <= size:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return bytes(out + b"\xff\xd9")
        if i + 4 > size:
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        end = i + 2 + length
        if length < 2 or end > size:
            return None
        keep = not (0xE0 <= marker <= 0xEF and marker not in _JPEG_KEEP_APP) and marker != 0xFE
        if keep:
            out += data[i:end]
        i = end
        if marker == 0xDA:  # a scan: entropy-coded data runs to the next real marker
            j = i
            while True:
                j = data.find(b"\xff", j)
                if j < 0 or j + 1 >= size:
                    return None
                following = data[j + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                    j += 2 if following != 0xFF else 1
                    continue
                break
            out += data[i:j]
            i = j
    return None


def strip_png(data: bytes) -> bytes | None:
    """``data`` with only the pixel-defining chunks, or None if it cannot be parsed."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    out, i = bytearray(_PNG_SIGNATURE), len(_PNG_SIGNATURE)
    while i + 12 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        end = i + 12 + length
        if end > len(data):
            return None
        if zlib.crc32(data[i + 4 : end - 4]) != struct.unpack(">I", data[end - 4 : end])[0]:
            return None
        if kind in _PNG_KEEP:
            out += data[i:end]
        if kind == b"IEND":
            return bytes(out)
        i = end
    return None


def untouched_copy(data: bytes, image: DecodedImage, suffix: str) -> bytes | None:
    """A metadata-free file with exactly ``image``'s pixels, in ``suffix``'s format, or None."""
    suffix = suffix.lower()
    if image.source_format == "JPEG" and suffix in (".jpg", ".jpeg"):
        return strip_jpeg(data)
    if image.source_format == "PNG" and suffix == ".png":
        return strip_png(data)
    if suffix in (".jpg", ".jpeg"):
        return None  # a JPEG can only be copied, never re-encoded without loss
    pixels = image.pixels
    if image.alpha is not None and suffix in (".png", ".webp", ".tif", ".tiff"):
        pixels = np.dstack([pixels, image.alpha])
    try:
        ok, buffer = cv2.imencode(suffix, pixels, _LOSSLESS.get(suffix, []))
    except cv2.error:
        return None
    return buffer.tobytes() if ok else None


def same_pixels(copy: bytes, image: DecodedImage, max_pixels: int) -> bool:
    """``copy`` decodes (as the verifier and a viewer would) to exactly ``image``'s pixels."""
    try:
        again = decode_image(copy, max_pixels=max_pixels)
    except ImageRejected:
        return False
    if again.pixels.shape != image.pixels.shape or not np.array_equal(again.pixels, image.pixels):
        return False
    if image.alpha is None or again.alpha is None:
        return image.alpha is None and again.alpha is None
    return bool(np.array_equal(again.alpha, image.alpha))
