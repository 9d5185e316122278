"""Test clips made from real photos, with their person labels moved along with the camera.

No clip with labelled people ships in a package we may use, so the clips are
built at run time (never committed) from COCO photos and their YOLO labels: a
virtual camera pans and zooms over the photo (:func:`make_clip`), and every
labelled box is mapped through the same transform, frame by frame, so each
frame has ground truth. A pan narrower than the photo makes people enter and
leave the frame; a person-free photo gives the person-free clip.

Each label on a frame keeps its *visible* box (clipped to the frame) and the
share of the full box that is visible; the measures decide what counts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from airflow_privacy.core.geometry import Box
from bench.metrics import read_labels

Camera = tuple[float, float, float]  # window centre x, y and width, in the photo's pixels


@dataclass
class Label:
    box: Box  # visible part, in frame pixels
    visible: float  # share of the whole (unclipped) box that is inside the frame


@dataclass
class Clip:
    name: str
    data: bytes
    size: tuple[int, int]  # width, height
    fps: int
    labels: list[list[Label]] = field(default_factory=list)  # per frame

    @property
    def frames(self) -> int:
        return len(self.labels)


def camera_path(start: Camera, end: Camera, frames: int) -> list[Camera]:
    """A smooth (eased) move from ``start`` to ``end``."""
    out = []
    for i in range(frames):
        t = i / max(1, frames - 1)
        t = t * t * (3 - 2 * t)
        out.append(tuple(a + (b - a) * t for a, b in zip(start, end, strict=True)))  # type: ignore[misc]
    return out


def make_clip(name: str, photo: np.ndarray, people: Sequence[Box], path: Sequence[Camera], *,
              size: tuple[int, int] = (320, 240), fps: int = 10, crf: int = 12) -> Clip:
    """Render the camera ``path`` over ``photo`` as H.264/MP4; ``people``: the photo's boxes."""
    width, height = size
    buffer = io.BytesIO()
    clip = Clip(name, b"", size, fps)
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "fast"}
        for i, (cx, cy, window) in enumerate(path):
            k = width / window
            matrix = np.array([[k, 0, width / 2 - cx * k], [0, k, height / 2 - cy * k]])
            frame = cv2.warpAffine(photo, matrix, size, flags=cv2.INTER_AREA,
                                   borderMode=cv2.BORDER_REFLECT)
            clip.labels.append([_moved(box, matrix, width, height) for box in people])
            clip.labels[-1] = [label for label in clip.labels[-1] if label.visible > 0]
            video = av.VideoFrame.from_ndarray(frame, format="bgr24")
            video.pts = i
            for packet in stream.encode(video):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    clip.data = buffer.getvalue()
    return clip


def _moved(box: Box, matrix: np.ndarray, width: int, height: int) -> Label:
    k, dx, dy = matrix[0, 0], matrix[0, 2], matrix[1, 2]
    x1, y1, x2, y2 = box[0] * k + dx, box[1] * k + dy, box[2] * k + dx, box[3] * k + dy
    whole = max(1e-6, (x2 - x1) * (y2 - y1))
    cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(width, x2), min(height, y2)
    inside = max(0.0, cx2 - cx1) * max(0.0, cy2 - cy1)
    return Label((cx1, cy1, cx2, cy2), inside / whole)


def coco_photo(coco: Path, stem: str) -> tuple[np.ndarray, list[Box]]:
    photo = cv2.imread(str(coco / "images" / f"{stem}.jpg"))
    height, width = photo.shape[:2]
    labels = (coco / "labels" / f"{stem}.txt").read_text()
    return photo, read_labels(labels, width, height)


PAN_ZOOM = "000000000625"  # three people, 186-271 px tall in the photo
ENTER_LEAVE = "000000000419"  # two people, one leaves on the left while the other enters
PERSON_FREE = "000000000025"  # giraffes: weak "person" candidates that must be dismissed


def coco_clips(coco: Path, *, frames: int = 20, size: tuple[int, int] = (320, 240),
               fps: int = 10) -> dict[str, Clip]:
    """The three clips of the benchmark and the tests, ``frames`` long each."""
    clips = {}
    photo, people = coco_photo(coco, PAN_ZOOM)
    h, w = photo.shape[:2]
    path = camera_path((w / 2, h / 2, w), (w * 0.6, h * 0.45, w * 0.6), frames)
    clips["pan_zoom.mp4"] = make_clip("pan_zoom.mp4", photo, people, path, size=size, fps=fps)
    photo, people = coco_photo(coco, ENTER_LEAVE)
    h, w = photo.shape[:2]
    path = camera_path((w * 0.25, h / 2, w * 0.5), (w * 0.75, h / 2, w * 0.5), frames)
    clips["enter_leave.mp4"] = make_clip("enter_leave.mp4", photo, people, path, size=size,
                                         fps=fps)
    photo, people = coco_photo(coco, PERSON_FREE)
    h, w = photo.shape[:2]
    path = camera_path((w * 0.4, h / 2, w * 0.7), (w * 0.6, h / 2, w * 0.55), frames)
    clips["person_free.mp4"] = make_clip("person_free.mp4", photo, people, path, size=size,
                                         fps=fps)
    return clips


def decoded(data: bytes) -> list[np.ndarray]:
    """All frames of a (short) clip; for measuring only, never in the product."""
    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
