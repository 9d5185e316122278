"""The batch split into storage-driven stages, one shard (a list of source keys) at a time.

The Airflow operators run these as separate (mapped) tasks, possibly on
different workers, so nothing passes between stages except files below the
``work`` location::

    plan.json                      the shards and the ignored keys (list_shards)
    detections/{shard_id}.jsonl    people found per input (detect_shard)
    anonymized/{shard_id}.jsonl    regions and candidate output per input (anonymize_shard)
    candidates/{output_key}        the anonymized bytes awaiting verification
    staging/{output_key}           verified outputs only, awaiting publication
    records/{shard_id}.jsonl       final manifest records (verify_shard)
    quarantine/{source_key}        what failed, kept for review
    {stage}/{shard_id}/{hash}.json one checkpoint per finished input of each stage

Every stage rewrites its own shard files, so an Airflow retry is safe, and
each finished input leaves a checkpoint as soon as it is done: a retried or
killed-and-restarted shard skips every input whose checkpoint matches the
input's sha256 and the settings key (and, for the later stages, the earlier
stage's result and the bytes in ``candidates``/``staging``), so it does only
the missing work. Each stage returns how many inputs it ``skipped``.

Each stage re-reads the source and checks its sha256 against the detection
stage's, so an input that changed in between is rejected instead of being
published with another image's regions. The record of each input is built with
the same :class:`~airflow_privacy.core.pipeline.Pipeline` helpers and the same
:func:`~airflow_privacy.core.batch.settle` as the fused CLI batch, so the two
manifests have one shape.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
from airflow_privacy.core.naming import Namer
from airflow_privacy.core.pipeline import STATUS_ERROR, ImageOutcome, Pipeline, Region
from airflow_privacy.core.publish import Policy, PublishRefused, publish
from airflow_privacy.core.report import write_report_from
from airflow_privacy.core.settings import RunSettings
from airflow_privacy.storage import Storage, StorageError, TransientStorageError, UnsafeKeyError

log = logging.getLogger(__name__)

PLAN = "plan.json"
DETECTIONS, ANONYMIZED, RECORDS = "detections", "anonymized", "records"
CANDIDATES, STAGING, QUARANTINE = "candidates", "staging", "quarantine"

Shard = dict[str, Any]  # {"shard_id": "00000", "keys": [...]}: small, JSON, XCom-friendly


class LazyPipeline:
    """A :class:`Pipeline` whose models load on first use.

    ``settings`` (hence the settings key the checkpoints are matched on) is
    there at once, so a retried stage whose inputs are all done never loads a
    model. Any other attribute builds the real pipeline and delegates to it.
    """

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings.validate()
        self._pipeline: Pipeline | None = None

    def decode(self, data: bytes) -> Any:
        """Decoding needs only the settings: don't load the models for it (their loading
        would otherwise be timed as the first image's decode)."""
        return Pipeline.decode(self, data)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_pipeline":
            raise AttributeError(name)
        if self._pipeline is None:
            self._pipeline = Pipeline(self.settings)
        return getattr(self._pipeline, name)


_PIPELINES: dict[str, LazyPipeline] = {}


def build_pipeline(settings: dict[str, Any] | None) -> Pipeline:
    """The pipeline every stage uses, from the serialized settings the operators carry.

    Models load on first use (:class:`LazyPipeline`), and the last pipeline is
    kept per process (by settings key), so tasks that run in one interpreter
    (``dag.test()``, a worker reusing its process) load them once. It holds no
    run state: every stage result lives in ``work``.
    """
    run = RunSettings.from_dict(settings or {})
    key = run.key()
    if key not in _PIPELINES:
        _PIPELINES.clear()  # one set of models in memory at a time
        _PIPELINES[key] = LazyPipeline(run)
    return _PIPELINES[key]  # type: ignore[return-value]


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
    """Decode and detect people on each input; bad inputs get an error entry.

    An input whose checkpoint has the same input sha256 and settings key is not
    detected again (counted in ``skipped``).
    """
    settings_key = pipeline.settings.key()
    done = _load_checkpoints(work, DETECTIONS, shard)
    entries, skipped = [], 0
    for key in shard["keys"]:
        entry: dict[str, Any] = {"source": key, "input_sha256": None, "image": None,
                                 "detections": [], "error": None, "timings_ms": {},
                                 "settings_key": settings_key}
        try:
            data = source.read(key)
        except UnsafeKeyError as exc:
            entry["error"] = unsafe_outcome(key, exc).record["error"]
            entries.append(entry)
            continue
        entry["input_sha256"] = sha256_bytes(data)
        prior = done.get(key)
        if prior is not None and _same_input(prior, entry):
            entries.append(prior)
            skipped += 1
            continue
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
        _save_checkpoint(work, DETECTIONS, shard, entry)
        entries.append(entry)
    _write_entries(work, DETECTIONS, shard, entries)
    return _finish(DETECTIONS, shard, entries, skipped,
                   persons=sum(len(e["detections"]) for e in entries))


def anonymize_shard(pipeline: Pipeline, source: Storage, work: Storage, shard: Shard, *,
                    namer: Namer | None = None) -> dict:
    """Plan regions from the detections, anonymize, encode, and keep each output in
    ``candidates`` for verification. ``namer``: output names are pseudonyms (the later
    stages take the names from this stage's entries).

    An input whose checkpoint has the same input sha256, settings key and
    detections, and whose candidate bytes are still there unchanged, is not
    anonymized again (counted in ``skipped``).
    """
    settings_key = pipeline.settings.key()
    detections = _read_entries(work, DETECTIONS, shard)
    done = _load_checkpoints(work, ANONYMIZED, shard)
    candidates = work.child(CANDIDATES)
    entries, skipped = [], 0
    for key in shard["keys"]:
        found = detections[key]
        entry: dict[str, Any] = {"source": key, "output_key": output_key(key, namer),
                                 "regions": [],
                                 "output_sha256": None, "error": found["error"],
                                 "timings_ms": {}, "input_sha256": found["input_sha256"],
                                 "settings_key": settings_key,
                                 "detections_sha256": _digest(found["detections"])}
        prior = done.get(key)
        if (entry["error"] is None and prior is not None and _same_input(prior, entry)
                and prior["detections_sha256"] == entry["detections_sha256"]
                and prior["output_key"] == entry["output_key"]
                and _holds(candidates, prior["output_key"], prior["output_sha256"])):
            entries.append(prior)
            skipped += 1
            continue
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
                candidates.write(entry["output_key"], output)
                entry["output_sha256"] = sha256_bytes(output)
                entry["regions"] = [{"box": list(r.box), "origin": r.origin} for r in regions]
                _save_checkpoint(work, ANONYMIZED, shard, entry)
        entries.append(entry)
    _write_entries(work, ANONYMIZED, shard, entries)
    return _finish(ANONYMIZED, shard, entries, skipped,
                   regions=sum(len(e["regions"]) for e in entries))


def verify_shard(pipeline: Pipeline, source: Storage, work: Storage, shard: Shard) -> dict:
    """Verify each staged output (remediating within bounds) and write the final records.

    Verified outputs (remediated where needed) go to ``staging``, the only place
    publishing reads from; everything else goes to quarantine, exactly as in the
    fused batch. An input whose checkpoint has the same input sha256 and settings
    key, was verified from the same candidate, and (if verified) whose staged
    bytes still match its ``output_sha256`` is not verified again (``skipped``).
    """
    settings_key = pipeline.settings.key()
    detections = _read_entries(work, DETECTIONS, shard)
    anonymized = _read_entries(work, ANONYMIZED, shard)
    done = _load_checkpoints(work, RECORDS, shard)
    candidates = work.child(CANDIDATES)
    staging, quarantine = work.child(STAGING), work.child(QUARANTINE)
    records, skipped = [], 0
    for key in shard["keys"]:
        staged = anonymized[key]
        prior = done.get(key)
        if (prior is not None and prior["record"].get("output_key") == staged["output_key"]
                and _verified_before(prior, source, staging, key, staged, settings_key)):
            records.append(prior["record"])
            skipped += 1
            continue
        outcome = _verify_one(pipeline, source, candidates, key, detections[key], staged)
        record = settle(outcome, key, source, staging, quarantine, name=staged["output_key"])
        if record["status"] != "verified" and (record["error"] or {}).get("code") != "unsafe_path":
            staging.delete(record["output_key"])  # an unsafe key has no safe output key
        if record.get("input_sha256"):
            _save_checkpoint(work, RECORDS, shard, {
                "source": key, "record": record, "settings_key": settings_key,
                "candidate_sha256": staged["output_sha256"]})
        records.append(record)
    _write_entries(work, RECORDS, shard, records)
    by_status = {s: sum(r["status"] == s for r in records) for s in ("verified", "quarantined")}
    return {**_finish(RECORDS, shard, records, skipped), **by_status}


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


# -- one input through verification ------------------------------------------------------------


def _verify_one(
    pipeline: Pipeline,
    source: Storage,
    candidates: Storage,
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
        output = candidates.read(staged["output_key"])
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


def _verified_before(
    prior: dict[str, Any],
    source: Storage,
    staging: Storage,
    key: str,
    staged: dict[str, Any],
    settings_key: str,
) -> bool:
    """Whether ``prior`` (a verify checkpoint) still holds for this input, as it is now."""
    record = prior["record"]
    if prior.get("settings_key") != settings_key or record.get("settings_key") != settings_key:
        return False
    if prior.get("candidate_sha256") != staged["output_sha256"]:
        return False  # verified another candidate (anonymize ran again, differently)
    try:
        data = source.read(key)
    except UnsafeKeyError:
        return False
    if sha256_bytes(data) != record.get("input_sha256"):
        return False
    if record["status"] == "verified":
        return _holds(staging, record["output_key"], record["output_sha256"])
    return True


# -- checkpoints: one object per finished input and stage ----------------------------------------


def _checkpoint_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".json"


def _save_checkpoint(work: Storage, stage: str, shard: Shard, entry: dict[str, Any]) -> None:
    """Written after the input's other objects (candidate, staged, quarantined), atomically."""
    name = f"{stage}/{shard['shard_id']}/{_checkpoint_name(entry['source'])}"
    work.write(name, json.dumps(entry, sort_keys=True).encode("utf-8"))


def _load_checkpoints(work: Storage, stage: str, shard: Shard) -> dict[str, dict[str, Any]]:
    """This stage's checkpoints of the shard by source key: one listing, then reads."""
    folder = work.child(f"{stage}/{shard['shard_id']}")
    wanted = {_checkpoint_name(key): key for key in shard["keys"]}
    found: dict[str, dict[str, Any]] = {}
    for name in folder.list():
        key = wanted.get(name)
        if key is None:
            continue
        try:
            entry = json.loads(folder.read(name))
        except TransientStorageError:
            raise
        except (StorageError, ValueError):
            continue  # gone meanwhile, or unreadable: recompute
        if isinstance(entry, dict) and entry.get("source") == key:
            found[key] = entry
    return found


def _same_input(prior: dict[str, Any], entry: dict[str, Any]) -> bool:
    return bool(
        prior.get("error") is None
        and entry["input_sha256"]
        and prior.get("input_sha256") == entry["input_sha256"]
        and prior.get("settings_key") == entry["settings_key"]
    )


def _holds(storage: Storage, key: str | None, sha256: str | None) -> bool:
    """``storage`` has ``key`` with exactly the bytes of ``sha256``."""
    if not key or not sha256:
        return False
    try:
        return sha256_bytes(storage.read(key)) == sha256
    except TransientStorageError:
        raise
    except StorageError:
        return False


def _digest(value: Any) -> str:
    return sha256_bytes(json.dumps(value, sort_keys=True).encode("utf-8"))


def _finish(stage: str, shard: Shard, entries: list[dict], skipped: int,
            **extra: int) -> dict[str, Any]:
    result = _counts(shard, entries, skipped=skipped, computed=len(entries) - skipped, **extra)
    if skipped:
        log.info("%s of shard %s: %d of %d inputs already done (same input sha256 and "
                 "settings), skipped", stage, shard["shard_id"], skipped, len(entries))
    return result


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
