"""Video inputs: tracked, anonymized, every frame verified, published fail-closed.

The clips are made at run time from COCO photos with their labels moved along
with the camera (``bench/clips.py``): a pan and zoom over three people, a pan
that makes one person leave and another enter, and a person-free pan. Short
(16 frames, 320x240) so the whole module stays within a minute on 2 CPUs.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace

import av
import numpy as np
import pytest

from airflow_privacy.core.settings import RunSettings
from tests.conftest import COCO

pytestmark = pytest.mark.skipif(not COCO.is_dir(), reason="needs ../shared/datasets/coco128")

FRAMES = 16


@pytest.fixture(scope="module")
def clips():
    from bench.clips import coco_clips

    return coco_clips(COCO, frames=FRAMES)


def _with_audio_and_metadata(data: bytes) -> bytes:
    """``data``'s video packets plus a second of AAC tone and GPS/creation-time tags."""
    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(out, "w", format="mp4") as dst:
        dst.metadata.update({"location": "+48.8584+002.2945/", "title": "secret-title",
                             "creation_time": "2024-01-01T00:00:00Z"})
        video = dst.add_stream_from_template(src.streams.video[0])
        audio = dst.add_stream("aac", rate=16000)
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = video
                dst.mux(packet)
        tone = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440) * 8000).astype(np.int16)
        for start in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            for packet in audio.encode(frame):
                dst.mux(packet)
        for packet in audio.encode():
            dst.mux(packet)
    return out.getvalue()


def _audio_only() -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as dst:
        audio = dst.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in [*audio.encode(frame), *audio.encode()]:
            dst.mux(packet)
    return out.getvalue()


@pytest.fixture(scope="module")
def batch(pipeline, clips, tmp_path_factory):
    """One CLI batch over the clips, a tagged clip with audio, and broken videos."""
    from airflow_privacy.core.batch import run_batch
    from airflow_privacy.storage import open_storage

    root = tmp_path_factory.mktemp("video")
    source = root / "source"
    source.mkdir()
    for name, clip in clips.items():
        (source / name).write_bytes(clip.data)
    (source / "tagged.mov").write_bytes(_with_audio_and_metadata(clips["person_free.mp4"].data))
    pan = clips["pan_zoom.mp4"].data
    (source / "bad").mkdir()
    (source / "bad" / "truncated.mp4").write_bytes(pan[: len(pan) * 3 // 5])
    (source / "bad" / "corrupt.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 40)
    (source / "bad" / "empty.mov").write_bytes(b"")
    (source / "bad" / "audio_only.mp4").write_bytes(_audio_only())
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.rglob("*")
              if p.is_file()}
    result = run_batch(open_storage(str(source)), open_storage(str(root / "release")),
                       open_storage(str(root / "report")), pipeline, workers=1)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.rglob("*")
             if p.is_file()}
    assert after == before  # the source is never modified
    return {"root": root, "records": {r["source"]: r for r in result.records}}


def test_people_are_hidden_on_every_frame_they_appear_and_nothing_detectable_is_published(
        pipeline, clips, batch):
    from bench.video import measure

    hidden = frames = 0
    for name in ("pan_zoom.mp4", "enter_leave.mp4"):
        record = batch["records"][name]
        assert record["status"] == "verified", record["error"]
        assert record["kind"] == "video" and record["output_key"] == name
        assert record["verification"]["frames_checked"] == record["video"]["frames"] == FRAMES
        published = (batch["root"] / "release" / name).read_bytes()
        m = measure(pipeline, clips[name], published)
        assert m["frames_with_detectable_person"] == 0 and m["frames_with_face"] == 0, m
        hidden, frames = hidden + m["large_hidden"], frames + m["large_frames"]
    assert frames >= 2 * FRAMES  # every clip has a person >= 64 px on (nearly) every frame
    assert hidden / frames >= 0.99, (hidden, frames)


def test_the_manifest_records_tracks_not_frames(batch):
    record = batch["records"]["enter_leave.mp4"]
    tracks = [t for t in record["tracks"] if t["confirmed"]]
    assert len(tracks) >= 2  # the one leaving and the one entering
    for track in record["tracks"]:
        assert "detections" not in track
        assert {"first_frame", "last_frame", "frames_detected", "frames_hidden", "box_first",
                "height_px"} <= set(track)
    leaving = min(tracks, key=lambda t: t["first_frame"])
    assert leaving["first_frame"] == 0 and leaving["frames_hidden"] > leaving["frames_detected"]


def test_the_person_free_clip_is_published_with_its_own_pixels(pipeline, clips, batch):
    from bench.clips import decoded
    from bench.video import encoder_mad, mad

    record = batch["records"]["person_free.mp4"]
    assert record["status"] == "verified" and record["pixels_unchanged"] is True
    assert record["verification"]["frames_checked"] == FRAMES
    published = decoded((batch["root"] / "release" / "person_free.mp4").read_bytes())
    clip = clips["person_free.mp4"]
    assert mad(decoded(clip.data), published) < encoder_mad(pipeline, clip)


def test_published_videos_carry_no_metadata_and_no_audio(batch):
    record = batch["records"]["tagged.mov"]
    assert record["status"] == "verified" and record["output_key"] == "tagged.mp4"
    assert record["video"]["audio"] == "dropped" and record["metadata_stripped"] is True
    data = (batch["root"] / "release" / "tagged.mp4").read_bytes()
    with av.open(io.BytesIO(data)) as published:
        assert not published.streams.audio and len(published.streams) == 1
        tags = {**published.metadata, **published.streams.video[0].metadata}
    assert not {"location", "title", "creation_time"} & set(tags)
    assert b"secret-title" not in data and b"+48.8584" not in data


def test_bad_videos_get_reason_codes_and_nothing_is_published(batch):
    codes = {name: batch["records"][f"bad/{name}"]["error"]["code"]
             for name in ("truncated.mp4", "corrupt.mkv", "empty.mov", "audio_only.mp4")}
    assert codes == {"truncated.mp4": "truncated", "corrupt.mkv": "corrupt_video",
                     "empty.mov": "empty_file", "audio_only.mp4": "no_video_stream"}
    assert not (batch["root"] / "release" / "bad").exists()


def test_frames_over_the_pixel_limit_are_rejected_from_the_header(clips):
    from airflow_privacy.core.pipeline import Pipeline

    small = Pipeline(RunSettings(max_pixels=320 * 240 - 1))  # loads no model: header first
    record = small.process("clip.mp4", clips["person_free.mp4"].data).record
    assert record["error"]["code"] == "too_many_pixels" and record["model"] is None


def test_a_frame_that_still_fails_quarantines_the_whole_video(pipeline, clips):
    from airflow_privacy.core.pipeline import Pipeline

    class Nothing:  # a method that changes nothing: every frame with a person fails
        name = "nothing"

        def apply(self, pixels, regions):
            return pixels.copy()

        def describe(self):
            return {"name": self.name}

    settings = RunSettings()
    settings = replace(settings, verification=replace(settings.verification,
                                                      remediation_rounds=0))
    weak = Pipeline(settings, method=Nothing(), detector=pipeline.detector,
                    face_finder=pipeline.face_finder)
    outcome = weak.process("enter_leave.mp4", clips["enter_leave.mp4"].data)
    assert outcome.record["status"] == "quarantined"
    assert outcome.record["error"]["code"] == "verification_failed"
    assert outcome.record["verification"]["frames_failed"] >= 1


def test_audio_is_kept_only_when_asked_and_a_stride_samples_frames(pipeline, clips):
    from airflow_privacy.core.pipeline import Pipeline

    base = RunSettings()
    settings = replace(base, video=replace(base.video, keep_audio=True, verify_stride=4))
    asked = Pipeline(settings, detector=pipeline.detector, face_finder=pipeline.face_finder)
    data = _with_audio_and_metadata(clips["person_free.mp4"].data)
    outcome = asked.process("tagged.mp4", data)
    record = outcome.record
    assert record["status"] == "verified" and record["video"]["audio"] == "kept"
    assert record["verification"]["frames_checked"] == FRAMES // 4
    with av.open(io.BytesIO(outcome.output)) as published:
        assert len(published.streams.audio) == 1
        assert "location" not in published.metadata


def test_the_airflow_stages_give_the_fused_record_and_bytes(pipeline, clips, batch, tmp_path):
    from airflow_privacy.core.shards import list_shards
    from airflow_privacy.core.stages import anonymize_shard, detect_shard, verify_shard
    from airflow_privacy.storage import open_storage

    source = tmp_path / "source"
    source.mkdir()
    (source / "enter_leave.mp4").write_bytes(clips["enter_leave.mp4"].data)
    src, work = open_storage(str(source)), open_storage(str(tmp_path / "work"))
    (shard,) = list_shards(src, 10, work=work)
    detect_shard(pipeline, src, work, shard)
    anonymize_shard(pipeline, src, work, shard)
    assert verify_shard(pipeline, src, work, shard)["verified"] == 1
    staged = (tmp_path / "work" / "staging" / "enter_leave.mp4").read_bytes()
    assert staged == (batch["root"] / "release" / "enter_leave.mp4").read_bytes()
    from airflow_privacy.core.shards import RECORDS, read_entries

    staged_record = read_entries(work, RECORDS, shard)["enter_leave.mp4"]
    fused = batch["records"]["enter_leave.mp4"]
    skip = ("timings_ms", "quarantine")
    assert {k: v for k, v in staged_record.items() if k not in skip} == \
        {k: v for k, v in fused.items() if k not in skip}


def test_a_track_hides_its_person_through_a_missed_frame_and_around_its_ends():
    from airflow_privacy.core.detect import PersonDetection
    from airflow_privacy.core.video.tracks import FramePlan, Tracks

    class Yes:
        confirmed, reason = True, "test"

        def to_record(self):
            return {"decision": "confirmed"}

    tracks = Tracks(new_track=0.25, floor=0.05, buffer=30,
                    review=lambda pixels, people: [Yes()])
    blank = np.zeros((240, 320, 3), np.uint8)
    for frame in range(10, 20):
        x = 100 + 5 * frame
        people = [] if frame == 15 else [PersonDetection((x, 50, x + 40, 150), 0.9)]
        tracks.update(frame, blank, people)
    (track,) = tracks.records()
    assert track["confirmed"] and len(track["detections"]) == 9
    plan = FramePlan(tracks.records(), [], hold=3, width=320, height=240)
    assert [bool(plan.people(f)) for f in (6, 7, 15, 22, 23)] == [False, True, True, True, False]
    (between,) = plan.people(15)
    assert between.box[0] == pytest.approx(175)  # interpolated along the motion
    (after,) = plan.people(22)
    assert after.box[2] >= 100 + 5 * 19 + 40 + 10  # held ahead along the motion


def test_video_inputs_are_listed_and_published_as_mp4(tmp_path):
    from airflow_privacy.core.inputs import list_inputs
    from airflow_privacy.core.naming import output_key
    from airflow_privacy.storage import open_storage

    for name in ("a.mov", "b.MKV", "c.webm", "d.avi", "e.mp4", "f.txt"):
        (tmp_path / name).write_bytes(b"x")
    processed, ignored = list_inputs(open_storage(str(tmp_path)))
    assert sorted(processed) == ["a.mov", "b.MKV", "c.webm", "d.avi", "e.mp4"]
    assert ignored == ["f.txt"]
    assert output_key("dir/a.mov") == "dir/a.mp4" and output_key("e.mp4") == "e.mp4"


def test_encoding_the_same_frames_gives_the_same_bytes(clips):
    """Idempotent runs need repeatable encoding (the encoder's own colour conversion was not)."""
    from fractions import Fraction

    from airflow_privacy.core.video.container import Writer, frames

    video = RunSettings().video
    pixels = list(frames(clips["pan_zoom.mp4"].data))

    def encode() -> bytes:
        writer = Writer(pixels[0].shape[1], pixels[0].shape[0], Fraction(25), crf=video.crf,
                        preset=video.preset)
        for frame in pixels:
            writer.write(frame)
        return writer.close()

    assert len({hashlib.sha256(encode()).hexdigest() for _ in range(20)}) == 1
