"""Verification's fail paths: what it must refuse, on real images with the real model."""

from dataclasses import replace

import cv2

from airflow_privacy.core.batch import run_batch
from airflow_privacy.core.geometry import to_pixels
from airflow_privacy.core.pipeline import Pipeline
from airflow_privacy.core.settings import RunSettings
from airflow_privacy.storage import open_storage
from tests.conftest import SAMPLES


class SeedGaussianBlur:
    """The seed project's recipe: a fixed 51x51 Gaussian blur on each box."""

    name = "seed-gaussian-51"

    def apply(self, pixels, regions):
        out = pixels.copy()
        height, width = out.shape[:2]
        for box in regions:
            x1, y1, x2, y2 = to_pixels(box, width, height)
            out[y1:y2, x1:x2] = cv2.GaussianBlur(out[y1:y2, x1:x2], (51, 51), 0)
        return out

    def describe(self):
        return {"name": self.name}


class DoNothing(SeedGaussianBlur):
    name = "identity"

    def apply(self, pixels, regions):
        return pixels.copy()


def test_seed_blur_fails_verification_and_nothing_is_published(models, tmp_path, detector):
    source = tmp_path / "src"
    source.mkdir()
    (source / "bus.jpg").write_bytes((SAMPLES / "bus.jpg").read_bytes())
    settings = RunSettings().with_overrides()
    seed = Pipeline(
        RunSettings.from_dict({**settings.to_dict(),
                               "verification": {**settings.to_dict()["verification"],
                                                "remediation_rounds": 0}}),
        method=SeedGaussianBlur(), detector=detector,
    )
    result = run_batch(open_storage(str(source)), open_storage(str(tmp_path / "release")),
                       open_storage(str(tmp_path / "report")), seed)
    (record,) = result.records
    assert record["status"] == "quarantined"
    assert record["verification"]["passed"] is False
    assert any(r["kind"] == "person" and r["confidence"] > 0.25
               for r in record["verification"]["residuals"])
    assert result.summary["published"] == 0
    assert not (tmp_path / "release" / "bus.jpg").exists()
    assert (tmp_path / "report" / "quarantine" / "bus.jpg").exists()


def test_seed_blur_is_not_rescued_without_remediation_nor_with_it(detector):
    """Remediation is bounded and real: without it nothing is re-anonymized; with it the
    weak blur is applied again (fewer residuals) but a large person still shows, so the
    image stays quarantined instead of being published."""
    base = RunSettings()
    outcomes = {}
    for rounds in (0, 2):
        settings = replace(base, verification=replace(base.verification,
                                                      remediation_rounds=rounds))
        pipeline = Pipeline(settings, method=SeedGaussianBlur(), detector=detector)
        outcomes[rounds] = pipeline.process("bus.jpg", (SAMPLES / "bus.jpg").read_bytes())
    without, with_ = outcomes[0].record["verification"], outcomes[2].record["verification"]
    assert outcomes[0].status == "quarantined" and without["remediation_rounds"] == 0
    assert len(without["residuals"]) >= 2
    assert with_["remediation_rounds"] == 2
    assert 1 <= len(with_["residuals"]) < len(without["residuals"])
    assert outcomes[2].status == "quarantined" and outcomes[2].output is not None


def test_planted_unanonymized_person_fails(pipeline):
    image = pipeline.decode((SAMPLES / "zidane.jpg").read_bytes())
    result = pipeline.verifier.verify(image.pixels, image.pixels, [])
    assert not result.passed
    assert len([r for r in result.residuals if r.kind == "person"]) >= 2


def test_region_that_keeps_detail_fails(pipeline):
    image = pipeline.decode((SAMPLES / "bus.jpg").read_bytes())
    detections = pipeline.detect(image)
    regions = [r.box for r in pipeline.plan(image, detections)]
    result = pipeline.verifier.verify(image.pixels, image.pixels, regions)
    assert result.retention_failures == list(range(len(regions)))
    assert any("keeps" in reason for reason in result.reasons())


def test_identity_method_is_quarantined_even_after_remediation(detector):
    p = Pipeline(RunSettings(), method=DoNothing(), detector=detector)
    outcome = p.process("bus.jpg", (SAMPLES / "bus.jpg").read_bytes())
    assert outcome.status == "quarantined"
    assert outcome.record["verification"]["remediation_rounds"] == 2
    assert outcome.record["error"]["code"] == "verification_failed"


def test_uncovered_person_next_to_a_region_fails(pipeline):
    image = pipeline.decode((SAMPLES / "bus.jpg").read_bytes())
    detections = pipeline.detect(image)
    people = [r for r in pipeline.plan(image, detections) if r.origin == "person"]
    kept = people[1:]  # leave the first person untouched (and no crowd region over them)
    out = pipeline.anonymize(image, kept)
    result = pipeline.verifier.verify(image.pixels, out, [r.box for r in kept])
    assert not result.passed
    assert any(r.kind == "person" and r.covered < 0.9 for r in result.residuals)


def _blind_settings(rounds: int) -> RunSettings:
    """Settings under which the pose model sees nobody: only the face verifier can object."""
    base = RunSettings().to_dict()
    base["detection"]["confidence"] = 0.999
    base["confirmation"]["candidate_confidence"] = 0.999
    base["verification"].update(confidence=0.999, covered_max_confidence=0.999,
                                remediation_rounds=rounds)
    return RunSettings.from_dict(base)


def test_planted_face_missed_by_the_pose_model_fails_and_is_not_published(models, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "zidane.jpg").write_bytes((SAMPLES / "zidane.jpg").read_bytes())
    blind = Pipeline(_blind_settings(rounds=0))
    result = run_batch(open_storage(str(source)), open_storage(str(tmp_path / "release")),
                       open_storage(str(tmp_path / "report")), blind)
    (record,) = result.records
    assert record["persons_detected"] == 0
    assert record["status"] == "quarantined"
    assert {r["kind"] for r in record["verification"]["residuals"]} == {"face"}
    assert not (tmp_path / "release" / "zidane.jpg").exists()


def test_face_verifier_drives_remediation(models):
    blind = Pipeline(_blind_settings(rounds=2))
    outcome = blind.process("zidane.jpg", (SAMPLES / "zidane.jpg").read_bytes())
    assert outcome.status == "verified"
    assert {r["origin"] for r in outcome.record["regions"]} == {"remediation-face"}
    assert len(outcome.record["regions"]) >= 2
