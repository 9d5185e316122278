"""The default photo formats of current phones: HEIC (pillow-heif) and AVIF (Pillow's plugin).

Kept apart from :mod:`airflow_privacy.core.images` because they come from
optional-looking plugins with their own discovery: a decoder class is only
registered where the package (or Pillow's AVIF support) is present, and an
output is written in the same format only where an encoder exists.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageFile

from airflow_privacy.exceptions import ImageRejected


def heif_decoder() -> type[ImageFile.ImageFile] | None:
    """pillow-heif's decoder class, or None where the package is missing."""
    try:
        from pillow_heif import as_plugin
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    return as_plugin.HeifImageFile


def heif_encoder() -> bool:
    try:
        import pillow_heif
    except ImportError:  # pragma: no cover
        return False
    return bool(pillow_heif.libheif_info().get("encoders", {}).get("x265"))


def avif_decoder() -> type[ImageFile.ImageFile] | None:
    try:
        from PIL import AvifImagePlugin, features
    except ImportError:  # pragma: no cover - Pillow before 11.2
        return None
    return AvifImagePlugin.AvifImageFile if features.check_module("avif") else None


def encode_with_pillow(pixels: np.ndarray, suffix: str, alpha: np.ndarray | None) -> bytes:
    """HEIC (pillow-heif) and AVIF (Pillow), which OpenCV cannot write; no metadata either."""
    rgb = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    image = Image.fromarray(np.dstack([rgb, alpha]) if alpha is not None else rgb)
    buffer = io.BytesIO()
    try:  # a fresh Image from pixels carries no EXIF, XMP or ICC to write
        if suffix == ".avif":
            image.save(buffer, format="AVIF", quality=90)
        else:
            import pillow_heif

            pillow_heif.from_pillow(image).save(buffer, quality=90)
    except Exception as exc:  # no encoder, or it failed on these pixels
        raise ImageRejected("encode_failed", f"cannot encode {suffix}: {exc}") from exc
    return buffer.getvalue()
