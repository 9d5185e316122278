"""Data minimisation: what personal data the pipeline keeps, where, and for how long.

Inputs are photos of people, so every copy the pipeline makes is personal data
until it is verified anonymized. The policy, per place it writes:

* **work** (Airflow only: candidates, staged outputs, checkpoints, shard
  records): needed only until the release is published. The cleanup task
  removes all of it after a successful publish (:func:`clean_work`).
* **quarantine** (below the report location): outputs that failed
  verification, kept for a reviewer, and deleted once older than
  ``quarantine_days`` (:func:`expire_quarantine`, run by the cleanup task and
  at the end of every CLI run). The *source bytes* of rejected inputs are kept
  only when ``keep_rejected_source`` is set; by default a rejected input leaves
  its sha256 in the manifest and nothing else.
* **report** (manifest, summary, validation, report, attestation): file names
  and hashes, counts and boxes; no pixels except the thumbnails of *published*
  (anonymized) outputs. Kept as the audit trail.

Nothing here imports Airflow: the CLI and the operators apply the same policy.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_privacy.exceptions import SettingsError
from airflow_privacy.storage import Storage, StorageError, TransientStorageError

log = logging.getLogger(__name__)

DEFAULT_QUARANTINE_DAYS = 30


@dataclass(frozen=True)
class Retention:
    """How long personal data outside the release is kept; recorded in the report.

    Not part of :class:`~airflow_privacy.core.settings.RunSettings` (and its
    key): it changes what is kept, never what is published.
    """

    keep_rejected_source: bool = False
    quarantine_days: int = DEFAULT_QUARANTINE_DAYS

    def __post_init__(self) -> None:
        if not isinstance(self.quarantine_days, int) or self.quarantine_days < 0:
            raise SettingsError(f"quarantine_days must be an integer >= 0, not "
                                f"{self.quarantine_days!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_work(work: Storage) -> int:
    """Remove everything below the run's work location; returns how many objects went.

    Called only after a successful publish: staging, candidates and
    checkpoints are then no longer needed, and keeping them would keep
    personal data (candidates are anonymized but not yet verified) for nothing.
    """
    removed = work.clear()
    log.info("removed %d work objects below %s", removed, work.uri)
    return removed


def expire_quarantine(
    quarantine: Storage, days: int, *, now: datetime | None = None
) -> list[str]:
    """Delete quarantined objects written more than ``days`` ago; returns their keys.

    ``days=0`` deletes everything quarantined (keep nothing for review).
    """
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=days)
    expired = []
    for key in list(quarantine.list()):
        try:
            written = quarantine.modified(key)
        except TransientStorageError:
            raise
        except StorageError:
            continue  # gone meanwhile
        if days == 0 or written <= cutoff:
            quarantine.delete(key)
            expired.append(key)
    if expired:
        log.info("deleted %d quarantined objects older than %d days below %s",
                 len(expired), days, quarantine.uri)
    return expired

