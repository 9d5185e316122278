"""Driver 1, the CLI's: a whole batch in one process, the flow fused per image.

Reads every input below the source root, runs every step of
:mod:`airflow_privacy.core.flow` on each (:data:`~airflow_privacy.core.flow.ALL`,
the same functions the Airflow stages run one group at a time), stages verified outputs,
quarantines the rest with their reasons, writes the manifest, and only then
publishes. A bad file never stops the batch; a storage outage does (it is
retryable, and nothing has been published at that point).

Images are processed by a small pool of worker threads (``workers``, default
:data:`~airflow_privacy.core.workers.DEFAULT_WORKERS`) through a bounded window
(:func:`~airflow_privacy.core.workers.in_order`, shared with the Airflow stages):
at most ``workers + 1`` images are in memory at once, whatever the batch size,
and records come back in input order, so the manifest and the log do not
depend on the number of workers. Finished records are not kept either: they
are spooled to a local temporary file and read back one at a time to write the
manifest (streamed, :func:`~airflow_privacy.core.manifest.write_manifest_stream`,
as the Airflow driver writes it), publish, clean staging and write the report,
so peak memory is the same for a thousand images or a million.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_privacy.core import flow
from airflow_privacy.core.incremental import Increment
from airflow_privacy.core.inputs import listing, read_input
from airflow_privacy.core.manifest import (
    ManifestFile,
    dumps_record,
    merge_by_source,
    write_manifest_stream,
    write_summary,
)
from airflow_privacy.core.naming import Namer, output_key
from airflow_privacy.core.outcomes import settle
from airflow_privacy.core.pipeline import Pipeline
from airflow_privacy.core.publish import Policy, publish
from airflow_privacy.core.report import run_identity, write_report_from
from airflow_privacy.core.retention import Retention, expire_quarantine
from airflow_privacy.core.status import Status
from airflow_privacy.core.workers import DEFAULT_WORKERS, in_order
from airflow_privacy.storage import Storage

log = logging.getLogger(__name__)

STAGING = ".staging"
QUARANTINE = "quarantine"


@dataclass
class BatchResult:
    """The summary, and the manifest's records (sorted by source) re-read when iterated.

    ``records`` is a :class:`~airflow_privacy.core.manifest.ManifestFile`: a
    sequence that holds no record, whatever the batch size, and reads
    ``manifest.jsonl`` from the report location at each pass.
    """

    summary: dict[str, Any]
    records: Sequence[dict[str, Any]]

    @property
    def all_published(self) -> bool:
        # files that are not images are recorded (``ignored``) but have nothing to publish
        return self.summary["published"] == self.summary["images"] - self.summary["ignored"]


def process_key(
    pipeline: Pipeline, source: Storage, key: str, name: str,
    refused: tuple[str, str] | None = None,
) -> flow.ImageOutcome:
    """Read and run the whole flow on one key; rejections become error records."""
    state = flow.begin(pipeline, key, name, refused=refused)
    read_input(source, state)
    return flow.run(pipeline, state, flow.ALL).outcome()


def run_batch(
    source: Storage,
    release: Storage,
    report: Storage,
    pipeline: Pipeline,
    *,
    policy: Policy = "publish_passing",
    progress: Callable[[Iterable[str]], Iterable[str]] | None = None,
    namer: Namer | None = None,
    workers: int = DEFAULT_WORKERS,
    retention: Retention | None = None,
    run: dict[str, Any] | None = None,
    attestation_key: bytes | None = None,
    attestation_key_id: str | None = None,
    incremental: bool = False,
) -> BatchResult:
    """``namer``: publish under pseudonyms (:class:`~airflow_privacy.core.naming.Pseudonymizer`).

    ``workers``: images processed concurrently (1: strictly one after the other).
    ``retention``: what is kept of rejected inputs and for how long quarantine is kept.
    ``run``: the run's identity for the report (``started``/``ended`` are filled in when
    missing); ``attestation_key`` signs ``attestation.json``.
    ``incremental``: process only inputs the previous release (in ``release``, with its
    manifest in ``report``) does not already hold under the same settings; their
    records are carried into the new manifest and outputs of vanished or changed
    inputs retracted (:mod:`~airflow_privacy.core.incremental`, shared with the
    Airflow list task). The summary's ``incremental`` says what was decided and why.

    Memory does not grow with the batch: each record is spooled to a local
    temporary file (:class:`Spool`) as soon as it is final, and the manifest,
    the publish, the staging cleanup and the report each read the records back
    one at a time. The returned records are re-read from ``manifest.jsonl``.
    """
    retention = retention or Retention()
    run = dict(run or {})
    run.setdefault("started", datetime.now(UTC).isoformat())
    started = time.perf_counter()
    keys, refused, ignored = listing(source, namer)
    staging = report.child(STAGING)
    quarantine = report.child(QUARANTINE)
    with Spool() as processed, Spool() as carried:
        increment = None
        if incremental:  # decided before anything is written: the report still holds the baseline
            increment = Increment.open(source, release, report, pipeline.settings.key(),
                                       namer=namer)
            keys = _carry(increment, keys, refused, carried)

        def one(key: str) -> dict[str, Any]:
            outcome = process_key(pipeline, source, key, output_key(key, namer),
                                  refused.get(key))
            return settle(outcome, source, staging, quarantine,
                          keep_rejected_source=retention.keep_rejected_source)

        for key, record in in_order(one, keys, workers=workers, progress=progress):
            processed.add(record)
            log.info("%s: %s", key, record["status"])
        written = write_manifest_stream(report, merge_by_source(processed, carried))
        released = publish(itertools.chain(processed, carried), staging, release,
                           policy=policy, manifest_sha256=written.sha256,
                           retract=[r["output_key"] for r in increment.retractions]
                           if increment else ())
        for record in processed:
            if record["status"] == Status.VERIFIED:
                staging.delete(record["output_key"])
    elapsed = time.perf_counter() - started
    extra = {} if increment is None else {
        "incremental": increment.summary() | {"retracted": released["retracted"]}}
    summary = {
        **written.totals.counts(),
        "published": released["published"],
        "withheld": released["withheld"],
        "ignored": ignored,
        "policy": policy,
        "manifest_sha256": written.sha256,
        "settings": pipeline.settings.to_dict(),
        "settings_key": pipeline.settings.key(),
        "elapsed_s": round(elapsed, 2),
        "images_per_second": round(processed.count / elapsed, 3) if elapsed > 0 else None,
        "release": release.uri,
        "release_sha256": released["release_sha256"] if released["published"] else None,
        **extra,
    }
    write_summary(report, summary)
    expire_quarantine(quarantine, retention.quarantine_days)
    run.setdefault("ended", datetime.now(UTC).isoformat())
    write_report_from(report, release, run=run_identity(**run), retention=retention.to_dict(),
                      key=attestation_key, key_id=attestation_key_id)
    return BatchResult(summary, ManifestFile(report, written.sha256, written.totals.by_status))


def _carry(increment: Increment, keys: list[str], refused: dict[str, Any],
           carried: Spool) -> list[str]:
    """The keys still to process; the carried records go to ``carried``, in key order."""
    todo = []
    for key, prior in increment.walk(keys, refused):
        if prior is None:
            todo.append(key)
        else:
            carried.add(prior)
    log.info("incremental: %d carried, %d to process", carried.count, len(todo))
    return todo


class Spool:
    """Records as JSON lines in a local temporary file: written once, re-read at every pass.

    What keeps the batch's memory flat: a record (tens of KB with its candidates
    and verification rounds) leaves memory as soon as it is final. The file has
    no name (:func:`tempfile.TemporaryFile`) and is gone when closed, on error too.
    Records come back in the order they were added, as new dicts (the JSON round
    trip every manifest record makes anyway); one pass at a time, not while adding.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self.count = 0
        self._reading = False

    def add(self, record: dict[str, Any]) -> None:
        self._file.write(dumps_record(record))
        self.count += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._reading:
            raise RuntimeError("a spool is read one pass at a time")
        self._reading = True
        try:
            self._file.flush()
            self._file.seek(0)
            for line in self._file:
                yield json.loads(line)
        finally:
            self._reading = False
            if not self._file.closed:  # a pass left unfinished may end after the spool did
                self._file.seek(0, os.SEEK_END)  # where the next record goes

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
