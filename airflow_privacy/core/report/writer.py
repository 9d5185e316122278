"""Writing a run's report and attestation: the latest at the top, every run kept apart.

Whichever task ends a run writes them: the publish task after a release (or
after releasing nothing), the validate task when the quality gate stops the
run, the CLI at the end of its batch. Each run's page and attestation go to
``runs/<run id>/`` and are never overwritten by another run; ``report.html``
and ``attestation.json`` beside the manifest are copies of the latest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.manifest import MANIFEST, SUMMARY, VALIDATION
from airflow_privacy.core.report.attestation import attestation
from airflow_privacy.core.report.facts import (
    DEFAULT_MAX_ROWS,
    DEFAULT_MAX_THUMBNAILS,
    ReportFacts,
    collect,
)
from airflow_privacy.core.report.render import check_thumbnail_size, render_facts
from airflow_privacy.core.report.story import plain_summary, run_folder
from airflow_privacy.storage import Storage, StorageError

REPORT = "report.html"
ATTESTATION = "attestation.json"
RUNS = "runs"
_VERSIONED = ("airflow-privacy", "apache-airflow", "ultralytics", "torch", "onnxruntime",
              "opencv-python-headless", "pillow", "pillow-heif", "great-expectations")


def write_report(
    report: Storage,
    records: Iterable[dict[str, Any]],
    summary: dict[str, Any],
    release: Storage | None,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
    **options: Any,
) -> str:
    """Write ``report.html`` and ``attestation.json`` (and their per-run copies); the page's URI.

    ``records`` and ``summary`` are what :mod:`~airflow_privacy.core.manifest`
    wrote (records in any order, held by the caller, as the CLI does); the
    manifest's sha256 is streamed from ``report``. ``options`` are
    :func:`write_facts`'s. ``max_rows`` and ``max_thumbnails`` bound the page
    (:mod:`.facts`).
    """
    check_thumbnail_size(options.get("thumbnail_size", 256))
    facts = collect(records, summary, max_rows=max_rows, max_thumbnails=max_thumbnails)
    return write_facts(report, facts, release, _manifest_sha256(report, summary), **options)


def write_report_from(report: Storage, release: Storage | None, *,
                      max_rows: int = DEFAULT_MAX_ROWS,
                      max_thumbnails: int = DEFAULT_MAX_THUMBNAILS, **options: Any) -> str:
    """:func:`write_report` from the ``manifest.jsonl`` and ``summary.json`` in ``report``.

    For callers that hold locations rather than records, such as the Airflow
    tasks, where the summary is only complete after publication. One streaming
    pass over the manifest's lines gives every count, the rows, the thumbnails'
    records and the manifest's sha256, so a manifest of any size is reported in
    bounded memory.
    """
    check_thumbnail_size(options.get("thumbnail_size", 256))
    summary = json.loads(report.read_text(SUMMARY)) if report.exists(SUMMARY) else {}
    facts = ReportFacts(summary, max_rows=max_rows, max_thumbnails=max_thumbnails)
    manifest_sha256 = summary.get("manifest_sha256")
    if report.exists(MANIFEST):
        for line in report.read_lines(MANIFEST):
            facts.add_line(line)
        manifest_sha256 = facts.manifest_sha256
    return write_facts(report, facts, release, manifest_sha256, **options)


def write_facts(
    report: Storage,
    facts: ReportFacts,
    release: Storage | None,
    manifest_sha256: str | None,
    *,
    run: dict[str, Any] | None = None,
    retention: dict[str, Any] | None = None,
    key: bytes | None = None,
    key_id: str | None = None,
    thumbnail_size: int = 256,
) -> str:
    """Render and store the page and attestation from one pass's facts; the page's URI.

    ``validation.json`` is read from ``report`` when present. Thumbnails come
    from ``release`` only (``None``: the run ended before publishing). ``run`` is
    the run's identity, ``retention`` what is kept of personal data; ``key``
    signs the attestation (``key_id`` names where the key lives).
    ``manifest_sha256`` is the manifest as it is now, which must equal the summary's.
    """
    summary = facts.summary
    validation = read_validation(report)
    provenance = _provenance(facts, retention)
    story = plain_summary(facts)
    page = render_facts(facts, release, validation=validation, run=run, provenance=provenance,
                        thumbnail_size=thumbnail_size, story=story).encode("utf-8")
    claims = {
        "run": run, "provenance": provenance,
        "release": summary.get("release"), "release_sha256": summary.get("release_sha256"),
        "manifest_sha256": manifest_sha256, "report_sha256": sha256_bytes(page),
        "validation": _gate(validation), "outcome": story["counts"],
    }
    document = json.dumps(attestation(claims, key, key_id), indent=2, sort_keys=True,
                          default=str).encode("utf-8") + b"\n"
    folder = run_folder(run)
    for prefix in ([f"{RUNS}/{folder}/"] if folder else []) + [""]:
        report.write(prefix + REPORT, page)
        report.write(prefix + ATTESTATION, document)
    return report.uri_of(REPORT)


def read_validation(report: Storage) -> dict[str, Any] | None:
    """``validation.json`` if present; a broken one is reported, not fatal."""
    if not report.exists(VALIDATION):
        return None
    try:
        document = json.loads(report.read_text(VALIDATION))
    except (StorageError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"unreadable": f"{type(exc).__name__}: {exc}"}
    return document if isinstance(document, dict) else {"unreadable": "not a JSON object"}


def _provenance(facts: ReportFacts, retention: dict[str, Any] | None) -> dict[str, Any]:
    """Versions, model pins, settings and retention: what the run ran with."""
    summary = facts.summary
    models: dict[str, Any] = {}
    for field in ("model", "face_model"):
        for value in facts.models(field):
            if value.get("name"):
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
    """The sha256 of the manifest as it is now, which must equal the summary's; streamed."""
    if not report.exists(MANIFEST):
        return summary.get("manifest_sha256")
    digest = hashlib.sha256()
    for line in report.read_lines(MANIFEST):
        digest.update(line)
    return digest.hexdigest()


def _gate(validation: dict[str, Any] | None) -> dict[str, Any] | None:
    if validation is None or validation.get("unreadable"):
        return validation
    failed = [str((r.get("expectation_config") or {}).get("type"))
              for r in validation.get("results") or [] if isinstance(r, dict)
              and not r.get("success")]
    return {"success": bool(validation.get("success")), "failed": failed,
            "manifest_sha256": (validation.get("meta") or {}).get("manifest_sha256")}
