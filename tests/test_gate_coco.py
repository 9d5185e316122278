"""The gate on real data: the CLI on 16 COCO images, 8 with people and 8 without, with floors.

The CLI runs with default settings and the real model; its published outputs
are then judged with the benchmark's own measures (``bench/metrics.py``)
against the COCO labels, independently of what the pipeline says about
itself. Recall floors (people >= 64 px anonymized, nothing still detectable,
no uncovered face) and precision floors (person-free images left alone, low
collateral, few withheld images) must all hold; every number is computed
before any is asserted, so a failure shows them all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from airflow_privacy.cli import main
from airflow_privacy.core.geometry import covered_fraction, region_mask
from airflow_privacy.core.images import decode_image
from bench import metrics
from tests.conftest import COCO

pytestmark = pytest.mark.skipif(not COCO.is_dir(), reason="../shared/datasets not present")

PER_GROUP = 8  # images with people, and as many without: the first ones by name
MIN_LARGE_RECALL = 0.99  # persons >= 64 px anonymized, in published images
# Precision floors at what the offline pose model achieves with confirmation, measured on
# this slice (3/8 altered, 0.7 % and 6.6 % collateral; before confirmation 4/8 and 11.6 %):
# they catch a regression. The release targets (<= 2 % of person-free images altered, <= 5 %
# collateral) are not met by this model; see the README's quality section.
MAX_ALTERED_PERSON_FREE = 3  # of 8
MAX_COLLATERAL_PERSON_FREE = 0.03  # per-image mean
MAX_COLLATERAL_ALL = 0.07  # per-image mean
MAX_WITHHELD = 1  # images
FACE_CONFIDENCE = 0.5
FACE_COVERED = 0.9


def _labels(name: str) -> str:
    label = COCO / "labels" / f"{Path(name).stem}.txt"
    return label.read_text() if label.exists() else ""


def _slice(count: int = PER_GROUP) -> tuple[list[str], list[str]]:
    """The first ``count`` images with a labelled person and the first ``count`` without."""
    with_people, without = [], []
    for image in sorted((COCO / "images").glob("*.jpg")):
        (with_people if metrics.has_person(_labels(image.name)) else without).append(image.name)
    return with_people[:count], without[:count]


def _pixels(path: Path) -> np.ndarray:
    """Displayed-orientation pixels, decoded as the product decodes."""
    return decode_image(path.read_bytes()).pixels


@pytest.fixture(scope="module")
def face_finder() -> Any:
    from airflow_privacy.core.faces import CenterFace

    return CenterFace(confidence=FACE_CONFIDENCE, threads=1)


def test_cli_on_coco_slice(pipeline, detector, face_finder, tmp_path):
    with_people, without = _slice()
    names = with_people + without
    assert len(with_people) == len(without) == PER_GROUP
    source = tmp_path / "src"
    source.mkdir()
    for name in names:
        shutil.copy(COCO / "images" / name, source / name)
    release, report = tmp_path / "release", tmp_path / "report"

    code = main(["run", str(source), str(release), "--report", str(report), "-q"])

    records = [json.loads(line) for line in (report / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in records) == sorted(names)
    published = {r["source"] for r in records if (release / r["output_key"]).exists()}
    assert code == (0 if len(published) == len(names) else 3)

    large_total = large_done = still_detectable = withheld_people = 0
    uncovered_faces: list[str] = []
    altered: list[str] = []
    collateral: dict[str, list[float]] = {"person_free": [], "persons": []}
    for record in records:
        name = record["source"]
        original = _pixels(source / name)
        if name not in published:
            assert record["status"] in ("quarantined", "error")
            assert record["error"]["message"], "a withheld image must say why"
            assert (report / "quarantine" / name).exists()
            withheld_people += len(metrics.read_labels(_labels(name), *original.shape[1::-1]))
            continue
        assert record["status"] == "verified"
        output = _pixels(release / record["output_key"])
        regions = [tuple(r["box"]) for r in record["regions"]]
        # Nothing the verifier can still see, at its own settings, on the published bytes.
        check = pipeline.verifier.verify(original, output, regions)
        assert check.passed, (name, check.reasons())
        redetected = [
            d.box
            for d in detector.detect(output, confidence=metrics.MEASURE_CONFIDENCE, flip=False)
        ]
        measures = metrics.measure_image(original, output, _labels(name), regions, redetected,
                                         record)
        for box, person in measures.checks:
            still_detectable += person.still_detectable
            if box[3] - box[1] >= 64:
                large_total += 1
                large_done += person.anonymized
        mask = region_mask(regions, output.shape[1], output.shape[0])
        uncovered_faces += [
            f"{name}: {[round(v) for v in face]} conf {score:.2f}"
            for face, score in face_finder.detect(output)
            if score >= FACE_CONFIDENCE and covered_fraction(face, mask) < FACE_COVERED
        ]
        group = "person_free" if measures.person_free else "persons"
        collateral[group].append(measures.collateral_share or 0.0)
        if measures.altered:
            altered.append(f"{name} ({measures.collateral_share:.2%})")

    everything = collateral["person_free"] + collateral["persons"]
    numbers = {
        "published": f"{len(published)}/{len(names)}",
        "large anonymized": f"{large_done}/{large_total}",
        "still detectable": still_detectable,
        "uncovered faces": uncovered_faces,
        "person-free altered": f"{len(altered)}/{len(collateral['person_free'])} {altered}",
        "collateral mean person-free": float(np.mean(collateral["person_free"] or [0.0])),
        "collateral mean all": float(np.mean(everything or [0.0])),
        "withheld": f"{len(names) - len(published)} ({withheld_people} persons)",
    }
    print("\n" + "\n".join(f"{key}: {value}" for key, value in numbers.items()))
    failures = []
    if large_total == 0 or large_done < MIN_LARGE_RECALL * large_total:
        failures.append(f"persons >= 64 px anonymized {large_done}/{large_total}")
    if still_detectable:
        failures.append(f"{still_detectable} labelled persons still detectable")
    if uncovered_faces:
        failures.append(f"faces outside anonymized regions: {uncovered_faces}")
    if len(altered) > MAX_ALTERED_PERSON_FREE:
        failures.append(f"person-free images altered: {numbers['person-free altered']}")
    if numbers["collateral mean person-free"] > MAX_COLLATERAL_PERSON_FREE:
        failures.append(
            f"collateral mean on person-free images {numbers['collateral mean person-free']:.2%}"
        )
    if numbers["collateral mean all"] > MAX_COLLATERAL_ALL:
        failures.append(f"collateral mean on all images {numbers['collateral mean all']:.2%}")
    if len(names) - len(published) > MAX_WITHHELD:
        failures.append(f"withheld images: {numbers['withheld']}")
    assert not failures, "; ".join(failures)
