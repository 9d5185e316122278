"""One settings object describes a run.

It is what the manifest records and what the idempotency key hashes, so two
runs with equal settings on the same input bytes must produce the same output.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from airflow_privacy.exceptions import SettingsError

Target = Literal["person", "head"]
MethodName = Literal["blur", "pixelate", "fill"]

DEFAULT_MODEL = "yolo11n-pose.pt"  # the pinned weights; DEFAULT_BACKEND says what runs them
# ONNX Runtime: the same people as the .pt (tests/test_backends.py) at 1.27x its speed per
# pass on 2 CPUs (bench/throughput.py); OpenVINO is not a dependency, INT8 moved people.
DEFAULT_BACKEND = "onnx"
DEFAULT_MAX_PIXELS = 50_000_000  # decompression-bomb guard, checked from the header


@dataclass(frozen=True)
class DetectionSettings:
    """How people are found on the input image.

    ``model`` names the weights (pinned by sha256); ``backend`` the runtime that
    runs them: ``onnx`` or ``openvino`` run the pinned ``.pt``'s export, made
    offline from the checked ``.pt`` and recorded with it as its source in the
    manifest. An explicit export path or custom weights run on the backend
    their path implies. ``device`` (``cpu``, ``cuda:0``) reaches the detector
    and the face model; on a GPU use ``backend="pytorch"``, or ``onnx`` with
    the ``[gpu]`` extra (ONNX Runtime's CUDA provider).
    """

    model: str = DEFAULT_MODEL
    model_sha256: str | None = None
    classes: tuple[int, ...] = (0,)
    confidence: float = 0.25  # confident: taken without confirmation (see ConfirmationSettings)
    image_size: int = 640
    flip: bool = False
    merge_iou: float = 0.6
    keypoint_confidence: float = 0.5
    # With a detect-only ``model`` (no keypoints, e.g. the official yolo11n.pt), this pose
    # model supplies the keypoints that confirmation and the head target need.
    keypoint_model: str = DEFAULT_MODEL
    device: str = "cpu"
    backend: str = DEFAULT_BACKEND


@dataclass(frozen=True)
class AnonymizationSettings:
    """What is hidden and how."""

    target: Target = "person"
    method: MethodName = "blur"
    padding: float = 0.1
    crowd_gap: float | None = 0.25  # None: never join neighbours into one region


@dataclass(frozen=True)
class VerificationSettings:
    """How the anonymized output is re-checked before anything is published.

    Defaults are stricter than detection: a lower confidence threshold and a
    horizontally flipped second pass, so that what detection barely missed is
    still caught here. A person re-detected *inside* the anonymized regions
    fails too once its confidence reaches ``covered_max_confidence`` (at most
    the detection threshold): a region the model still reads as a person at
    detection strength was not anonymized, it was only marked.
    """

    confidence: float = 0.1
    flip: bool = True
    # Sizes a re-identifier would try besides detection's own: a preset that detects at
    # 1280 px must not publish a person the model still finds at its native 640.
    image_sizes: tuple[int, ...] = (640,)
    covered_max_confidence: float = 0.25
    min_coverage: float = 0.9
    max_retention: float = 0.25
    remediation_rounds: int = 2
    faces: bool = True
    face_model: str = "centerface.onnx"
    face_confidence: float = 0.5
    face_input_size: int = 640


@dataclass(frozen=True)
class ConfirmationSettings:
    """When a person candidate may change pixels: the confirmation before destruction.

    Detection keeps candidates down to ``candidate_confidence``; only those
    scoring ``confident`` or more are taken as they are, and, at detection,
    those at the detection threshold (``DetectionSettings.confidence``) whose
    box touches the frame's edge (a person cut off by the frame cannot be
    re-scored with context). Every other candidate, and every person
    re-detected during verification below ``confident``, changes pixels only
    with corroborating evidence: a
    confident person on an upscaled crop of it with context (the box grown to
    ``crop_scale`` times its size, shown to the model at ``crop_size`` px), or
    (in verification, where the face model runs anyway) a face inside it. A
    box covering more than ``large_share`` of the frame needs
    ``large_min_keypoints`` visible pose keypoints whatever its score.

    Measured on COCO (bench/quality.py, README): the crop re-score is what
    separates people from look-alikes (food, animals, textures score < 0.1 on
    their crop, small people > 0.4); keypoints do not (a giraffe gets 12) except
    on frame-sized boxes, where a real person shows six or more.
    """

    enabled: bool = True
    candidate_confidence: float = 0.05
    confident: float = 0.5  # taken on its score alone, at detection and in verification
    crop_scale: float = 1.5
    crop_size: int = 320
    crop_confidence: float = 0.4
    large_share: float = 0.3
    large_min_keypoints: int = 6
    face_max_share: float = 0.6  # a "face" filling most of the box is not inside a person


@dataclass(frozen=True)
class VideoSettings:
    """How video inputs are handled (:mod:`airflow_privacy.core.video`).

    ``hold_frames``: a confirmed track's region is kept this many frames before
    its first and after its last detection (the person entering or leaving is
    detected late); gaps inside a track are always filled. ``verify_stride``: 1
    verifies every frame of the encoded output (the default); N checks every
    Nth frame (faster, and the manifest says how many were checked).
    ``keep_audio``: audio is dropped unless asked (voices are personal data).
    ``crf``/``preset``: libx264's quality and speed for re-encoded outputs.
    """

    hold_frames: int = 5
    track_buffer: int = 30  # frames a lost track is kept alive by the tracker
    verify_stride: int = 1
    keep_audio: bool = False
    crf: int = 18
    preset: str = "veryfast"


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "thorough": {
        "detection": {"image_size": 1280, "flip": True},
        "verification": {"covered_max_confidence": 0.1},
    },
}


@dataclass(frozen=True)
class RunSettings:
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    anonymization: AnonymizationSettings = field(default_factory=AnonymizationSettings)
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    confirmation: ConfirmationSettings = field(default_factory=ConfirmationSettings)
    video: VideoSettings = field(default_factory=VideoSettings)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def validate(self) -> RunSettings:
        d, a, v, c = self.detection, self.anonymization, self.verification, self.confirmation
        if d.backend not in ("pytorch", "onnx", "openvino"):
            raise SettingsError(f"unknown backend {d.backend!r}; expected pytorch, onnx, openvino")
        if a.target not in ("person", "head"):
            raise SettingsError(f"unknown target {a.target!r}; expected 'person' or 'head'")
        if a.method not in ("blur", "pixelate", "fill"):
            raise SettingsError(f"unknown method {a.method!r}; expected blur, pixelate or fill")
        if not 0.0 < d.confidence <= 1.0:
            raise SettingsError(f"detection confidence {d.confidence} is not in (0, 1]")
        if not 0.0 < v.confidence <= 1.0:
            raise SettingsError(f"verification confidence {v.confidence} is not in (0, 1]")
        if v.confidence > d.confidence:
            raise SettingsError(
                f"verification confidence {v.confidence} is laxer than detection confidence "
                f"{d.confidence}; verification must be at least as strict as detection"
            )
        if v.covered_max_confidence > d.confidence:
            raise SettingsError(
                f"covered_max_confidence {v.covered_max_confidence} is laxer than detection "
                f"confidence {d.confidence}"
            )
        if d.flip and not v.flip:
            raise SettingsError("detection uses flip TTA, so verification must use it too")
        if not 0.0 < v.min_coverage <= 1.0:
            raise SettingsError(f"min_coverage {v.min_coverage} is not in (0, 1]")
        if a.padding < 0:
            raise SettingsError(f"padding {a.padding} is negative")
        if not 0.0 < v.face_confidence <= 1.0:
            raise SettingsError(f"face confidence {v.face_confidence} is not in (0, 1]")
        if v.remediation_rounds < 0:
            raise SettingsError("remediation_rounds must be >= 0")
        if not 0.0 < c.candidate_confidence <= d.confidence:
            raise SettingsError(
                f"candidate confidence {c.candidate_confidence} is not in (0, detection "
                f"confidence {d.confidence}]"
            )
        if not 0.0 < c.large_share <= 1.0 or not 0.0 < c.crop_confidence <= 1.0:
            raise SettingsError("large_share and crop_confidence must be in (0, 1]")
        if c.large_min_keypoints < 0 or c.crop_size < 32 or c.crop_scale < 1.0:
            raise SettingsError("large_min_keypoints >= 0, crop_size >= 32, crop_scale >= 1")
        vid = self.video
        if vid.verify_stride < 1 or vid.hold_frames < 0 or not 0 <= vid.crf <= 51:
            raise SettingsError("video: verify_stride >= 1, hold_frames >= 0, crf in [0, 51]")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSettings:
        def build(kind: type, values: dict[str, Any] | None) -> Any:
            values = dict(values or {})
            known = {f.name for f in fields(kind)}
            unknown = set(values) - known
            if unknown:
                raise SettingsError(f"unknown {kind.__name__} keys: {sorted(unknown)}")
            for name in ("classes", "image_sizes"):
                if name in values:
                    values[name] = tuple(values[name])
            return kind(**values)

        top = dict(data)
        return cls(
            detection=build(DetectionSettings, top.pop("detection", None)),
            anonymization=build(AnonymizationSettings, top.pop("anonymization", None)),
            verification=build(VerificationSettings, top.pop("verification", None)),
            confirmation=build(ConfirmationSettings, top.pop("confirmation", None)),
            video=build(VideoSettings, top.pop("video", None)),
            **top,
        ).validate()

    @classmethod
    def preset(cls, name: str) -> RunSettings:
        """A named starting point: ``default`` (fast) or ``thorough`` (recall first).

        ``thorough`` runs detection at 1280 px with flip TTA (candidates still
        confirmed before any pixel changes) and verifies at 1280 and at 640 px:
        more small people found for several times the time (bench/quality.py and
        the README give the measured numbers).
        """
        try:
            overrides = PRESETS[name]
        except KeyError:
            raise SettingsError(
                f"unknown preset {name!r}; expected one of {sorted(PRESETS)}"
            ) from None
        return cls.from_dict(overrides)

    def key(self) -> str:
        """Idempotency key: sha256 of the canonical JSON of these settings."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def with_overrides(
        self,
        *,
        target: str | None = None,
        method: str | None = None,
        model: str | None = None,
        confidence: float | None = None,
        verify_confidence: float | None = None,
    ) -> RunSettings:
        """The CLI's and the operators' flat options applied on top of these settings.

        Lowering the detection confidence lowers the verifier's thresholds with
        it where they would otherwise be laxer; an explicitly laxer
        ``verify_confidence`` is still refused by :meth:`validate`.
        """
        det, ano, ver = self.detection, self.anonymization, self.verification
        if model is not None:
            det = replace(det, model=model)
        con = self.confirmation
        if confidence is not None:
            det = replace(det, confidence=confidence)
            con = replace(con, candidate_confidence=min(con.candidate_confidence, confidence))
            ver = replace(
                ver,
                confidence=min(ver.confidence, confidence),
                covered_max_confidence=min(ver.covered_max_confidence, confidence),
            )
        if target is not None:
            ano = replace(ano, target=target)  # type: ignore[arg-type]
        if method is not None:
            ano = replace(ano, method=method)  # type: ignore[arg-type]
        if verify_confidence is not None:
            ver = replace(ver, confidence=verify_confidence)
        return replace(
            self, detection=det, anonymization=ano, verification=ver, confirmation=con
        ).validate()
