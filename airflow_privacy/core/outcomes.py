"""Where an outcome goes: a verified output to staging, anything else to quarantine.

Shared by the fused batch and the Airflow verify stage, so their manifests
have one shape and quarantine holds the same things.
"""

from __future__ import annotations

from typing import Any

from airflow_privacy.core.flow import ImageOutcome
from airflow_privacy.core.status import Status
from airflow_privacy.storage import Storage, StorageError, TransientStorageError


def settle(
    outcome: ImageOutcome, source: Storage, staging: Storage, quarantine: Storage, *,
    keep_rejected_source: bool = False,
) -> dict[str, Any]:
    """Stage a verified output, quarantine anything else; completes ``record["quarantine"]``.

    ``keep_rejected_source``: also keep the source bytes of a rejected input
    (default: only its sha256 in the record; data minimisation, see
    :mod:`airflow_privacy.core.retention`).
    """
    record = outcome.record
    record["quarantine"] = None
    if record["status"] == Status.VERIFIED and outcome.output is not None:
        staging.write(record["output_key"], outcome.output)
    else:
        record["quarantine"] = _quarantine(quarantine, record["source"], outcome, source,
                                           keep_rejected_source)
    return record


def _quarantine(
    quarantine: Storage, key: str, outcome: ImageOutcome, source: Storage, keep_source: bool
) -> str | None:
    """Keep what failed for review: the failed anonymized output, else (if asked) the source."""
    if outcome.record["error"] and outcome.record["error"]["code"] == "unsafe_path":
        return None  # nothing may be read or written under a key that leaves the root
    data = outcome.output
    if data is None and not keep_source:
        return None  # the manifest keeps the input's sha256; its bytes stay where they were
    if data is None:
        try:
            data = source.read(key)
        except TransientStorageError:
            raise  # an outage is not "unreadable": the task must fail and be retried
        except StorageError:
            return None
    quarantine.write(key, data)
    return quarantine.uri_of(key)
