"""The batch split into storage-driven stages, one shard (a list of source keys) at a time.

The Airflow operators run these as separate (mapped) tasks, possibly on
different workers, so nothing passes between stages except files below the
``work`` location::

    plan.json                      the shards and the ignored keys (list_shards)
    detections/{shard_id}.jsonl    people found per input (detect_shard)
    anonymized/{shard_id}.jsonl    regions and staged output per input (anonymize_shard)
    staging/{output_key}           the anonymized bytes awaiting publication
    records/{shard_id}.jsonl       final manifest records (verify_shard)
    quarantine/{source_key}        what failed, kept for review

Every stage rewrites its own shard files, so an Airflow retry is safe. Each
stage re-reads the source and checks its sha256 against the detection stage's,
so an input that changed in between is rejected instead of being published
with another image's regions. The record of each input is built with the same
:class:`~airflow_privacy.core.pipeline.Pipeline` helpers and the same
:func:`~airflow_privacy.core.batch.settle` as the fused CLI batch, so the two
manifests have one shape.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from airflow_privacy.core.batch import list_inputs, output_key, settle, unsafe_outcome
from airflow_privacy.core.detect import PersonDetection
from airflow_privacy.core.images import ImageRejected, sha256_bytes
from airflow_privacy.core.manifest import (
    MANIFEST,
    SUMMARY,
    VALIDATION,
    dumps_records,
    loads_records,
    summarize,
    write_manifest,
    write_summary,
)
from airflow_privacy.core.pipeline import STATUS_ERROR, ImageOutcome, Pipeline, Region
from airflow_privacy.core.publish import Policy, PublishRefused, publish
from airflow_privacy.core.settings import RunSettings
from airflow_privacy.storage import Storage, UnsafeKeyError

PLAN = "plan.json"
DETECTIONS, ANONYMIZED, RECORDS = "detections", "anonymized", "records"
STAGING, QUARANTINE = "staging", "quarantine"

Shard = dict[str, Any]  # {"shard_id": "00000", "keys": [...]}: small, JSON, XCom-friendly


def build_pipeline(settings: dict[str, Any] | None) -> Pipeline:
    """The pipeline every stage uses, from the serialized settings the operators carry."""
    return Pipeline(RunSettings.from_dict(settings or {}))


def list_shards(source: Storage, shard_size: int, *, work: Storage | None = None) -> list[Shard]:
    """Split the source's images into shards of at most ``shard_size`` keys, in key order.

    Shard ids are zero-padded positions, so a re-listing of unchanged input yields
    the same shards. With ``work``, the plan (and the ignored keys) is kept there.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, not {shard_size}")
    keys, ignored = list_inputs(source)
    shards = [
        {"shard_id": f"{i // shard_size:05d}", "keys": keys[i : i + shard_size]}
        for i in range(0, len(keys), shard_size)
    ]
    if work is not None:
        plan = {"source": source.uri, "shards": shards, "ignored": ignored}
        work.write_text(PLAN, json.dumps(plan, sort_keys=True) + "\n")
    return shards


def detect_shard(pipeline: Pipeline, source: Storage, work: Storage, shard: Shard) -> dict:
    """Decode and detect people on each input; bad inputs get an error entry."""
    entries = []
    for key in shard["keys"]:
        entry: dict[str, Any] = {"source": key, "input_sha256": None, "image": None,
                                 "detections": [], "error": None, "timings_ms": {}}
        try:
            data = source.read(key)
        except UnsafeKeyError as exc:
            entry["error"] = unsafe_outcome(key, exc).record["error"]
            entries.append(entry)
            continue
        entry["input_sha256"] = sha256_bytes(data)
        try:
            clock = time.perf_counter()
            image = pipeline.decode(data)
            entry["timings_ms"]["decode"] = _ms(clock)
            entry["image"] = {"width": image.width, "height": image.height,
                              "format": image.source_format}
            clock = time.perf_counter()
            found = pipeline.detect(image)
            entry["timings_ms"]["detect"] = _ms(clock)
        except ImageRejected as exc:
            entry["error"] = {"code": exc.code, "message": exc.message}
        else:
            entry["detections"] = [_detection_entry(d) for d in found]
        entries.append(entry)
    _write_entries(work, DETECTIONS, shard, entries)
    return _counts(shard, entries, persons=sum(len(e["detections"]) for e in entries))


def anonymize_shard(pipeline: Pipeline, source: Storage, work: Storage, shard: Shard) -> dict:
    """Plan regions from the detections, anonymize, encode and stage each output."""
    detections = _read_entries(work, DETECTIONS, shard)
    staging = work.child(STAGING)
    entries = []
    for key in shard["keys"]:
        found = detections[key]
        entry: dict[str, Any] = {"source": key, "output_key": output_key(key), "regions": [],
                                 "output_sha256": None, "error": found["error"],
                                 "timings_ms": {}}
        if entry["error"] is None:
            try:
                clock = time.perf_counter()
                image = pipeline.decode(_read_unchanged(source, key, found["input_sha256"]))
                regions = pipeline.plan(image, [_detection(d) for d in found["detections"]])
                output = pipeline.encode(pipeline.anonymize(image, regions), image, key)
                entry["timings_ms"]["anonymize"] = _ms(clock)
            except ImageRejected as exc:
                entry["error"] = {"code": exc.code, "message": exc.message}
            else:
                staging.write(entry["output_key"], output)
                entry["output_sha256"] = sha256_bytes(output)
                entry["regions"] = [{"box": list(r.box), "origin": r.origin} for r in regions]
        entries.append(entry)
    _write_entries(work, ANONYMIZED, shard, entries)
    return _counts(shard, entries, regions=sum(len(e["regions"]) for e in entries))


def verify_shard(pipeline: Pipeline, source: Storage, work: Storage, shard: Shard) -> dict:
    """Verify each staged output (remediating within bounds) and write the final records.

    Verified outputs stay staged (remediated bytes replace the first attempt);
    everything else goes to quarantine, exactly as in the fused batch.
    """
    detections = _read_entries(work, DETECTIONS, shard)
    anonymized = _read_entries(work, ANONYMIZED, shard)
    staging, quarantine = work.child(STAGING), work.child(QUARANTINE)
    records = []
    for key in shard["keys"]:
        outcome = _verify_one(pipeline, source, staging, key, detections[key], anonymized[key])
        record = settle(outcome, key, source, staging, quarantine)
        if record["status"] != "verified":
            staging.delete(record["output_key"])
        records.append(record)
    _write_entries(work, RECORDS, shard, records)
    by_status = {s: sum(r["status"] == s for r in records) for s in ("verified", "quarantined")}
    return {**_counts(shard, records), **by_status}


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
    records = [r for shard in shards for r in _read_entries(work, RECORDS, shard).values()]
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
    released = publish(
        loads_records(data), work.child(STAGING), release, policy=policy, manifest_sha256=actual
    )
    if report.exists(SUMMARY):
        summary = json.loads(report.read_text(SUMMARY))
        summary.update(published=released["published"], withheld=released["withheld"],
                       policy=policy, release=release.uri)
        write_summary(report, summary)
    return {k: v for k, v in released.items() if k != "keys"} | {"release": release.uri}


# -- one input through verification ------------------------------------------------------------


def _verify_one(
    pipeline: Pipeline,
    source: Storage,
    staging: Storage,
    key: str,
    found: dict[str, Any],
    staged: dict[str, Any],
) -> ImageOutcome:
    try:
        data = source.read(key)
    except UnsafeKeyError as exc:
        return unsafe_outcome(key, exc)
    record = pipeline.base_record(key, data)
    timings = {**found["timings_ms"], **staged["timings_ms"]}
    record["timings_ms"] = timings
    try:
        if found["error"] or staged["error"]:
            error = found["error"] or staged["error"]
            raise ImageRejected(error["code"], error["message"])
        if sha256_bytes(data) != found["input_sha256"]:
            raise ImageRejected("source_changed", "the input changed after detection")
        image = pipeline.decode(data)
        record.update(width=image.width, height=image.height, format=image.source_format)
        output = staging.read(staged["output_key"])
        if sha256_bytes(output) != staged["output_sha256"]:
            raise ImageRejected("staging_changed", "the staged output changed after encoding")
        regions = [Region(tuple(r["box"]), r["origin"]) for r in staged["regions"]]
        clock = time.perf_counter()
        verified = pipeline.verify(image, output, regions, key)
        timings["verify"] = _ms(clock)
    except ImageRejected as exc:
        record.update(status=STATUS_ERROR, error={"code": exc.code, "message": exc.message})
        return ImageOutcome(record)
    record.update(pipeline.result_fields([_detection(d) for d in found["detections"]], verified))
    return ImageOutcome(record, verified.output)


# -- shard files -------------------------------------------------------------------------------


def _write_entries(work: Storage, stage: str, shard: Shard, entries: list[dict]) -> None:
    work.write(f"{stage}/{shard['shard_id']}.jsonl", dumps_records(entries))


def _read_entries(work: Storage, stage: str, shard: Shard) -> dict[str, dict[str, Any]]:
    """The shard's entries of an earlier stage by source key; each key must be present."""
    data = work.read(f"{stage}/{shard['shard_id']}.jsonl")
    entries = {e["source"]: e for e in loads_records(data)}
    missing = [key for key in shard["keys"] if key not in entries]
    if missing:
        raise RuntimeError(f"{stage} of shard {shard['shard_id']} lacks {missing[:5]}")
    return {key: entries[key] for key in shard["keys"]}


def _read_unchanged(source: Storage, key: str, sha256: str) -> bytes:
    data = source.read(key)
    if sha256_bytes(data) != sha256:
        raise ImageRejected("source_changed", "the input changed after detection")
    return data


def _detection_entry(d: PersonDetection) -> dict[str, Any]:
    """Full precision (``to_record`` rounds), so planning matches the fused batch exactly."""
    return {"box": list(d.box), "confidence": d.confidence,
            "head_box": list(d.head_box) if d.head_box is not None else None}


def _detection(entry: dict[str, Any]) -> PersonDetection:
    head = entry["head_box"]
    return PersonDetection(tuple(entry["box"]), entry["confidence"],
                           tuple(head) if head is not None else None)


def _counts(shard: Shard, entries: list[dict], **extra: int) -> dict[str, Any]:
    """The small XCom a stage returns: counts, never boxes or bytes."""
    errors = sum(1 for e in entries if e["error"] and e.get("status", STATUS_ERROR) == STATUS_ERROR)
    return {"shard_id": shard["shard_id"], "images": len(entries), "errors": errors, **extra}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)
