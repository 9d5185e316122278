"""The gate on real data: the CLI on 16 COCO images, with and without people."""

import json
import shutil

import cv2
import numpy as np
import pytest

from airflow_privacy.cli import main
from bench.quality import person_anonymized, read_labels
from tests.conftest import COCO

pytestmark = pytest.mark.skipif(not COCO.is_dir(), reason="../shared/datasets not present")


def _slice(count_with: int = 8, count_without: int = 8) -> list[str]:
    with_people, without = [], []
    for image in sorted((COCO / "images").glob("*.jpg")):
        label = COCO / "labels" / f"{image.stem}.txt"
        has_person = label.exists() and any(
            line.split()[0] == "0" for line in label.read_text().splitlines() if line.strip()
        )
        (with_people if has_person else without).append(image.name)
    return with_people[:count_with] + without[:count_without]


def _read(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def test_cli_on_coco_slice(pipeline, tmp_path):
    names = _slice()
    assert len(names) == 16
    source = tmp_path / "src"
    source.mkdir()
    for name in names:
        shutil.copy(COCO / "images" / name, source / name)
    release, report = tmp_path / "release", tmp_path / "report"

    code = main(["run", str(source), str(release), "--report", str(report), "-q"])

    records = [json.loads(line) for line in (report / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in records) == sorted(names)
    published = {r["source"] for r in records if (release / r["output_key"]).exists()}
    assert code == (0 if len(published) == 16 else 3)
    large_total = large_done = withheld_people = 0
    for record in records:
        original = _read(source / record["source"])
        height, width = original.shape[:2]
        label = COCO / "labels" / f"{record['source'].rsplit('.', 1)[0]}.txt"
        people = read_labels(label.read_text() if label.exists() else "", width, height)
        if record["source"] not in published:
            assert record["status"] in ("quarantined", "error")
            assert record["error"]["message"], "a withheld image must say why"
            assert (report / "quarantine" / record["source"]).exists()
            withheld_people += len(people)
            continue
        output = _read(release / record["output_key"])
        regions = [r["box"] for r in record["regions"]]
        # Nothing the verifier can still see, at its own settings, on the published bytes.
        check = pipeline.verifier.verify(original, output, regions)
        assert check.passed, (record["source"], check.reasons())
        redetected = [d.box for d in pipeline.detector.detect(output, confidence=0.25, flip=False)]
        for box in people:
            if box[3] - box[1] >= 64:
                large_total += 1
                large_done += person_anonymized(original, output, box, redetected).anonymized
    share = large_done / large_total if large_total else 1.0
    print(f"\nlabelled persons >= 64 px anonymized in published images: "
          f"{large_done}/{large_total} = {share:.1%}; "
          f"persons in withheld images: {withheld_people}")
    assert large_total > 0
