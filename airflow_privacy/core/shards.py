"""The Airflow driver's bookkeeping: the shard plan, per-stage shard files and checkpoints.

Nothing passes between stages except files below the ``work`` location::

    plan.json                      shard references, sizes, skipped keys (list_shards)
    carried.jsonl                  incremental: records carried from the previous release
    retract.jsonl                  incremental: previously released outputs to retract
    shards/{shard_id}.json         one shard's keys: the XCom carries only its reference
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
import heapq
import json
from collections.abc import Iterable, Iterator
from typing import Any

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.incremental import CARRIED, RETRACT, Increment, carried_records
from airflow_privacy.core.inputs import SKIPPED, listing
from airflow_privacy.core.manifest import dumps_records, loads_records
from airflow_privacy.core.naming import Namer
from airflow_privacy.storage import Storage, StorageError, TransientStorageError

PLAN = "plan.json"
SHARDS = "shards"  # shards/{shard_id}.json: one shard's keys and refusals
DETECTIONS, ANONYMIZED, RECORDS = "detections", "anonymized", "records"
CANDIDATES, STAGING, QUARANTINE = "candidates", "staging", "quarantine"
IGNORED_IN_PLAN = 1000  # plan.json names this many skipped keys (their records name all)

# A shard is either whole, {"shard_id": "00000", "keys": [...], "refused": {...}}, or a
# reference to its file in work, {"shard_id": "00000", "count": 16, "path": "shards/00000.json"}:
# what the list task pushes to XCom, the same few bytes whatever the shard holds.
Shard = dict[str, Any]


def shard_size_for(count: int, shard_size: int, max_shards: int | None = None) -> int:
    """``shard_size``, grown just enough that ``count`` inputs make at most ``max_shards``.

    Airflow refuses to map a task over more than ``[core] max_map_length`` elements
    (1,024 by default), so a run of 10^6 images at 16 per shard could not start; the
    list task passes that limit here and gets bigger shards instead.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, not {shard_size}")
    if max_shards is not None and max_shards < 1:
        raise ValueError(f"max_shards must be >= 1, not {max_shards}")
    if max_shards is None or count <= shard_size * max_shards:
        return shard_size
    return -(-count // max_shards)


def list_shards(source: Storage, shard_size: int, *, work: Storage | None = None,
                max_shards: int | None = None, namer: Namer | None = None,
                increment: Increment | None = None) -> list[Shard]:
    """Split the source's inputs into whole shards of at most ``shard_size`` keys, in key order.

    Shard ids are zero-padded positions, so a re-listing of unchanged input yields
    the same shards. Inputs refused before reading (output-name collisions) are
    named in their shard's ``refused``. ``max_shards`` grows the shard size so that
    no more shards are made (:func:`shard_size_for`). With ``work``, each shard's
    file and the plan are written there (:func:`plan_shards` returns only references).

    With ``increment`` (an incremental run; ``work`` needed) the shards hold only
    the inputs to process: the records carried from the previous release go to
    ``work/carried.jsonl``, the outputs to retract to ``work/retract.jsonl``, and
    the plan's ``incremental`` says what was decided and why. There is always at
    least one shard then (possibly empty), so the mapped stages, the gate and the
    publish run even when every input is carried.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, not {shard_size}")
    keys, refused, ignored = listing(source, namer)  # the CLI's listing, refusals included
    if increment is not None:
        if work is None:
            raise ValueError("an incremental listing needs a work location for its records")
        keys = carry(increment, keys, refused, work)
    elif work is not None:
        for stale in (CARRIED, RETRACT):  # a retried listing that is no longer incremental
            if work.exists(stale):
                work.delete(stale)
    size = shard_size_for(len(keys), shard_size, max_shards)
    shards = []
    for i in range(0, len(keys), size):
        part = keys[i : i + size]
        shard: Shard = {"shard_id": f"{i // size:05d}", "keys": part}
        if mine := {k: list(refused[k]) for k in part if k in refused}:
            shard["refused"] = mine
        shards.append(shard)
    if increment is not None and not shards:
        shards.append({"shard_id": "00000", "keys": []})
    if work is not None:
        for shard in shards:
            work.write_text(shard_path(shard), json.dumps(shard, sort_keys=True) + "\n")
        plan = {"source": source.uri, "inputs": len(keys), "shard_size": size,
                "requested_shard_size": shard_size, "max_shards": max_shards,
                "shards": [reference(shard) for shard in shards],
                "ignored_count": ignored,
                "ignored": [k for k in keys if refused.get(k, ("",))[0] in SKIPPED][
                    :IGNORED_IN_PLAN]}
        if increment is not None:
            plan["incremental"] = increment.summary()
        work.write_text(PLAN, json.dumps(plan, sort_keys=True) + "\n")
    return shards


def carry(increment: Increment, keys: list[str], refused: dict, work: Storage) -> list[str]:
    """The keys to process; the carried records and the retractions written to ``work``.

    Streamed: each carried record goes to ``work/carried.jsonl`` as it is decided
    (sorted, since the listing is), only the keys to process are kept.
    """
    todo: list[str] = []

    def lines() -> Iterator[bytes]:
        for key, record in increment.walk(keys, refused):
            if record is None:
                todo.append(key)
            else:
                yield dumps_records([record])

    work.write_stream(CARRIED, lines())
    work.write(RETRACT, dumps_records(increment.retractions))
    return todo


def plan_shards(source: Storage, work: Storage, shard_size: int, *,
                max_shards: int | None = None, namer: Namer | None = None,
                increment: Increment | None = None) -> list[Shard]:
    """:func:`list_shards` into ``work``, returning only the shards' references.

    What the list task pushes to XCom: per shard its id, key count and file,
    never a key, so the XCom is the same size for a thousand images or a million
    (at most ``max_shards`` references).
    """
    return [reference(s) for s in list_shards(source, shard_size, work=work,
                                              max_shards=max_shards, namer=namer,
                                              increment=increment)]


def shard_path(shard: Shard) -> str:
    return f"{SHARDS}/{shard['shard_id']}.json"


def reference(shard: Shard) -> Shard:
    """The small stand-in for a whole shard: id, key count, file below work."""
    return {"shard_id": shard["shard_id"], "count": len(shard["keys"]), "path": shard_path(shard)}


def load_shard(work: Storage, shard: Shard) -> Shard:
    """The whole shard for ``shard``: itself if it holds its keys, else its file in ``work``.

    The file is found by the shard id (never by a path from the XCom), and must
    hold as many keys as the reference says, so a plan rewritten by another
    listing is noticed instead of silently mixing two listings.
    """
    if "keys" in shard:
        return shard
    shard_id = str(shard["shard_id"])
    if not shard_id.isdigit():
        raise ValueError(f"not a shard id: {shard_id!r}")
    whole = json.loads(work.read_text(shard_path({"shard_id": shard_id})))
    if whole.get("shard_id") != shard_id or len(whole.get("keys", ())) != shard.get("count"):
        raise RuntimeError(f"{work.uri_of(shard_path(whole))} is not the shard listed as "
                           f"{shard_id} with {shard.get('count')} keys; list again")
    return whole


def shard_keys(work: Storage, shards: Iterable[Shard]) -> Iterator[str]:
    """Every listed key, shard after shard (sorted, as listed), one shard in memory at a time.

    An incremental run's carried keys (``work/carried.jsonl``) are merged in: they
    are listed inputs too, with records in the manifest.
    """
    processed = (key for shard in shards for key in load_shard(work, shard)["keys"])
    carried = (str(record["source"]) for record in carried_records(work))
    yield from heapq.merge(processed, carried)


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
