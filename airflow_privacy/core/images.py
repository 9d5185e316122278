"""Decoding untrusted image bytes and encoding metadata-free outputs.

Inputs are untrusted. A file's name says nothing about its content, so the first bytes decide
which decoder runs, and only eight well-understood formats are decoded at all (the six classic
ones, plus HEIC through pillow-heif and AVIF through Pillow's own plugin, the default formats of
current phones): PIL can open dozens,
some of which (EPS through Ghostscript, for one) should never see arbitrary bytes. Every input
either decodes completely or is rejected with an :class:`ImageRejected` whose ``code`` is stable
for the manifest and whose message says what was found. Nothing is half-decoded: a truncated
image is rejected, because a partly grey image cannot be promised to be correctly anonymized.

Resource limits are checked from the header, before any pixel memory is allocated or any
expensive work is done: ``max_pixels`` for every format (WebP from our own reading of its header,
since PIL's WebP reader allocates the canvas while opening), and a cap on JPEG scans, since a
small progressive JPEG with thousands of scans takes minutes to decode. PIL's global
``MAX_IMAGE_PIXELS`` guard is left as it is (it protects the rest of the process) and ``Image.open``
is not used, so ours is checked first and says more. PIL's TIFF, GIF and WebP readers still
consult its guard while reading; that can only fire when a caller allows more than PIL does
(about 179 million pixels by default), and is reported as ``too_many_pixels`` too.

Decoding applies the EXIF orientation, so people are found and hidden in the orientation a viewer
displays. Encoding goes through OpenCV, which writes pixels only: no EXIF, GPS, XMP, IPTC, ICC or
text chunks survive into an output.

Rejection codes: ``empty_file``, ``not_an_image``, ``unsupported_format``, ``too_many_pixels``,
``too_many_scans``, ``empty_image``, ``multi_frame``, ``truncated``, ``corrupt``,
``unsupported_pixel_format`` (decoding) and ``encode_failed`` (encoding).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath

import cv2
import numpy as np
from PIL import (
    BmpImagePlugin,
    ExifTags,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from airflow_privacy.core.phone_formats import (
    avif_decoder,
    encode_with_pillow,
    heif_decoder,
    heif_encoder,
)
from airflow_privacy.core.settings import DEFAULT_MAX_PIXELS  # largest accepted width x height
from airflow_privacy.core.video.formats import VIDEO_OUTPUT, is_video_name
from airflow_privacy.exceptions import ImageRejected

MAX_JPEG_SCANS = 100
"""Ordinary progressive JPEGs have about ten scans. Each scan is a pass over the whole image
(about 1.6 ms per megapixel here), so 100 bounds a 50-megapixel JPEG to about ten seconds,
where a crafted one with thousands of scans would take minutes."""

HEIF_DECODER, AVIF_DECODER = heif_decoder(), avif_decoder()
# A format is published in its own format where an encoder is installed, else as JPEG; the
# output key's suffix (and the record's ``output_format``) says which.
HEIC_OUTPUT = ".heic" if HEIF_DECODER is not None and heif_encoder() else ".jpg"
AVIF_OUTPUT = ".avif" if AVIF_DECODER is not None else ".jpg"

SUPPORTED_SUFFIXES = {
    ".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png", ".webp": ".webp",
    ".tif": ".tiff", ".tiff": ".tiff", ".bmp": ".bmp", ".gif": ".png",
    ".heic": HEIC_OUTPUT, ".heif": HEIC_OUTPUT, ".avif": AVIF_OUTPUT,
}
OUTPUT_FORMATS = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tiff": "TIFF", ".bmp": "BMP",
                  ".heic": "HEIF", ".avif": "AVIF", VIDEO_OUTPUT: "MP4"}

# The decoders that may run, by the format name ``sniff_format`` returns. The plugin classes are
# used directly (not ``Image.open``) so that no other PIL format is ever tried on the bytes and
# the bomb check in ``Image.open`` does not pre-empt our own, clearer pixel limit. JPEG skips
# PIL's MPO detection: of a multi-picture JPEG, the primary image is decoded, as viewers show it.
_DECODERS: dict[str, type[ImageFile.ImageFile]] = {
    "JPEG": JpegImagePlugin.JpegImageFile,
    "PNG": PngImagePlugin.PngImageFile,
    "GIF": GifImagePlugin.GifImageFile,
    "TIFF": TiffImagePlugin.TiffImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
}
if HEIF_DECODER is not None:
    _DECODERS["HEIF"] = HEIF_DECODER
if AVIF_DECODER is not None:
    _DECODERS["AVIF"] = AVIF_DECODER
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)
# Recognised content that is not decoded, so that a rejection can say what the file really is.
_OTHER_IMAGES = (
    (b"8BPS", "a Photoshop (PSD) image"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 image"),
    (b"\xffO\xffQ", "a JPEG 2000 image"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "a JPEG XL image"),
    (b"\xff\n", "a JPEG XL image"),
    (b"\x00\x00\x01\x00", "a Windows icon (ICO)"),
    (b"%!PS", "a PostScript/EPS file"),
    (b"\xc5\xd0\xd3\xc6", "a PostScript/EPS file"),
)
_NOT_IMAGES = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "gzip-compressed data"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}

# EXIF orientation -> the transpose that shows the stored pixels as a viewer displays them.
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_GREY_16 = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_SUFFIXES = (".png", ".webp", ".tif", ".tiff")
_ENCODE_PARAMS = {
    ".jpg": [cv2.IMWRITE_JPEG_QUALITY, 95],
    ".jpeg": [cv2.IMWRITE_JPEG_QUALITY, 95],
    ".webp": [cv2.IMWRITE_WEBP_QUALITY, 95],
}


@dataclass
class DecodedImage:
    pixels: np.ndarray  # BGR uint8, H x W x 3, displayed orientation, writable
    alpha: np.ndarray | None  # uint8 H x W, when the source had transparency
    source_format: str  # what the content is ("JPEG", "PNG", ...), whatever the file's name
    notes: tuple[str, ...] = ()  # decoded, but with something worth recording in the manifest

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
    if is_video_name(name):
        return VIDEO_OUTPUT  # every video is published as H.264 in MP4 (core/video)
    return SUPPORTED_SUFFIXES.get(PurePosixPath(name).suffix.lower(), ".png")


def output_format(name: str) -> str:
    """The format an output named ``name`` is encoded in (``JPEG``, ``HEIF``...)."""
    return OUTPUT_FORMATS.get(output_suffix(name), "PNG")


def sniff_format(data: bytes) -> str | None:
    """The decodable format of ``data`` judged from its content alone, or ``None``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis") and "AVIF" in _DECODERS:
            return "AVIF"
        if brand in _HEIF_BRANDS and "HEIF" in _DECODERS:
            return "HEIF"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode ``data`` to BGR pixels in displayed orientation, or raise :class:`ImageRejected`."""
    if not data:
        raise ImageRejected("empty_file", "the file has zero bytes")
    source_format = sniff_format(data)
    if source_format is None:
        raise _unrecognised(data)
    _preflight(data, source_format, max_pixels)
    with _reading(data, source_format):
        image = _DECODERS[source_format](io.BytesIO(data))
    with image, _reading(data, source_format):
        size = _checked_size(image, source_format, max_pixels)
        # Another library in the same worker may have switched this on; a truncated image must
        # fail here instead of coming back with its missing part filled in.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        image.load()
        if image.size != size:
            raise ImageRejected(
                "corrupt", f"{source_format} header said {size}, the data decoded to {image.size}"
            )
        displayed, notes = _displayed(image)
        return _to_bgr(displayed, source_format, notes)


def encode_image(pixels: np.ndarray, suffix: str, alpha: np.ndarray | None = None) -> bytes:
    """Encode BGR pixels (plus optional alpha) to ``suffix``'s format with no metadata.

    Alpha is kept where the format can hold it (PNG, WebP, TIFF) and dropped otherwise.
    """
    suffix = suffix.lower()
    if suffix in (".heic", ".heif", ".avif"):
        return encode_with_pillow(pixels, suffix, alpha)
    if alpha is not None and suffix in _ALPHA_SUFFIXES:
        if alpha.shape != pixels.shape[:2]:
            raise ImageRejected(
                "encode_failed", f"alpha {alpha.shape} does not match pixels {pixels.shape[:2]}"
            )
        pixels = np.dstack([pixels, alpha])
    try:
        ok, buffer = cv2.imencode(suffix, pixels, _ENCODE_PARAMS.get(suffix, []))
    except cv2.error as exc:
        raise ImageRejected("encode_failed", f"OpenCV cannot encode {suffix}: {exc}") from exc
    if not ok:
        raise ImageRejected("encode_failed", f"OpenCV could not encode a {suffix} image")
    return buffer.tobytes()


def decode_pixels(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """BGR pixels of an encoded output OpenCV cannot read (HEIC, AVIF), or None."""
    try:
        return decode_image(data, max_pixels=max_pixels).pixels
    except ImageRejected:
        return None


# -- decoding steps -------------------------------------------------------------------------------


def _preflight(data: bytes, source_format: str, max_pixels: int) -> None:
    """Limits that must hold before PIL is given the bytes at all."""
    if source_format == "WEBP" and (size := _webp_canvas(data)):
        _check_pixels(size, source_format, max_pixels)
    # Every scan starts with an SOS marker; entropy-coded data never contains one, so counting
    # the marker bytes gives an upper bound (metadata may add a few stray matches).
    if source_format == "JPEG" and (scans := data.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        raise ImageRejected(
            "too_many_scans",
            f"JPEG has {scans} scans, over the limit of {MAX_JPEG_SCANS}; each scan is a pass "
            "over the whole image, so it is not decoded",
        )


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """A WebP's canvas size from its first chunk, without decoding (None if it is too short)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width, height = data[24:27], data[27:30]
        return int.from_bytes(width, "little") + 1, int.from_bytes(height, "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = data[26:28], data[28:30]
        return int.from_bytes(width, "little") & 0x3FFF, int.from_bytes(height, "little") & 0x3FFF
    return None


def _checked_size(
    image: ImageFile.ImageFile, source_format: str, max_pixels: int
) -> tuple[int, int]:
    """The size to allocate, checked against the limit and the frame count before loading."""
    _check_pixels(image.size, source_format, max_pixels)
    if getattr(image, "is_animated", False):
        raise ImageRejected(
            "multi_frame",
            f"{source_format} has more than one frame; only single-frame images are "
            "anonymized, so none of it is published",
        )
    # Looking for a second GIF frame re-reads the first, which can grow the canvas.
    _check_pixels(image.size, source_format, max_pixels)
    return image.size


def _check_pixels(size: tuple[int, int], source_format: str, max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageRejected("empty_image", f"{source_format} header gives size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"{source_format} header gives {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels}; not decoded",
        )


def _displayed(image: Image.Image) -> tuple[Image.Image, tuple[str, ...]]:
    """The image as a viewer shows it, from its EXIF (or XMP) orientation.

    PIL's TIFF reader applies a TIFF's own orientation tag while loading and drops the tag, so
    it is not applied twice here.
    Unreadable EXIF is not a reason to reject: outputs carry no EXIF, so the stored orientation
    is exactly what gets published, and it is also what the detector sees. It is only noted.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        return image, (f"exif_unreadable: {reason}; orientation not applied",)
    method = _ORIENTATIONS.get(orientation) if isinstance(orientation, int) else None
    return (image.transpose(method) if method is not None else image), ()


def _to_bgr(image: Image.Image, source_format: str, notes: tuple[str, ...]) -> DecodedImage:
    """Writable, contiguous BGR uint8 pixels (and alpha), whatever PIL's mode."""
    mode = image.mode
    if mode in _GREY_16:
        wide = np.asarray(image).astype(np.uint32)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # 65535 -> 255, rounded
        return DecodedImage(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), None, source_format, notes)
    if mode in ("I", "F"):  # 32-bit integer or float samples: no single right 8-bit rendering
        raise ImageRejected(
            "unsupported_pixel_format", f"{source_format} has 32-bit {mode} samples"
        )
    try:
        if image.has_transparency_data:
            rgba = np.asarray(image.convert("RGBA"))
            bgr = cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR)
            return DecodedImage(bgr, rgba[:, :, 3].copy(), source_format, notes)
        rgb = np.asarray(image.convert("RGB"))
    except ValueError as exc:  # PIL has no conversion from this mode
        raise ImageRejected(
            "unsupported_pixel_format", f"{source_format} pixels in mode {mode}: {exc}"
        ) from exc
    return DecodedImage(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), None, source_format, notes)


# -- explaining rejections ------------------------------------------------------------------------


@contextmanager
def _reading(data: bytes, source_format: str) -> Iterator[None]:
    """Turn whatever PIL raises while reading into a rejection that says why."""
    try:
        yield
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", f"{source_format}: {exc}") from exc
    except Exception as exc:
        raise _undecodable(data, source_format, exc) from exc


def _undecodable(data: bytes, source_format: str, exc: Exception) -> ImageRejected:
    """``truncated`` when the data ends early, ``corrupt`` for anything else that fails."""
    detail = str(exc) or type(exc).__name__
    if detail == "not identified by this driver":  # PIL's words for a zero size or no mode
        detail = "its header gives no usable size or pixel layout"
    if "truncated" in detail.lower() or _container_longer_than(data, source_format):
        return ImageRejected(
            "truncated",
            f"the {source_format} data ends early ({detail}); a partial image is not processed",
        )
    return ImageRejected(
        "corrupt", f"the content starts like {source_format} but cannot be decoded: {detail}"
    )


def _container_longer_than(data: bytes, source_format: str) -> bool:
    """Whether the file's own header points past its end (only asked once decoding failed)."""
    if source_format == "WEBP" and len(data) >= 8:
        return 8 + int.from_bytes(data[4:8], "little") > len(data)
    if source_format == "TIFF" and data[2:4] in (b"*\x00", b"\x00*") and len(data) >= 8:
        order = "little" if data[:2] == b"II" else "big"
        return int.from_bytes(data[4:8], order) >= len(data)
    return False


def describe_content(data: bytes) -> str:
    """What ``data`` is, judged from its content alone ("JPEG image data", "plain text"...).

    For the manifest record of a file that is listed but not processed, so a
    reader can tell an iPhone photo from a stray text file.
    """
    if not data:
        return "an empty file"
    found = sniff_format(data)
    return f"{found} image data" if found else _content(data)[1]


def _content(data: bytes) -> tuple[bool, str]:
    """``(is_an_image, what)`` for content that is none of the decodable formats."""
    for prefix, what in _OTHER_IMAGES:
        if data.startswith(prefix):
            return True, what
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return True, "an AVIF image"
        if brand in _HEIF_BRANDS:
            return True, "a HEIC/HEIF image"
        return False, "an MP4/QuickTime media file"
    for prefix, what in _NOT_IMAGES:
        if data.startswith(prefix):
            return False, what
    head = data[:1024].removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if all(byte >= 32 or byte in b"\t\n\r\f" for byte in head):
        if b"<svg" in head:
            return True, "an SVG (vector) image"
        if head.startswith(b"<!doctype html") or b"<html" in head:
            return False, "HTML"
        if head.startswith(b"<"):
            return False, "XML or other markup"
        return False, "plain text"
    return False, f"unrecognised binary data starting {data[:8].hex(' ')}"


def _unrecognised(data: bytes) -> ImageRejected:
    """Say what the content is instead, when it is not one of the decodable formats."""
    image, what = _content(data)
    return _unsupported(what) if image else _not_an_image(what)


def _unsupported(what: str) -> ImageRejected:
    return ImageRejected(
        "unsupported_format",
        f"the content is {what}; only {', '.join(sorted(_DECODERS))} are decoded",
    )


def _not_an_image(what: str) -> ImageRejected:
    return ImageRejected(
        "not_an_image", f"the content is {what}, not an image (whatever the file is named)"
    )
