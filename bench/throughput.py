"""Throughput benchmark: the project's pipeline against the seed loop and the raw model.

Three variants run side by side on the same images, each in its own
subprocess (so each has a clean peak RSS and its own model load, which is
timed apart from the images):

(a) seed loop: the PyTorch ``.pt`` at conf 0.25, a fixed ``GaussianBlur(51, 51)``
    on each person box, ``cv2.imwrite``, then one more model call on the written
    output (the seed's verification pass);
(b) raw inference: two model passes per image (conf 0.25, then conf 0.1) on
    the backend of (c), through the same tuned :class:`PersonDetector`,
    decoding untimed. Alongside, (b*) replays on the same image exactly the
    model work (c) did for it, read from (c)'s manifest: one detection pass,
    per verification round a pose pass (two images with the flip pass) and a
    face pass. (b*) is (c)'s inference floor; c / b* is the share of the
    pipeline's time that is model work, i.e. what its overhead costs;
(c) the project's pipeline with default settings, as the CLI runs it:
    :func:`airflow_privacy.core.batch.run_batch` over local folders (decode,
    detect, anonymize, encode, verify with remediation, staging, manifest,
    publish).

The images are split into ``--rounds`` chunks and the variants alternate per
chunk (a, c, b, a, c, b, ...), so that load from other processes on a shared
machine falls on all variants alike; compare ratios, not absolute numbers.

``--synthetic N`` adds a set of N images tiled and rescaled from the source
set (generated into a temp dir). ``--rss-scaling 1000,5000`` runs only (c),
once per size, each over one synthetic set of that size in one batch, and
reports peak RSS against image count (it must stay flat: the batch keeps a
bounded window of images in memory).

Usage::

    python bench/throughput.py [--limit N] [--synthetic N] [--backend onnx,pytorch,openvino]
        [--rounds R] [--workers W] [--rss-scaling 1000,5000] [--json PATH]

``--backend onnx,pytorch`` measures (b) and (c) for each backend in the same
run, alternating with the others chunk by chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "coco128-train" / "images"
DEFAULT_JSON = ROOT / "bench" / "results" / "throughput.json"
SEED_MODEL = "yolo11n-pose.pt"
BACKEND_MODELS = {
    "pytorch": "yolo11n-pose.pt",
    "onnx": "yolo11n-pose.onnx",
    "openvino": "yolo11n-pose_openvino_model",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
STAGES = ("decode", "find", "anonymize", "verify")


# --- image sets ------------------------------------------------------------------------------


def source_images(dataset: Path, limit: int | None) -> list[Path]:
    files = sorted(p for p in dataset.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return files[:limit] if limit else files


def synthesize(sources: list[Path], count: int, target: Path, seed: int = 0) -> list[Path]:
    """``count`` new JPEGs from ``sources``: each one rescaled, or four tiled 2x2.

    Sizes stay in the range of the sources (about 0.5x to 1.5x), so the model's
    letterboxed input and the cost per image stay comparable, while no two
    files are identical.
    """
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    target.mkdir(parents=True, exist_ok=True)
    cache: dict[Path, Any] = {}

    def load(path: Path):
        if path not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[path] = cv2.imread(str(path))
        return cache[path]

    written = []
    for index in range(count):
        if rng.random() < 0.5:
            image = load(sources[rng.integers(len(sources))])
            scale = float(rng.uniform(0.5, 1.5))
            size = (max(32, round(image.shape[1] * scale)), max(32, round(image.shape[0] * scale)))
            out = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        else:
            cell_w, cell_h = int(rng.integers(240, 480)), int(rng.integers(180, 360))
            tiles = [
                cv2.resize(load(sources[rng.integers(len(sources))]), (cell_w, cell_h),
                           interpolation=cv2.INTER_AREA)
                for _ in range(4)
            ]
            out = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
        path = target / f"synthetic_{index:06d}.jpg"
        cv2.imwrite(str(path), out, [cv2.IMWRITE_JPEG_QUALITY, 90])
        written.append(path)
    return written


def chunked(files: list[Path], rounds: int, target: Path) -> list[Path]:
    """Split ``files`` into ``rounds`` folders (links, not copies) that each variant runs on."""
    rounds = max(1, min(rounds, len(files)))
    folders = []
    for index in range(rounds):
        folder = target / f"chunk-{index:02d}"
        folder.mkdir(parents=True)
        for path in files[index::rounds]:
            try:
                os.link(path, folder / path.name)
            except OSError:
                shutil.copyfile(path, folder / path.name)
        folders.append(folder)
    return folders


# --- the variants (each runs in a subprocess) ------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def run_seed(folder: Path, scratch: Path) -> dict[str, Any]:
    """(a): the seed loop, as it was before this project."""
    import cv2
    from ultralytics import YOLO

    from airflow_privacy.core.detect import configure_ultralytics
    from airflow_privacy.core.models import resolve_model

    configure_ultralytics()
    started = time.perf_counter()
    model = YOLO(str(resolve_model(SEED_MODEL)))
    files = images_in(folder)
    model(cv2.imread(str(files[0])), conf=0.25, verbose=False)  # first-call costs, untimed
    load_s = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    for path in files:
        image = cv2.imread(str(path))
        result = model(image, conf=0.25, verbose=False)[0]
        for box, cls in zip(result.boxes.xyxy.tolist(), result.boxes.cls.tolist(), strict=True):
            if int(cls) != 0:
                continue
            x1, y1, x2, y2 = (max(0, int(v)) for v in box)
            if x2 > x1 and y2 > y1:
                image[y1:y2, x1:x2] = cv2.GaussianBlur(image[y1:y2, x1:x2], (51, 51), 0)
        out = scratch / path.name
        cv2.imwrite(str(out), image)
        model(cv2.imread(str(out)), conf=0.1, verbose=False)
    return {"images": len(files), "seconds": time.perf_counter() - started, "load_s": load_s,
            "cpu_s": time.process_time() - cpu, "model_passes": 2 * len(files)}


def settings_for(backend: str) -> Any:
    """Default settings, but for the backend that runs the pinned weights."""
    from airflow_privacy.core.settings import RunSettings

    return RunSettings.from_dict({"detection": {"backend": backend}})


def record_model_calls(pipeline: Any) -> dict[str, list[list[Any]]]:
    """Log, per input, every network call the pipeline makes: what (b*) replays.

    The flow is entered per input in a worker thread (``flow.begin``), so the
    input a call belongs to is the thread's current one. A pose call is logged
    as ``["pose", [shapes], confidence, size]`` (crops included, reused plain
    passes not: they ran no network), a face call as ``["face", shape]``.
    """
    import threading

    from airflow_privacy.core import flow

    calls: dict[str, list[list[Any]]] = {}
    current = threading.local()
    begin, detector, faces = flow.begin, pipeline.detector, pipeline.face_finder

    def tracked_begin(pipe: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        current.key = key
        calls[key] = []
        return begin(pipe, key, *args, **kwargs)

    predict = detector._predict

    def tracked_predict(batch: list[Any], confidence: float, image_size: int | None = None):
        calls[current.key].append(["pose", [list(b.shape) for b in batch], confidence,
                                   image_size or detector.image_size])
        return predict(batch, confidence, image_size)

    flow.begin = tracked_begin
    detector._predict = tracked_predict
    if faces is not None:
        run_faces = faces.run

        def tracked_faces(pixels: Any) -> Any:
            calls[current.key].append(["face", list(pixels.shape)])
            return run_faces(pixels)

        faces.run = tracked_faces
    return calls


def run_pipeline(folder: Path, scratch: Path, backend: str, workers: int) -> dict[str, Any]:
    """(c): the CLI's batch over local folders, default settings but for the backend."""
    from airflow_privacy.core.batch import run_batch
    from airflow_privacy.core.pipeline import Pipeline
    from airflow_privacy.storage import open_storage

    started = time.perf_counter()
    pipeline = Pipeline(settings_for(backend)).load()
    load_s = time.perf_counter() - started
    calls = record_model_calls(pipeline)
    started, cpu = time.perf_counter(), time.process_time()
    result = run_batch(
        open_storage(str(folder)), open_storage(str(scratch / "release")),
        open_storage(str(scratch / "report")), pipeline, workers=workers,
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    stages: Counter[str] = Counter()
    rounds: Counter[int] = Counter()
    for record in result.records:
        stages.update(record.get("timings_ms") or {})
        rounds[len((record.get("verification") or {}).get("rounds") or [])] += 1
    pose = sum(len(c[1]) for cs in calls.values() for c in cs if c[0] == "pose")
    return {
        "images": len(result.records), "seconds": seconds, "load_s": load_s, "cpu_s": cpu,
        "stages_ms": {k: round(stages[k], 1) for k in STAGES},
        "statuses": dict(Counter(r["status"] for r in result.records)),
        "untouched": sum(1 for r in result.records if r.get("pixels_unchanged")),
        "verification_rounds": {str(k): v for k, v in sorted(rounds.items())},
        "calls": {Path(k).name: v for k, v in calls.items()},
        "model_passes": pose,
        "face_passes": sum(1 for cs in calls.values() for c in cs if c[0] == "face"),
        "reused_passes": pipeline.detector.reused,
        "backend": pipeline.detector.backend, "model": pipeline.detector.name,
        "threads": pipeline.detector.threads, "lanes": pipeline.detector.lanes,
    }


def replay_input(image: Any, shape: list[int]) -> Any:
    """An array of ``shape`` cut from (or resized from) ``image``: the cost is the shape's."""
    import cv2

    height, width = shape[:2]
    if image.shape[0] >= height and image.shape[1] >= width:
        return image[:height, :width].copy()
    return cv2.resize(image, (width, height))


def run_raw(folder: Path, backend: str, calls_file: Path | None) -> dict[str, Any]:
    """(b) two passes per image; (b*) every network call (c) made on the image, replayed.

    Both run images side by side on as many threads as the detector has lanes
    (model instances), as (c) does, so that c / b* compares like with like;
    decoding and cutting the replay's inputs happen before the clock starts.
    """
    import cv2

    from airflow_privacy.core.pipeline import Pipeline

    started = time.perf_counter()
    pipeline = Pipeline(settings_for(backend)).load()
    detector, faces, v = pipeline.detector, pipeline.face_finder, pipeline.settings.verification
    d = pipeline.settings.detection
    calls = json.loads(calls_file.read_text()) if calls_file else {}
    files = images_in(folder)
    detector.detect(cv2.imread(str(files[0])), confidence=d.confidence, flip=False)
    load_s = time.perf_counter() - started
    images = [cv2.imread(str(path)) for path in files]

    def two_passes(image: Any) -> None:  # real passes, never answered from the memo
        for confidence in (d.confidence, v.confidence):
            detector._pass(image, confidence, detector.image_size)

    replays = [
        [(call, [replay_input(image, shape) for shape in call[1]] if call[0] == "pose"
          else replay_input(image, call[1])) for call in calls[path.name]]
        for path, image in zip(files, images, strict=True) if path.name in calls
    ]

    def replay(calls_of_image: list[tuple[list[Any], Any]]) -> None:
        for call, arrays in calls_of_image:
            if call[0] == "pose":
                detector._predict(arrays, call[2], call[3])
            elif faces is not None:
                faces.run(arrays)

    two, two_cpu = side_by_side(two_passes, images, detector.lanes)
    floor, floor_cpu = side_by_side(replay, replays, detector.lanes)
    replayed = [call for image_calls in replays for call, _ in image_calls]
    return {"images": len(files), "seconds": two, "load_s": load_s, "cpu_s": two_cpu,
            "model_passes": 2 * len(files),
            "floor": {"images": len(replays), "seconds": floor, "cpu_s": floor_cpu,
                      "model_passes": sum(len(c[1]) for c in replayed if c[0] == "pose"),
                      "face_passes": sum(1 for c in replayed if c[0] == "face")},
            "backend": detector.backend, "model": detector.name, "threads": detector.threads,
            "lanes": detector.lanes}


def side_by_side(job: Any, items: list[Any], threads: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``job`` over ``items`` on ``threads`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    clock, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(job, items))
    return time.perf_counter() - clock, time.process_time() - cpu


def variant_main(args: argparse.Namespace) -> int:
    """Entry point of a variant's subprocess: run it, write its JSON, exit."""
    folder, scratch = Path(args.variant_source), Path(args.variant_scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    if args.variant == "seed":
        result = run_seed(folder, scratch)
    elif args.variant == "pipeline":
        result = run_pipeline(folder, scratch, args.model, args.workers)
    else:
        calls = Path(args.variant_rounds) if args.variant_rounds else None
        result = run_raw(folder, args.model, calls)
    result["peak_rss_mb"] = peak_rss_mb()
    Path(args.variant_out).write_text(json.dumps(result))
    return 0


def spawn(variant: str, folder: Path, scratch: Path, args: argparse.Namespace,
          model: str, rounds: Path | None = None) -> dict[str, Any]:
    out = scratch / f"{variant}-{model}.json"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--variant", variant,
        "--variant-source", str(folder), "--variant-scratch", str(scratch / f"{variant}-{model}"),
        "--variant-out", str(out), "--model", model, "--workers", str(args.workers),
    ]
    if rounds is not None:
        command += ["--variant-rounds", str(rounds)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{completed.stderr[-4000:]}")
    return json.loads(out.read_text())


# --- comparing -------------------------------------------------------------------------------


def rate(part: dict[str, Any]) -> float | None:
    return round(part["images"] / part["seconds"], 3) if part["seconds"] > 0 else None


def _total() -> dict[str, Any]:
    return {"images": 0, "seconds": 0.0, "load_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0.0,
            "model_passes": 0}


def _add(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key in ("images", "seconds", "load_s", "cpu_s", "model_passes"):
        total[key] += part[key]
    total["peak_rss_mb"] = max(total["peak_rss_mb"], part["peak_rss_mb"])


def _finish(total: dict[str, Any]) -> dict[str, Any]:
    total["images_per_s"] = rate(total)
    total["cpu_ms_per_image"] = round(1000 * total["cpu_s"] / max(1, total["images"]), 1)
    total["model_passes_per_image"] = round(total["model_passes"] / max(1, total["images"]), 2)
    for key in ("seconds", "load_s", "cpu_s"):
        total[key] = round(total[key], 2)
    return total


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def compare(name: str, files: list[Path], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Per chunk: (a), then per backend (c) and (b); totals per variant and backend."""
    folders = chunked(files, args.rounds, work / name)
    seed = _total()
    backends: dict[str, dict[str, Any]] = {
        backend: {"variants": {v: _total() for v in ("raw", "floor", "pipeline")},
                  "stages": Counter(), "statuses": Counter(), "rounds": Counter(),
                  "face_passes": 0, "reused_passes": 0, "untouched": 0, "info": {}}
        for backend in args.backends
    }
    for index, folder in enumerate(folders):
        scratch = work / f"{name}-run-{index:02d}"
        part = spawn("seed", folder, scratch, args, SEED_MODEL)
        _add(seed, part)
        line = [f"seed {rate(part)}"]
        for backend, acc in backends.items():
            c = spawn("pipeline", folder, scratch, args, backend)
            calls = scratch / f"calls-{backend}.json"
            calls.write_text(json.dumps(c["calls"]))
            b = spawn("raw", folder, scratch, args, backend, calls)
            floor = {**b["floor"], "load_s": 0.0, "peak_rss_mb": b["peak_rss_mb"]}
            for variant, result in (("pipeline", c), ("raw", b), ("floor", floor)):
                _add(acc["variants"][variant], result)
            acc["stages"].update(c["stages_ms"])
            acc["statuses"].update(c["statuses"])
            acc["rounds"].update(c["verification_rounds"])
            for key in ("face_passes", "reused_passes", "untouched"):
                acc[key] += c[key]
            acc["info"] = {k: c[k] for k in ("backend", "model", "threads", "lanes")}
            line.append(f"{backend}: c {rate(c)} b {rate(b)} b* {rate(floor)}")
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"  {name} chunk {index + 1}/{len(folders)} img/s: " + ", ".join(line), flush=True)
    seed = _finish(seed)
    result: dict[str, Any] = {"images": len(files), "seed": seed, "backends": {}}
    for backend, acc in backends.items():
        v = {k: _finish(t) for k, t in acc["variants"].items()}
        stage_sum = sum(acc["stages"].values()) or 1.0
        c, b, floor = v["pipeline"], v["raw"], v["floor"]
        result["backends"][backend] = {
            **acc["info"], "workers": args.workers, "statuses": dict(acc["statuses"]),
            "face_passes_per_image": round(acc["face_passes"] / max(1, len(files)), 2),
            "reused_passes": acc["reused_passes"], "untouched": acc["untouched"],
            "verification_rounds": dict(acc["rounds"]),
            "stage_share": {k: round(acc["stages"][k] / stage_sum, 3) for k in STAGES},
            "variants": v,
            "ratios": {
                "c_over_a": _ratio(c["images_per_s"], seed["images_per_s"]),
                "c_over_b": _ratio(c["images_per_s"], b["images_per_s"]),
                "c_over_b_floor": _ratio(c["images_per_s"], floor["images_per_s"]),
                # the same from CPU time per image: less moved by other processes' load,
                # but blind to idle waits and to how well a variant uses the CPUs
                "cpu_c_over_a": _ratio(seed["cpu_ms_per_image"], c["cpu_ms_per_image"]),
                "cpu_c_over_b": _ratio(b["cpu_ms_per_image"], c["cpu_ms_per_image"]),
                "cpu_c_over_b_floor": _ratio(floor["cpu_ms_per_image"], c["cpu_ms_per_image"]),
            },
        }
    return result


def rss_scaling(sizes: list[int], sources: list[Path], args: argparse.Namespace,
                work: Path) -> list[dict[str, Any]]:
    rows = []
    backend = args.backends[0]
    model = BACKEND_MODELS[backend]
    for size in sizes:
        folder = work / f"rss-{size}"
        synthesize(sources, size, folder, seed=size)
        part = spawn("pipeline", folder, work / f"rss-{size}-run", args, backend)
        rows.append({"images": size, "model": model, "peak_rss_mb": part["peak_rss_mb"],
                     "images_per_s": rate(part), "statuses": part["statuses"]})
        print(f"  rss {size} images: peak {part['peak_rss_mb']} MB, {rate(part)} img/s", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work / f"rss-{size}-run", ignore_errors=True)
    return rows


def print_table(name: str, result: dict[str, Any]) -> None:
    print(f"\n{name}: {result['images']} images")
    print(f"{'variant':34s} {'img/s':>7s} {'CPU ms/img':>10s} {'passes/img':>10s} "
          f"{'peak RSS MB':>12s} {'load s':>7s}")

    def row(label: str, values: dict[str, Any]) -> None:
        print(f"{label:34s} {values['images_per_s'] or 0:7.2f} {values['cpu_ms_per_image']:10.0f} "
              f"{values['model_passes_per_image']:10.2f} {values['peak_rss_mb']:12.0f} "
              f"{values['load_s']:7.1f}")

    row("(a) seed loop (yolo11n-pose.pt)", result["seed"])
    for backend, b in result["backends"].items():
        v = b["variants"]
        row(f"(b) 2 passes, {backend}", v["raw"])
        row(f"(b*) (c)'s model work, {backend}", v["floor"])
        row(f"(c) pipeline, {backend}", v["pipeline"])
    for backend, b in result["backends"].items():
        r = b["ratios"]
        print(f"{backend}: {b['model']}, {b['lanes']} lanes x {b['threads']} threads, "
              f"{b['workers']} workers, "
              f"statuses {b['statuses']}, face passes/img {b['face_passes_per_image']}")
        print(f"  untouched {b['untouched']}, plain passes reused {b['reused_passes']}, "
              f"images by verification rounds {b['verification_rounds']}")
        print(f"  ratios (img/s): c/a {r['c_over_a']}  c/b {r['c_over_b']}  "
              f"c/b* {r['c_over_b_floor']}")
        print(f"  ratios (CPU):   c/a {r['cpu_c_over_a']}  c/b {r['cpu_c_over_b']}  "
              f"c/b* {r['cpu_c_over_b_floor']}")
        print("  (c) stage shares: "
              + ", ".join(f"{k} {share:.0%}" for k, share in b["stage_share"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET,
                        help="folder of source images (default: the shared coco128 images)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N source images")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="also compare on N synthetic images tiled/rescaled from the sources")
    parser.add_argument("--backend", default=None, metavar="NAME[,NAME]",
                        help="backend(s) of (b) and (c), compared in the same run: "
                        f"{', '.join(sorted(BACKEND_MODELS))} (default: the default settings')")
    parser.add_argument("--rounds", type=int, default=4,
                        help="chunks the variants alternate over (default: 4)")
    parser.add_argument("--workers", type=int, default=None,
                        help="run_batch workers for (c) (default: run_batch's default)")
    parser.add_argument("--rss-scaling", default=None, metavar="N,N",
                        help="only (c): peak RSS of one batch per synthetic set size")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--variant", choices=["seed", "pipeline", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--variant-source", help=argparse.SUPPRESS)
    parser.add_argument("--variant-scratch", help=argparse.SUPPRESS)
    parser.add_argument("--variant-out", help=argparse.SUPPRESS)
    parser.add_argument("--variant-rounds", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        return variant_main(args)

    from airflow_privacy.core.batch import DEFAULT_WORKERS
    from airflow_privacy.core.detect import cpu_budget, runtime_model
    from airflow_privacy.core.models import resolve_model
    from airflow_privacy.core.settings import RunSettings

    args.workers = args.workers or DEFAULT_WORKERS
    if args.backend:
        args.backends = [b.strip() for b in args.backend.split(",") if b.strip()]
        unknown = set(args.backends) - set(BACKEND_MODELS)
        if unknown:
            parser.error(f"unknown backend(s) {sorted(unknown)}; expected {sorted(BACKEND_MODELS)}")
    else:
        args.backends = [RunSettings().detection.backend]
    for backend in args.backends:  # fetched, checked, exported once here, not in a variant
        runtime_model(resolve_model(SEED_MODEL), backend)
    sources = source_images(args.dataset, args.limit)
    output: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "cpu_budget": cpu_budget(),
                    "load_avg_start": os.getloadavg()},
        "backends": args.backends, "workers": args.workers, "rounds": args.rounds,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        work = Path(tmp)
        if args.rss_scaling:
            sizes = [int(s) for s in args.rss_scaling.split(",") if s.strip()]
            output["rss_scaling"] = rss_scaling(sizes, sources, args, work)
        else:
            sets = {"coco": sources}
            if args.synthetic:
                sets["synthetic"] = synthesize(sources, args.synthetic, work / "synthetic-src")
            output["sets"] = {}
            for name, files in sets.items():
                print(f"{name}: {len(files)} images, {args.rounds} rounds", flush=True)
                output["sets"][name] = compare(name, files, args, work)
                print_table(name, output["sets"][name])
    output["machine"]["load_avg_end"] = os.getloadavg()
    output["wall_s"] = round(time.perf_counter() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(output, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {args.json} ({output['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
