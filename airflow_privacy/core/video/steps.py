"""The flow's steps for a video: probe -> find (track, confirm) -> anonymize -> verify every frame.

Same signature as the image steps (``step(pipeline, state)`` over an
:class:`~airflow_privacy.core.flow.ImageState`), run by the same drivers
through :func:`airflow_privacy.core.flow.steps_for`, with the same tools per
frame: ``pipeline.detector``, ``pipeline.confirmer`` (through
:class:`~airflow_privacy.core.video.tracks.Tracks`),
:func:`~airflow_privacy.core.regions.plan_regions`, ``pipeline.method.apply``,
``pipeline.verifier.verify`` and
:func:`~airflow_privacy.core.regions.remediation_regions`.

Verification decodes the *encoded output* (the bytes that would be published)
in lockstep with the source and verifies every ``verify_stride``-th frame (1
by default: every frame). What fails is remediated on that frame and
``hold_frames`` around it, the whole video is encoded again and verified
again, up to ``remediation_rounds``; a video with any frame still failing is
quarantined whole. A video with no confirmed person is remuxed (H.264 in
MP4/MOV: its own packets, no re-encoding) and still verified frame by frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

import numpy as np

from airflow_privacy.core.flow import check_staged, settle_verdict, verification_settings
from airflow_privacy.core.geometry import Box
from airflow_privacy.core.images import ImageRejected, sha256_bytes
from airflow_privacy.core.regions import Region, plan_regions, remediation_regions
from airflow_privacy.core.video.container import Writer, can_remux, crop_to, frames, probe, remux
from airflow_privacy.core.video.tracks import FramePlan, Tracks, summarize
from airflow_privacy.core.workers import ordered

if TYPE_CHECKING:
    from airflow_privacy.core.flow import ImageState, Step
    from airflow_privacy.core.pipeline import Pipeline

MAX_LISTED = 20  # residuals and reasons listed in the manifest; the counts are complete


def probe_video(pipeline: Pipeline, state: ImageState) -> None:
    """The header's facts; rejections (empty, truncated, no video, too many pixels) first."""
    if state.data is None:
        raise RuntimeError("probe before load")  # a driver bug, not a bad video
    info = probe(state.data, pipeline.settings.max_pixels)
    record = state.record
    record.update(width=info.width, height=info.height, format=info.container, decode_notes=[])
    record["video"] = {**(record.get("video") or {}), **info.to_record()}


def find_video(pipeline: Pipeline, state: ImageState) -> None:
    """Detect candidates on every frame, link them into tracks, confirm per track."""
    s, record = pipeline.settings, state.record
    d, c = s.detection, s.confirmation
    floor = c.candidate_confidence if c.enabled else d.confidence
    tracks = Tracks(new_track=d.confidence, floor=floor, buffer=s.video.track_buffer,
                    review=lambda pixels, people: pipeline.confirmer.review(pixels, people,
                                                                            "detect"))
    count = 0

    def detect(pixels: np.ndarray) -> list[Any]:  # frames ahead are detected meanwhile
        return pipeline.detector.detect(pixels, confidence=floor, flip=d.flip)

    # Tracking takes the frames in order; their detection does not need to wait for it.
    for index, (pixels, people) in enumerate(ordered(detect, frames(_data(state)))):
        tracks.update(index, pixels, people)
        count = index + 1
    declared = record["video"]["declared_frames"]
    if count == 0 or (declared and count < declared):
        raise ImageRejected("truncated", f"{count} frames decoded of {declared or 'some'} "
                            "declared: the video ends early")
    found = tracks.records()
    record.update(**pipeline.identity(), tracks=found, detections=[],
                  persons_detected=sum(t["confirmed"] for t in found),
                  candidates=tracks.candidates)
    record["video"].update(frames=count, untracked_weak=tracks.untracked_weak)


def anonymize_video(pipeline: Pipeline, state: ImageState) -> None:
    """Encode every frame with its planned regions hidden; with nobody, remux untouched."""
    record, video = state.record, state.record["video"]
    keep = pipeline.settings.video.keep_audio
    plan = _plan(pipeline, record)
    unchanged = plan.empty and can_remux(video["codec"], video["container"],
                                         video["audio_streams"], keep)
    state.output = remux(_data(state)) if unchanged else _render(pipeline, state, plan)
    video.update(encoding="remux (own packets)" if unchanged else _encoding(pipeline),
                 audio="kept" if keep and video["audio_streams"] and not unchanged else "dropped")
    record.update(regions=[], pixels_unchanged=unchanged, metadata_stripped=True,
                  output_sha256=sha256_bytes(state.output))


def verify_video(pipeline: Pipeline, state: ImageState) -> None:
    """Verify the encoded output frame by frame; remediate and re-encode within bounds."""
    record, video = state.record, state.record["video"]
    check_staged(state)
    limit = pipeline.settings.verification.remediation_rounds
    extra: list[list[Any]] = [list(e) for e in video.get("remediation", [])]
    rounds, history = 0, []
    while True:
        check = _Check(pipeline, state, _plan(pipeline, record, extra))
        history.append(check.summary())
        fixes = check.fixes(pipeline)
        if check.passed or rounds >= limit or not fixes:
            break
        rounds += 1
        extra += fixes
        video["remediation"] = extra
        state.output = _render(pipeline, state, _plan(pipeline, record, extra))
        record["pixels_unchanged"] = False
        video["encoding"] = _encoding(pipeline)
    _settle(pipeline, state, check, rounds, history)


def _settle(pipeline: Pipeline, state: ImageState, check: _Check, rounds: int,
            history: list[dict[str, Any]]) -> None:
    record = state.record
    hold, frames_ = pipeline.settings.video.hold_frames, record["video"]["frames"]
    passed = check.passed
    if record["pixels_unchanged"] and not check.identical:
        record["pixels_unchanged"] = False
    record["video"]["remediation"] = len(record["video"].get("remediation", []))
    record["tracks"] = [summarize(t, hold, frames_) for t in record["tracks"]]
    settle_verdict(state, passed, check.reasons[:5], {
        **check.summary(), "passed": passed,
        "residuals": check.residuals[:MAX_LISTED], "reasons": check.reasons[:MAX_LISTED],
        "remediation_rounds": rounds, "rounds": history,
        "settings": {**verification_settings(pipeline),
                     "verify_stride": pipeline.settings.video.verify_stride},
    })


class _Check:
    """One verification pass over the encoded output, frame by frame against the source."""

    def __init__(self, pipeline: Pipeline, state: ImageState, plan: FramePlan) -> None:
        record = state.record
        width, height = record["width"], record["height"]
        stride = pipeline.settings.video.verify_stride
        self.plan, self.width, self.height = plan, width, height
        self.frames = self.checked = self.redetections = self.dismissed = 0
        self.failed: dict[int, Any] = {}  # frame -> (its region boxes, its result)
        self.residuals: list[dict[str, Any]] = []
        self.reasons: list[str] = []
        self.max_retention = 0.0
        self.identical = True
        mismatch: list[int] = []

        def checks() -> Iterator[tuple[int, np.ndarray, np.ndarray, list[Box]]]:
            """The frames to verify, with their boxes; frame counts are compared on the way."""
            pairs = zip_longest(frames(_data(state)), frames(state.output or b""))
            for index, (source, output) in enumerate(pairs):
                if source is None or output is None:
                    mismatch.append(index)
                    return
                output = crop_to(output, height, width)
                self.frames += 1
                self.identical = self.identical and np.array_equal(source, output)
                if index % stride:
                    continue
                boxes = [r.box for r in _regions(pipeline, plan, index, width, height)]
                yield index, source, output, boxes + plan.extra(index)

        def verify(check: tuple[int, np.ndarray, np.ndarray, list[Box]]) -> Any:
            _, source, output, boxes = check
            return pipeline.verifier.verify(source, output, boxes)

        # Frames are verified side by side (the detector has lanes), results taken in order.
        for (index, _, _, boxes), result in ordered(verify, checks()):
            self.checked += 1
            self.redetections += result.redetections
            self.dismissed += len(result.dismissed)
            self.max_retention = max([self.max_retention, *result.retention])
            if not result.passed:
                self.failed[index] = (boxes, result)
                self.residuals += [{**r.to_record(), "frame": index} for r in result.residuals]
                self.reasons += [f"frame {index}: {reason}" for reason in result.reasons()]
        for index in mismatch:
            self.reasons.append(f"the output has a different number of frames than the "
                                f"source ({record['video']['frames']})")
            self.failed[index] = None

    @property
    def passed(self) -> bool:
        return not self.failed

    def fixes(self, pipeline: Pipeline) -> list[list[Any]]:
        """Remediation entries: residuals padded, on their frame and the frames around it;
        regions that kept their detail, hidden again on their frame."""
        s = pipeline.settings
        reach = max(s.video.hold_frames, s.video.verify_stride - 1)
        out: list[list[Any]] = []
        for index, failure in self.failed.items():
            if failure is None:
                return []  # a frame-count mismatch: nothing to remediate, it stays failed
            boxes, result = failure
            for region in remediation_regions(result.residuals, s.anonymization.padding,
                                              self.width, self.height):
                frames_ = range(max(0, index - reach), min(self.frames, index + reach + 1))
                out += [[f, *region.box, region.origin] for f in frames_]
            out += [[index, *boxes[i], "remediation-retention"]
                    for i in result.retention_failures]
        return out

    def summary(self) -> dict[str, Any]:
        return {"frames": self.frames, "frames_checked": self.checked,
                "frames_failed": len(self.failed), "redetections": self.redetections,
                "dismissed": self.dismissed, "max_retention": round(self.max_retention, 4)}


def _plan(pipeline: Pipeline, record: dict[str, Any],
          extra: list[list[Any]] | None = None) -> FramePlan:
    extra = extra if extra is not None else record["video"].get("remediation", [])
    return FramePlan(record["tracks"], extra, pipeline.settings.video.hold_frames,
                     record["width"], record["height"])


def _regions(pipeline: Pipeline, plan: FramePlan, index: int, width: int,
             height: int) -> list[Region]:
    a = pipeline.settings.anonymization
    return plan_regions(plan.people(index), a.target, a.padding, width, height, a.crowd_gap)


def _render(pipeline: Pipeline, state: ImageState, plan: FramePlan) -> bytes:
    """Every frame through the anonymization method, encoded as H.264 in a new MP4."""
    record, video, vs = state.record, state.record["video"], pipeline.settings.video
    width, height = record["width"], record["height"]
    audio = _data(state) if vs.keep_audio and video["audio_streams"] else None
    writer = Writer(width, height, Fraction(video["rate"]), crf=vs.crf, preset=vs.preset,
                    audio_from=audio)
    regions = 0
    for index, pixels in enumerate(frames(_data(state))):
        boxes: list[Box] = [r.box for r in _regions(pipeline, plan, index, width, height)]
        if boxes:
            pixels = pipeline.method.apply(pixels, boxes)
        if extra := plan.extra(index):
            pixels = pipeline.method.apply(pixels, extra)
        regions += len(boxes) + len(extra)
        writer.write(pixels)
    if writer.count != video["frames"]:
        raise ImageRejected("source_changed", "the video decoded to a different number of "
                            "frames than at detection")
    video["region_frames"] = regions
    return writer.close()


def _encoding(pipeline: Pipeline) -> str:
    vs = pipeline.settings.video
    return f"libx264 crf {vs.crf} preset {vs.preset} yuv420p"


def _data(state: ImageState) -> bytes:
    if state.data is None:
        raise RuntimeError("step before load")
    return state.data


VIDEO_FIND: tuple[Step, ...] = (probe_video, find_video)
VIDEO_ANONYMIZE: tuple[Step, ...] = (probe_video, anonymize_video)
VIDEO_VERIFY: tuple[Step, ...] = (probe_video, verify_video)
VIDEO_ALL: tuple[Step, ...] = (probe_video, find_video, anonymize_video, verify_video)
GROUPS: dict[str, tuple[Step, ...]] = {"find": VIDEO_FIND, "anonymize": VIDEO_ANONYMIZE,
                                       "verify": VIDEO_VERIFY, "all": VIDEO_ALL}
