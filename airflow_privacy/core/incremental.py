"""Incremental runs: which inputs the previous release covers, decided once for both drivers.

A run with ``incremental`` processes only the inputs that are not already
released under the same settings. The evidence is what the previous run left:

* the release's ``_SUCCESS`` marker, which pins the sha256 of the manifest it was
  published from (and the ``release_sha256`` of what it published);
* that manifest (``manifest.jsonl`` in the report location), whose sha256 must
  be the pinned one, and ``summary.json``, whose ``settings_key`` must be this
  run's :meth:`~airflow_privacy.core.settings.RunSettings.key`.

With no usable baseline (no or unreadable marker, a marker pinning another
manifest, an unreadable or unsorted manifest) everything is processed and
:attr:`Increment.reason` says why (it goes to the summary and the log). Under
other settings everything is processed too, but the pinned manifest still says
what the release holds, so outputs of inputs that are gone are retracted.

An input is **carried** (not processed again) when the baseline manifest has a
``verified`` record for the same source key, made under the same settings key,
with the output name this run would give it (the same pseudonym key), when the
input's bytes still hash to the recorded ``input_sha256`` and the release still
holds the recorded output with its ``output_sha256``. The sha256 is the
identity: every carried input and its released output are re-read and hashed
(in :data:`CHECK_WORKERS` threads), no model is loaded or run. Listing facts
(ETag, size, mtime) are not used: the :class:`~airflow_privacy.storage.Storage`
interface does not expose them, an S3 ETag is no content hash for multipart
uploads, and a size or time can stay equal while the bytes change.

Its record is carried into the new manifest as it was, marked with
``carried_from`` (the baseline manifest's sha256), so the new manifest still
describes the whole release and ``_SUCCESS`` still covers every released object.
Everything else is processed as in a full run: new inputs, changed ones, inputs
whose earlier record failed, and listed non-images (recorded again).

Outputs the baseline released whose inputs are gone from the source or are
processed again are **retracted**: listed in :data:`RETRACT` and removed from
the release when the new release is published, unless the new run publishes
the same key again (a changed input, re-verified). Nothing else in the release
is touched.

Memory: both the manifest and the listing are sorted by source key, so they are
walked side by side (a merge join; the manifest is streamed twice, once to check
its sha256 before anything is decided, once to decide); no record is held beyond
the ones being compared, ``workers`` inputs are being hashed at a time (one more
waiting, :func:`~airflow_privacy.core.workers.ordered`), and carried records are
streamed to the new manifest (the Airflow driver writes them to
``work/carried.jsonl``, merged by source with the shards' records by
:class:`~airflow_privacy.core.release.ManifestRecords`). What is kept is the
list of outputs to retract (about 200 bytes each, only for inputs that changed
or vanished).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.manifest import MANIFEST, SUMMARY, pinned_records
from airflow_privacy.core.naming import Namer, output_key
from airflow_privacy.core.publish import read_marker
from airflow_privacy.core.status import Status
from airflow_privacy.core.workers import ordered
from airflow_privacy.storage import Storage, StorageError, TransientStorageError

log = logging.getLogger(__name__)

CARRIED = "carried.jsonl"  # work: the carried records, sorted by source (Airflow driver)
RETRACT = "retract.jsonl"  # work: {"output_key", "source", "why"} of outputs to retract
CARRIED_FROM = "carried_from"  # the record field: the baseline manifest's sha256
CHECK_WORKERS = 8  # inputs and outputs hashed concurrently: object stores answer in ~10-50 ms


@dataclass(frozen=True)
class Baseline:
    """The previous release this run builds on: its manifest's and its objects' digests."""

    manifest_sha256: str
    release_sha256: str | None
    settings_key: str  # the baseline's
    carries: bool = True  # made under this run's settings: its records may be carried


def find_baseline(report: Storage, release: Storage,
                  settings_key: str) -> tuple[Baseline | None, str]:
    """The previous release, or None; and why (a line for the summary and the log).

    Reads ``summary.json``, the release's ``_SUCCESS`` and the whole manifest once
    (streamed, hashed and parsed: a manifest that is not the pinned one, not JSON or
    not sorted is no baseline). A baseline made under other settings carries
    nothing (``carries`` false) but still says which outputs the release holds, so
    those of vanished inputs are retracted. A storage outage propagates: the run is
    retried rather than silently reprocessing everything.
    """
    marker = read_marker(release)
    if marker is None:
        return None, f"no readable _SUCCESS in {release.uri}: nothing released to build on"
    try:
        summary = json.loads(report.read_text(SUMMARY))
    except TransientStorageError:
        raise
    except (StorageError, ValueError):
        return None, f"no readable {SUMMARY} in {report.uri}"
    if not isinstance(summary, dict):
        return None, f"{report.uri_of(SUMMARY)} is not a summary"
    pinned = marker.get("manifest_sha256")
    if not pinned or summary.get("manifest_sha256") != pinned:
        return None, (f"the release's _SUCCESS pins manifest {str(pinned)[:12]}, the report "
                      f"holds {str(summary.get('manifest_sha256'))[:12]} (a later run did not "
                      "publish)")
    try:
        digest, count = _scan(report)
    except TransientStorageError:
        raise
    except (StorageError, ValueError, KeyError, TypeError) as exc:
        return None, f"{report.uri_of(MANIFEST)} is unreadable: {exc}"
    if digest != pinned:
        return None, f"{report.uri_of(MANIFEST)} is not the manifest the release's _SUCCESS pins"
    released = str(summary.get("settings_key"))
    baseline = Baseline(pinned, marker.get("release_sha256"), released,
                        carries=released == settings_key)
    if not baseline.carries:
        return baseline, (f"the settings changed (key {released[:12]} released, "
                          f"{settings_key[:12]} now): everything is processed again")
    return baseline, f"building on the release of manifest {pinned[:12]} ({count} records)"


def _scan(report: Storage) -> tuple[str, int]:
    """The manifest's sha256 and record count; raises if a line is no record or out of order."""
    digest, count, last = hashlib.sha256(), 0, None
    for line in report.read_lines(MANIFEST):
        digest.update(line)
        if line.strip():
            source = json.loads(line)["source"]
            if not isinstance(source, str) or (last is not None and source <= last):
                raise ValueError(f"records not sorted by source at {source!r}")
            last, count = source, count + 1
    return digest.hexdigest(), count


@dataclass
class Increment:
    """One incremental run's decision: which listed inputs are carried, which outputs retracted.

    Built by :meth:`open` (reads the baseline); :meth:`walk` then decides input by
    input. Counts are complete once the walk is exhausted.
    """

    source: Storage
    release: Storage
    report: Storage
    baseline: Baseline | None
    reason: str
    namer: Namer | None = None
    workers: int = CHECK_WORKERS
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("carried", "new", "changed", "reprocessed", "vanished"), 0))
    retractions: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def open(cls, source: Storage, release: Storage, report: Storage, settings_key: str, *,
             namer: Namer | None = None, workers: int = CHECK_WORKERS) -> Increment:
        baseline, reason = find_baseline(report, release, settings_key)
        log.info("incremental run: %s", reason)
        return cls(source, release, report, baseline, reason, namer, max(1, workers))

    def walk(self, keys: Iterable[str],
             refused: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """``(key, carried record or None)`` for every listed key, in order.

        ``keys`` must be sorted (the listing is); ``refused`` are the listing's
        refusals and skips, which are always processed (recorded) again.
        """
        if self.baseline is None:
            for key in keys:
                self.counts["new"] += 1
                yield key, None
            return
        pairs = self._pairs(keys, refused)
        for _, (key, record, why) in ordered(self._judge, pairs, workers=self.workers):
            if why is None:
                self.counts["carried"] += 1
                yield key, {**record, CARRIED_FROM: self.baseline.manifest_sha256}
                continue
            self.counts[why] += 1
            if record is not None:
                self._retract(record, why)
            yield key, None

    def summary(self) -> dict[str, Any]:
        """What the summary records under ``incremental``."""
        return {"baseline_manifest_sha256": self.baseline and self.baseline.manifest_sha256,
                "baseline_release_sha256": self.baseline and self.baseline.release_sha256,
                "reason": self.reason, **self.counts, "to_retract": len(self.retractions)}

    # -- the walk ------------------------------------------------------------------------------

    def _pairs(self, keys: Iterable[str],
               refused: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any] | None, bool]]:
        """Each listed key beside its baseline record (merge join), and whether it is a
        candidate to carry; baseline records of keys no longer listed are retracted."""
        previous = self._records()
        prior = next(previous, None)
        for key in keys:
            while prior is not None and prior["source"] < key:
                self._vanished(prior)
                prior = next(previous, None)
            match = None
            if prior is not None and prior["source"] == key:
                match, prior = prior, next(previous, None)
            yield key, match, key not in refused
        while prior is not None:
            self._vanished(prior)
            prior = next(previous, None)

    def _records(self) -> Iterator[dict[str, Any]]:
        """The baseline manifest's records, re-hashed: it must not change during the walk."""
        assert self.baseline is not None
        return pinned_records(self.report, self.baseline.manifest_sha256,
                              "changed during the incremental walk (another run writing the "
                              "same report?); run again")

    def _judge(self, item: tuple[str, dict[str, Any] | None, bool]
               ) -> tuple[str, dict[str, Any] | None, str | None]:
        """``(key, baseline record, why it is processed)``; ``why`` None: carried."""
        key, record, eligible = item
        if record is None:
            return key, None, "new"
        if not (eligible and self._released(key, record)):  # nothing is read
            return key, record, "reprocessed"
        try:
            data = self.source.read(key)
        except TransientStorageError:
            raise
        except StorageError:
            return key, record, "reprocessed"  # the stages record why it is unreadable
        if sha256_bytes(data) != record.get("input_sha256"):
            return key, record, "changed"
        if not self.release.holds(record["output_key"], record["output_sha256"]):
            return key, record, "reprocessed"  # its output left the release: make it again
        return key, record, None

    def _released(self, key: str, record: dict[str, Any]) -> bool:
        """The record is a released output this run would name the same, under its settings."""
        assert self.baseline is not None
        return (self.baseline.carries and record.get("status") == Status.VERIFIED
                and bool(record.get("output_sha256"))
                and record.get("output_key") == output_key(key, self.namer)
                and record.get("settings_key") == self.baseline.settings_key)

    def _vanished(self, record: dict[str, Any]) -> None:
        self.counts["vanished"] += 1
        self._retract(record, "vanished")

    def _retract(self, record: dict[str, Any], why: str) -> None:
        """Note a baseline output to retract, if the baseline released one."""
        if record.get("status") == Status.VERIFIED and record.get("output_key"):
            self.retractions.append({"output_key": record["output_key"],
                                     "source": record["source"], "why": why})


def read_retractions(work: Storage) -> Iterator[dict[str, str]]:
    """The Airflow driver's retractions, as the list task wrote them (none if absent)."""
    return _json_lines(work, RETRACT)


def carried_records(work: Storage) -> Iterator[dict[str, Any]]:
    """The Airflow driver's carried records, sorted by source (none if not incremental)."""
    return _json_lines(work, CARRIED)


def _json_lines(work: Storage, key: str) -> Iterator[dict[str, Any]]:
    """The objects of a JSON Lines file in ``work``, streamed; none if it is absent."""
    if not work.exists(key):
        return
    for line in work.read_lines(key):
        if line.strip():
            yield json.loads(line)
