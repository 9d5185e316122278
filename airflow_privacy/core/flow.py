"""The per-image flow, written once: load -> decode -> find -> anonymize -> verify.

Each step is a function ``step(pipeline, state)`` that extends one
:class:`ImageState`: its ``record`` (the manifest record, JSON) grows with
every step, and the transient fields (bytes, pixels) are rebuilt from the
source where a step needs them. Two drivers run the same steps:

* the CLI's batch runs them fused, one image at a time (:func:`process`);
* the Airflow stages run them in groups, one task each (:data:`FIND`,
  :data:`ANONYMIZE`, :data:`VERIFY`), saving ``record`` between them
  (:mod:`airflow_privacy.core.stages`).

Whatever one driver checks, the other checks too, because it is this code:
the input is re-read and must be unchanged (sha256) wherever a step needs its
pixels, output-name collisions are refused at :func:`begin`, decode notes are
recorded at :func:`decode`. Boxes are kept at full precision in the record,
so a later stage plans exactly what the fused run plans.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from airflow_privacy.core.detect import PersonDetection
from airflow_privacy.core.images import (
    DecodedImage,
    ImageRejected,
    decode_pixels,
    output_format,
    sha256_bytes,
)
from airflow_privacy.core.regions import Region, remediation_regions
from airflow_privacy.core.status import Status
from airflow_privacy.core.untouched import same_pixels, untouched_copy
from airflow_privacy.core.video.formats import VIDEO, kind_of

if TYPE_CHECKING:
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.core.verify import VerificationResult


@dataclass
class ImageOutcome:
    """What happened to one input: its manifest record and, if any, the output bytes."""

    record: dict[str, Any]
    output: bytes | None = None

    @property
    def status(self) -> str:
        return str(self.record["status"])


@dataclass
class ImageState:
    """One input on its way through the flow: the record, plus what is not kept between stages."""

    record: dict[str, Any]
    data: bytes | None = None
    image: DecodedImage | None = None
    output: bytes | None = None

    @property
    def failed(self) -> bool:
        return self.record["status"] == Status.ERROR

    def outcome(self) -> ImageOutcome:
        return ImageOutcome(self.record, self.output if not self.failed else None)


Step = Callable[["Pipeline", ImageState], None]


def begin(
    pipeline: Pipeline, key: str, output_key: str, *, refused: tuple[str, str] | None = None
) -> ImageState:
    """The record every input starts with; ``refused``: ``(code, message)`` before reading."""
    from airflow_privacy import __version__

    s = pipeline.settings
    record: dict[str, Any] = {
        "source": key, "kind": kind_of(key), "output_key": output_key, "status": None,
        "input_sha256": None, "input_bytes": None, "output_sha256": None,
        "width": None, "height": None, "format": None, "decode_notes": [],
        "detections": [], "persons_detected": 0, "candidates": [], "regions": [],
        "pixels_unchanged": None, "output_format": output_format(output_key),
        "method": pipeline.method.describe(),
        "target": s.anonymization.target, "verification": None,
        "model": None, "face_model": None, "package_version": __version__,
        "settings_key": s.key(), "metadata_stripped": None, "error": None,
        "quarantine": None, "timings_ms": {},
    }
    state = ImageState(record)
    if refused is not None:
        fail(state, *refused)
    return state


def fail(state: ImageState, code: str, message: str) -> None:
    state.record.update(status=Status.ERROR, error={"code": code, "message": message})


def load(state: ImageState, data: bytes) -> None:
    """Attach the input's bytes; a later stage's bytes must be the ones first seen."""
    digest = sha256_bytes(data)
    known = state.record["input_sha256"]
    if known is not None and digest != known:
        raise ImageRejected("source_changed", "the input changed after detection")
    state.data = data
    state.record.update(input_sha256=digest, input_bytes=len(data))


def run(pipeline: Pipeline, state: ImageState, steps: Sequence[Step]) -> ImageState:
    """Run ``steps`` in order, timing each; a rejection ends the flow as an error record."""
    timings = state.record["timings_ms"]
    for step in steps_for(state.record, steps):
        if state.failed:
            break
        clock = time.perf_counter()
        try:
            step(pipeline, state)
        except ImageRejected as exc:
            fail(state, exc.code, exc.message)  # a step that did not finish has no timing
        else:
            timings[step.__name__] = round((time.perf_counter() - clock) * 1000, 1)
    return state


# -- the steps -----------------------------------------------------------------------------------


def decode(pipeline: Pipeline, state: ImageState) -> None:
    if state.data is None:
        raise RuntimeError("decode before load")  # a driver bug, not a bad image
    image = pipeline.decode(state.data)
    state.image = image
    state.record.update(width=image.width, height=image.height, format=image.source_format,
                        decode_notes=list(image.notes))


def find(pipeline: Pipeline, state: ImageState) -> None:
    """Detect candidates down to the candidate threshold and confirm them before any change."""
    image = _image(state)
    d, c = pipeline.settings.detection, pipeline.settings.confirmation
    floor = c.candidate_confidence if c.enabled else d.confidence
    people = pipeline.detector.detect(image.pixels, confidence=floor, flip=d.flip)
    reviewed = pipeline.confirmer.review(image.pixels, people, "detect")
    confirmed = [c.person for c in reviewed if c.confirmed]
    state.record.update(
        **pipeline.identity(),
        detections=[_person_record(p) for p in confirmed],
        persons_detected=len(confirmed),
        candidates=[c.to_record() for c in reviewed],
    )


def anonymize(pipeline: Pipeline, state: ImageState) -> None:
    """Hide the confirmed people; with none, publish the input's own pixels untouched."""
    image, record = _image(state), state.record
    people = [_person(p) for p in record["detections"]]
    regions = pipeline.plan(image, people)
    record["regions"] = [r.to_record() for r in regions]
    copy = None
    if not regions and state.data is not None:
        copy = untouched_copy(state.data, image, _suffix(record["output_key"]))
        if copy is not None and not same_pixels(copy, image, pipeline.settings.max_pixels):
            copy = None  # e.g. an EXIF rotation, which only the EXIF kept: encode normally
    state.output = copy or pipeline.encode(pipeline.anonymize(image, regions), image,
                                           record["output_key"])
    record.update(pixels_unchanged=copy is not None, metadata_stripped=True,
                  output_sha256=sha256_bytes(state.output))


def verify(pipeline: Pipeline, state: ImageState) -> None:
    """Verify the encoded output; remediate what is confirmed uncovered, within bounds."""
    image, record = _image(state), state.record
    check_staged(state)
    settings = pipeline.settings.verification
    regions = [Region.from_record(r) for r in record["regions"]]
    pixels = _decode_output(state.output)
    rounds, history = 0, []
    while True:
        result = pipeline.verifier.verify(image.pixels, pixels, [r.box for r in regions])
        history.append(result.to_record())
        record["candidates"] += [c.to_record() for c in result.reviewed]
        extra = remediation_regions(result.residuals, pipeline.settings.anonymization.padding,
                                    image.width, image.height)
        stale = [regions[i] for i in result.retention_failures]
        if result.passed or rounds >= settings.remediation_rounds or not (extra or stale):
            break
        rounds += 1
        regions += extra
        pixels = pipeline.method.apply(pixels, [r.box for r in extra + stale])
        state.output = pipeline.encode(pixels, image, record["output_key"])
        pixels = _decode_output(state.output)
        record["pixels_unchanged"] = False
    _settle_verification(pipeline, state, regions, result, rounds, history)


def _settle_verification(
    pipeline: Pipeline, state: ImageState, regions: list[Region], result: VerificationResult,
    rounds: int, history: list[dict[str, Any]],
) -> None:
    state.record["regions"] = [r.to_record() for r in regions]
    settle_verdict(state, result.passed, result.reasons(), {
        **result.to_record(), "remediation_rounds": rounds, "rounds": history,
        "settings": verification_settings(pipeline),
    })


def check_staged(state: ImageState) -> None:
    """The output to verify is exactly the one the anonymize step encoded (images and videos)."""
    if state.output is None or sha256_bytes(state.output) != state.record["output_sha256"]:
        raise ImageRejected("staging_changed", "the staged output changed after encoding")


def verification_settings(pipeline: Pipeline) -> dict[str, Any]:
    """What the manifest records of how an output was verified."""
    v = pipeline.settings.verification
    return {"confidence": v.confidence, "flip": v.flip,
            "covered_max_confidence": v.covered_max_confidence,
            "min_coverage": v.min_coverage, "max_retention": v.max_retention,
            "faces": v.faces, "face_confidence": v.face_confidence}


def settle_verdict(
    state: ImageState, passed: bool, reasons: Sequence[str], verification: dict[str, Any]
) -> None:
    """Status, final output digest, verification record and error from the verdict."""
    state.record.update(
        status=Status.VERIFIED if passed else Status.QUARANTINED,
        output_sha256=sha256_bytes(state.output or b""),
        verification=verification,
        error=None if passed else {"code": "verification_failed",
                                   "message": "; ".join(reasons)},
    )


FIND: tuple[Step, ...] = (decode, find)
ANONYMIZE: tuple[Step, ...] = (decode, anonymize)
VERIFY: tuple[Step, ...] = (decode, verify)
ALL: tuple[Step, ...] = (decode, find, anonymize, verify)


def steps_for(record: dict[str, Any], group: Sequence[Step]) -> Sequence[Step]:
    """The one dispatch point: a video's record runs the video steps of the same group.

    Both drivers name image groups (:data:`FIND`, ...); a record whose ``kind``
    (set at :func:`begin` from the input's name) is ``video`` runs
    :mod:`airflow_privacy.core.video.steps` instead, with the same checkpoints.
    """
    if record.get("kind") != VIDEO:
        return group
    from airflow_privacy.core.video.steps import GROUPS

    names = {FIND: "find", ANONYMIZE: "anonymize", VERIFY: "verify", ALL: "all"}
    name = names.get(tuple(group))
    return GROUPS[name] if name is not None else group  # explicit steps run as given


def process(
    pipeline: Pipeline, key: str, data: bytes, output_key: str | None = None
) -> ImageOutcome:
    """Every step on one image in memory: the fused driver."""
    from airflow_privacy.core.naming import output_key as default_name

    state = begin(pipeline, key, output_key or default_name(key))
    load(state, data)
    return run(pipeline, state, ALL).outcome()


# -- helpers -------------------------------------------------------------------------------------


def _image(state: ImageState) -> DecodedImage:
    if state.image is None:
        raise RuntimeError("step before decode")
    return state.image


def _suffix(name: str) -> str:
    from airflow_privacy.core.images import output_suffix

    return output_suffix(name)


def _person_record(person: PersonDetection) -> dict[str, Any]:
    """Full precision: a later stage must plan exactly the regions the fused run plans."""
    return {"box": list(person.box), "confidence": round(person.confidence, 4),
            "head_box": list(person.head_box) if person.head_box is not None else None}


def _person(entry: dict[str, Any]) -> PersonDetection:
    head = entry["head_box"]
    x1, y1, x2, y2 = entry["box"]
    return PersonDetection((x1, y1, x2, y2), entry["confidence"],
                           tuple(head) if head is not None else None)  # type: ignore[arg-type]


def _decode_output(output: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(output, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        pixels = decode_pixels(output)  # HEIC, AVIF: formats OpenCV cannot read
    if pixels is None:
        raise ImageRejected("encode_failed", "the encoded output could not be decoded again")
    return pixels
