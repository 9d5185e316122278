"""Control-plane benchmark: listing, sharding, merge, gate, report and publish at scale.

No model runs: the inputs are tiny objects and the records synthetic (shaped like
the pipeline's, ~1 KB of JSON each), so what is measured is the bookkeeping that
grows with the number of images. Each stage runs in its own forked process, so its
peak RSS is its own; wall time is the stage's alone (set-up untimed).

* listing / sharding: ``--keys`` (100,000) objects in a moto_server bucket, listed
  by :class:`~airflow_privacy.storage.objectstore.ObjectStorage` over s3fs (as the
  operators get it from ``ObjectStoragePath``) and cut into shard files in an S3 work prefix
  (``max_shards`` 1,024, Airflow's default ``max_map_length``);
* merge / gate / report: ``--records`` (1,000,000) synthetic records in 1,024
  shard files (local folder), merged into the manifest, validated by the Great
  Expectations gate, and rendered into ``report.html`` from one streaming pass over
  the manifest (the page keeps at most ``max_rows`` per-image rows);
* publish: ``--objects`` (5,000) staged objects copied server-side into a release
  prefix on moto_server, 16 at a time.

Run from the repository root: ``python -m bench.scale`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SHA = "ab" * 32


def record(key: str, i: int) -> dict[str, Any]:
    """A synthetic record: 1 in 50 quarantined, 1 in 10 with a dismissed candidate."""
    bad = i % 50 == 0
    return {
        "source": key, "output_key": key, "status": "quarantined" if bad else "verified",
        "input_sha256": SHA, "input_bytes": 123456, "output_sha256": None if bad else SHA,
        "width": 640, "height": 480, "format": "JPEG", "decode_notes": [],
        "persons_detected": i % 4, "pixels_unchanged": i % 4 == 0,
        "detections": [{"box": [10.5, 20.25, 200.0, 400.0], "confidence": 0.87,
                        "head_box": None}] * (i % 4),
        "candidates": [{"box": [1.0, 2.0, 30.0, 40.0], "confidence": 0.12,
                        "decision": "dismissed", "reason": "below confident level",
                        "stage": "detect", "evidence": {"keypoints": 0}}] * (i % 10 == 0),
        "regions": [{"box": [9.0, 18.0, 210.0, 420.0], "origin": "person"}] * (i % 4),
        "verification": {"passed": not bad, "residuals": [{"kind": "face"}] if bad else [],
                         "remediation_rounds": i % 7 == 0},
        "error": {"code": "verification_failed", "message": "a face"} if bad else None,
        "quarantine": f"quarantine/{key}" if bad else None, "metadata_stripped": True,
        "settings_key": SHA, "package_version": "0.1.0", "timings_ms": {"detect": 12.5},
    }


def measured(name: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``body`` in a forked process: its wall time, peak RSS and result."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def child() -> None:
        start = time.perf_counter()
        result = body()
        wall = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put({"stage": name, "wall_s": round(wall, 2), "peak_rss_mib": round(rss), **result})

    process = context.Process(target=child)
    process.start()
    out = queue.get()
    process.join()
    print(json.dumps(out), flush=True)
    return out


def seed(client: Any, bucket: str, keys: list[str], data: bytes = b"x") -> None:
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=data), keys))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=5_000)
    parser.add_argument("--quick", action="store_true", help="10x smaller everywhere")
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.keys, args.records, args.objects = (
            n // 10 for n in (args.keys, args.records, args.objects))

    from airflow_privacy.core.expectations import validate_manifest
    from airflow_privacy.core.publish import publish
    from airflow_privacy.core.release import ManifestRecords, assemble_manifest
    from airflow_privacy.core.report import write_report_from
    from airflow_privacy.core.shards import (
        PLAN,
        RECORDS,
        plan_shards,
        reference,
        shard_keys,
        shard_path,
        write_entries,
    )
    from airflow_privacy.storage import open_storage
    from tests.s3_server import MotoServer, s3_filesystem

    server = MotoServer()
    server.start()
    client = server.client()
    client.create_bucket(Bucket="scale")
    results = []

    def s3_stores(*prefixes: str) -> list[Any]:
        """Storages on one s3fs filesystem made in the calling process: fsspec's async
        filesystems are not fork-safe, and every measured stage runs in a forked child."""
        filesystem = s3_filesystem(server.endpoint_url)
        return [open_storage(f"s3://scale/{prefix}", filesystem=filesystem)
                for prefix in prefixes]

    try:
        keys = [f"incoming/d{i % 100:02d}/{i:07d}.jpg" for i in range(args.keys)]
        started = time.perf_counter()
        seed(client, "scale", keys)
        print(f"seeded {len(keys)} objects in {time.perf_counter() - started:.0f} s", flush=True)
        # what every forked stage starts with (the bench process, copied): subtract it
        results.append(measured("baseline", lambda: {}))
        results.append(measured("listing", lambda: {
            "keys": sum(1 for _ in s3_stores("incoming")[0].list())}))

        def sharding() -> dict[str, Any]:
            source, s3_work = s3_stores("incoming", "work")
            references = plan_shards(source, s3_work, 16, max_shards=1024)
            return {"shards": len(references), "xcom_bytes": len(json.dumps(references))}

        results.append(measured("sharding", sharding))

        with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
            root = Path(tmp)
            src = root / "src"
            src.mkdir()
            (src / "x.jpg").write_bytes(b"x")
            work = open_storage(str(root / "work"))
            report = open_storage(str(root / "report"))
            names = [f"d{i % 100:02d}/{i:07d}.jpg" for i in range(args.records)]
            # the shard files as listing would write them, then verify's record files
            size = -(-len(names) // 1024)
            names.sort()
            shards = []
            for n, at in enumerate(range(0, len(names), size)):
                whole = {"shard_id": f"{n:05d}", "keys": names[at:at + size]}
                work.write_text(shard_path(whole), json.dumps(whole))
                write_entries(work, RECORDS, whole,
                              [record(k, at + j) for j, k in enumerate(whole["keys"])])
                shards.append(reference(whole))
            work.write_text(PLAN, json.dumps({"shards": shards}))
            del names

            def merge() -> dict[str, Any]:
                records, sha = assemble_manifest(work, report, shards)
                return {"records": len(records), "manifest_sha256": sha[:12]}

            def gate() -> dict[str, Any]:
                out = validate_manifest(ManifestRecords(work, shards), shard_keys(work, shards),
                                        report=report, max_error_rate=0.05)
                return {"success": out.success, "evaluated": out.evaluated}

            results.append(measured("merge", merge))
            results.append(measured("gate", gate))

            def reporting() -> dict[str, Any]:
                """The whole manifest, streamed once: the page stays bounded (max_rows)."""
                write_report_from(report, None)
                page = report.read("report.html")
                return {"records": args.records, "html_mib": round(len(page) / 2**20, 2),
                        "rows": page.count(b'<tr class="record')}

            results.append(measured("report", reporting))

        objects = [f"p/{i:06d}.jpg" for i in range(args.objects)]
        seed(client, "scale", [f"staging/{k}" for k in objects], b"0123456789" * 100)
        digest = hashlib.sha256(b"0123456789" * 100).hexdigest()
        staged = [{"source": k, "output_key": k, "status": "verified", "output_sha256": digest,
                   "error": None} for k in objects]

        def publishing() -> dict[str, Any]:
            staging, release = s3_stores("staging", "release")  # one filesystem: server-side
            start = time.perf_counter()
            out = publish(staged, staging, release, policy="all_or_nothing", manifest_sha256="m")
            return {"published": out["published"],
                    "objects_per_s": round(out["published"] / (time.perf_counter() - start))}

        results.append(measured("publish", publishing))
    finally:
        server.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
