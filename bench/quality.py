"""Quality benchmark: how well people are hidden, at what collateral cost, and how fast.

Run on a labelled image set (YOLO format, class 0 = person), each recipe
anonymizes every image the way the product does (:class:`Pipeline.process`,
i.e. the exact bytes that would be published) and is then judged against the
*labels*, not against its own detections, so a person the detector never saw
counts as a miss. Per labelled person:

* anonymized := the detail inside the labelled box drops below 25 % (variance
  of the Laplacian of the grey crop, output / input; input < 1 counts as
  anonymized) AND no re-detection on the output (YOLO11n-pose, conf 0.25, no
  flip, 640 px) overlaps it with IoU >= 0.5;
* recall per height bucket (>= 64 px, 32-64, < 32) and overall;
* still detectable: persons with such an overlapping re-detection;
* collateral: share of pixels outside the 1.2x-enlarged labelled person boxes
  whose grey value changed by more than 12 levels, summed over images (and
  over person-free images alone);
* withheld: images the pipeline quarantined, and their persons.

Published-view rule: a quarantined image is never published, so its persons
cannot be exposed by it. They are reported as "withheld persons" and left out
of the recall buckets and of the collateral (which would otherwise reward
quarantining); the withheld share is what keeps that rule honest.

Usage::

    python bench/quality.py [--limit N] [--conf X] [--seed-baseline]
        [--also "conf=0.1,image_size=960"] [--json bench/results/quality.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from airflow_privacy.core.geometry import Box, covered_fraction, iou, region_mask, to_pixels
from airflow_privacy.core.images import decode_image, encode_image
from airflow_privacy.core.settings import (
    DEFAULT_MODEL,
    AnonymizationSettings,
    DetectionSettings,
    RunSettings,
    VerificationSettings,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "coco128-train"
DEFAULT_JSON = ROOT / "bench" / "results" / "quality.json"

PERSON_CLASS = 0
MAX_DETAIL = 0.25  # output/input Laplacian variance below this = detail gone
MATCH_IOU = 0.5  # a re-detection this close to a labelled person still finds them
MEASURE_CONFIDENCE = 0.25  # the re-detector's threshold: ultralytics' own default
ENLARGE = 1.2  # labelled boxes are loose at the edges: hair, limbs, shadows
CHANGE_LEVELS = 12  # grey-level change that counts as damage (JPEG q95 noise stays below)

BUCKETS = (("large", "≥64 px"), ("medium", "32–64 px"), ("small", "<32 px"))


# --- measures (pure functions, imported by tests) -------------------------------------------


def read_labels(
    text: str, width: int, height: int, classes: Iterable[int] = (PERSON_CLASS,)
) -> list[Box]:
    """Pixel boxes of the wanted classes from a YOLO label file's text."""
    wanted = set(classes)
    boxes: list[Box] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or int(float(parts[0])) not in wanted:
            continue
        cx, cy, w, h = (float(v) for v in parts[1:5])
        x1, y1 = (cx - w / 2) * width, (cy - h / 2) * height
        boxes.append((x1, y1, x1 + w * width, y1 + h * height))
    return boxes


def height_bucket(height: float) -> str:
    """Size class of a person: small people are where detectors fail first."""
    if height >= 64:
        return "large"
    if height >= 32:
        return "medium"
    return "small"


def enlarge_box(box: Box, factor: float, width: int, height: int) -> Box:
    """``box`` scaled by ``factor`` around its centre, clipped to the image."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * factor / 2, (box[3] - box[1]) * factor / 2
    return (
        max(0.0, cx - hw), max(0.0, cy - hh),
        min(float(width), cx + hw), min(float(height), cy + hh),
    )


def _gray(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)


def detail_ratio(original: np.ndarray, output: np.ndarray, box: Box) -> float:
    """Laplacian variance inside ``box``, output / input (0 when the input had none).

    Deliberately re-implemented rather than imported from ``verify``: the
    benchmark must not move when the code it judges changes.
    """
    height, width = original.shape[:2]
    x1, y1, x2, y2 = to_pixels(box, width, height)
    if x2 <= x1 or y2 <= y1:
        return 0.0
    before = float(cv2.Laplacian(_gray(original[y1:y2, x1:x2]), cv2.CV_64F).var())
    if before < 1.0:
        return 0.0
    after = float(cv2.Laplacian(_gray(output[y1:y2, x1:x2]), cv2.CV_64F).var())
    return after / before


def best_iou(box: Box, others: Sequence[Box]) -> float:
    return max((iou(box, other) for other in others), default=0.0)


@dataclass
class PersonCheck:
    """The verdict on one labelled person, with the two numbers behind it."""

    anonymized: bool
    detail: float
    redetection_iou: float

    @property
    def still_detectable(self) -> bool:
        return self.redetection_iou >= MATCH_IOU


def person_anonymized(
    original: np.ndarray,
    output: np.ndarray,
    box: Box,
    redetections: Sequence[Box],
    *,
    max_detail: float = MAX_DETAIL,
    match_iou: float = MATCH_IOU,
) -> PersonCheck:
    """Whether the labelled person ``box`` is anonymized on ``output``."""
    detail = detail_ratio(original, output, box)
    overlap = best_iou(box, redetections)
    return PersonCheck(detail < max_detail and overlap < match_iou, detail, overlap)


def collateral(
    original: np.ndarray,
    output: np.ndarray,
    person_boxes: Sequence[Box],
    *,
    factor: float = ENLARGE,
    levels: int = CHANGE_LEVELS,
) -> tuple[int, int]:
    """``(changed, outside)`` pixel counts outside the enlarged person boxes.

    Counts, not a ratio, so that images aggregate by pixels, not by image.
    """
    if original.shape != output.shape:
        raise ValueError(f"output shape {output.shape} differs from input {original.shape}")
    height, width = original.shape[:2]
    enlarged = [enlarge_box(b, factor, width, height) for b in person_boxes]
    inside = region_mask(enlarged, width, height)
    diff = np.abs(_gray(output).astype(np.int16) - _gray(original).astype(np.int16)) > levels
    outside = ~inside
    return int((diff & outside).sum()), int(outside.sum())


# --- recipes: what is being measured ----------------------------------------------------


@dataclass
class Anonymized:
    """One image as a recipe left it; ``output`` is None when nothing is published."""

    original: np.ndarray
    output: np.ndarray | None
    status: str
    regions: list[Box]
    seconds: float
    origins: list[str] = field(default_factory=list)  # why each region was anonymized

    @property
    def withheld(self) -> bool:
        return self.output is None


def _decode(data: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise ValueError("output bytes do not decode")
    return pixels


class Detectors:
    """Loaded person detectors, shared between recipes with equal model settings."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Any, ...], Any] = {}

    def get(self, d: DetectionSettings) -> Any:
        from airflow_privacy.core.detect import PersonDetector

        key = (d.model, d.model_sha256, d.classes, d.image_size, d.keypoint_confidence,
               d.merge_iou, d.device)
        if key not in self._loaded:
            detector = PersonDetector(
                d.model, model_sha256=d.model_sha256, classes=d.classes, image_size=d.image_size,
                keypoint_confidence=d.keypoint_confidence, merge_iou=d.merge_iou, device=d.device,
            )
            # The first predict builds the graph; keep that out of the timings.
            detector.detect(np.zeros((64, 64, 3), np.uint8), confidence=0.5, flip=False)
            self._loaded[key] = detector
        return self._loaded[key]


class PipelineRecipe:
    """The product: :class:`Pipeline.process` on the input bytes, as the operators run it."""

    def __init__(
        self, name: str, settings: RunSettings, detectors: Detectors, face_finder: Any = None
    ) -> None:
        from airflow_privacy.core.pipeline import Pipeline

        self.name = name
        self.settings = settings.validate()
        self.pipeline = Pipeline(
            self.settings, detector=detectors.get(settings.detection), face_finder=face_finder
        )

    def describe(self) -> dict[str, Any]:
        finder = self.pipeline.face_finder
        faces = getattr(finder, "describe", lambda: {"name": finder.name})() if finder else None
        return {"kind": "pipeline", "settings": self.settings.to_dict(), "face_finder": faces}

    def anonymize_for_bench(self, key: str, data: bytes) -> Anonymized:
        clock = time.perf_counter()
        outcome = self.pipeline.process(key, data)
        seconds = time.perf_counter() - clock
        original = decode_image(data, max_pixels=self.settings.max_pixels).pixels
        published = outcome.status == "verified" and outcome.output is not None
        records = outcome.record.get("regions") or []
        return Anonymized(
            original, _decode(outcome.output) if published else None, outcome.status,
            [tuple(r["box"]) for r in records], seconds,  # type: ignore[misc]
            [str(r.get("origin")) for r in records],
        )


class SeedRecipe:
    """The project's seed: a fixed GaussianBlur(51, 51) on each person box at conf 0.25.

    No padding, no verification, nothing withheld: the baseline every change
    is compared against.
    """

    name = "seed: GaussianBlur(51,51), conf 0.25, no verification"

    def __init__(self, detectors: Detectors) -> None:
        self.detector = detectors.get(DetectionSettings())

    def describe(self) -> dict[str, Any]:
        return {"kind": "seed", "kernel": [51, 51], "confidence": 0.25, "verification": None}

    def anonymize_for_bench(self, key: str, data: bytes) -> Anonymized:
        clock = time.perf_counter()
        original = _decode(data)
        people = self.detector.detect(original, confidence=0.25, flip=False)
        out = original.copy()
        height, width = out.shape[:2]
        regions = []
        for person in people:
            x1, y1, x2, y2 = to_pixels(person.box, width, height)
            if x2 > x1 and y2 > y1:
                out[y1:y2, x1:x2] = cv2.GaussianBlur(out[y1:y2, x1:x2], (51, 51), 0)
                regions.append(person.box)
        output = _decode(encode_image(out, Path(key).suffix or ".jpg"))
        return Anonymized(
            original, output, "published", regions, time.perf_counter() - clock,
            ["person"] * len(regions),
        )


# --- running and reporting --------------------------------------------------------------


@dataclass
class Sample:
    name: str
    data: bytes
    labels: str


def load_dataset(directory: Path, limit: int | None = None) -> list[Sample]:
    """Images (sorted by name) with their label text; a missing label file = no one."""
    images = sorted((directory / "images").glob("*.jpg"))
    if not images:
        raise SystemExit(f"no images under {directory / 'images'}")
    samples = []
    for path in images[:limit]:
        label = directory / "labels" / f"{path.stem}.txt"
        samples.append(
            Sample(path.name, path.read_bytes(), label.read_text() if label.exists() else "")
        )
    return samples


@dataclass
class Summary:
    """A recipe's aggregate numbers; counts, so they can be re-aggregated."""

    images: int = 0
    seconds: float = 0.0
    anonymized: dict[str, int] = field(default_factory=lambda: {k: 0 for k, _ in BUCKETS})
    persons: dict[str, int] = field(default_factory=lambda: {k: 0 for k, _ in BUCKETS})
    still_detectable: int = 0
    changed: int = 0
    outside: int = 0
    changed_person_free: int = 0
    outside_person_free: int = 0
    withheld_images: int = 0
    withheld_persons: int = 0
    not_covered: int = 0
    detail_kept: int = 0
    origins: dict[str, int] = field(default_factory=dict)  # regions by why, all images
    origins_person_free: dict[str, int] = field(default_factory=dict)

    def recall(self, bucket: str | None = None) -> tuple[int, int]:
        if bucket is None:
            return sum(self.anonymized.values()), sum(self.persons.values())
        return self.anonymized[bucket], self.persons[bucket]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        done, total = self.recall()
        data.update(
            recall_all=_ratio(done, total),
            recall={k: _ratio(*self.recall(k)) for k, _ in BUCKETS},
            collateral=_ratio(self.changed, self.outside),
            collateral_person_free=_ratio(self.changed_person_free, self.outside_person_free),
            withheld_share=_ratio(self.withheld_images, self.images),
            images_per_s=self.images / self.seconds if self.seconds else None,
        )
        return data


def code_digest() -> str:
    """sha256 over the core's sources: which code a results file was measured with."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "airflow_privacy" / "core").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def evaluate(
    recipe: Any, samples: Sequence[Sample], measurer: Any, *, progress: bool = True
) -> tuple[Summary, list[dict[str, Any]], list[dict[str, Any]]]:
    """Anonymize every sample with ``recipe`` and judge the result against the labels.

    Returns the summary, one record per labelled person and one per image.
    """
    summary = Summary()
    people_records: list[dict[str, Any]] = []
    image_records: list[dict[str, Any]] = []
    for index, sample in enumerate(samples):
        result = recipe.anonymize_for_bench(sample.name, sample.data)
        summary.images += 1
        summary.seconds += result.seconds
        height, width = result.original.shape[:2]
        boxes = read_labels(sample.labels, width, height)
        image_record: dict[str, Any] = {
            "image": sample.name, "status": result.status, "persons": len(boxes),
            "regions": len(result.regions), "seconds": round(result.seconds, 3),
            "origins": dict(Counter(result.origins)),
        }
        image_records.append(image_record)
        for origin in result.origins:
            summary.origins[origin] = summary.origins.get(origin, 0) + 1
            if not boxes:
                tally = summary.origins_person_free
                tally[origin] = tally.get(origin, 0) + 1
        if result.withheld:
            summary.withheld_images += 1
            summary.withheld_persons += len(boxes)
            people_records += [
                {"image": sample.name, "box": [round(v, 1) for v in box], "withheld": True,
                 "status": result.status}
                for box in boxes
            ]
        else:
            assert result.output is not None
            redetected = (
                [p.box for p in measurer.detect(result.output, confidence=MEASURE_CONFIDENCE,
                                                 flip=False)]
                if boxes else []
            )
            mask = region_mask(result.regions, width, height)
            for box in boxes:
                check = person_anonymized(result.original, result.output, box, redetected)
                bucket = height_bucket(box[3] - box[1])
                coverage = covered_fraction(box, mask)
                summary.persons[bucket] += 1
                summary.anonymized[bucket] += check.anonymized
                summary.still_detectable += check.still_detectable
                summary.not_covered += (not check.anonymized) and coverage < 0.9
                summary.detail_kept += check.detail >= MAX_DETAIL
                people_records.append({
                    "image": sample.name, "box": [round(v, 1) for v in box], "withheld": False,
                    "height": round(box[3] - box[1], 1), "bucket": bucket,
                    "anonymized": check.anonymized, "detail": round(check.detail, 4),
                    "redetection_iou": round(check.redetection_iou, 3),
                    "region_coverage": round(coverage, 3),
                })
            changed, outside = collateral(result.original, result.output, boxes)
            image_record["collateral"] = round(changed / outside, 4) if outside else None
            summary.changed += changed
            summary.outside += outside
            if not boxes:
                summary.changed_person_free += changed
                summary.outside_person_free += outside
        if progress and ((index + 1) % 16 == 0 or index + 1 == len(samples)):
            print(f"  {recipe.name}: {index + 1}/{len(samples)}", file=sys.stderr, flush=True)
    return summary, people_records, image_records


def _cell(done: int, total: int) -> str:
    return f"{done / total:.1%} ({done}/{total})" if total else "–"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def markdown_table(rows: Sequence[tuple[str, Summary]]) -> str:
    """The comparison table, one row per recipe."""
    head = ["recipe", *(label for _, label in BUCKETS), "all", "still detectable", "collateral",
            "collateral (no people)", "withheld img", "withheld persons", "images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows:
        d = s.to_dict()
        _, published = s.recall()
        cells = [
            name,
            *(_cell(*s.recall(k)) for k, _ in BUCKETS),
            _cell(*s.recall()),
            f"{s.still_detectable}/{published}",
            _percent(d["collateral"]),
            _percent(d["collateral_person_free"]),
            f"{_percent(d['withheld_share'])} ({s.withheld_images}/{s.images})",
            str(s.withheld_persons),
            f"{d['images_per_s']:.2f}" if d["images_per_s"] else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Anonymized = detail (Laplacian variance, out/in) < {MAX_DETAIL:.0%} inside the labelled "
        f"box and no YOLO re-detection at conf {MEASURE_CONFIDENCE} with IoU ≥ {MATCH_IOU}. "
        "Buckets by labelled box height. Withheld (quarantined) images are not published: their "
        "persons are counted under 'withheld persons', not in the recall buckets, and their "
        f"pixels not in collateral. Collateral = pixels outside the {ENLARGE}x labelled person "
        f"boxes whose grey value changed by > {CHANGE_LEVELS}. images/s = anonymization wall "
        "time only (measurement excluded).",
    ]
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------

RECIPE_KEYS: dict[str, Any] = {
    "name": str, "method": str, "target": str, "conf": float, "verify_conf": float,
    "image_size": int, "flip": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "verify_flip": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "padding": float, "faces": lambda v: v.lower() in ("1", "true", "yes", "on"),
    "face_conf": float, "face_size": int, "remediation_rounds": int,
    "crowd_gap": lambda v: None if v.lower() in ("none", "off", "") else float(v),
}


def recipe_options(base: argparse.Namespace, overrides: str = "") -> dict[str, Any]:
    """The flags, with ``key=value,...`` overrides from ``--also`` applied on top."""
    options = {key: getattr(base, key) for key in RECIPE_KEYS}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in RECIPE_KEYS:
            raise SystemExit(f"unknown recipe key {key!r}; known: {', '.join(RECIPE_KEYS)}")
        options[key] = RECIPE_KEYS[key](value.strip())
    return options


def recipe_settings(options: dict[str, Any]) -> RunSettings:
    base = VerificationSettings()
    verify_conf = options["verify_conf"]
    if verify_conf is None:  # verification may never be laxer than detection
        verify_conf = min(base.confidence, options["conf"])
    verification: dict[str, Any] = {
        "confidence": verify_conf, "flip": options["verify_flip"] or options["flip"],
        "remediation_rounds": options["remediation_rounds"],
    }
    if hasattr(base, "covered_max_confidence"):  # capped by detection confidence too
        verification["covered_max_confidence"] = min(base.covered_max_confidence, options["conf"])
    if hasattr(base, "faces"):  # the pipeline builds its own face finder from these
        verification.update(
            faces=options["faces"], face_confidence=options["face_conf"],
            face_input_size=options["face_size"],
        )
    return RunSettings(
        detection=DetectionSettings(
            model=DEFAULT_MODEL, confidence=options["conf"], image_size=options["image_size"],
            flip=options["flip"],
        ),
        anonymization=AnonymizationSettings(
            target=options["target"], method=options["method"], padding=options["padding"],
            crowd_gap=options["crowd_gap"],
        ),
        verification=replace(base, **verification),
    ).validate()


def recipe_name(options: dict[str, Any], settings: RunSettings) -> str:
    if options["name"]:
        return str(options["name"])
    d, a, v = settings.detection, settings.anonymization, settings.verification
    name = (
        f"{a.method}/{a.target} pad {a.padding}: conf {d.confidence} @{d.image_size}"
        f"{' flip' if d.flip else ''}; verify {v.confidence}{' flip' if v.flip else ''}"
    )
    if v.remediation_rounds != VerificationSettings().remediation_rounds:
        name += f" rem {v.remediation_rounds}"
    if options["faces"]:
        name += f" +faces {options['face_conf']}@{options['face_size']}"
    return name


def build_recipe(options: dict[str, Any], detectors: Detectors, threads: int | None) -> Any:
    settings = recipe_settings(options)
    finder = None
    if options["faces"] and not hasattr(settings.verification, "faces"):
        from airflow_privacy.core.faces import CenterFace

        finder = CenterFace(
            confidence=options["face_conf"], input_size=options["face_size"], threads=threads
        )
    return PipelineRecipe(recipe_name(options, settings), settings, detectors, finder)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = RunSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument("--name", default="", help="row label for the main recipe")
    p.add_argument("--method", choices=["blur", "pixelate", "fill"],
                   default=defaults.anonymization.method)
    p.add_argument("--target", choices=["person", "head"], default=defaults.anonymization.target)
    p.add_argument("--conf", type=float, default=defaults.detection.confidence)
    p.add_argument("--verify-conf", type=float, default=None,
                   help=f"default: min({defaults.verification.confidence}, --conf)")
    p.add_argument("--image-size", type=int, default=defaults.detection.image_size)
    p.add_argument("--flip", action="store_true", default=defaults.detection.flip)
    p.add_argument("--no-verify-flip", dest="verify_flip", action="store_false",
                   default=defaults.verification.flip)
    p.add_argument("--padding", type=float, default=defaults.anonymization.padding)
    p.add_argument("--crowd-gap", type=RECIPE_KEYS["crowd_gap"],
                   default=defaults.anonymization.crowd_gap,
                   help="join side-by-side people into one region (none: off)")
    p.add_argument("--remediation-rounds", type=int,
                   default=defaults.verification.remediation_rounds)
    v = defaults.verification
    p.add_argument("--faces", action=argparse.BooleanOptionalAction,
                   default=getattr(v, "faces", False),
                   help="verify with the CenterFace face finder too")
    p.add_argument("--face-conf", type=float, default=getattr(v, "face_confidence", 0.5))
    p.add_argument("--face-size", type=int, default=getattr(v, "face_input_size", 640))
    p.add_argument("--seed-baseline", action="store_true", help="add the seed recipe's row")
    p.add_argument("--no-main", action="store_true", help="skip the flags' own recipe row")
    p.add_argument("--also", action="append", default=[], metavar="KEY=VALUE,...",
                   help="another recipe: the flags with these overrides (repeatable); keys: "
                   + ", ".join(RECIPE_KEYS))
    p.add_argument("--threads", type=int, default=None, help="torch/onnxruntime CPU threads")
    p.add_argument("--failures", type=int, default=0,
                   help="print up to N missed persons per recipe")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    samples = load_dataset(args.dataset, args.limit)
    detectors = Detectors()
    measurer = detectors.get(DetectionSettings())  # the judge: default model, 640 px
    recipes: list[Any] = []
    if args.seed_baseline:
        recipes.append(SeedRecipe(detectors))
    if not args.no_main:
        recipes.append(build_recipe(recipe_options(args), detectors, args.threads))
    for extra in args.also:
        recipes.append(build_recipe(recipe_options(args, extra), detectors, args.threads))
    rows: list[tuple[str, Summary]] = []
    report: dict[str, Any] = {
        "dataset": str(args.dataset), "images": len(samples), "code_sha256": code_digest(),
        "measure": {"max_detail": MAX_DETAIL, "match_iou": MATCH_IOU,
                    "redetect_confidence": MEASURE_CONFIDENCE, "enlarge": ENLARGE,
                    "change_levels": CHANGE_LEVELS, "withheld_rule": "excluded from recall"},
        "recipes": [],
    }
    for recipe in recipes:
        summary, people, images = evaluate(recipe, samples, measurer)
        rows.append((recipe.name, summary))
        report["recipes"].append({
            "name": recipe.name, "recipe": recipe.describe(), "summary": summary.to_dict(),
            "images": images, "persons": people,
        })
        missed = [p for p in people if not p["withheld"] and not p["anonymized"]]
        for person in sorted(missed, key=lambda p: -p["height"])[: args.failures]:
            print(f"  missed {person}", file=sys.stderr)
    print(markdown_table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
