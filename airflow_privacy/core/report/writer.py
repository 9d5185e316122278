"""Writing a run's report and attestation: the latest at the top, every run kept apart.

Whichever task ends a run writes them: the publish task after a release (or
after releasing nothing), the validate task when the quality gate stops the
run, the CLI at the end of its batch. Each run's page and attestation go to
``runs/<run id>/`` and are never overwritten by another run; ``report.html``
and ``attestation.json`` beside the manifest are copies of the latest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.manifest import MANIFEST, SUMMARY, VALIDATION, read_manifest
from airflow_privacy.core.report.attestation import attestation
from airflow_privacy.core.report.render import render_report
from airflow_privacy.core.report.story import plain_summary, run_folder
from airflow_privacy.storage import Storage, StorageError

REPORT = "report.html"
ATTESTATION = "attestation.json"
RUNS = "runs"
_VERSIONED = ("airflow-privacy", "apache-airflow", "ultralytics", "torch", "onnxruntime",
              "opencv-python-headless", "pillow", "pillow-heif", "great-expectations")


def write_report(
    report: Storage,
    records: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    release: Storage | None,
    *,
    run: dict[str, Any] | None = None,
    retention: dict[str, Any] | None = None,
    key: bytes | None = None,
    key_id: str | None = None,
    **options: Any,
) -> str:
    """Write ``report.html`` and ``attestation.json`` (and their per-run copies); the page's URI.

    ``records`` and ``summary`` are what :mod:`~airflow_privacy.core.manifest`
    wrote; ``validation.json`` is read from ``report`` when present. Thumbnails
    come from ``release`` only (``None``: the run ended before publishing).
    ``run`` is the run's identity, ``retention`` what is kept of personal data;
    ``key`` signs the attestation (``key_id`` names where the key lives).
    ``options``: ``max_thumbnails``, ``thumbnail_size``.
    """
    validation = read_validation(report)
    provenance = _provenance(records, summary, retention)
    page = render_report(records, summary, release, validation=validation, run=run,
                         provenance=provenance, **options).encode("utf-8")
    claims = {
        "run": run, "provenance": provenance,
        "release": summary.get("release"), "release_sha256": summary.get("release_sha256"),
        "manifest_sha256": _manifest_sha256(report, summary), "report_sha256": sha256_bytes(page),
        "validation": _gate(validation), "outcome": plain_summary(records, summary)["counts"],
    }
    document = json.dumps(attestation(claims, key, key_id), indent=2, sort_keys=True,
                          default=str).encode("utf-8") + b"\n"
    folder = run_folder(run)
    for prefix in ([f"{RUNS}/{folder}/"] if folder else []) + [""]:
        report.write(prefix + REPORT, page)
        report.write(prefix + ATTESTATION, document)
    return report.uri_of(REPORT)


def write_report_from(report: Storage, release: Storage | None, **options: Any) -> str:
    """:func:`write_report` from the ``manifest.jsonl`` and ``summary.json`` in ``report``.

    For callers that hold locations rather than records, such as the Airflow
    tasks, where the summary is only complete after publication.
    """
    summary = json.loads(report.read_text(SUMMARY)) if report.exists(SUMMARY) else {}
    records = read_manifest(report) if report.exists(MANIFEST) else []
    return write_report(report, records, summary, release, **options)


def read_validation(report: Storage) -> dict[str, Any] | None:
    """``validation.json`` if present; a broken one is reported, not fatal."""
    if not report.exists(VALIDATION):
        return None
    try:
        document = json.loads(report.read_text(VALIDATION))
    except (StorageError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"unreadable": f"{type(exc).__name__}: {exc}"}
    return document if isinstance(document, dict) else {"unreadable": "not a JSON object"}


def _provenance(records: Sequence[dict[str, Any]], summary: dict[str, Any],
                retention: dict[str, Any] | None) -> dict[str, Any]:
    """Versions, model pins, settings and retention: what the run ran with."""
    models: dict[str, Any] = {}
    for record in records:
        for field in ("model", "face_model"):
            value = record.get(field)
            if isinstance(value, dict) and value.get("name"):
                models[str(value["name"])] = value.get("sha256")
    return {
        "versions": {name: _version(name) for name in _VERSIONED},
        "models": dict(sorted(models.items())),
        "settings_key": summary.get("settings_key"),
        "settings": summary.get("settings"),
        "policy": summary.get("policy"),
        "retention": retention,
        "manifest_sha256": summary.get("manifest_sha256"),
        "release_sha256": summary.get("release_sha256"),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _manifest_sha256(report: Storage, summary: dict[str, Any]) -> str | None:
    """The sha256 of the manifest as it is now, which must equal the summary's."""
    if report.exists(MANIFEST):
        return sha256_bytes(report.read(MANIFEST))
    return summary.get("manifest_sha256")


def _gate(validation: dict[str, Any] | None) -> dict[str, Any] | None:
    if validation is None or validation.get("unreadable"):
        return validation
    failed = [str((r.get("expectation_config") or {}).get("type"))
              for r in validation.get("results") or [] if isinstance(r, dict)
              and not r.get("success")]
    return {"success": bool(validation.get("success")), "failed": failed,
            "manifest_sha256": (validation.get("meta") or {}).get("manifest_sha256")}
