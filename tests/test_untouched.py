"""Publishing an image unchanged: its pixels exactly, none of its metadata."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from airflow_privacy.core.images import decode_image
from airflow_privacy.core.untouched import same_pixels, strip_jpeg, strip_png, untouched_copy

MAX_PIXELS = 10**8


def _photo(mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _jpeg(**options) -> bytes:
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def test_a_jpeg_keeps_its_coded_pixels_and_loses_exif_comments_and_trailers():
    exif = Image.Exif()
    exif[0x010E] = "Jane Doe, 12 Main Street"
    exif[0x8825] = {2: (51.0, 30.0, 0.0)}  # a GPS latitude
    data = _jpeg(exif=exif.tobytes(), comment=b"shot by Jane") + b"MOTION-PHOTO-VIDEO"
    copy = strip_jpeg(data)
    assert copy is not None
    for secret in (b"Jane Doe", b"shot by Jane", b"MOTION-PHOTO-VIDEO", b"Exif"):
        assert secret in data and secret not in copy
    assert copy.endswith(b"\xff\xd9")
    assert same_pixels(copy, decode_image(data), MAX_PIXELS)


def test_a_progressive_jpeg_is_copied_scan_by_scan():
    data = _jpeg(progressive=True, comment=b"secret")
    copy = strip_jpeg(data)
    assert copy is not None and b"secret" not in copy
    assert same_pixels(copy, decode_image(data), MAX_PIXELS)


def test_a_png_keeps_only_its_pixel_chunks():
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    buffer = io.BytesIO()
    _photo("RGBA").save(buffer, "PNG", pnginfo=info)
    data = buffer.getvalue()
    copy = strip_png(data)
    assert copy is not None and b"Jane Doe" in data and b"Jane Doe" not in copy
    assert same_pixels(copy, decode_image(data), MAX_PIXELS)


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff", b"\xff\xd8\x00\x00garbage", b"not a jpeg"])
def test_a_jpeg_that_cannot_be_parsed_is_not_copied(data):
    assert strip_jpeg(data) is None


def test_a_damaged_png_chunk_is_not_copied():
    buffer = io.BytesIO()
    _photo().save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[40] ^= 0xFF  # inside IDAT: its CRC no longer matches
    assert strip_png(bytes(data)) is None


def test_an_exif_rotated_jpeg_is_not_published_as_a_copy():
    """Without its EXIF a rotated photo would display sideways: the flow re-encodes it."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    data = _jpeg(exif=exif.tobytes())
    image = decode_image(data)
    copy = untouched_copy(data, image, ".jpg")
    assert copy is not None and not same_pixels(copy, image, MAX_PIXELS)


def test_other_formats_are_re_encoded_losslessly():
    buffer = io.BytesIO()
    _photo().save(buffer, "WEBP", quality=60)
    data = buffer.getvalue()
    image = decode_image(data)
    copy = untouched_copy(data, image, ".webp")
    assert copy is not None and same_pixels(copy, image, MAX_PIXELS)
