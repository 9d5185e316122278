"""Publishing: the only way an output reaches the release location.

Publishing happens after the whole batch was verified and the manifest was
written. Only records whose status is ``verified`` are copied, from staging
to release. Under ``all_or_nothing`` a single failed or rejected input
releases nothing. A ``_SUCCESS`` marker holding the manifest's sha256 is
written last, so a consumer that sees it knows the release is complete.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from typing import Any, Literal

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.status import SKIPPED, Status
from airflow_privacy.exceptions import PublishRefused
from airflow_privacy.storage import Storage

Policy = Literal["all_or_nothing", "publish_passing"]
POLICIES = ("all_or_nothing", "publish_passing")
SUCCESS_MARKER = "_SUCCESS"
PUBLISH_WORKERS = 16  # parallel copies: object stores answer one request in ~10-50 ms


def releasable(records: Iterable[dict[str, Any]], policy: Policy) -> list[dict[str, Any]]:
    """The records whose outputs may be released under ``policy``."""
    records = list(records)
    chosen, _, _ = plan_release(records, policy)
    keys = set(chosen)
    return [r for r in records if r["status"] == Status.VERIFIED and r.get("output_sha256")
            and (r["output_key"], r["output_sha256"]) in keys]


def plan_release(records: Iterable[dict[str, Any]], policy: Policy,
                 kept: set[str] | None = None) -> tuple[list[tuple[str, str]], int, int]:
    """``(output_key, output_sha256)`` of what may be released; verified and all records.

    One pass over records of any number, keeping two short strings per verified
    output (about 200 bytes each): a million-image release plans in ~200 MB.
    ``kept`` collects the output keys of records carried from the previous release
    (``carried_from``, an incremental run): already in the release, not in staging.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown publish policy {policy!r}; expected one of {POLICIES}")
    chosen: list[tuple[str, str]] = []
    processed = verified = total = 0
    for r in records:
        total += 1
        # Listed files that are not images have a record but nothing to publish: no failure.
        processed += (r.get("error") or {}).get("code") not in SKIPPED
        if r["status"] == Status.VERIFIED:
            verified += 1
            if r.get("output_sha256") and r.get("output_key"):
                chosen.append((r["output_key"], r["output_sha256"]))
                if kept is not None and r.get("carried_from"):
                    kept.add(r["output_key"])
    if policy == "all_or_nothing" and len(chosen) != processed:
        return [], verified, total
    return chosen, verified, total


def publish(
    records: Iterable[dict[str, Any]],
    staging: Storage,
    release: Storage,
    *,
    policy: Policy,
    manifest_sha256: str,
    workers: int = PUBLISH_WORKERS,
    retract: Iterable[str] = (),
) -> dict[str, Any]:
    """Copy releasable outputs from ``staging`` to ``release``; returns what was released.

    Records carried from the previous release are not copied (their outputs are
    there already); ``retract``: outputs of the previous release to remove
    (:func:`copy_release`).
    """
    kept: set[str] = set()
    chosen, verified, total = plan_release(records, policy, kept)
    return copy_release(chosen, verified, staging, release, policy=policy,
                        manifest_sha256=manifest_sha256, empty=total == 0, workers=workers,
                        kept=kept, retract=retract)


def copy_release(
    chosen: Sequence[tuple[str, str]],
    verified: int,
    staging: Storage,
    release: Storage,
    *,
    policy: Policy,
    manifest_sha256: str,
    empty: bool = False,  # no record at all: an empty release is complete, so it gets a marker
    workers: int = PUBLISH_WORKERS,
    kept: Collection[str] = frozenset(),
    retract: Iterable[str] = (),
) -> dict[str, Any]:
    """Copy the planned outputs, ``workers`` at a time, then write ``_SUCCESS`` last.

    Staging then release: every copied object must be the verified
    ``output_sha256`` (:meth:`Storage.copy_checked`: on S3 a server-side copy whose
    SHA-256 S3 reports, taken back and refused when it differs; elsewhere hashed,
    then written atomically, so a reader never sees part of an object). Copies run
    in a thread pool, at most ``4 * workers`` queued at a time; the first failure
    cancels the rest and fails the publish before any marker is written. The
    ``_SUCCESS`` is removed before the release changes (even one pinning this
    manifest: a re-run copies again).
    Idempotent: re-running with the same manifest writes the same keys with the same
    bytes and the same marker.

    Incremental runs: ``kept`` outputs are already in the release with their
    verified bytes (checked when they were carried) and are not copied; ``retract``
    names outputs of the previous release whose inputs vanished or were processed
    again. Those not published again are deleted after the copies and before the
    marker, and only when a marker is written: a withheld release (``all_or_nothing``
    with a failure) changes nothing, so the previous release stays whole.
    """
    marked = bool(chosen) or empty
    retract = set(retract) if marked else set()
    stale = sorted(retract - {key for key, _ in chosen}) if retract else []
    if chosen or stale:
        _retract_marker(release)
    _copy_all([item for item in chosen if item[0] not in kept], staging, release,
              max(1, workers))
    for key in stale:
        release.delete(key)
    marker = {
        "manifest_sha256": manifest_sha256,
        "published": len(chosen),
        "withheld": verified - len(chosen),
        "policy": policy,
        # sha256 over the sorted "key sha256" lines: what a consumer can check the release by
        "release_sha256": release_digest(chosen),
    }
    if marked:
        release.write_text(SUCCESS_MARKER, json.dumps(marker, sort_keys=True) + "\n")
    return {**marker, "keys": [key for key, _ in chosen], "retracted": len(stale),
            "kept": len(kept) if chosen else 0}  # carried outputs are among the chosen


def _copy_all(chosen: Sequence[tuple[str, str]], staging: Storage, release: Storage,
              workers: int) -> None:
    def one(key: str, sha256: str) -> None:
        if not staging.copy_checked(key, release, sha256):
            raise PublishRefused(
                f"staged output {staging.uri_of(key)} does not match its verified sha256")

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="publish") as pool:
        pending: set[Future[None]] = set()
        try:
            for key, sha256 in chosen:
                if len(pending) >= 4 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                pending.add(pool.submit(one, key, sha256))
            for future in as_completed(pending):
                future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def release_digest(objects: Sequence[tuple[str, str]]) -> str:
    """One sha256 for a release: over ``"{key} {sha256}\\n"`` lines in key order."""
    lines = "".join(f"{key} {sha}\n" for key, sha in sorted(objects))
    return sha256_bytes(lines.encode("utf-8"))


def _retract_marker(release: Storage) -> None:
    """Remove ``_SUCCESS`` before the release changes, even one pinning this very manifest.

    A re-run copies again, and a copy whose checksum is not the verified sha256 lands
    at its key before it is deleted (:meth:`Storage.copy_checked`'s one-request path):
    no marker may vouch for the release while that can happen. The marker comes back
    last, the same bytes when nothing changed.
    """
    if release.exists(SUCCESS_MARKER):
        release.delete(SUCCESS_MARKER)


def read_marker(release: Storage) -> dict[str, Any] | None:
    """The release's ``_SUCCESS`` marker as a dict, or None (absent or unreadable)."""
    if not release.exists(SUCCESS_MARKER):
        return None
    try:
        marker = json.loads(release.read_text(SUCCESS_MARKER))
    except ValueError:
        return None
    return marker if isinstance(marker, dict) else None
