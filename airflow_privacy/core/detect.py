"""Finding people: the YOLO11 model wrapped for recall-oriented person detection.

One :class:`PersonDetector` serves both the detection stage and the
verification re-detection (with stricter settings), so the two can never use
different pre-processing by accident. Ultralytics is imported lazily: Airflow
imports DAG files on every parse and must not pay for torch there.

The backend follows the model path: ``.pt`` runs in PyTorch, ``.onnx`` in
ONNX Runtime, ``*_openvino_model/`` in OpenVINO, all through the same
ultralytics pre- and post-processing (exports are made with dynamic shapes, so
they letterbox exactly like the ``.pt``). Each runtime is tuned to the CPUs
this process may use (:func:`cpu_budget`): their defaults size thread pools by
the host's cores and spin-wait between operators, which on a 2-CPU worker made
ONNX Runtime about 4x slower than tuned (333 vs 86 ms per 640 px image).

On CPUs the budget is split into *lanes* (:func:`default_lanes`): independent
model instances of fewer threads each, so that two images can be in the
network at once. A nano model does not keep two cores busy with intra-op
threads alone (its layers are small and each waits on the slowest thread);
measured on 2 CPUs, one ONNX Runtime session of 2 threads runs a 640x480 pass
in 41.8 ms, two sessions of one thread side by side in 38.7 ms per pass, and
ultralytics' pre- and post-processing, which threads do not speed up, then
overlaps too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from airflow_privacy.core.geometry import Box, clip_box
from airflow_privacy.core.geometry import non_max_suppression as merge_duplicates
from airflow_privacy.core.models import (  # configure_ultralytics: re-exported for callers
    configure_ultralytics,
    digest_path,
    read_provenance,
    resolve_model,
    undo_pil_patch,
)

log = logging.getLogger(__name__)

FACE_KEYPOINTS = slice(0, 5)  # COCO: nose, left eye, right eye, left ear, right ear
# COCO keypoint order with left and right swapped: what a mirrored image's keypoints mean.
FLIP_ORDER = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
# Plain passes remembered for reuse (see PersonDetector.detect): a few images in flight.
MEMO_ENTRIES = 8
MAX_DETECTIONS = 300  # ultralytics' max_det: a pass that hit it may have dropped boxes


@dataclass
class PersonDetection:
    box: Box
    confidence: float
    head_box: Box | None = None  # None: no face keypoint visible (or not a pose model)
    keypoints: np.ndarray | None = field(default=None, repr=False)

    def to_record(self) -> dict[str, Any]:
        return {
            "box": [round(v, 1) for v in self.box],
            "confidence": round(self.confidence, 4),
            "head_box": [round(v, 1) for v in self.head_box] if self.head_box else None,
        }


model_digest = digest_path  # kept for callers that import it from here


def cpu_budget() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota.

    ``os.cpu_count()`` is the host's count; a container or an Airflow worker
    pinned to 2 of 64 cores would otherwise start 64 inference threads.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


def backend_of(path: Path) -> str:
    """``pytorch``, ``onnx``, ``openvino`` (or ``other``, left to ultralytics) by the model path."""
    if path.suffix == ".pt":
        return "pytorch"
    if path.suffix == ".onnx":
        return "onnx"
    if path.is_dir() and (path.name.endswith("_openvino_model") or any(path.glob("*.xml"))):
        return "openvino"
    return "other"


BACKENDS = ("pytorch", "onnx", "openvino")
MAX_LANES = 2  # model instances per detector on a CPU; the batch driver runs 2 images at once


def default_lanes(backend: str, device: str, budget: int) -> int:
    """How many model instances share ``budget`` CPUs (see the module docstring).

    Only the exported runtimes get more than one: their sessions are sized per
    instance, while PyTorch's intra-op threads are one setting for the whole
    process; a GPU runs one call at a time anyway.
    """
    if str(device) != "cpu" or backend not in ("onnx", "openvino"):
        return 1
    return max(1, min(MAX_LANES, budget))



def runtime_model(weights: Path, backend: str | None) -> Path:
    """The file that runs ``weights`` on ``backend``: the pinned ``.pt``'s checked export.

    ``weights`` was already checked (:func:`resolve_model`). A known ``.pt``
    on another backend runs as its export, made offline from those checked
    weights and loaded only while its provenance record matches
    (:func:`~airflow_privacy.core.models.ensure_export`), so the settings
    keep naming the weights and only the runtime changes. Anything else (an
    explicit export, custom weights, which cannot be exported under a pin)
    runs on the backend its path implies.
    """
    if backend is None or backend == backend_of(weights):
        return weights
    if backend not in BACKENDS:
        from airflow_privacy.core.models import ModelError

        raise ModelError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    from airflow_privacy.core.models import KNOWN_MODELS, ensure_export

    known = KNOWN_MODELS.get(weights.name)
    if weights.suffix != ".pt" or known is None or backend == "pytorch":
        log.info("%s runs on %s: only the pinned .pt models have exports",
                 weights.name, backend_of(weights))
        return weights
    return ensure_export(weights.name, backend, weights.parent)


def head_box(
    keypoints: np.ndarray, person: Box, min_confidence: float, width: int, height: int
) -> Box | None:
    """A box around the head from the face keypoints, or None when none is visible.

    The head's width is estimated from what is visible: 1.3x the ear-to-ear
    distance, else 2.5x the eye-to-eye distance (eyes sit about 0.4 of a head
    apart), else 2.5x the spread of the visible face keypoints; never less
    than a quarter of the person's width, or half of it when only one keypoint
    is visible (a standing person's shoulders are about two heads wide). The
    box extends further up than down: hair and forehead lie above the eyes.
    """
    face = keypoints[FACE_KEYPOINTS]
    seen = face[:, 2] >= min_confidence
    if not seen.any():
        return None
    visible = face[seen][:, :2]
    cx, cy = visible.mean(axis=0)
    person_width = person[2] - person[0]
    if seen.sum() == 1:
        side = 0.5 * person_width
    else:
        estimates = [2.5 * float(np.ptp(visible, axis=0).max())]
        if seen[3] and seen[4]:
            estimates.append(1.3 * float(np.linalg.norm(face[3, :2] - face[4, :2])))
        if seen[1] and seen[2]:
            estimates.append(2.5 * float(np.linalg.norm(face[1, :2] - face[2, :2])))
        side = max(0.25 * person_width, min(estimates))
    side = max(side, 8.0)
    return clip_box(
        (cx - side / 2, cy - 0.7 * side, cx + side / 2, cy + 0.6 * side), width, height
    )


class PersonDetector:
    """People (and their heads) on BGR images, with optional flip test-time augmentation."""

    def __init__(
        self,
        model: str,
        *,
        model_sha256: str | None = None,
        classes: tuple[int, ...] = (0,),
        image_size: int = 640,
        keypoint_confidence: float = 0.5,
        merge_iou: float = 0.6,
        device: str = "cpu",
        threads: int | None = None,
        backend: str | None = None,
        lanes: int | None = None,
    ) -> None:
        """``threads``: CPUs for all lanes together (default :func:`cpu_budget`);
        ``lanes``: model instances that run concurrently (default :func:`default_lanes`).
        ``self.threads`` is then each lane's share: what one call may use."""
        self.path = runtime_model(resolve_model(model, model_sha256), backend)
        self.sha256 = model_digest(self.path)
        self.name = self.path.name
        # The weights an export was made from (checked by resolve_model), for the manifest:
        # the same person-finding model whichever runtime runs it.
        provenance = read_provenance(self.path) or {}
        self.source_sha256 = provenance.get("source_sha256", self.sha256)
        self.backend = backend_of(self.path)
        budget = threads or cpu_budget()
        self.lanes = lanes or default_lanes(self.backend, device, budget)
        self.threads = max(1, budget // self.lanes)
        # The predictor keeps per-call state and the runtimes' sessions are not all
        # re-entrant: each lane (a model instance) runs one call at a time, and a call
        # waits for a free lane.
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._count_lock = threading.Lock()
        # Plain passes by (pixels digest, shape, size): a verification of pixels that
        # detection already saw (an untouched image) reuses detection's pass, see detect().
        self._memo: OrderedDict[tuple[str, tuple[int, ...], int],
                                tuple[float, list[PersonDetection]]] = OrderedDict()
        self._memo_lock = threading.Lock()
        self.passes = 0  # model passes run (images through the network), for the benchmarks
        self.reused = 0  # plain passes answered from the memo instead
        self.classes = list(classes)
        self.image_size = image_size
        self.keypoint_confidence = keypoint_confidence
        self.merge_iou = merge_iou
        self.device = device
        configure_ultralytics()
        from ultralytics import YOLO

        undo_pil_patch()

        try:
            models = [YOLO(str(self.path)) for _ in range(self.lanes)]
        except Exception as exc:
            from airflow_privacy.core.models import ModelError

            raise ModelError(f"cannot load model {self.path}: {exc}") from exc
        self._model = models[0]
        # "pose" models give keypoints; a "detect" model needs a pose model beside it for them.
        self.task = str(getattr(self._model, "task", "detect"))
        session = None
        for model in models:
            session = self._tune(model, session)
            self._idle.put(model)

    @contextlib.contextmanager
    def _lane(self) -> Iterator[Any]:
        """A free model instance, held for one call."""
        model = self._idle.get()
        try:
            yield model
        finally:
            self._idle.put(model)

    def _count(self, passes: int) -> None:
        with self._count_lock:
            self.passes += passes

    def _tune(self, model: Any, session: Any = None) -> Any:
        """Size the runtime's threads to :func:`cpu_budget` and keep it at full precision.

        Ultralytics builds the runtime session on the first prediction, with
        the runtime's defaults; a warm-up call on a blank image creates it (and
        pays the first-call costs once, here), then the session is rebuilt
        with our options. The lanes share one ONNX Runtime session
        (``session``, returned for the next lane): its ``run`` is thread-safe,
        and one copy of the weights is enough. OpenVINO is pinned to f32: on
        CPUs with AMX its default is bf16, which moved boxes and flipped 2 of
        213 COCO people across the 0.25 threshold compared with the ``.pt``.
        """
        import torch

        if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > self.threads:
            torch.set_num_threads(self.threads)  # also pre/post-processing of the exports
        self._run(model, [np.zeros((64, 64, 3), np.uint8)], 0.5)
        runtime = getattr(getattr(model.predictor, "model", None), "backend", None)
        try:
            on_cpu = str(self.device) == "cpu"
            if self.backend == "onnx" and on_cpu and hasattr(runtime, "session"):
                session = runtime.session = session or self._onnx_session()
            elif self.backend == "openvino" and on_cpu and hasattr(runtime, "ov_compiled_model"):
                runtime.ov_compiled_model = self._openvino_model()
                runtime.read_model = None  # no per-shape recompiles with other options
        except Exception as exc:  # a changed ultralytics internal: run on its defaults
            log.warning("could not tune the %s runtime, using its defaults: %s", self.backend, exc)
        return session

    def _onnx_session(self) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )

    def _openvino_model(self) -> Any:
        import openvino

        core = openvino.Core()
        xml = self.path if self.path.is_file() else next(self.path.glob("*.xml"))
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "f32",
        }
        return core.compile_model(core.read_model(str(xml)), "CPU", config)

    def _predict(
        self, batch: list[np.ndarray], confidence: float, image_size: int | None = None
    ) -> list[Any]:
        """One ultralytics call on the first free lane."""
        with self._lane() as model:
            return self._run(model, batch, confidence, image_size)

    def _run(
        self, model: Any, batch: list[np.ndarray], confidence: float,
        image_size: int | None = None,
    ) -> list[Any]:
        return model.predict(
            batch,
            conf=confidence,
            classes=self.classes,
            imgsz=image_size or self.image_size,
            device=self.device,
            verbose=False,
        )

    def detect(
        self, pixels: np.ndarray, *, confidence: float, flip: bool, image_size: int | None = None
    ) -> list[PersonDetection]:
        """All people above ``confidence``; with ``flip`` also on the mirrored image.

        ``image_size``: the model's input size for this call (default: the detector's).

        The plain pass is remembered for the last few images: a later call on
        pixels with the same digest, at the same size and a confidence at or
        above the remembered one, takes the remembered people above its
        confidence instead of running the model again (the same network on the
        same pixels gives the same output; ultralytics' greedy NMS keeps a box
        by the higher-scoring boxes alone, so the people above a higher
        threshold are exactly the remembered ones above it). This is what lets
        verification of an output whose pixels are the input's own skip the
        pass that detection already ran on them; the flipped pass still runs.
        """
        size = image_size or self.image_size
        height, width = pixels.shape[:2]
        key = self._memo_key(pixels, size)
        plain = self._recall(key, confidence)
        # Each pass is its own call: a batch of two can differ from two batches of one in the
        # last float bits, so a pass must not depend on whether its twin was remembered.
        if plain is None:
            plain = self._people(self._pass(pixels, confidence, size), width, height, False)
            self._remember(key, confidence, plain)
        found = list(plain)
        if flip:
            mirrored = np.ascontiguousarray(pixels[:, ::-1])
            found += self._people(self._pass(mirrored, confidence, size), width, height, True)
            if found:
                keep = merge_duplicates([d.box for d in found], [d.confidence for d in found],
                                        self.merge_iou)
                found = [found[i] for i in keep]
        found.sort(key=lambda d: -d.confidence)
        return found

    def _pass(self, pixels: np.ndarray, confidence: float, size: int) -> Any:
        """One image through the network, on the first free lane."""
        self._count(1)
        return self._predict([pixels], confidence, size)[0]

    @staticmethod
    def _memo_key(pixels: np.ndarray, size: int) -> tuple[str, tuple[int, ...], int]:
        digest = hashlib.sha256(memoryview(np.ascontiguousarray(pixels)).cast("B")).hexdigest()
        return digest, tuple(pixels.shape), size

    def _recall(
        self, key: tuple[str, tuple[int, ...], int], confidence: float
    ) -> list[PersonDetection] | None:
        """The remembered plain pass's people above ``confidence``, if it covers that threshold.

        Compared as ultralytics compares (a float32 score strictly above a
        float32 threshold), so the subset is the one a fresh pass would return.
        """
        with self._memo_lock:
            entry = self._memo.get(key)
            if entry is None or entry[0] > confidence:
                return None
            self._memo.move_to_end(key)
            self.reused += 1
        threshold = np.float32(confidence)
        return [replace(p) for p in entry[1] if np.float32(p.confidence) > threshold]

    def _remember(
        self, key: tuple[str, tuple[int, ...], int], confidence: float,
        people: list[PersonDetection],
    ) -> None:
        if len(people) >= MAX_DETECTIONS:
            return  # capped: a higher threshold might have kept boxes this pass dropped
        with self._memo_lock:
            known = self._memo.get(key)
            if known is None or confidence < known[0]:
                self._memo[key] = (confidence, [replace(p) for p in people])
            self._memo.move_to_end(key)
            while len(self._memo) > MEMO_ENTRIES:
                self._memo.popitem(last=False)

    def detect_each(
        self, images: list[np.ndarray], *, confidence: float, image_size: int
    ) -> list[list[PersonDetection]]:
        """People on each of ``images`` (e.g. crops to re-score) in one batched call."""
        if not images:
            return []
        results = self._predict(images, confidence, image_size)
        self._count(len(images))
        return [
            sorted(self._people(result, image.shape[1], image.shape[0], False),
                   key=lambda d: -d.confidence)
            for image, result in zip(images, results, strict=True)
        ]

    def _people(
        self, result: Any, width: int, height: int, mirrored: bool
    ) -> list[PersonDetection]:
        """One ultralytics result as detections in the (unmirrored) image's pixels."""
        if result.boxes is not None:
            boxes, scores = result.boxes.xyxy.cpu().numpy(), result.boxes.conf.cpu().numpy()
        else:
            boxes, scores = np.empty((0, 4)), np.empty(0)
        kpts = None
        if getattr(result, "keypoints", None) is not None and result.keypoints.data.numel():
            kpts = result.keypoints.data.cpu().numpy().copy()
        found: list[PersonDetection] = []
        for i, (box, score) in enumerate(zip(boxes, scores, strict=True)):
            x1, y1, x2, y2 = (float(v) for v in box)
            points = kpts[i] if kpts is not None else None
            if mirrored:
                x1, x2 = width - x2, width - x1
                if points is not None:
                    points[:, 0] = width - points[:, 0]
                    points = points[FLIP_ORDER]  # a mirrored left eye is the right eye
            person = clip_box((x1, y1, x2, y2), width, height)
            head = (
                head_box(points, person, self.keypoint_confidence, width, height)
                if points is not None
                else None
            )
            found.append(PersonDetection(person, float(score), head, points))
        return found
