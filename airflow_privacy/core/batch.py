"""Driver 1, the CLI's: a whole batch in one process, the flow fused per image.

Reads every input below the source root, runs every step of
:mod:`airflow_privacy.core.flow` on each (:data:`~airflow_privacy.core.flow.ALL`,
the same functions the Airflow stages run one group at a time), stages verified outputs,
quarantines the rest with their reasons, writes the manifest, and only then
publishes. A bad file never stops the batch; a storage outage does (it is
retryable, and nothing has been published at that point).

Images are processed by a small pool of worker threads (``workers``, default
:data:`DEFAULT_WORKERS`) through a bounded window: while one image is in the
model (which releases the GIL, and which :class:`PersonDetector` runs one call
at a time), another is read, decoded, blurred, encoded, hashed or written.
At most ``workers + 1`` images are in memory at once, whatever the batch size,
and records come back in input order, so the manifest and the log do not
depend on the number of workers.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_privacy.core import flow
from airflow_privacy.core.incremental import Increment
from airflow_privacy.core.inputs import listing, read_input
from airflow_privacy.core.manifest import summarize, write_manifest, write_summary
from airflow_privacy.core.naming import Namer, output_key
from airflow_privacy.core.outcomes import settle
from airflow_privacy.core.pipeline import Pipeline
from airflow_privacy.core.publish import Policy, publish
from airflow_privacy.core.report import run_identity, write_report
from airflow_privacy.core.retention import Retention, expire_quarantine
from airflow_privacy.core.status import Status
from airflow_privacy.storage import Storage

log = logging.getLogger(__name__)

STAGING = ".staging"
QUARANTINE = "quarantine"
DEFAULT_WORKERS = 2  # one image in the model, one in I/O and pre/post-processing


@dataclass
class BatchResult:
    summary: dict[str, Any]
    records: list[dict[str, Any]]

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
    """
    retention = retention or Retention()
    run = dict(run or {})
    run.setdefault("started", datetime.now(UTC).isoformat())
    started = time.perf_counter()
    keys, refused, ignored = listing(source, namer)
    increment, carried = None, []
    if incremental:  # decided before anything is written: the report still holds the baseline
        increment = Increment.open(source, release, report, pipeline.settings.key(),
                                   namer=namer)
        todo = []
        for key, prior in increment.walk(keys, refused):
            if prior is None:
                todo.append(key)
            else:
                carried.append(prior)
        keys = todo
        log.info("incremental: %d carried, %d to process", len(carried), len(keys))
    staging = report.child(STAGING)
    quarantine = report.child(QUARANTINE)

    def one(key: str) -> dict[str, Any]:
        outcome = process_key(pipeline, source, key, output_key(key, namer), refused.get(key))
        return settle(outcome, source, staging, quarantine,
                      keep_rejected_source=retention.keep_rejected_source)

    records = []
    for key, record in in_order(one, keys, workers=workers, progress=progress):
        records.append(record)
        log.info("%s: %s", key, record["status"])
    processed = len(records)
    records += carried
    manifest_sha256 = write_manifest(report, records)
    released = publish(records, staging, release, policy=policy, manifest_sha256=manifest_sha256,
                       retract=[r["output_key"] for r in increment.retractions]
                       if increment else ())
    for record in records[:processed]:
        if record["status"] == Status.VERIFIED:
            staging.delete(record["output_key"])
    elapsed = time.perf_counter() - started
    extra = {} if increment is None else {
        "incremental": increment.summary() | {"retracted": released["retracted"]}}
    summary = summarize(
        records,
        published=released["published"],
        withheld=released["withheld"],
        ignored=ignored,
        policy=policy,
        manifest_sha256=manifest_sha256,
        settings=pipeline.settings.to_dict(),
        settings_key=pipeline.settings.key(),
        elapsed_s=round(elapsed, 2),
        images_per_second=round(processed / elapsed, 3) if elapsed > 0 else None,
        release=release.uri,
        release_sha256=released["release_sha256"] if released["published"] else None,
        **extra,
    )
    write_summary(report, summary)
    expire_quarantine(quarantine, retention.quarantine_days)
    run.setdefault("ended", datetime.now(UTC).isoformat())
    write_report(report, records, summary, release, run=run_identity(**run),
                 retention=retention.to_dict(), key=attestation_key, key_id=attestation_key_id)
    return BatchResult(summary, records)


def in_order(
    job: Callable[[str], dict[str, Any]],
    keys: list[str],
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Callable[[Iterable[str]], Iterable[str]] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, job(key))`` for every key, in order, with up to ``workers`` jobs running.

    The window of submitted jobs is ``workers + 1``: the next image is already
    being read when a worker frees up, yet memory stays bounded. ``progress``
    wraps the keys as they complete. The first exception (a storage outage)
    stops the batch: jobs not yet started are cancelled, running ones finish.
    """
    ticks = progress(keys) if progress else keys
    if workers <= 1:
        for key in ticks:
            yield key, job(key)
        return
    pending: deque[tuple[str, Future[dict[str, Any]]]] = deque()
    upcoming = iter(keys)
    with ThreadPoolExecutor(workers, thread_name_prefix="anonymize") as pool:
        try:
            for key in upcoming:
                pending.append((key, pool.submit(job, key)))
                if len(pending) > workers:
                    break
            for _ in ticks:
                key, future = pending.popleft()
                record = future.result()
                following = next(upcoming, None)
                if following is not None:
                    pending.append((following, pool.submit(job, following)))
                yield key, record
        finally:
            for _, future in pending:
                future.cancel()

