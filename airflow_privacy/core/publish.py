"""Publishing: the only way an output reaches the release location.

Publishing happens after the whole batch was verified and the manifest was
written. Only records whose status is ``verified`` are copied, from staging
to release. Under ``all_or_nothing`` a single failed or rejected input
releases nothing. A ``_SUCCESS`` marker holding the manifest's sha256 is
written last, so a consumer that sees it knows the release is complete.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.status import Status
from airflow_privacy.exceptions import PublishRefused
from airflow_privacy.storage import Storage

Policy = Literal["all_or_nothing", "publish_passing"]
POLICIES = ("all_or_nothing", "publish_passing")
SUCCESS_MARKER = "_SUCCESS"


def releasable(records: Sequence[dict[str, Any]], policy: Policy) -> list[dict[str, Any]]:
    """The records whose outputs may be released under ``policy``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown publish policy {policy!r}; expected one of {POLICIES}")
    verified = [r for r in records if r["status"] == Status.VERIFIED and r.get("output_sha256")]
    if policy == "all_or_nothing" and len(verified) != len(records):
        return []
    return verified


def publish(
    records: Sequence[dict[str, Any]],
    staging: Storage,
    release: Storage,
    *,
    policy: Policy,
    manifest_sha256: str,
) -> dict[str, Any]:
    """Copy releasable outputs from ``staging`` to ``release``; returns what was released.

    Staging then release: every staged object is re-hashed and must equal the
    verified ``output_sha256`` before its bytes are written (atomically, so a
    reader never sees part of an object). A ``_SUCCESS`` marker pinning another
    manifest is removed before the release changes, and the new one is written
    last, so a consumer that sees a marker sees the complete release it
    describes. Idempotent: re-running with the same manifest writes the same
    keys with the same bytes and the same marker; nothing is duplicated.
    """
    chosen = releasable(records, policy)
    if chosen:
        _retract_other_marker(release, manifest_sha256)
    released: list[tuple[str, str]] = []
    for record in chosen:
        key = record["output_key"]
        data = staging.read(key)
        if sha256_bytes(data) != record["output_sha256"]:
            raise PublishRefused(
                f"staged output {staging.uri_of(key)} does not match its verified sha256"
            )
        release.write(key, data)
        released.append((key, record["output_sha256"]))
    withheld = len([r for r in records if r["status"] == Status.VERIFIED]) - len(released)
    marker = {
        "manifest_sha256": manifest_sha256,
        "published": len(released),
        "withheld": withheld,
        "policy": policy,
        # sha256 over the sorted "key sha256" lines: what a consumer can check the release by
        "release_sha256": release_digest(released),
    }
    if released or not records:
        release.write_text(SUCCESS_MARKER, json.dumps(marker, sort_keys=True) + "\n")
    return {**marker, "keys": [key for key, _ in released]}


def release_digest(objects: Sequence[tuple[str, str]]) -> str:
    """One sha256 for a release: over ``"{key} {sha256}\\n"`` lines in key order."""
    lines = "".join(f"{key} {sha}\n" for key, sha in sorted(objects))
    return sha256_bytes(lines.encode("utf-8"))


def _retract_other_marker(release: Storage, manifest_sha256: str) -> None:
    """Remove a ``_SUCCESS`` that describes another manifest: the release is changing."""
    if not release.exists(SUCCESS_MARKER):
        return
    try:
        current = json.loads(release.read_text(SUCCESS_MARKER)).get("manifest_sha256")
    except ValueError:
        current = None
    if current != manifest_sha256:
        release.delete(SUCCESS_MARKER)
