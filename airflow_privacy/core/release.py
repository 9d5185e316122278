"""The release: merge the shards' records into the manifest, then publish what it allows.

Run by the Airflow driver after every shard was verified; the manifest is
written once, validated by the gate, and publishing checks that the manifest
it publishes from is exactly the one that was validated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.incremental import carried_records, read_retractions
from airflow_privacy.core.manifest import (
    MANIFEST,
    SUMMARY,
    VALIDATION,
    LazyRecords,
    loads_records,
    merge_by_source,
    record_source,
    write_manifest_stream,
    write_summary,
)
from airflow_privacy.core.publish import (
    SUCCESS_MARKER,
    Policy,
    PublishRefused,
    copy_release,
    plan_release,
    read_marker,
    release_digest,
)
from airflow_privacy.core.report import write_report_from
from airflow_privacy.core.settings import RunSettings
from airflow_privacy.core.shards import (
    PLAN,
    RECORDS,
    STAGING,
    Shard,
    load_shard,
    read_entries,
)
from airflow_privacy.core.status import Status
from airflow_privacy.storage import Storage


def assemble_manifest(
    work: Storage,
    report: Storage,
    shards: Sequence[Shard],
    *,
    settings: dict[str, Any] | None = None,
    policy: Policy | None = None,
) -> tuple[ManifestRecords, str]:
    """Merge the shards' records into ``report/manifest.jsonl`` and ``summary.json``.

    Streamed, one shard in memory at a time: the shards hold consecutive runs of
    the sorted keys, so writing them in shard order gives the manifest sorted by
    source (byte for byte what :func:`~airflow_privacy.core.manifest.write_manifest`
    writes; :func:`~airflow_privacy.core.manifest.write_manifest_stream`, which the
    CLI's batch writes with too), and the summary is counted as it is written. The
    returned records are re-read from the shard files when iterated, never held.
    An incremental run's carried records (:mod:`~airflow_privacy.core.incremental`)
    are merged in by source, so the manifest describes the whole release; the
    summary's ``incremental`` says what was carried and why.

    A shard without records raises (its verify task did not run), so a manifest
    is never written for part of the input. Publication facts are added to the
    summary by :func:`publish_release`.
    """
    ordered = sorted(shards, key=lambda shard: str(shard["shard_id"]))
    records = ManifestRecords(work, ordered)
    written = write_manifest_stream(report, records)
    records.by_status = written.totals.by_status
    manifest_sha256 = written.sha256
    run = RunSettings.from_dict(settings or {})
    summary = {
        **written.totals.counts(),
        "published": None, "withheld": None, "ignored": written.totals.skipped, "policy": policy,
        "manifest_sha256": manifest_sha256, "settings": run.to_dict(),
        "settings_key": run.key(), "release": None,
    }
    if (increment := _plan(work).get("incremental")) is not None:
        summary["incremental"] = increment
    write_summary(report, summary)
    return records, manifest_sha256


def _plan(work: Storage) -> dict[str, Any]:
    """The list task's ``plan.json`` (empty when there is none, e.g. shards made in a test)."""
    if not work.exists(PLAN):
        return {}
    plan = json.loads(work.read_text(PLAN))
    return plan if isinstance(plan, dict) else {}


class ManifestRecords(LazyRecords):
    """The merged manifest's records, re-read shard by shard whenever they are iterated.

    Sized and countable without holding a record: ``len()`` and ``by_status`` are
    the merge's totals (:class:`~airflow_privacy.core.manifest.LazyRecords`).
    """

    def __init__(self, work: Storage, shards: Sequence[Shard]) -> None:
        super().__init__()
        self._work, self._shards = work, shards

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Each shard's records, with the carried records merged in by source.

        Shards must not overlap or go backwards; that no carried record has the
        key of a processed one is checked where the manifest is written
        (:func:`~airflow_privacy.core.manifest.write_manifest_stream`).
        """
        processed = (record for part in self._shard_parts() for record in part)
        return merge_by_source(processed, carried_records(self._work))

    def _shard_parts(self) -> Iterator[list[dict[str, Any]]]:
        last: str | None = None
        for shard in self._shards:
            part = sorted(read_entries(self._work, RECORDS, load_shard(self._work, shard))
                          .values(), key=record_source)
            if part and last is not None and part[0]["source"] <= last:
                raise RuntimeError(f"shard {shard['shard_id']} overlaps or precedes the one "
                                   "before it: the shards are not one listing")
            last = part[-1]["source"] if part else last
            yield part


def publish_release(
    report: Storage,
    work: Storage,
    release: Storage,
    policy: Policy,
    *,
    manifest_sha256: str | None = None,
    require_validation: bool = True,
    **report_options: Any,
) -> dict[str, Any]:
    """Publish the staged outputs the manifest allows, after checking the gate held.

    Refuses (:class:`PublishRefused`) when the manifest is not the one that was
    validated (``manifest_sha256``, or the sha256 pinned in ``validation.json``),
    or when ``require_validation`` and the validation is missing or failed.
    Staging is kept, so a retried publish gives the same release (the cleanup
    task removes it afterwards). ``previous_release_sha256`` in the result is
    the ``release_sha256`` of the ``_SUCCESS`` found before publishing: equal to
    the new one when this publish changed nothing (a re-run), so no new Asset
    event is due. An incremental run's carried outputs stay where they are and
    the previous release's outputs its list task marked for retraction
    (:func:`~airflow_privacy.core.incremental.read_retractions`) are removed unless
    published again (``retracted`` in the result and the summary).
    ``report_options`` go to
    :func:`~airflow_privacy.core.report.write_report` (run identity, retention, key).
    """
    previous = read_marker(release)
    digest = hashlib.sha256()

    def streamed() -> Iterator[dict[str, Any]]:  # one pass: hashed and planned together
        for line in report.read_lines(MANIFEST):
            digest.update(line)
            if line.strip():
                yield json.loads(line)

    kept: set[str] = set()
    chosen, verified, images = plan_release(streamed(), policy, kept)
    actual = digest.hexdigest()
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
    retract = [r["output_key"] for r in read_retractions(work)]
    released = copy_release(chosen, verified, work.child(STAGING), release, policy=policy,
                            manifest_sha256=actual, empty=images == 0, kept=kept,
                            retract=retract)
    if report.exists(SUMMARY):
        summary = json.loads(report.read_text(SUMMARY))
        summary.update(published=released["published"], withheld=released["withheld"],
                       policy=policy, release=release.uri,
                       release_sha256=released["release_sha256"] if released["published"]
                       else None)
        if isinstance(summary.get("incremental"), dict):
            summary["incremental"]["retracted"] = released["retracted"]
        write_summary(report, summary)
    return ({k: v for k, v in released.items() if k not in ("keys", "kept")}
            | {"images": images, "release": release.uri,
               "previous_release_sha256": (previous or {}).get("release_sha256"),
               "report": write_report_from(report, release, **report_options)})


def check_release(release: Storage, report: Storage | None = None) -> tuple[bool, str]:
    """Whether ``release`` is a complete, verified release; and why not.

    What a downstream consumer (:class:`~airflow_privacy.sensors.VerifiedReleaseSensor`)
    waits for: a ``_SUCCESS`` marker whose ``release_sha256`` matches the objects now in
    the release (every key and its bytes) and, given the ``report`` location, whose
    ``manifest_sha256`` is the manifest's, in which every released object is a
    verified output with that very sha256.
    """
    marker = read_marker(release)
    if marker is None:
        return False, f"no readable {SUCCESS_MARKER} in {release.uri}"
    objects = [(key, sha256_bytes(release.read(key)))
               for key in release.list() if key != SUCCESS_MARKER]
    if release_digest(objects) != marker.get("release_sha256"):
        return False, f"the objects in {release.uri} are not the release {SUCCESS_MARKER} describes"
    if report is None:
        return True, "the release matches its marker"
    if not report.exists(MANIFEST):
        return False, f"no manifest in {report.uri}"
    data = report.read(MANIFEST)
    if sha256_bytes(data) != marker.get("manifest_sha256"):
        return False, f"{report.uri_of(MANIFEST)} is not the manifest {SUCCESS_MARKER} pins"
    verified = {r["output_key"]: r["output_sha256"] for r in loads_records(data)
                if r["status"] == Status.VERIFIED}
    stray = [key for key, sha in objects if verified.get(key) != sha]
    if stray:
        return False, f"{len(stray)} released objects are not verified outputs, e.g. {stray[0]!r}"
    return True, "the release matches its marker and its verified manifest"
