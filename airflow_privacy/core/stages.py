"""The Airflow driver: the per-image flow in three checkpointed stages, one shard at a time.

The operators run these as separate (mapped) tasks, possibly on different
workers. Each stage runs a group of the *same* steps the CLI runs fused
(:mod:`airflow_privacy.core.flow`): :data:`~airflow_privacy.core.flow.FIND`,
:data:`~airflow_privacy.core.flow.ANONYMIZE`, :data:`~airflow_privacy.core.flow.VERIFY`,
carrying the record between them in the work location
(:mod:`airflow_privacy.core.shards`). Every stage rewrites its own shard file,
so an Airflow retry is safe, and skips inputs whose checkpoint still holds
(``skipped`` in its result); it re-reads the source where it needs pixels, and
an input that changed in between is rejected (``source_changed``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from airflow_privacy.core import flow
from airflow_privacy.core.inputs import read_input
from airflow_privacy.core.naming import COLLISION, Namer, output_key
from airflow_privacy.core.outcomes import settle
from airflow_privacy.core.pipeline import Pipeline
from airflow_privacy.core.release import assemble_manifest, publish_release
from airflow_privacy.core.settings import RunSettings
from airflow_privacy.core.shards import (
    ANONYMIZED,
    CANDIDATES,
    DETECTIONS,
    QUARANTINE,
    RECORDS,
    STAGING,
    Shard,
    basis,
    list_shards,
    load_checkpoints,
    load_shard,
    read_entries,
    refusal,
    save_checkpoint,
    write_entries,
)
from airflow_privacy.core.status import Status
from airflow_privacy.core.workers import DEFAULT_WORKERS, in_order
from airflow_privacy.storage import Storage, StorageError, TransientStorageError

log = logging.getLogger(__name__)

# The whole Airflow driver from one module: listing, the three stages, the release.
__all__ = ["anonymize_shard", "assemble_manifest", "build_pipeline", "detect_shard",
           "list_shards", "publish_release", "verify_shard"]

_PIPELINES: dict[str, Pipeline] = {}


def build_pipeline(settings: dict[str, Any] | None) -> Pipeline:
    """The pipeline every stage uses, from the serialized settings the operators carry.

    Kept per process (by settings key), so tasks that run in one interpreter
    (``dag.test()``, a worker reusing its process) load the models once; the
    models load on first use, so a stage whose inputs are all done loads none.
    """
    run = RunSettings.from_dict(settings or {})
    key = run.key()
    if key not in _PIPELINES:
        _PIPELINES.clear()  # one set of models in memory at a time
        _PIPELINES[key] = Pipeline(run)
    return _PIPELINES[key]


def detect_shard(pipeline: Pipeline, source: Storage, work: Storage, shard: Shard, *,
                 workers: int = DEFAULT_WORKERS) -> dict:
    """Decode, detect and confirm the people on each input (:data:`flow.FIND`).

    ``workers``: inputs in flight at once (:func:`_each`), in every stage.
    """
    shard = load_shard(work, shard)  # a reference from the XCom: the keys are in work
    done = load_checkpoints(work, DETECTIONS, shard)

    def one(key: str) -> tuple[dict[str, Any], bool]:
        state = flow.begin(pipeline, key, output_key(key), refused=refusal(shard, key))
        read_input(source, state)
        on = basis({}, state.record["input_sha256"], state.record["settings_key"])
        prior = done.get(key)
        if not state.failed and prior is not None and prior["basis"] == on:
            return prior["record"], True
        flow.run(pipeline, state, flow.FIND)
        if not state.failed:
            save_checkpoint(work, DETECTIONS, shard, state.record, on)
        return state.record, False

    records, skipped = _each(one, shard["keys"], workers)
    write_entries(work, DETECTIONS, shard, records)
    return _finish(DETECTIONS, shard, records, skipped,
                   persons=sum(r["persons_detected"] for r in records))


def anonymize_shard(pipeline: Pipeline, source: Storage, work: Storage, shard: Shard, *,
                    namer: Namer | None = None, workers: int = DEFAULT_WORKERS) -> dict:
    """Anonymize each input (:data:`flow.ANONYMIZE`) and keep its output in ``candidates``.

    ``namer``: outputs are published under pseudonyms (the name is fixed here).
    """
    shard = load_shard(work, shard)
    found = read_entries(work, DETECTIONS, shard)
    done = load_checkpoints(work, ANONYMIZED, shard)
    candidates = work.child(CANDIDATES)

    def one(key: str) -> tuple[dict[str, Any], bool]:
        state = flow.ImageState(copy.deepcopy(found[key]))
        state.record["output_key"] = output_key(key, namer)
        on = basis(found[key], state.record["output_key"])
        prior = done.get(key)
        if (not state.failed and prior is not None and prior["basis"] == on
                and candidates.holds(key_of(prior), prior["record"]["output_sha256"])):
            return prior["record"], True
        read_input(source, state)
        flow.run(pipeline, state, flow.ANONYMIZE)
        if not state.failed and state.output is not None:
            candidates.write(state.record["output_key"], state.output)
            save_checkpoint(work, ANONYMIZED, shard, state.record, on)
        return state.record, False

    records, skipped = _each(one, shard["keys"], workers)
    write_entries(work, ANONYMIZED, shard, records)
    return _finish(ANONYMIZED, shard, records, skipped,
                   regions=sum(len(r["regions"]) for r in records))


def verify_shard(pipeline: Pipeline, source: Storage, work: Storage, shard: Shard, *,
                 quarantine: Storage | None = None, keep_rejected_source: bool = False,
                 workers: int = DEFAULT_WORKERS) -> dict:
    """Verify each output (:data:`flow.VERIFY`) and settle it: staging or quarantine.

    Verified outputs go to ``staging``, the only place publishing reads from;
    everything else to ``quarantine`` (default ``{work}/quarantine``; the task
    group puts it below the report, so cleaning the work location keeps it),
    exactly as in the fused batch.
    """
    shard = load_shard(work, shard)
    anonymized = read_entries(work, ANONYMIZED, shard)
    done = load_checkpoints(work, RECORDS, shard)
    candidates = work.child(CANDIDATES)
    staging = work.child(STAGING)
    quarantine = quarantine if quarantine is not None else work.child(QUARANTINE)

    def one(key: str) -> tuple[dict[str, Any], bool]:
        state = flow.ImageState(copy.deepcopy(anonymized[key]))
        on = basis(anonymized[key])
        prior = done.get(key)
        read_input(source, state)
        if not state.failed and prior is not None and _still_holds(prior, on, staging):
            return prior["record"], True
        if not state.failed:
            state.output = _read_candidate(candidates, state)
        flow.run(pipeline, state, flow.VERIFY)
        record = settle(state.outcome(), source, staging, quarantine,
                        keep_rejected_source=keep_rejected_source)
        if record["status"] != Status.VERIFIED and _owns_output(record):
            staging.delete(record["output_key"])  # a stale output of an earlier attempt
        if record["input_sha256"]:
            save_checkpoint(work, RECORDS, shard, record, on)
        return record, False

    records, skipped = _each(one, shard["keys"], workers)
    write_entries(work, RECORDS, shard, records)
    by_status = {s.value: sum(r["status"] == s for r in records)  # plain str keys for XCom
                 for s in (Status.VERIFIED, Status.QUARANTINED)}
    return {**_finish(RECORDS, shard, records, skipped), **by_status}


def _each(
    job: Callable[[str], tuple[dict[str, Any], bool]], keys: list[str], workers: int
) -> tuple[list[dict[str, Any]], int]:
    """The shard's records in key order and how many were skipped (checkpoint held).

    ``workers`` inputs are in flight at once (:func:`~airflow_privacy.core.workers.in_order`),
    as in the CLI's batch: one alone would leave one of the detector's lanes idle.
    """
    records, skipped = [], 0
    for _, (record, held) in in_order(job, list(keys), workers=workers):
        records.append(record)
        skipped += held
    return records, skipped


def _owns_output(record: dict[str, Any]) -> bool:
    """Whether ``record["output_key"]`` can be this input's own: not for an input refused
    because another input has that name (a collision), nor for a key leaving the root."""
    return (record["error"] or {}).get("code") not in (COLLISION, "unsafe_path")


def key_of(checkpoint: dict[str, Any]) -> str | None:
    return checkpoint["record"].get("output_key")


def _still_holds(prior: dict[str, Any], on: str, staging: Storage) -> bool:
    """A verify checkpoint holds if made from this very record and its staged bytes are there."""
    record = prior["record"]
    if prior["basis"] != on:
        return False
    if record["status"] == Status.VERIFIED:
        return staging.holds(record["output_key"], record["output_sha256"])
    return True


def _read_candidate(candidates: Storage, state: flow.ImageState) -> bytes | None:
    """The anonymized bytes the previous stage left; missing ones fail verification's check."""
    try:
        return candidates.read(state.record["output_key"])
    except TransientStorageError:
        raise
    except StorageError:
        return None


def _finish(stage: str, shard: Shard, records: list[dict], skipped: int,
            **extra: int) -> dict[str, Any]:
    """The small XCom a stage returns: counts, never boxes or bytes."""
    errors = sum(1 for r in records if r["status"] == Status.ERROR)
    if skipped:
        log.info("%s of shard %s: %d of %d inputs already done (same input sha256 and "
                 "settings), skipped", stage, shard["shard_id"], skipped, len(records))
    return {"shard_id": shard["shard_id"], "images": len(records), "errors": errors,
            "skipped": skipped, "computed": len(records) - skipped, **extra}
