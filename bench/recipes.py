"""What the quality benchmark measures: the product's chain, and the seed it is compared with.

A recipe turns an image's bytes into :class:`Anonymized`: the input and the
published output, both decoded in displayed orientation with the product's
own decoder, so the pixel measures compare like with like. The settings a
recipe runs come from the command line (``--conf 0.1``) and from ``--also``
overrides (``"conf=0.1,image_size=960"``), one recipe per setting.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from airflow_privacy.core.geometry import Box, to_pixels
from airflow_privacy.core.images import DEFAULT_MAX_PIXELS, decode_image, encode_image
from airflow_privacy.core.settings import (
    DEFAULT_MODEL,
    AnonymizationSettings,
    DetectionSettings,
    RunSettings,
    VerificationSettings,
)


@dataclass
class Anonymized:
    """One image as a recipe left it; ``output`` is None when nothing is published."""

    original: np.ndarray
    output: np.ndarray | None
    status: str
    regions: list[Box]
    seconds: float
    origins: list[str] = field(default_factory=list)  # why each region was anonymized
    record: dict[str, Any] = field(default_factory=dict)  # the manifest record, if any

    @property
    def withheld(self) -> bool:
        return self.output is None


def decode_pixels(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """BGR pixels in displayed orientation, decoded as the product decodes.

    Input and output go through the same decoder so that EXIF orientation can
    never make an untouched pixel look changed.
    """
    return decode_image(data, max_pixels=max_pixels).pixels


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

    def __init__(self, name: str, settings: RunSettings, detectors: Detectors) -> None:
        from airflow_privacy.core.pipeline import Pipeline

        self.name = name
        self.settings = settings.validate()
        self.pipeline = Pipeline(self.settings, detector=detectors.get(settings.detection))

    def describe(self) -> dict[str, Any]:
        finder = self.pipeline.face_finder
        faces = finder.describe() if finder is not None else None
        return {"kind": "pipeline", "settings": self.settings.to_dict(), "face_finder": faces}

    def anonymize_for_bench(self, key: str, data: bytes) -> Anonymized:
        clock = time.perf_counter()
        outcome = self.pipeline.process(key, data)
        seconds = time.perf_counter() - clock
        limit = self.settings.max_pixels
        original = decode_pixels(data, limit)
        published = outcome.status == "verified" and outcome.output is not None
        records = outcome.record.get("regions") or []
        return Anonymized(
            original, decode_pixels(outcome.output, limit) if published else None, outcome.status,
            [tuple(r["box"]) for r in records], seconds,  # type: ignore[misc]
            [str(r.get("origin")) for r in records], outcome.record,
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
        original = decode_pixels(data)
        people = self.detector.detect(original, confidence=0.25, flip=False)
        out = original.copy()
        height, width = out.shape[:2]
        regions = []
        for person in people:
            x1, y1, x2, y2 = to_pixels(person.box, width, height)
            if x2 > x1 and y2 > y1:
                out[y1:y2, x1:x2] = cv2.GaussianBlur(out[y1:y2, x1:x2], (51, 51), 0)
                regions.append(person.box)
        output = decode_pixels(encode_image(out, Path(key).suffix or ".jpg"))
        return Anonymized(
            original, output, "published", regions, time.perf_counter() - clock,
            ["person"] * len(regions),
        )


# --- settings from the command line -----------------------------------------------------------


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


RECIPE_KEYS: dict[str, Callable[[str], Any]] = {
    "name": str, "method": str, "target": str, "conf": float, "verify_conf": float,
    "image_size": int, "flip": _flag, "verify_flip": _flag, "padding": float, "faces": _flag,
    "face_conf": float, "face_size": int, "remediation_rounds": int,
    "crowd_gap": lambda v: None if v.lower() in ("none", "off", "") else float(v),
    "confirm": _flag, "candidate_conf": float,
}


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The flags behind :data:`RECIPE_KEYS`, defaulting to the product's own settings."""
    defaults = RunSettings()
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
                   default=v.faces,
                   help="verify with the CenterFace face finder too")
    p.add_argument("--face-conf", type=float, default=v.face_confidence)
    p.add_argument("--face-size", type=int, default=v.face_input_size)
    p.add_argument("--confirm", action=argparse.BooleanOptionalAction,
                   default=defaults.confirmation.enabled,
                   help="confirm weak person candidates before changing pixels")
    p.add_argument("--candidate-conf", type=float, default=None,
                   help="lowest candidate confidence (default: the product's, capped by --conf)")


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
    """Run settings for ``options``; verification is never laxer than detection."""
    base = VerificationSettings()
    verify_conf = options["verify_conf"]
    if verify_conf is None:
        verify_conf = min(base.confidence, options["conf"])
    verification: dict[str, Any] = {
        "confidence": verify_conf, "flip": options["verify_flip"] or options["flip"],
        "remediation_rounds": options["remediation_rounds"],
        # capped by detection confidence, as the product's own overrides do
        "covered_max_confidence": min(base.covered_max_confidence, options["conf"]),
        # the pipeline builds its own face finder from these
        "faces": options["faces"], "face_confidence": options["face_conf"],
        "face_input_size": options["face_size"],
    }
    confirmation = RunSettings().confirmation  # candidates never start above detection's
    candidate = options["candidate_conf"] or confirmation.candidate_confidence
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
        confirmation=replace(confirmation, enabled=options["confirm"],
                             candidate_confidence=min(candidate, options["conf"])),
    ).validate()


def recipe_name(options: dict[str, Any], settings: RunSettings) -> str:
    """The row label: ``--name``, or the settings that differ between rows."""
    if options["name"]:
        return str(options["name"])
    d, a, v = settings.detection, settings.anonymization, settings.verification
    name = (
        f"{a.method}/{a.target} pad {a.padding}: conf {d.confidence} @{d.image_size}"
        f"{' flip' if d.flip else ''}; verify {v.confidence}{' flip' if v.flip else ''}"
    )
    if v.remediation_rounds != VerificationSettings().remediation_rounds:
        name += f" rem {v.remediation_rounds}"
    if not settings.confirmation.enabled:
        name += " no-confirm"
    if options["faces"]:
        name += f" +faces {options['face_conf']}@{options['face_size']}"
    return name


def build_recipe(
    options: dict[str, Any], detectors: Detectors, threads: int | None
) -> PipelineRecipe:
    """The product's chain with ``options``' settings (its own face finder among them)."""
    settings = recipe_settings(options)
    return PipelineRecipe(recipe_name(options, settings), settings, detectors)
