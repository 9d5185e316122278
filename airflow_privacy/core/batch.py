"""A whole batch in one process: what the CLI runs (and the bench measures).

Reads every image below the source root, processes each with the
:class:`~airflow_privacy.core.pipeline.Pipeline`, stages verified outputs,
quarantines the rest with their reasons, writes the manifest, and only then
publishes. A bad file never stops the batch; a storage outage does (it is
retryable, and nothing has been published at that point).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from airflow_privacy.core.images import is_image_name, output_suffix
from airflow_privacy.core.manifest import summarize, write_manifest, write_summary
from airflow_privacy.core.pipeline import STATUS_ERROR, ImageOutcome, Pipeline
from airflow_privacy.core.publish import Policy, publish
from airflow_privacy.storage import Storage, StorageError, UnsafeKeyError

log = logging.getLogger(__name__)

STAGING = ".staging"
QUARANTINE = "quarantine"


@dataclass
class BatchResult:
    summary: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def all_published(self) -> bool:
        return self.summary["published"] == self.summary["images"]


def list_inputs(source: Storage) -> tuple[list[str], list[str]]:
    """Image keys to process, and other keys that are ignored (by suffix)."""
    images, ignored = [], []
    for key in source.list():
        name = PurePosixPath(key).name
        if name.startswith(".") or name == "_SUCCESS":
            ignored.append(key)
        elif is_image_name(key):
            images.append(key)
        else:
            ignored.append(key)
    return images, ignored


def output_key(key: str) -> str:
    """Same relative path and name as the input, unless we cannot write its format (GIF)."""
    path = PurePosixPath(key)
    suffix = output_suffix(key)
    if path.suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff") or suffix == path.suffix.lower():
        return key
    return str(path.with_suffix(suffix))


def process_key(pipeline: Pipeline, source: Storage, key: str) -> ImageOutcome:
    """Read and process one key; rejections become error records, outages propagate."""
    try:
        data = source.read(key)
    except UnsafeKeyError as exc:
        return unsafe_outcome(key, exc)
    return pipeline.process(key, data)


def unsafe_outcome(key: str, exc: UnsafeKeyError) -> ImageOutcome:
    """The error record of a key that cannot be read without leaving the source root.

    Shared with :mod:`airflow_privacy.core.stages` so both paths record it alike.
    """
    record = {"source": key, "status": STATUS_ERROR, "input_sha256": None,
              "error": {"code": "unsafe_path", "message": str(exc)}}
    return ImageOutcome(record)


def settle(
    outcome: ImageOutcome, key: str, source: Storage, staging: Storage, quarantine: Storage
) -> dict[str, Any]:
    """Give an outcome its place: verified output to staging, anything else to quarantine.

    Completes the record with ``output_key`` and ``quarantine``. Shared by the
    fused batch and the Airflow verify stage, so their manifests have one shape.
    """
    record = outcome.record
    record["output_key"] = output_key(key)
    record["quarantine"] = None
    if record["status"] == "verified" and outcome.output is not None:
        staging.write(record["output_key"], outcome.output)
    else:
        record["quarantine"] = _quarantine(quarantine, key, outcome, source)
    return record


def run_batch(
    source: Storage,
    release: Storage,
    report: Storage,
    pipeline: Pipeline,
    *,
    policy: Policy = "publish_passing",
    progress: Callable[[Iterable[str]], Iterable[str]] | None = None,
) -> BatchResult:
    started = time.perf_counter()
    keys, ignored = list_inputs(source)
    staging = report.child(STAGING)
    quarantine = report.child(QUARANTINE)
    records = []
    for key in progress(keys) if progress else keys:
        outcome = process_key(pipeline, source, key)
        record = settle(outcome, key, source, staging, quarantine)
        records.append(record)
        log.info("%s: %s", key, record["status"])
    manifest_sha256 = write_manifest(report, records)
    released = publish(records, staging, release, policy=policy, manifest_sha256=manifest_sha256)
    for record in records:
        if record["status"] == "verified":
            staging.delete(record["output_key"])
    elapsed = time.perf_counter() - started
    summary = summarize(
        records,
        published=released["published"],
        withheld=released["withheld"],
        ignored=len(ignored),
        policy=policy,
        manifest_sha256=manifest_sha256,
        settings=pipeline.settings.to_dict(),
        settings_key=pipeline.settings.key(),
        elapsed_s=round(elapsed, 2),
        images_per_second=round(len(records) / elapsed, 3) if elapsed > 0 else None,
        release=release.uri,
    )
    write_summary(report, summary)
    return BatchResult(summary, records)


def _quarantine(
    quarantine: Storage, key: str, outcome: ImageOutcome, source: Storage
) -> str | None:
    """Keep what failed for review: the failed anonymized output, else the source bytes."""
    data = outcome.output
    if data is None:
        try:
            data = source.read(key)
        except StorageError:
            return None
    quarantine.write(key, data)
    return quarantine.uri_of(key)
