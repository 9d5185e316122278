"""Video benchmark: frame-level recall, collateral and speed on clips made from COCO photos.

``python -m bench.video`` builds the clips of :mod:`bench.clips` in a temporary
folder, runs them through the CLI's batch (the product, default settings) and
measures, against the labels moved along with the camera:

* **frame recall**: a labelled person counts on a frame when at least half of
  its box is inside the frame; it is *hidden* there by the image benchmark's
  own rule (:func:`bench.metrics.person_anonymized`: detail below 25 % and no
  re-detection at 0.25 overlapping it), judged on the *published* frame
  against the source frame; reported for persons >= 64 px tall (visible part)
  and below;
* **still detectable**: frames of a published video with a person re-detected
  at 0.25 (any box), and with a CenterFace face (>= 0.5) outside the regions;
* **collateral**: share of pixels outside the 1.2x-enlarged labelled boxes whose
  grey value changed by more than 12 levels (as for images);
* **person-free clip**: mean absolute difference of the published frames to the
  source frames, beside the MAD that the product's encoder alone causes
  (the source frames encoded by :class:`~airflow_privacy.core.video.container.Writer`
  with no change);
* **frames/s** of the whole flow (decode, detect, track, anonymize, encode,
  verify every frame), and of ``deface`` on the same clips when it is installed
  (``--deface PATH``: its executable; it blurs faces only and verifies nothing).

``--rss`` instead measures peak RSS of the fused flow on a 10 s and a 60 s 720p
clip, each in a fresh process (``--fps`` sets their rate).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.clips import Clip, camera_path, coco_clips, coco_photo, decoded, make_clip
from bench.metrics import collateral, person_anonymized

COCO = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128-train"
RESULTS = Path(__file__).resolve().parent / "results"
LARGE = 64.0
VISIBLE = 0.5


def encoder_mad(pipeline: Any, clip: Clip) -> float:
    """MAD the product's encoder alone causes on ``clip`` (no pixel changed before encoding)."""
    from fractions import Fraction

    from airflow_privacy.core.video.container import Writer

    v = pipeline.settings.video
    source = decoded(clip.data)
    writer = Writer(clip.size[0], clip.size[1], Fraction(clip.fps), crf=v.crf, preset=v.preset)
    for frame in source:
        writer.write(frame)
    return mad(source, decoded(writer.close()))


def mad(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} frames against {len(b)}")
    diffs = [np.abs(x.astype(np.int16) - y).mean() for x, y in zip(a, b, strict=True)]
    return float(np.mean(diffs))


def measure(pipeline: Any, clip: Clip, published: bytes) -> dict[str, Any]:
    """Frame-level measures of one published clip against its moved labels."""
    source, output = decoded(clip.data), decoded(published)
    counts = {"large": [0, 0], "small": [0, 0]}
    detectable = faces = changed = outside = 0
    for before, after, labels in zip(source, output, clip.labels, strict=True):
        people = pipeline.detector.detect(after, confidence=0.25, flip=False)
        boxes = [p.box for p in people]
        detectable += bool(people)
        if pipeline.face_finder is not None:
            faces += bool(pipeline.face_finder.detect(after))
        for label in labels:
            if label.visible < VISIBLE:
                continue
            bucket = "large" if label.box[3] - label.box[1] >= LARGE else "small"
            counts[bucket][1] += 1
            counts[bucket][0] += person_anonymized(before, after, label.box, boxes).anonymized
        c, o = collateral(before, after, [label.box for label in labels])
        changed, outside = changed + c, outside + o
    return {
        "frames": len(output),
        "large_hidden": counts["large"][0], "large_frames": counts["large"][1],
        "small_hidden": counts["small"][0], "small_frames": counts["small"][1],
        "frames_with_detectable_person": detectable, "frames_with_face": faces,
        "collateral": round(changed / outside, 4) if outside else None,
        "mad": round(mad(source, output), 4),
    }


def run_clips(clips: dict[str, Clip], workdir: Path) -> tuple[Any, list[dict[str, Any]], float]:
    """The CLI's batch over the clips; ``(pipeline, records, seconds)``."""
    from airflow_privacy.core.batch import run_batch
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.core.settings import RunSettings
    from airflow_privacy.storage import open_storage

    source = workdir / "source"
    source.mkdir(parents=True)
    for name, clip in clips.items():
        (source / name).write_bytes(clip.data)
    pipeline = Pipeline(RunSettings()).load()
    started = time.perf_counter()
    result = run_batch(open_storage(str(source)), open_storage(str(workdir / "release")),
                       open_storage(str(workdir / "report")), pipeline, workers=1)
    return pipeline, result.records, time.perf_counter() - started


def deface_fps(executable: str, clips: dict[str, Clip], workdir: Path) -> float:
    """Frames/s of ``deface`` (face blurring only, no verification) over the same clips."""
    frames, seconds = 0, 0.0
    for name, clip in clips.items():
        path = workdir / "source" / name
        started = time.perf_counter()
        subprocess.run([executable, str(path), "-o", str(workdir / f"deface-{name}")],
                       check=True, capture_output=True)
        seconds += time.perf_counter() - started
        frames += clip.frames
    return frames / seconds


def main_quality(args: argparse.Namespace) -> dict[str, Any]:
    clips = coco_clips(COCO, frames=args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        pipeline, records, seconds = run_clips(clips, Path(tmp))
        frames = sum(c.frames for c in clips.values())
        rows: dict[str, Any] = {"frames_per_second": round(frames / seconds, 2), "clips": {}}
        for record in records:
            clip = clips[record["source"]]
            row = {"status": record["status"], "tracks": len(record.get("tracks") or []),
                   "frames_checked": (record["verification"] or {}).get("frames_checked"),
                   "pixels_unchanged": record["pixels_unchanged"]}
            published = Path(tmp) / "release" / record["output_key"]
            if published.exists():
                row |= measure(pipeline, clip, published.read_bytes())
            if record["source"] == "person_free.mp4":
                row["encoder_only_mad"] = round(encoder_mad(pipeline, clip), 4)
            rows["clips"][record["source"]] = row
        if args.deface:
            rows["deface_frames_per_second"] = round(deface_fps(args.deface, clips, Path(tmp)), 2)
    return rows


def one(path: str) -> None:
    """Child process of ``--rss``: the fused flow on one clip, then its own peak RSS."""
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.core.settings import RunSettings

    data = Path(path).read_bytes()
    started = time.perf_counter()
    record = Pipeline(RunSettings()).process(Path(path).name, data).record
    print(json.dumps({"status": record["status"], "frames": record["video"]["frames"],
                      "seconds": round(time.perf_counter() - started, 1),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


def main_rss(args: argparse.Namespace) -> dict[str, Any]:
    photo, people = coco_photo(COCO, "000000000328")
    h, w = photo.shape[:2]
    photo = np.ascontiguousarray(np.kron(photo, np.ones((3, 3, 1), np.uint8)))  # 1920 px wide
    people = [tuple(v * 3 for v in box) for box in people]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (10, 60):
            n = seconds * args.fps
            path = camera_path((w * 1.2, h * 1.5, w * 2.2), (w * 1.8, h * 1.5, w * 1.6), n)
            clip = make_clip("long.mp4", photo, people, path, size=(1280, 720), fps=args.fps,
                             crf=23)
            file = Path(tmp) / f"{seconds}s.mp4"
            file.write_bytes(clip.data)
            done = subprocess.run([sys.executable, "-m", "bench.video", "--one", str(file)],
                                  check=True, capture_output=True, text=True)
            out[f"{seconds}s"] = {**json.loads(done.stdout.strip().splitlines()[-1]),
                                  "input_mib": round(len(clip.data) / 2**20, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30, help="frames per quality clip")
    parser.add_argument("--deface", help="the deface executable, to compare frames/s")
    parser.add_argument("--rss", action="store_true", help="peak RSS on 10 s and 60 s 720p")
    parser.add_argument("--fps", type=int, default=10, help="frame rate of the --rss clips")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one)
        return
    result = main_rss(args) if args.rss else main_quality(args)
    RESULTS.mkdir(exist_ok=True)
    name = "video-rss.json" if args.rss else "video.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
