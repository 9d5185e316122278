"""The Airflow driver's bookkeeping: the shard plan, per-stage shard files and checkpoints.

Nothing passes between stages except files below the ``work`` location::

    plan.json                      the shards and the ignored keys (list_shards)
    detections/{shard_id}.jsonl    records after finding people (stage 1)
    anonymized/{shard_id}.jsonl    records after anonymizing (stage 2)
    candidates/{output_key}        the anonymized bytes awaiting verification
    staging/{output_key}           verified outputs only, awaiting publication
    records/{shard_id}.jsonl       final manifest records (stage 3)
    quarantine/{source_key}        what failed, kept for review
    {stage}/{shard_id}/{hash}.json one checkpoint per finished input of each stage

A checkpoint holds the input's record and the *basis* it was computed from
(the input's sha256 and settings key, or the previous stage's record), so a
retried or killed-and-restarted shard redoes only inputs whose basis changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.inputs import list_inputs
from airflow_privacy.core.manifest import dumps_records, loads_records
from airflow_privacy.core.naming import refusals
from airflow_privacy.storage import Storage, StorageError, TransientStorageError

PLAN = "plan.json"
DETECTIONS, ANONYMIZED, RECORDS = "detections", "anonymized", "records"
CANDIDATES, STAGING, QUARANTINE = "candidates", "staging", "quarantine"

Shard = dict[str, Any]  # {"shard_id": "00000", "keys": [...], "refused": {...}}: small, JSON


def list_shards(source: Storage, shard_size: int, *, work: Storage | None = None) -> list[Shard]:
    """Split the source's images into shards of at most ``shard_size`` keys, in key order.

    Shard ids are zero-padded positions, so a re-listing of unchanged input yields
    the same shards. Inputs refused before reading (output-name collisions) are
    named in their shard's ``refused``. With ``work``, the plan is kept there.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, not {shard_size}")
    keys, ignored = list_inputs(source)
    refused = refusals(keys)
    shards = []
    for i in range(0, len(keys), shard_size):
        part = keys[i : i + shard_size]
        shard: Shard = {"shard_id": f"{i // shard_size:05d}", "keys": part}
        if mine := {k: list(refused[k]) for k in part if k in refused}:
            shard["refused"] = mine
        shards.append(shard)
    if work is not None:
        plan = {"source": source.uri, "shards": shards, "ignored": ignored}
        work.write_text(PLAN, json.dumps(plan, sort_keys=True) + "\n")
    return shards


def refusal(shard: Shard, key: str) -> tuple[str, str] | None:
    found = (shard.get("refused") or {}).get(key)
    return (found[0], found[1]) if found else None


# -- shard files ---------------------------------------------------------------------------------


def write_entries(work: Storage, stage: str, shard: Shard, entries: list[dict]) -> None:
    work.write(f"{stage}/{shard['shard_id']}.jsonl", dumps_records(entries))


def read_entries(work: Storage, stage: str, shard: Shard) -> dict[str, dict[str, Any]]:
    """The shard's records of an earlier stage by source key; each key must be present."""
    data = work.read(f"{stage}/{shard['shard_id']}.jsonl")
    entries = {e["source"]: e for e in loads_records(data)}
    missing = [key for key in shard["keys"] if key not in entries]
    if missing:
        raise RuntimeError(f"{stage} of shard {shard['shard_id']} lacks {missing[:5]}")
    return {key: entries[key] for key in shard["keys"]}


# -- checkpoints: one object per finished input and stage ----------------------------------------


def basis(record: dict[str, Any], *extra: Any) -> str:
    """What a stage's result depends on: ``record`` without timings, plus ``extra``."""
    stable = {k: v for k, v in record.items() if k != "timings_ms"}
    return sha256_bytes(json.dumps([stable, *extra], sort_keys=True).encode("utf-8"))


def _checkpoint_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".json"


def save_checkpoint(
    work: Storage, stage: str, shard: Shard, record: dict[str, Any], on: str
) -> None:
    """Written after the input's other objects (candidate, staged, quarantined), atomically."""
    name = f"{stage}/{shard['shard_id']}/{_checkpoint_name(record['source'])}"
    entry = {"source": record["source"], "basis": on, "record": record}
    work.write(name, json.dumps(entry, sort_keys=True).encode("utf-8"))


def load_checkpoints(work: Storage, stage: str, shard: Shard) -> dict[str, dict[str, Any]]:
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
        if isinstance(entry, dict) and entry.get("source") == key and "record" in entry:
            found[key] = entry
    return found


def holds(storage: Storage, key: str | None, sha256: str | None) -> bool:
    """``storage`` has ``key`` with exactly the bytes of ``sha256``."""
    if not key or not sha256:
        return False
    try:
        return sha256_bytes(storage.read(key)) == sha256
    except TransientStorageError:
        raise
    except StorageError:
        return False
