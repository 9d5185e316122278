"""The release: merge the shards' records into the manifest, then publish what it allows.

Run by the Airflow driver after every shard was verified; the manifest is
written once, validated by the gate, and publishing checks that the manifest
it publishes from is exactly the one that was validated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.manifest import (
    MANIFEST,
    SUMMARY,
    VALIDATION,
    loads_records,
    summarize,
    write_manifest,
    write_summary,
)
from airflow_privacy.core.publish import Policy, PublishRefused, publish
from airflow_privacy.core.report import write_report_from
from airflow_privacy.core.settings import RunSettings
from airflow_privacy.core.shards import PLAN, RECORDS, STAGING, Shard, read_entries
from airflow_privacy.storage import Storage


def assemble_manifest(
    work: Storage,
    report: Storage,
    shards: Sequence[Shard],
    *,
    settings: dict[str, Any] | None = None,
    policy: Policy | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """Merge the shards' records into ``report/manifest.jsonl`` and ``summary.json``.

    A shard without records raises (its verify task did not run), so a manifest
    is never written for part of the input. Publication facts are added to the
    summary by :func:`publish_release`.
    """
    records = [r for shard in shards for r in read_entries(work, RECORDS, shard).values()]
    manifest_sha256 = write_manifest(report, records)
    ignored = json.loads(work.read_text(PLAN))["ignored"] if work.exists(PLAN) else []
    run = RunSettings.from_dict(settings or {})
    summary = summarize(
        records,
        published=None,
        withheld=None,
        ignored=len(ignored),
        policy=policy,
        manifest_sha256=manifest_sha256,
        settings=run.to_dict(),
        settings_key=run.key(),
        release=None,
    )
    write_summary(report, summary)
    return records, manifest_sha256


def publish_release(
    report: Storage,
    work: Storage,
    release: Storage,
    policy: Policy,
    *,
    manifest_sha256: str | None = None,
    require_validation: bool = True,
) -> dict[str, Any]:
    """Publish the staged outputs the manifest allows, after checking the gate held.

    Refuses (:class:`PublishRefused`) when the manifest is not the one that was
    validated (``manifest_sha256``, or the sha256 pinned in ``validation.json``),
    or when ``require_validation`` and the validation is missing or failed.
    Staging is kept, so a retried publish gives the same release.
    """
    data = report.read(MANIFEST)
    actual = sha256_bytes(data)
    if manifest_sha256 and actual != manifest_sha256:
        raise PublishRefused(f"{report.uri_of(MANIFEST)} changed after it was validated")
    if require_validation:
        if not report.exists(VALIDATION):
            raise PublishRefused(f"no {VALIDATION} beside {report.uri_of(MANIFEST)}")
        validation = json.loads(report.read_text(VALIDATION))
        if not validation.get("success"):
            raise PublishRefused(f"{report.uri_of(VALIDATION)} records a failed validation")
        if (validation.get("meta") or {}).get("manifest_sha256") != actual:
            raise PublishRefused(f"{report.uri_of(VALIDATION)} validated another manifest")
    records = loads_records(data)
    released = publish(records, work.child(STAGING), release, policy=policy,
                       manifest_sha256=actual)
    if report.exists(SUMMARY):
        summary = json.loads(report.read_text(SUMMARY))
        summary.update(published=released["published"], withheld=released["withheld"],
                       policy=policy, release=release.uri)
        write_summary(report, summary)
    return ({k: v for k, v in released.items() if k != "keys"}
            | {"images": len(records), "release": release.uri,
               "report": write_report_from(report, release)})
