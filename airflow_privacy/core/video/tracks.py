"""People followed across frames: ByteTrack over the detector's boxes, confirmed per track.

Recall in video comes from time: a person the detector finds on neighbouring
frames but misses on one (motion blur, occlusion, a pose it scores low) is
the same person. Ultralytics' own ByteTrack (``BYTETracker``, the tracker
``model.track()`` uses) links each frame's candidates into tracks; weak
candidates (down to the candidate floor) only *extend* tracks, they never
start one (``new_track_thresh`` is the detection confidence), so a flicker of
texture does not become a track.

Confirmation before destruction is per track, with the same
:class:`~airflow_privacy.core.confirm.Confirmer` as images: a track's
detection is reviewed while the track is unconfirmed and its score improves
(at most :data:`MAX_REVIEWS` crop re-scores per track); once one of its
detections is confirmed, the whole track hides its person, on every frame
from ``hold_frames`` before its first detection to ``hold_frames`` after its
last, gaps interpolated, held ends extrapolated along the last motion.
A detection the tracker did not report (a track's first frame) that reaches the
detection threshold becomes a one-frame track of its own, so nobody is dropped
for being new.

What a stage carries to the next is every track's detections (``detections``:
``[frame, confidence, x1, y1, x2, y2, head or None]``); the manifest keeps
only a summary per track (:func:`summarize`), never per frame.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from airflow_privacy.core.detect import PersonDetection
from airflow_privacy.core.geometry import Box, clip_box

MAX_REVIEWS = 3  # crop re-scores per unconfirmed track (each is a model pass)
REVIEW_GAIN = 0.05  # a track is reviewed again only when its best score rose this much

Review = Callable[[np.ndarray, list[PersonDetection]], list[Any]]  # Confirmer.review, bound


@dataclass
class _Dets:
    """The Results-like object BYTETracker reads: ``conf``, ``xywh``, ``cls``, boolean indexing."""

    conf: np.ndarray
    xywh: np.ndarray
    cls: np.ndarray

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index: Any) -> _Dets:
        return _Dets(self.conf[index], self.xywh[index], self.cls[index])


@dataclass
class Track:
    ident: int
    detections: list[list[Any]] = field(default_factory=list)
    confirmed: bool = False
    reason: str = ""
    reviewed_at: float = -1.0
    reviews: int = 0


class Tracks:
    """Per-frame people in, tracks with decisions out (see the module docstring)."""

    def __init__(self, *, new_track: float, floor: float, buffer: int, review: Review) -> None:
        from ultralytics.trackers.byte_tracker import BYTETracker

        args = SimpleNamespace(track_high_thresh=new_track, track_low_thresh=floor,
                               new_track_thresh=new_track, track_buffer=buffer,
                               match_thresh=0.8, fuse_score=True)
        self._tracker = BYTETracker(args)
        self.new_track = new_track
        self.review = review
        self.tracks: dict[int, Track] = {}
        self.candidates: list[dict[str, Any]] = []  # every review, as the manifest records them
        self.untracked_weak = 0  # weak candidates no track took: not hidden (verification checks)
        self._singles = 0

    def update(self, frame: int, pixels: np.ndarray, people: Sequence[PersonDetection]) -> None:
        people = [p for p in people if p.box[2] > p.box[0] and p.box[3] > p.box[1]]
        assigned: dict[int, int] = {}
        if people:
            boxes = np.array([p.box for p in people], dtype=np.float32)
            xywh = np.column_stack([(boxes[:, 0] + boxes[:, 2]) / 2,
                                    (boxes[:, 1] + boxes[:, 3]) / 2,
                                    boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
            dets = _Dets(np.array([p.confidence for p in people], np.float32), xywh,
                         np.zeros(len(people), np.float32))
            for row in self._tracker.update(dets, pixels):
                assigned[int(row[-1])] = int(row[4])
        else:
            self._tracker.update(_Dets(np.empty(0, np.float32), np.empty((0, 4), np.float32),
                                       np.empty(0, np.float32)), pixels)
        for index, person in enumerate(people):
            ident = assigned.get(index)
            if ident is None:
                if person.confidence < self.new_track:
                    self.untracked_weak += 1
                    continue
                self._singles -= 1
                ident = self._singles  # a one-frame track of its own (negative ids)
            track = self.tracks.setdefault(ident, Track(ident))
            track.detections.append(_entry(frame, person))
            self._maybe_review(track, pixels, person)

    def _maybe_review(self, track: Track, pixels: np.ndarray, person: PersonDetection) -> None:
        if track.confirmed or track.reviews >= MAX_REVIEWS:
            return
        if person.confidence < track.reviewed_at + REVIEW_GAIN:
            return
        track.reviews += 1
        track.reviewed_at = person.confidence
        (decision,) = self.review(pixels, [person])
        record = decision.to_record()
        record["track"] = track.ident
        self.candidates.append(record)
        track.reason = decision.reason
        track.confirmed = bool(decision.confirmed)

    def records(self) -> list[dict[str, Any]]:
        return [{"track": t.ident, "confirmed": t.confirmed, "reason": t.reason,
                 "reviews": t.reviews, "detections": t.detections}
                for t in sorted(self.tracks.values(), key=lambda t: t.detections[0][0])]


def _entry(frame: int, person: PersonDetection) -> list[Any]:
    head = list(person.head_box) if person.head_box is not None else None
    return [frame, round(person.confidence, 4), *person.box, head]


class FramePlan:
    """Who is hidden on which frame: confirmed tracks (held, interpolated) plus remediation.

    ``tracks``: the records :meth:`Tracks.records` made (with ``detections``);
    ``extra``: remediation entries ``[frame, x1, y1, x2, y2, origin]``, applied
    on top of the planned regions of that frame (as remediation on images).
    """

    def __init__(self, tracks: Sequence[dict[str, Any]], extra: Sequence[Sequence[Any]],
                 hold: int, width: int, height: int) -> None:
        self.hold, self.width, self.height = hold, width, height
        self._tracks = [t["detections"] for t in tracks if t["confirmed"] and t["detections"]]
        self._frames = [[d[0] for d in dets] for dets in self._tracks]
        self._extra: dict[int, list[Box]] = {}
        for frame, *box, _ in extra:
            self._extra.setdefault(int(frame), []).append(tuple(box))  # type: ignore[arg-type]

    @property
    def empty(self) -> bool:
        return not self._tracks and not self._extra

    def people(self, frame: int) -> list[PersonDetection]:
        """The confirmed people to hide on ``frame``: detected, interpolated or held."""
        out = []
        for dets, frames in zip(self._tracks, self._frames, strict=True):
            if not frames[0] - self.hold <= frame <= frames[-1] + self.hold:
                continue
            i = bisect_left(frames, frame)
            if i < len(frames) and frames[i] == frame:
                out.append(_person(dets[i]))
            elif 0 < i < len(frames):
                out.append(self._between(dets[i - 1], dets[i], frame))
            else:
                out.append(self._held(dets, frame))
        return out

    def extra(self, frame: int) -> list[Box]:
        return self._extra.get(frame, [])

    def _between(self, a: list[Any], b: list[Any], frame: int) -> PersonDetection:
        t = (frame - a[0]) / (b[0] - a[0])
        box = tuple(float(x + (y - x) * t) for x, y in zip(a[2:6], b[2:6], strict=True))
        # a straight line between the neighbouring detections; the region's padding takes up
        # the rest, and verification checks the frame whatever the plan says
        return PersonDetection(clip_box(box, self.width, self.height),  # type: ignore[arg-type]
                               min(a[1], b[1]))

    def _held(self, dets: list[list[Any]], frame: int) -> PersonDetection:
        """Before the first or after the last detection: the end box, extended along the motion."""
        end, near = (dets[0], dets[1] if len(dets) > 1 else dets[0]) if frame < dets[0][0] \
            else (dets[-1], dets[-2] if len(dets) > 1 else dets[-1])
        steps = abs(frame - end[0])
        span = max(1, abs(end[0] - near[0]))
        moved = [(e - n) / span * steps for e, n in zip(end[2:6], near[2:6], strict=True)]
        ahead = [e + m for e, m in zip(end[2:6], moved, strict=True)]
        box = (min(end[2], ahead[0]), min(end[3], ahead[1]),
               max(end[4], ahead[2]), max(end[5], ahead[3]))
        return PersonDetection(clip_box(box, self.width, self.height), end[1])


def _person(entry: list[Any]) -> PersonDetection:
    head = entry[6]
    return PersonDetection(tuple(entry[2:6]), entry[1],  # type: ignore[arg-type]
                           tuple(head) if head is not None else None)  # type: ignore[arg-type]


def summarize(track: dict[str, Any], hold: int, frames: int) -> dict[str, Any]:
    """A track as the manifest keeps it: its span and its boxes summarised, not per frame."""
    dets = track["detections"]
    heights = [d[5] - d[3] for d in dets]
    first, last = dets[0][0], dets[-1][0]
    hidden = (min(frames - 1, last + hold) - max(0, first - hold) + 1) if track["confirmed"] else 0
    return {
        "track": track["track"], "confirmed": track["confirmed"], "reason": track["reason"],
        "reviews": track["reviews"], "first_frame": first, "last_frame": last,
        "frames_detected": len(dets), "frames_hidden": hidden,
        "confidence_max": max(d[1] for d in dets),
        "box_first": [round(v, 1) for v in dets[0][2:6]],
        "box_last": [round(v, 1) for v in dets[-1][2:6]],
        "height_px": [round(min(heights), 1), round(max(heights), 1)],
    }
