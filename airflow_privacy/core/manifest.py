"""The run's auditable record: ``manifest.jsonl`` (one record per input) and ``summary.json``.

The manifest is written once, after verification and before anything is
published, so the publish step (and its ``_SUCCESS`` marker) can pin its sha256.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.status import Status
from airflow_privacy.storage import Storage

MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
VALIDATION = "validation.json"  # the quality gate's result, see core.expectations


def dumps_records(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8")


def loads_records(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def write_manifest(report: Storage, records: Sequence[dict[str, Any]]) -> str:
    """Write the manifest, sorted by source key; returns its sha256."""
    data = dumps_records(sorted(records, key=lambda r: r["source"]))
    report.write(MANIFEST, data)
    return sha256_bytes(data)


def read_manifest(report: Storage) -> list[dict[str, Any]]:
    return loads_records(report.read(MANIFEST))


def summarize(records: Sequence[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Totals over the manifest; ``extra`` adds run-level facts (published, timings...)."""
    by_status: dict[str, int] = {}
    for record in records:
        by_status[record["status"]] = by_status.get(record["status"], 0) + 1
    residual = sum(
        len((r.get("verification") or {}).get("residuals", [])) for r in records
    )
    return {
        "images": len(records),
        "verified": by_status.get(Status.VERIFIED, 0),
        "quarantined": by_status.get(Status.QUARANTINED, 0),
        "errors": by_status.get(Status.ERROR, 0),
        "persons_detected": sum(r.get("persons_detected", 0) for r in records),
        "residual_detections": residual,
        "remediated": sum(
            1 for r in records if (r.get("verification") or {}).get("remediation_rounds", 0) > 0
        ),
        **extra,
    }


def write_summary(report: Storage, summary: dict[str, Any]) -> None:
    report.write_text(SUMMARY, json.dumps(summary, indent=2, sort_keys=True) + "\n")
