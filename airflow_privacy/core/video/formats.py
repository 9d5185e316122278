"""Which inputs are videos and what they are published as; no imports, so anyone may use it.

Every video is published as H.264 in MP4 (the most widely playable pair), so
``clip.mov`` is published as ``clip.mp4``; two inputs that would take the same
output name are refused by the ordinary collision check.
"""

from __future__ import annotations

from pathlib import PurePosixPath

VIDEO_OUTPUT = ".mp4"
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm"})
VIDEO = "video"
IMAGE = "image"


def is_video_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in VIDEO_SUFFIXES


def kind_of(name: str) -> str:
    """``video`` or ``image``: which flow an input runs, from its name."""
    return VIDEO if is_video_name(name) else IMAGE
