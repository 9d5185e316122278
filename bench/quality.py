"""Quality benchmark: how well people are hidden, at what cost to the rest, and how fast.

Run on a labelled image set (YOLO format, all 80 COCO classes, class 0 =
person), each recipe (``bench/recipes.py``) anonymizes every image the way
the product does (:meth:`Pipeline.process`, i.e. the exact bytes that would
be published) and is then judged against the *labels*, not against its own
detections, so a person the detector never saw counts as a miss. The
measures are defined and tested in ``bench/metrics.py``: recall per height
bucket and still-detectable persons beside the precision measures
(person-free images altered, collateral, labelled objects damaged, false
regions, dismissed candidates, withheld images).

Published-view rule: a quarantined image is never published, so its persons
cannot be exposed by it. They are reported as "withheld persons" and left out
of the recall buckets and of every pixel measure (which would otherwise
reward quarantining); the withheld share is what keeps that rule honest.

Usage::

    python bench/quality.py [--limit N] [--conf X] [--seed-baseline]
        [--also "conf=0.1,image_size=960"] [--json bench/results/quality.json]

Each ``--also`` adds one row to the precision-recall table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_privacy.core.geometry import covered_fraction, region_mask
from airflow_privacy.core.settings import DetectionSettings
from bench import metrics as m
from bench.recipes import (
    RECIPE_KEYS,
    Detectors,
    SeedRecipe,
    add_recipe_arguments,
    build_recipe,
    recipe_options,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "coco128-train"
DEFAULT_JSON = ROOT / "bench" / "results" / "quality.json"
GROUPS = ("person_free", "persons")  # collateral is reported for each and for both


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


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _group() -> dict[str, Any]:
    return {"images": 0, "changed": 0, "outside": 0, "share_sum": 0.0}


@dataclass
class Summary:
    """A recipe's aggregate numbers: counts and sums, so they can be re-aggregated."""

    images: int = 0
    seconds: float = 0.0
    anonymized: dict[str, int] = field(default_factory=lambda: {k: 0 for k, _ in m.BUCKETS})
    persons: dict[str, int] = field(default_factory=lambda: {k: 0 for k, _ in m.BUCKETS})
    still_detectable: int = 0
    not_covered: int = 0  # missed persons whose box the regions cover less than 90 %
    detail_kept: int = 0
    withheld_images: int = 0
    withheld_persons: int = 0
    collateral: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {g: _group() for g in GROUPS}
    )
    person_free_altered: int = 0
    objects_damaged: int = 0
    objects_counted: int = 0
    false_regions: int = 0
    published_regions: int = 0
    dismissed: int = 0
    unchanged_claims_false: int = 0  # record said pixels_unchanged, the pixels disagree
    origins: dict[str, int] = field(default_factory=dict)  # regions by why, all images
    origins_person_free: dict[str, int] = field(default_factory=dict)

    def add(self, measures: m.ImageMeasures, seconds: float, origins: Sequence[str]) -> None:
        """Fold one image's measures in."""
        self.images += 1
        self.seconds += seconds
        self.dismissed += measures.dismissed
        for origin in origins:
            self.origins[origin] = self.origins.get(origin, 0) + 1
            if measures.person_free:
                tally = self.origins_person_free
                tally[origin] = tally.get(origin, 0) + 1
        if not measures.published:
            self.withheld_images += 1
            self.withheld_persons += measures.persons
            return
        for box, check in measures.checks:
            bucket = m.height_bucket(box[3] - box[1])
            self.persons[bucket] += 1
            self.anonymized[bucket] += check.anonymized
            self.still_detectable += check.still_detectable
            self.detail_kept += check.detail >= m.MAX_DETAIL
        group = self.collateral["person_free" if measures.person_free else "persons"]
        group["images"] += 1
        group["changed"] += measures.changed
        group["outside"] += measures.outside
        group["share_sum"] += measures.collateral_share or 0.0
        self.person_free_altered += measures.altered
        self.objects_damaged += measures.objects_damaged
        self.objects_counted += measures.objects_counted
        self.false_regions += measures.false_regions
        self.published_regions += measures.regions
        self.unchanged_claims_false += measures.unchanged_claim_false

    def recall(self, bucket: str | None = None) -> tuple[int, int]:
        if bucket is None:
            return sum(self.anonymized.values()), sum(self.persons.values())
        return self.anonymized[bucket], self.persons[bucket]

    @property
    def published(self) -> int:
        return self.images - self.withheld_images

    def collateral_rates(self, group: str | None = None) -> dict[str, float | None]:
        """``mean`` (per-image share, averaged) and ``pixels`` (summed) for a group or all."""
        parts = [self.collateral[g] for g in ((group,) if group else GROUPS)]
        images = sum(p["images"] for p in parts)
        return {
            "mean": _ratio(sum(p["share_sum"] for p in parts), images),
            "pixels": _ratio(sum(p["changed"] for p in parts), sum(p["outside"] for p in parts)),
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        done, total = self.recall()
        free = self.collateral["person_free"]["images"]
        data.update(
            recall_all=_ratio(done, total),
            recall={k: _ratio(*self.recall(k)) for k, _ in m.BUCKETS},
            collateral_rates={g: self.collateral_rates(g) for g in GROUPS}
            | {"all": self.collateral_rates()},
            person_free_published=free,
            person_free_altered_share=_ratio(self.person_free_altered, free),
            objects_damaged_share=_ratio(self.objects_damaged, self.objects_counted),
            false_regions_per_image=_ratio(self.false_regions, self.published),
            withheld_share=_ratio(self.withheld_images, self.images),
            images_per_s=_ratio(self.images, self.seconds),
        )
        return data


def code_digest() -> str:
    """sha256 over the core's sources: which code a results file was measured with."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "airflow_privacy" / "core").rglob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


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
        height, width = result.original.shape[:2]
        people = m.read_labels(sample.labels, width, height)
        redetected = (
            [p.box for p in measurer.detect(result.output, confidence=m.MEASURE_CONFIDENCE,
                                             flip=False)]
            if people and result.output is not None else []
        )
        measures = m.measure_image(result.original, result.output, sample.labels,
                                   result.regions, redetected, result.record)
        summary.add(measures, result.seconds, result.origins)
        image_records.append({
            "image": sample.name, "status": result.status, "persons": measures.persons,
            "regions": measures.regions, "seconds": round(result.seconds, 3),
            "origins": dict(Counter(result.origins)), "dismissed": measures.dismissed,
            "collateral": None if measures.collateral_share is None
            else round(measures.collateral_share, 4),
            "altered": measures.altered, "false_regions": measures.false_regions,
            "objects_damaged": [measures.objects_damaged, measures.objects_counted],
            "pixels_unchanged": result.record.get("pixels_unchanged"),
        })
        if result.withheld:
            people_records += [
                {"image": sample.name, "box": [round(v, 1) for v in box], "withheld": True,
                 "status": result.status}
                for box in people
            ]
        mask = region_mask(result.regions, width, height)
        for box, check in measures.checks:
            coverage = covered_fraction(box, mask)
            summary.not_covered += (not check.anonymized) and coverage < 0.9
            people_records.append({
                "image": sample.name, "box": [round(v, 1) for v in box], "withheld": False,
                "height": round(box[3] - box[1], 1), "bucket": m.height_bucket(box[3] - box[1]),
                "anonymized": check.anonymized, "detail": round(check.detail, 4),
                "redetection_iou": round(check.redetection_iou, 3),
                "region_coverage": round(coverage, 3),
            })
        if progress and ((index + 1) % 16 == 0 or index + 1 == len(samples)):
            print(f"  {recipe.name}: {index + 1}/{len(samples)}", file=sys.stderr, flush=True)
    return summary, people_records, image_records


def _cell(done: int, total: int) -> str:
    return f"{done / total:.1%} ({done}/{total})" if total else "–"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def _collateral_cell(rates: dict[str, float | None]) -> str:
    return f"{_percent(rates['mean'])} / {_percent(rates['pixels'])}"


def markdown_table(rows: Sequence[tuple[str, Summary]]) -> str:
    """The precision-recall table, one row per recipe."""
    head = ["recipe", *(label for _, label in m.BUCKETS), "all", "still detectable",
            "person-free altered", "collateral no people", "collateral with people",
            "collateral all", "objects damaged", "false regions/img", "dismissed",
            "withheld img", "withheld persons", "images/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows:
        d = s.to_dict()
        _, published = s.recall()
        per_image = d["false_regions_per_image"]
        cells = [
            name,
            *(_cell(*s.recall(k)) for k, _ in m.BUCKETS),
            _cell(*s.recall()),
            f"{s.still_detectable}/{published}",
            _cell(s.person_free_altered, d["person_free_published"]),
            *(_collateral_cell(s.collateral_rates(g)) for g in (*GROUPS, None)),
            _cell(s.objects_damaged, s.objects_counted),
            f"{per_image:.2f} ({s.false_regions})" if per_image is not None else "–",
            str(s.dismissed),
            f"{_percent(d['withheld_share'])} ({s.withheld_images}/{s.images})",
            str(s.withheld_persons),
            f"{d['images_per_s']:.2f}" if d["images_per_s"] else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Anonymized = detail (Laplacian variance, out/in) < {m.MAX_DETAIL:.0%} inside the "
        f"labelled box and no YOLO re-detection at conf {m.MEASURE_CONFIDENCE} with IoU ≥ "
        f"{m.MATCH_IOU}. Buckets by labelled box height. Withheld (quarantined) images are not "
        "published: their persons are counted under 'withheld persons', not in the recall "
        "buckets, and their pixels in no precision measure. Changed pixel = grey value moved by "
        f"> {m.CHANGE_LEVELS}. Collateral = changed pixels outside the {m.ENLARGE}x labelled "
        "person boxes, shown as per-image mean / pixel-summed. Person-free altered = > "
        f"{m.ALTERED_SHARE:.1%} of pixels changed. Object damaged = labelled non-person object "
        f"with > {m.DAMAGED_SHARE:.0%} of its pixels outside person boxes changed. False region "
        f"= anonymized region < {m.FALSE_REGION_OVERLAP:.0%} on labelled persons. Dismissed = "
        "candidates the pipeline judged not a person. images/s = anonymization wall time only.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    add_recipe_arguments(p)
    p.add_argument("--seed-baseline", action="store_true", help="add the seed recipe's row")
    p.add_argument("--no-main", action="store_true", help="skip the flags' own recipe row")
    p.add_argument("--also", action="append", default=[], metavar="KEY=VALUE,...",
                   help="another recipe, one more table row: the flags with these overrides "
                   "(repeatable); keys: " + ", ".join(RECIPE_KEYS))
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
        "measure": {
            "max_detail": m.MAX_DETAIL, "match_iou": m.MATCH_IOU,
            "redetect_confidence": m.MEASURE_CONFIDENCE, "enlarge": m.ENLARGE,
            "change_levels": m.CHANGE_LEVELS, "altered_share": m.ALTERED_SHARE,
            "damaged_share": m.DAMAGED_SHARE, "false_region_overlap": m.FALSE_REGION_OVERLAP,
            "withheld_rule": "excluded from recall and from the pixel measures",
        },
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
