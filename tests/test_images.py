"""Decoding untrusted bytes and encoding metadata-free outputs (airflow_privacy.core.images).

Every input is generated here with PIL, OpenCV or by hand: each accepted case checks the pixels
that come out, each rejected case checks the code (and that it says what it found).
"""

from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import (
    BmpImagePlugin,
    ExifTags,
    GifImagePlugin,
    Image,
    ImageCms,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from airflow_privacy.core.images import (
    DEFAULT_MAX_PIXELS,
    MAX_JPEG_SCANS,
    DecodedImage,
    ImageRejected,
    decode_image,
    encode_image,
    output_suffix,
    sniff_format,
)

RED, GREEN, BLUE, WHITE = (230, 20, 30), (20, 200, 40), (30, 40, 220), (250, 250, 250)
# PIL's save format for each format sniff_format names, and the suffix its output gets.
SAVE_AS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "TIFF": ".tiff", "WEBP": ".webp",
           "BMP": ".bmp"}


def save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def quadrants(width: int = 64, height: int = 40) -> np.ndarray:
    """RGB, asymmetric in both directions: red | green over blue | white."""
    out = np.empty((height, width, 3), np.uint8)
    out[: height // 2, : width // 2] = RED
    out[: height // 2, width // 2 :] = GREEN
    out[height // 2 :, : width // 2] = BLUE
    out[height // 2 :, width // 2 :] = WHITE
    return out


def colour_at(decoded: DecodedImage, fy: float, fx: float) -> np.ndarray:
    """Mean RGB of a small patch centred at a fraction of the height and width."""
    y, x = int(decoded.height * fy), int(decoded.width * fx)
    patch = decoded.pixels[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(axis=0)
    return patch[::-1]


def assert_quadrants(decoded: DecodedImage, tolerance: float = 12) -> None:
    for (fy, fx), colour in {(0.25, 0.25): RED, (0.25, 0.75): GREEN,
                             (0.75, 0.25): BLUE, (0.75, 0.75): WHITE}.items():
        np.testing.assert_allclose(colour_at(decoded, fy, fx), colour, atol=tolerance)


def assert_usable(decoded: DecodedImage) -> None:
    """What the anonymizer relies on: writable contiguous BGR uint8, encodable again."""
    pixels = decoded.pixels
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert pixels.flags.c_contiguous and pixels.flags.writeable
    if decoded.alpha is not None:
        assert decoded.alpha.shape == pixels.shape[:2] and decoded.alpha.flags.writeable
    pixels[0, 0] = 0  # an anonymizer may paint in place
    suffix = SAVE_AS[decoded.source_format]
    assert encode_image(pixels, output_suffix(f"x{suffix}"), decoded.alpha)


def rejected(data: bytes, **kwargs) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, **kwargs)
    return info.value


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + png_chunk(b"IEND", b""))


def tiff_claiming(width: int, height: int) -> bytes:
    """A tiny uncompressed greyscale TIFF whose only IFD claims ``width`` x ``height``."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8 + 2 + 12 * 9 + 4), (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\0" * 16


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(save(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(save(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(save(Image.new("RGB", (1, 1)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def webp_lossless_claiming(width: int, height: int) -> bytes:
    data = bytearray(save(Image.new("RGB", (1, 1)), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L"
    bits = int.from_bytes(data[21:25], "little") & ~0x0FFFFFFF
    bits |= (width - 1) | ((height - 1) << 14)
    data[21:25] = bits.to_bytes(4, "little")
    return bytes(data)


def webp_extended_claiming(width: int, height: int) -> bytes:
    data = bytearray(save(Image.new("RGBA", (1, 1)), "WEBP"))
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def webp_lossy_claiming(width: int, height: int) -> bytes:
    data = bytearray(save(Image.new("RGB", (1, 1)), "WEBP", quality=80))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
    data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


class ReachedDecoding(BaseException):
    """Raised by a patched decoder: a BaseException, so no ``except Exception`` swallows it."""


@pytest.fixture
def no_decoding(monkeypatch):
    """Any attempt to allocate and decode pixels fails the test loudly."""

    def refuse(*args, **kwargs):
        raise ReachedDecoding

    for reader in (BmpImagePlugin.BmpImageFile, GifImagePlugin.GifImageFile,
                   JpegImagePlugin.JpegImageFile, PngImagePlugin.PngImageFile,
                   TiffImagePlugin.TiffImageFile, WebPImagePlugin.WebPImageFile):
        monkeypatch.setattr(reader, "load", refuse)
    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", refuse)  # allocates on open


# -- rejected inputs ---------------------------------------------------------------------------


def test_zero_byte_file():
    assert rejected(b"").code == "empty_file"


@pytest.mark.parametrize(
    ("content", "code", "found"),
    [
        (b"hello, this is not a photo\n", "not_an_image", "plain text"),
        (b"\xef\xbb\xbf  <!DOCTYPE html><html><body>404</body></html>", "not_an_image", "HTML"),
        (b"<html><head><title>Access denied</title></head></html>", "not_an_image", "HTML"),
        (b'<?xml version="1.0"?><rss></rss>', "not_an_image", "XML"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
         "unsupported_format", "SVG"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not_an_image", "PDF"),
        (b"PK\x03\x04\x14\x00\x00\x00", "not_an_image", "ZIP"),
        # HEIC and AVIF are decoded now: a bare header is a broken file of that format
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "corrupt", "HEIF"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "truncated", "AVIF"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", "not_an_image", "MP4"),
        (b"8BPS\x00\x01\x00\x00\x00\x00\x00\x00", "unsupported_format", "PSD"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "unsupported_format", "EPS"),
        (bytes(range(256)) * 4, "not_an_image", "binary"),
    ],
)
def test_content_that_is_not_a_decodable_image_says_what_it_is(content, code, found):
    """Saved as .jpg or not: the bytes decide, and the message names what they are."""
    error = rejected(content)
    assert error.code == code
    assert found.lower() in error.message.lower()


def test_an_image_header_followed_by_junk_is_corrupt_and_names_the_format():
    error = rejected(b"\x89PNG\r\n\x1a\n" + b"<html>not really</html>" * 4)
    assert error.code in ("corrupt", "truncated") and "PNG" in error.message
    assert rejected(b"GIF89a" + b"\xff" * 40).message.count("GIF")


def _progressive_jpeg() -> bytes:
    return save(Image.fromarray(quadrants(160, 120)), "JPEG", progressive=True)


TRUNCATABLE = {
    "jpeg": lambda: save(Image.fromarray(quadrants(160, 120)), "JPEG"),
    "progressive_jpeg": _progressive_jpeg,
    "png": lambda: save(Image.fromarray(np.random.default_rng(0).integers(
        0, 255, (120, 160, 3), np.uint8)), "PNG"),
    "gif": lambda: save(Image.fromarray(quadrants(160, 120)).convert("P"), "GIF"),
    "tiff": lambda: save(Image.fromarray(quadrants(160, 120)), "TIFF"),
    "tiff_lzw": lambda: save(Image.fromarray(quadrants(160, 120)), "TIFF",
                             compression="tiff_lzw"),
    "webp": lambda: save(Image.fromarray(quadrants(160, 120)), "WEBP"),
    "bmp": lambda: save(Image.fromarray(quadrants(160, 120)), "BMP"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the EXIF it cannot finish
@pytest.mark.parametrize("kind", sorted(TRUNCATABLE))
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_images_are_rejected_not_half_decoded(kind, keep):
    data = TRUNCATABLE[kind]()
    assert decode_image(data).width == 160
    assert rejected(data[: int(len(data) * keep)]).code == "truncated"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", sorted(TRUNCATABLE))
def test_damaged_images_are_decoded_or_rejected_never_anything_else(kind):
    """Random damage to headers and data: a clean rejection or a usable image, quickly."""
    data, rng = TRUNCATABLE[kind](), np.random.default_rng(11)
    for _ in range(150):
        damaged = bytearray(data)
        if rng.random() < 0.3:  # cut a piece out
            start, stop = sorted(rng.integers(0, len(data), size=2))
            del damaged[start:stop]
        else:  # overwrite a few bytes, mostly in the header
            span = 400 if rng.random() < 0.7 else len(data)
            for offset in rng.integers(0, min(span, len(data)), size=rng.integers(1, 8)):
                damaged[offset] = rng.integers(0, 256)
        began = time.perf_counter()
        try:
            decoded = decode_image(bytes(damaged))
        except ImageRejected:
            pass
        else:
            assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape[2] == 3
        assert time.perf_counter() - began < 2.0


def test_a_jpeg_missing_only_its_last_bytes_is_rejected():
    data = TRUNCATABLE["jpeg"]()
    assert rejected(data[:-1]).code == "truncated"
    assert rejected(data[:-8]).code == "truncated"


def test_truncated_images_are_rejected_even_if_another_library_allowed_them(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = TRUNCATABLE["jpeg"]()
    assert rejected(data[: len(data) // 2]).code == "truncated"


@pytest.mark.parametrize(
    "fmt", ["GIF", "TIFF", "PNG", "WEBP"], ids=["gif", "tiff", "apng", "animated_webp"]
)
def test_multi_frame_images_are_rejected(fmt):
    frames = [Image.fromarray(quadrants()), Image.new("RGB", (64, 40), BLUE)]
    data = save(frames[0], fmt, save_all=True, append_images=frames[1:])
    error = rejected(data)
    assert error.code == "multi_frame" and fmt in error.message


CLAIMING = {
    "png": png_claiming,
    "jpeg": jpeg_claiming,
    "gif": gif_claiming,
    "bmp": bmp_claiming,
    "tiff": tiff_claiming,
    "webp_lossless": webp_lossless_claiming,
    "webp_extended": webp_extended_claiming,
    "webp_lossy": webp_lossy_claiming,
}


@pytest.mark.parametrize("kind", sorted(CLAIMING))
def test_an_oversized_header_is_rejected_before_decoding(kind, no_decoding, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # so that only our check can stop it
    # Far over the limit, as far as each header can express (VP8 and VP8L stop at 16383).
    side = {"png": 100_000, "bmp": 100_000, "tiff": 100_000, "webp_extended": 100_000}
    data = CLAIMING[kind](side.get(kind, 16_383), side.get(kind, 16_383))
    assert len(data) < 2_000
    start = time.perf_counter()
    error = rejected(data)
    assert time.perf_counter() - start < 2.0
    assert error.code == "too_many_pixels"
    assert f"over the limit of {DEFAULT_MAX_PIXELS}" in error.message


def test_pils_own_bomb_guard_does_not_pre_empt_ours(monkeypatch, no_decoding):
    """Switched off, ours still holds; below a caller's own larger limit, it does not interfere."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert rejected(png_claiming(100_000, 100_000)).code == "too_many_pixels"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    # 20000 x 20000 is over twice PIL's limit (its error), and under a caller's larger limit.
    with pytest.raises(ReachedDecoding):
        decode_image(png_claiming(20_000, 20_000), max_pixels=500_000_000)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_pil_limit_below_an_image(monkeypatch, fmt):
    """PIL's guard is not ours; where its readers still consult it, it is reported as ours."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = save(Image.fromarray(quadrants()), fmt)
    if fmt in ("TIFF", "WEBP"):
        assert rejected(data).code == "too_many_pixels"
    else:
        decoded = decode_image(data)
        assert (decoded.width, decoded.height) == (64, 40)


def test_the_pixel_limit_is_inclusive():
    data = save(Image.fromarray(quadrants(64, 40)), "PNG")
    assert decode_image(data, max_pixels=64 * 40).width == 64
    assert rejected(data, max_pixels=64 * 40 - 1).code == "too_many_pixels"


def test_a_jpeg_with_thousands_of_scans_is_rejected_before_decoding(no_decoding):
    data = _progressive_jpeg()
    last_scan = data[data.rindex(b"\xff\xda") : -2]  # the final scan runs up to EOI
    bomb = data[:-2] + last_scan * 2_000 + b"\xff\xd9"
    assert len(bomb) < 200_000 and MAX_JPEG_SCANS < 2_000
    start = time.perf_counter()
    assert rejected(bomb).code == "too_many_scans"
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("data", [png_claiming(0, 10), bmp_claiming(5, 0), tiff_claiming(0, 4),
                                  jpeg_claiming(0, 8)], ids=["png", "bmp", "tiff", "jpeg"])
def test_zero_sized_header_is_rejected(data):
    error = rejected(data)
    assert error.code == "corrupt" and "no usable size" in error.message


def test_32_bit_float_samples_are_rejected():
    data = save(Image.fromarray(np.linspace(0, 1, 64 * 40, dtype=np.float32).reshape(40, 64)),
                "TIFF")
    assert rejected(data).code == "unsupported_pixel_format"


# -- accepted inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "WEBP", "GIF"])
def test_lossless_formats_decode_exactly(fmt):
    rgb = quadrants()
    image = Image.fromarray(rgb)
    if fmt == "GIF":  # a palette of exactly the four colours
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    params = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image(save(image, fmt, **params))
    assert decoded.source_format == fmt and decoded.alpha is None
    np.testing.assert_array_equal(decoded.pixels, rgb[:, :, ::-1])
    assert_usable(decoded)


@pytest.mark.parametrize("fmt", ["WEBP", "TIFF", "PNG", "JPEG", "BMP"])
def test_decoded_images_encode_back_to_the_same_format(fmt):
    decoded = decode_image(save(Image.fromarray(quadrants()), fmt))
    output = encode_image(decoded.pixels, output_suffix(f"photo{SAVE_AS[fmt]}"))
    assert Image.open(io.BytesIO(output)).format == fmt
    again = decode_image(output)
    assert again.source_format == fmt and (again.width, again.height) == (64, 40)
    assert_quadrants(again)


def test_content_decides_the_format_not_the_name():
    """A PNG saved as photo.jpg decodes as the PNG it is; the name only picks the output."""
    data = save(Image.fromarray(quadrants()), "PNG")
    assert sniff_format(data) == "PNG"
    assert decode_image(data).source_format == "PNG"
    assert sniff_format(save(Image.fromarray(quadrants()), "JPEG")) == "JPEG"
    assert sniff_format(b"<html>") is None


def test_png_alpha_is_kept_and_written_back():
    rgba = np.dstack([quadrants(), np.tile(np.arange(64, dtype=np.uint8) * 4, (40, 1))])
    decoded = decode_image(save(Image.fromarray(rgba), "PNG"))
    np.testing.assert_array_equal(decoded.alpha, rgba[:, :, 3])
    np.testing.assert_array_equal(decoded.pixels, rgba[:, :, 2::-1])
    for suffix in (".png", ".tiff"):
        back = Image.open(io.BytesIO(encode_image(decoded.pixels, suffix, decoded.alpha)))
        np.testing.assert_array_equal(np.asarray(back.convert("RGBA")), rgba)
    webp = Image.open(io.BytesIO(encode_image(decoded.pixels, ".webp", decoded.alpha)))
    np.testing.assert_allclose(np.asarray(webp.convert("RGBA"))[:, :, 3], rgba[:, :, 3], atol=8)
    jpeg = Image.open(io.BytesIO(encode_image(decoded.pixels, ".jpg", decoded.alpha)))
    assert jpeg.mode == "RGB"


@pytest.mark.parametrize("mode", ["P", "LA", "L"])
def test_other_kinds_of_transparency_become_alpha(mode):
    if mode == "P":
        image = Image.fromarray(quadrants()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        image.info["transparency"] = image.getpixel((0, 0))  # red is transparent
    elif mode == "LA":
        image = Image.fromarray(quadrants()).convert("LA")
    else:
        image = Image.fromarray(quadrants()).convert("L")
        image.info["transparency"] = image.getpixel((0, 0))  # a tRNS chunk
    data = save(image, "PNG", transparency=image.info.get("transparency"))
    decoded = decode_image(data)
    assert decoded.alpha is not None
    if mode != "LA":
        assert decoded.alpha[0, 0] == 0 and decoded.alpha[-1, -1] == 255
    assert_usable(decoded)


def test_16_bit_greyscale_png_is_scaled_to_8_bit():
    levels = np.arange(256, dtype=np.uint16) * 257  # 0 .. 65535, each an exact 8-bit level
    image = Image.fromarray(np.tile(levels, (4, 1)))
    assert image.mode == "I;16"
    decoded = decode_image(save(image, "PNG"))
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], np.tile(np.arange(256), (4, 1)))
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], decoded.pixels[:, :, 2])
    # Dark 16-bit images are not mistaken for 8-bit ones.
    dark = decode_image(save(Image.fromarray(np.full((4, 4), 200, np.uint16)), "PNG"))
    assert dark.pixels.max() == 1


def test_16_bit_colour_png_and_tiff_are_scaled_to_8_bit():
    bgr = (quadrants()[:, :, ::-1].astype(np.uint16) * 257)
    for suffix in (".png", ".tiff"):
        ok, buffer = cv2.imencode(suffix, bgr)
        decoded = decode_image(buffer.tobytes())
        np.testing.assert_array_equal(decoded.pixels, quadrants()[:, :, ::-1])


def test_16_bit_greyscale_tiff_in_either_byte_order():
    levels = np.tile(np.arange(256, dtype=np.uint16) * 257, (4, 1))
    for dtype in ("<u2", ">u2"):
        decoded = decode_image(save(Image.fromarray(levels.astype(dtype)), "TIFF"))
        np.testing.assert_array_equal(decoded.pixels[:, :, 1], np.tile(np.arange(256), (4, 1)))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF"])
@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_and_bilevel_become_three_equal_channels(fmt, mode):
    if mode == "1" and fmt in ("JPEG", "WEBP"):
        pytest.skip("no bilevel mode in this format")
    grey = np.tile(np.where(np.arange(64) < 32, 0, 255).astype(np.uint8), (40, 1))
    decoded = decode_image(save(Image.fromarray(grey).convert(mode), fmt))
    assert decoded.pixels.shape == (40, 64, 3)
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], decoded.pixels[:, :, 2])
    np.testing.assert_allclose(decoded.pixels[:, :, 1], grey, atol=40)
    assert_usable(decoded)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_decodes_to_the_right_colours(fmt):
    cmyk = Image.fromarray(quadrants()).convert("CMYK")
    data = save(cmyk, fmt, quality=95) if fmt == "JPEG" else save(cmyk, fmt)
    if fmt == "JPEG":  # PIL writes Adobe's inverted CMYK, which must be inverted back
        assert b"Adobe" in data
    decoded = decode_image(data)
    assert_quadrants(decoded)
    assert_usable(decoded)


# How a viewer turns the stored pixels into the displayed ones, from the EXIF 2.3 definitions
# of each orientation (row 0 / column 0 of the stored image is the displayed ...).
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # row 0 = top, column 0 = right
    3: lambda a: np.rot90(a, 2),  # row 0 = bottom, column 0 = right
    4: lambda a: a[::-1],  # row 0 = bottom, column 0 = left
    5: lambda a: a.transpose(1, 0, 2),  # row 0 = left, column 0 = top
    6: lambda a: np.rot90(a, -1),  # row 0 = right, column 0 = top: turn clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # row 0 = right, column 0 = bottom
    8: lambda a: np.rot90(a, 1),  # row 0 = left, column 0 = bottom: turn anticlockwise
}
STORE = {k: f for k, f in DISPLAY.items() if k not in (6, 8)}
STORE[6], STORE[8] = DISPLAY[8], DISPLAY[6]  # the inverse of each turn


def exif_with(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif


@pytest.mark.parametrize("orientation", sorted(DISPLAY))
def test_exif_orientation_gives_the_displayed_pixels(orientation):
    displayed = quadrants(64, 40)
    stored = np.ascontiguousarray(STORE[orientation](displayed))
    np.testing.assert_array_equal(DISPLAY[orientation](stored), displayed)
    data = save(Image.fromarray(stored), "JPEG", quality=95, exif=exif_with(orientation))
    decoded = decode_image(data)
    assert (decoded.width, decoded.height) == (64, 40)
    assert_quadrants(decoded)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_orientation_in_other_containers(fmt, orientation):
    displayed = quadrants(64, 40)
    stored = Image.fromarray(np.ascontiguousarray(STORE[orientation](displayed)))
    if fmt == "TIFF":
        data = save(stored, fmt, tiffinfo={ExifTags.Base.Orientation: orientation})
    else:
        data = save(stored, fmt, exif=exif_with(orientation), **(
            {"lossless": True} if fmt == "WEBP" else {}))
    np.testing.assert_array_equal(decode_image(data).pixels, displayed[:, :, ::-1])


def _jpeg_with_app1(payload: bytes) -> bytes:
    data = save(Image.fromarray(quadrants()), "JPEG", quality=95)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def _tiff_ifd(*entries: bytes, next_ifd: int = 0) -> bytes:
    return (b"II*\x00\x08\x00\x00\x00" + struct.pack("<H", len(entries)) + b"".join(entries)
            + struct.pack("<I", next_ifd))


MALFORMED_EXIF = {
    "garbage": b"Exif\x00\x00this is not a TIFF header at all",
    "empty": b"Exif\x00\x00",
    "ifd_past_the_end": b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",
    "ifd_pointing_at_itself": b"Exif\x00\x00" + _tiff_ifd(
        struct.pack("<HHII", 0x8769, 4, 1, 8), next_ifd=8),
    "orientation_as_text": b"Exif\x00\x00" + _tiff_ifd(
        struct.pack("<HHI4s", 0x112, 2, 4, b"6\0\0\0")),
    "orientation_out_of_range": b"Exif\x00\x00" + _tiff_ifd(
        struct.pack("<HHIHH", 0x112, 3, 1, 9, 0)),
    "entry_count_past_the_end": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\0" * 20,
    "tag_data_past_the_end": b"Exif\x00\x00" + _tiff_ifd(
        struct.pack("<HHII", 0x10F, 2, 1_000_000, 4_000)),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns, and carries on
@pytest.mark.parametrize("kind", sorted(MALFORMED_EXIF))
def test_malformed_exif_does_not_stop_good_pixels(kind):
    decoded = decode_image(_jpeg_with_app1(MALFORMED_EXIF[kind]))
    assert (decoded.width, decoded.height) == (64, 40)
    assert_quadrants(decoded)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_randomly_damaged_exif_never_escapes_as_another_exception():
    data = save(Image.fromarray(quadrants()), "JPEG", exif=exif_with(6))
    start = data.index(b"Exif\x00\x00")
    length = int.from_bytes(data[start - 2 : start], "big") - 2
    rng = np.random.default_rng(7)
    for _ in range(300):
        damaged = bytearray(data)
        for offset in rng.integers(start, start + length, size=rng.integers(1, 8)):
            damaged[offset] = rng.integers(0, 256)
        try:
            decoded = decode_image(bytes(damaged))
        except ImageRejected:
            continue
        assert {decoded.width, decoded.height} == {64, 40}


def test_unreadable_exif_is_noted_and_the_stored_orientation_used(monkeypatch):
    def broken(self):
        raise SyntaxError("bad EXIF")

    monkeypatch.setattr(Image.Image, "getexif", broken)
    decoded = decode_image(save(Image.fromarray(quadrants()), "JPEG", exif=exif_with(6)))
    assert (decoded.width, decoded.height) == (64, 40)
    assert decoded.notes and decoded.notes[0].startswith("exif_unreadable")


@pytest.mark.parametrize("fmt", sorted(SAVE_AS))
@pytest.mark.parametrize("size", [(1, 1), (1, 5000), (5000, 1)], ids=["1x1", "1x5000", "5000x1"])
def test_tiny_and_extremely_thin_images(fmt, size):
    width, height = size
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = 200
    decoded = decode_image(save(Image.fromarray(rgb), fmt))
    assert (decoded.width, decoded.height) == size
    np.testing.assert_allclose(decoded.pixels[..., 2], 200, atol=12)
    assert_usable(decoded)


def test_a_multi_picture_jpeg_decodes_its_primary_image():
    first, second = Image.fromarray(quadrants()), Image.new("RGB", (64, 40), BLUE)
    data = save(first, "MPO", save_all=True, append_images=[second])
    decoded = decode_image(data)
    assert decoded.source_format == "JPEG"
    assert_quadrants(decoded)


# -- outputs carry no metadata -----------------------------------------------------------------

SECRET = "Secret location of Alice Example"
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
       b'22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" '
       b'dc:creator="' + SECRET.encode() + b'"/></rdf:RDF></x:xmpmeta>')
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_with_gps() -> Image.Exif:
    exif = exif_with(1)
    exif[ExifTags.Base.Make] = SECRET
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (52.0, 22.0, 1.5),
        ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (4.0, 53.0, 2.5),
    }
    return exif


def jpeg_full_of_metadata() -> bytes:
    data = save(Image.fromarray(quadrants()), "JPEG", exif=exif_with_gps(), xmp=XMP,
                icc_profile=ICC, comment=SECRET)
    image = Image.open(io.BytesIO(data))  # the input really carries all of it
    assert image.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert {"xmp", "icc_profile", "comment"} <= set(image.info)
    return data


def png_full_of_metadata() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET)  # tEXt
    info.add_text("Description", SECRET, zip=True)  # zTXt
    info.add_itxt("Author", SECRET, lang="en", tkey="Author")  # iTXt
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    data = save(Image.fromarray(quadrants()), "PNG", pnginfo=info, icc_profile=ICC,
                exif=exif_with_gps())
    for chunk in (b"tEXt", b"zTXt", b"iTXt", b"iCCP", b"eXIf"):
        assert chunk in data
    return data


TIFF_METADATA_TAGS = {270, 305, 306, 315, 700, 33432, 34377, 34665, 34675, 34853, 37510}


@pytest.mark.parametrize("source", ["jpeg", "png"])
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tiff", ".bmp"])
def test_outputs_carry_no_metadata(source, suffix):
    data = jpeg_full_of_metadata() if source == "jpeg" else png_full_of_metadata()
    decoded = decode_image(data)
    output = encode_image(decoded.pixels, suffix, decoded.alpha)

    for needle in (b"Exif", b"http://ns.adobe.com/xap", b"ICC_PROFILE", b"acsp", b"GPS",
                   SECRET.encode(),
                   b"tEXt", b"zTXt", b"iTXt", b"iCCP", b"eXIf", b"XMP ", b"ICCP", b"EXIF"):
        assert needle not in output, needle
    image = Image.open(io.BytesIO(output))
    image.load()
    for key in ("exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "comment", "Comment",
                "Description", "Author"):
        assert key not in image.info, key
    assert not getattr(image, "text", {})
    exif = image.getexif()
    if image.format == "TIFF":  # a TIFF's own tags come back as "EXIF": none may be metadata
        assert not TIFF_METADATA_TAGS & set(exif)
    else:
        assert not exif
    assert not exif.get_ifd(ExifTags.IFD.GPSInfo)


# -- encoding failures -------------------------------------------------------------------------


def test_encoding_to_an_unknown_format_is_a_rejection():
    assert rejected_encode(quadrants(), ".jp2x").code == "encode_failed"


def test_encoding_with_mismatched_alpha_is_a_rejection():
    alpha = np.zeros((10, 10), np.uint8)
    assert rejected_encode(quadrants(), ".png", alpha).code == "encode_failed"


def rejected_encode(pixels, suffix, alpha=None) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        encode_image(pixels, suffix, alpha)
    return info.value
