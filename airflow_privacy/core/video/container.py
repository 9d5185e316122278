"""Untrusted video bytes in, metadata-free H.264/MP4 bytes out, one frame at a time (PyAV).

PyAV's wheels ship FFmpeg, so no system ffmpeg is needed. Decoding yields
one BGR frame at a time (:func:`frames`); :class:`Writer` encodes one frame at
a time; neither ever holds the clip's frames. What leaves here carries no
container metadata (a new MP4 is written; nothing of the input's tags, chapters,
data or subtitle streams is copied) and no audio unless asked.

Rejection codes (an :class:`~airflow_privacy.core.images.ImageRejected`, so
the flow records them as for images): ``empty_file``, ``truncated`` (an MP4
whose boxes run past the end of the file, or fewer frames than its header
declares), ``corrupt_video`` (not a container FFmpeg can read, or undecodable
frames), ``no_video_stream``, ``too_many_pixels`` (from the stream header,
before any frame is decoded), ``unsupported_video`` (the frame size changes
mid-stream), ``audio_unsupported`` (audio asked for, in a codec MP4 cannot hold).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from airflow_privacy.core.images import ImageRejected

REMUX_CODECS = ("h264",)  # published as they are (no re-encoding) when no pixel changes
AUDIO_COPY = ("aac", "mp3", "opus", "alac", "ac3", "eac3")  # codecs MP4 can carry as they are
DEFAULT_RATE = Fraction(25)


@dataclass(frozen=True)
class VideoInfo:
    """What the header says, recorded in the manifest's ``video`` field."""

    container: str
    codec: str
    width: int
    height: int
    rate: Fraction
    declared_frames: int | None
    duration_s: float | None
    audio_streams: int
    other_streams: int

    def to_record(self) -> dict[str, Any]:
        return {
            "container": self.container, "codec": self.codec,
            "fps": round(float(self.rate), 3), "rate": str(self.rate),
            "declared_frames": self.declared_frames, "duration_s": self.duration_s,
            "audio_streams": self.audio_streams, "other_streams": self.other_streams,
        }


@contextmanager
def opened(data: bytes) -> Iterator[Any]:
    """The input as a PyAV container; anything FFmpeg cannot parse is a rejection."""
    if not data:
        raise ImageRejected("empty_file", "the file has zero bytes")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        if _bmff_truncated(data):
            raise ImageRejected("truncated", f"the MP4/MOV file ends early: {exc}") from exc
        raise ImageRejected("corrupt_video", f"not a readable video container: {exc}") from exc
    try:
        yield container
    finally:
        container.close()


def probe(data: bytes, max_pixels: int) -> VideoInfo:
    """The header's facts; rejects a video with no picture or frames over the pixel limit."""
    with opened(data) as container:
        if not container.streams.video:
            audio = len(container.streams.audio)
            raise ImageRejected("no_video_stream",
                                f"the container has no video stream ({audio} audio stream(s))")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise ImageRejected("corrupt_video", "the video stream declares no frame size")
        if width * height > max_pixels:
            raise ImageRejected("too_many_pixels", f"frames of {width}x{height} = "
                                f"{width * height} pixels exceed the limit of {max_pixels}")
        rate = stream.average_rate or stream.guessed_rate or DEFAULT_RATE
        duration = (float(container.duration) / av.time_base) if container.duration else None
        return VideoInfo(
            container=container.format.name, codec=stream.codec_context.name, width=width,
            height=height, rate=Fraction(rate), declared_frames=stream.frames or None,
            duration_s=round(duration, 3) if duration is not None else None,
            audio_streams=len(container.streams.audio),
            other_streams=len(container.streams) - 1 - len(container.streams.audio),
        )


def frames(data: bytes) -> Iterator[np.ndarray]:
    """Every frame of the first video stream as BGR pixels, in order, one at a time."""
    with opened(data) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        size = (stream.codec_context.height, stream.codec_context.width)
        try:
            for frame in container.decode(stream):
                pixels = frame.to_ndarray(format="bgr24")
                if pixels.shape[:2] != size:
                    raise ImageRejected("unsupported_video", f"the frame size changes mid-stream "
                                        f"from {size[1]}x{size[0]} to "
                                        f"{pixels.shape[1]}x{pixels.shape[0]}")
                yield pixels
        except av.error.FFmpegError as exc:
            raise ImageRejected("corrupt_video", f"a frame could not be decoded: {exc}") from exc


class Writer:
    """H.264 (libx264, yuv420p) in a new MP4 in memory, one frame at a time.

    Odd frame sizes are padded by one replicated row/column (yuv420p needs even
    sizes); :func:`crop_to` takes it off again when the output is read back.
    ``audio_from``: copy that input's first audio stream (only when asked).
    """

    def __init__(self, width: int, height: int, rate: Fraction, *, crf: int, preset: str,
                 audio_from: bytes | None = None) -> None:
        self.buffer = io.BytesIO()
        self.size = (height, width)
        self.count = 0
        self._out = av.open(self.buffer, "w", format="mp4", options={"fflags": "+bitexact"})
        self._stream = self._out.add_stream("libx264", rate=rate)
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        # Repeatable bytes: equal inputs and settings must give equal outputs (idempotent
        # runs; the Airflow stages equal to the fused batch). With x264's macroblock-tree rate
        # control the same frames gave up to 12 different outputs in 20 encodes, threaded or
        # not; without it (and on one thread) 1. It costs a little compression at this crf.
        self._stream.options = {"crf": str(crf), "preset": preset,
                                "x264-params": "threads=1:lookahead-threads=1:mbtree=0"}
        self._stream.codec_context.thread_count = 1
        self._audio = _AudioCopy(self._out, audio_from) if audio_from is not None else None

    def write(self, pixels: np.ndarray) -> None:
        height, width = self.size
        if width % 2 or height % 2:
            pixels = np.pad(pixels, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        # Converted to the encoder's yuv420p here and copied into a frame without row padding:
        # left to the encoder, or encoded from the converted frame itself (whose rows end in
        # unwritten padding bytes), the same frames did not always give the same bytes.
        bgr = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="bgr24")
        yuv = bgr.reformat(format="yuv420p", threads=1).to_ndarray()
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = self.count
        self.count += 1
        for packet in self._stream.encode(frame):
            self._out.mux(packet)

    def close(self) -> bytes:
        for packet in self._stream.encode():
            self._out.mux(packet)
        if self._audio is not None:
            self._audio.copy()
        self._out.close()
        return self.buffer.getvalue()


class _AudioCopy:
    """The input's first audio stream, packets copied as they are (no re-encoding)."""

    def __init__(self, out: Any, data: bytes) -> None:
        self.data, self.out, self.stream = data, out, None
        with opened(data) as container:
            if not container.streams.audio:
                return
            audio = container.streams.audio[0]
            if audio.codec_context.name not in AUDIO_COPY:
                raise ImageRejected("audio_unsupported", f"audio in {audio.codec_context.name} "
                                    f"cannot be kept in MP4; run without keep_audio")
            self.stream = out.add_stream_from_template(audio)

    def copy(self) -> None:
        if self.stream is None:
            return
        with opened(self.data) as container:
            for packet in container.demux(container.streams.audio[0]):
                if packet.dts is None:
                    continue
                packet.stream = self.stream
                self.out.mux(packet)


def can_remux(codec: str, container: str, audio_streams: int, keep_audio: bool) -> bool:
    """An input published without re-encoding when no pixel changes: H.264 in MP4/MOV
    (``container`` is FFmpeg's demuxer name, ``mov,mp4,m4a,...`` for both)."""
    return codec in REMUX_CODECS and "mp4" in container and (not keep_audio or not audio_streams)


def remux(data: bytes) -> bytes:
    """The video stream's packets as they are, in a new MP4 without any of the input's metadata.

    The pixels are the input's own (nothing decoded, nothing encoded); what is
    left behind: container and stream tags (creation time, GPS, device), audio,
    data, subtitle and timecode streams.
    """
    buffer = io.BytesIO()
    with opened(data) as source, av.open(buffer, "w", format="mp4",
                                         options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        stream.metadata.clear()
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is None:
                continue  # the demuxer's empty flush packet
            packet.stream = stream
            out.mux(packet)
    return buffer.getvalue()


def crop_to(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """A decoded output frame at the input's size (removes :class:`Writer`'s even-size padding)."""
    return pixels[:height, :width]


def _bmff_truncated(data: bytes) -> bool:
    """An ISO-BMFF (MP4/MOV) file whose top-level boxes run past its end: cut short."""
    if len(data) < 12 or data[4:8] not in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return False
    offset = 0
    while offset + 8 <= len(data):
        size = struct.unpack(">I", data[offset:offset + 4])[0]
        if size == 1 and offset + 16 <= len(data):
            size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
        if size == 0:
            return False  # "to the end of the file"
        if size < 8:
            return False  # not a box structure at all: corrupt, not truncated
        offset += size
    return offset > len(data) or not _has_box(data, b"moov")


def _has_box(data: bytes, kind: bytes) -> bool:
    offset = 0
    while offset + 8 <= len(data):
        size = struct.unpack(">I", data[offset:offset + 4])[0]
        if data[offset + 4:offset + 8] == kind:
            return True
        if size == 1 and offset + 16 <= len(data):
            size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
        if size < 8:
            return False
        offset += size
    return False
