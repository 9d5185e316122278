"""The run's auditable record: ``manifest.jsonl`` (one record per input) and ``summary.json``.

The manifest is written once, after verification and before anything is
published, so the publish step (and its ``_SUCCESS`` marker) can pin its sha256.

Both drivers write it streamed (:func:`write_manifest_stream`), one record in
memory at a time, from records already in source order (:func:`merge_by_source`
joins the processed and the carried ones), and read it back lazily
(:class:`LazyRecords`), so a batch of any size holds a bounded number of records.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.status import SKIPPED, Status
from airflow_privacy.storage import Storage, StorageError

MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
VALIDATION = "validation.json"  # the quality gate's result, see core.expectations


def dumps_record(record: dict[str, Any]) -> bytes:
    """One manifest line: the one serialization of a record, so all writers agree byte for byte."""
    return (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")


def dumps_records(records: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(dumps_record(r) for r in records)


def loads_records(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def record_source(record: dict[str, Any]) -> str:
    """The manifest's sort key."""
    return str(record["source"])


def write_manifest(report: Storage, records: Sequence[dict[str, Any]]) -> str:
    """Write the manifest, sorted by source key; returns its sha256."""
    data = dumps_records(sorted(records, key=lambda r: r["source"]))
    report.write(MANIFEST, data)
    return sha256_bytes(data)


def read_manifest(report: Storage) -> list[dict[str, Any]]:
    return loads_records(report.read(MANIFEST))


@dataclass
class Totals:
    """:func:`summarize`'s counts, added up one record at a time: any number in O(1) memory."""

    by_status: dict[str, int] = field(default_factory=dict)
    persons_detected: int = 0
    residual_detections: int = 0
    remediated: int = 0
    skipped: int = 0  # records of listed files that are not images (the summary's ``ignored``)

    def add(self, record: dict[str, Any]) -> None:
        self.by_status[record["status"]] = self.by_status.get(record["status"], 0) + 1
        verification = record.get("verification") or {}
        self.persons_detected += record.get("persons_detected", 0)
        self.residual_detections += len(verification.get("residuals", []))
        self.remediated += verification.get("remediation_rounds", 0) > 0
        self.skipped += (record.get("error") or {}).get("code") in SKIPPED

    def counts(self) -> dict[str, int]:
        """The summary's totals, in the order :func:`summarize` gives them."""
        return {
            "images": sum(self.by_status.values()),
            "verified": self.by_status.get(Status.VERIFIED, 0),
            "quarantined": self.by_status.get(Status.QUARANTINED, 0),
            "errors": self.by_status.get(Status.ERROR, 0),
            "persons_detected": self.persons_detected,
            "residual_detections": self.residual_detections,
            "remediated": self.remediated,
        }


def summarize(records: Iterable[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Totals over the manifest; ``extra`` adds run-level facts (published, timings...)."""
    totals = Totals()
    for record in records:
        totals.add(record)
    return {**totals.counts(), **extra}


def write_summary(report: Storage, summary: dict[str, Any]) -> None:
    report.write_text(SUMMARY, json.dumps(summary, indent=2, sort_keys=True) + "\n")


# -- streaming: both drivers write and re-read the manifest one record at a time ------------------


def merge_by_source(*streams: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Streams each sorted by source as one stream sorted by source, one record of each held.

    How processed and carried records (an incremental run) become one manifest.
    """
    return heapq.merge(*streams, key=record_source)


@dataclass
class WrittenManifest:
    """What :func:`write_manifest_stream` wrote: the manifest's sha256 and its totals."""

    sha256: str
    totals: Totals


def write_manifest_stream(report: Storage, records: Iterable[dict[str, Any]]) -> WrittenManifest:
    """Write ``manifest.jsonl`` from records in source order, one in memory at a time.

    The bytes are exactly :func:`write_manifest`'s for the same records, hashed
    and counted on the way. That needs the order, which is checked rather than
    sorted (sorting would hold them all): a record whose source does not come
    after the one before (out of order, or a source twice, e.g. both carried and
    processed) raises :class:`RuntimeError` before the manifest is stored.
    """
    digest, totals = hashlib.sha256(), Totals()

    def lines() -> Iterator[bytes]:
        last: str | None = None
        for record in records:
            source = record_source(record)
            if last is not None and source <= last:
                raise RuntimeError(f"manifest records not sorted by source: {source!r} after "
                                 f"{last!r} (out of order, or the same source twice)")
            last = source
            totals.add(record)
            line = dumps_record(record)
            digest.update(line)
            yield line

    report.write_stream(MANIFEST, lines())
    return WrittenManifest(digest.hexdigest(), totals)


class LazyRecords(Sequence[dict[str, Any]]):
    """Manifest records re-read from storage whenever they are iterated, never held.

    Subclasses give :meth:`__iter__`. Sized without reading a record: ``len()``
    sums ``by_status``, which whoever wrote the records fills in. Indexing reads
    up to the record (a negative index or a slice reads them all: small runs,
    tests). Each pass yields new dicts, so changing one changes nothing stored;
    a deep copy is a plain list, a snapshot that can be changed.
    """

    def __init__(self, by_status: dict[str, int] | None = None) -> None:
        self.by_status: dict[str, int] = dict(by_status or {})

    def __iter__(self) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def __len__(self) -> int:
        return sum(self.by_status.values())

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, int) and index >= 0:
            for record in itertools.islice(self, index, None):
                return record
            raise IndexError(f"record index {index} out of range")
        return list(self)[index]

    def __reversed__(self) -> Iterator[dict[str, Any]]:
        return reversed(list(self))

    def __deepcopy__(self, memo: dict[int, Any]) -> list[dict[str, Any]]:
        return list(self)


class ManifestFile(LazyRecords):
    """The records of ``report/manifest.jsonl``, streamed line by line at every pass.

    ``sha256`` is the manifest as written: a full pass that read other bytes (the
    report was overwritten since, e.g. by another run) raises :class:`StorageError`
    rather than pass those records off as this run's.
    """

    def __init__(self, report: Storage, sha256: str, by_status: dict[str, int]) -> None:
        super().__init__(by_status)
        self.report, self.sha256 = report, sha256

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return pinned_records(self.report, self.sha256, "is no longer the manifest these "
                              "records were written to (another run since?)")


def pinned_records(report: Storage, sha256: str, changed: str) -> Iterator[dict[str, Any]]:
    """``report/manifest.jsonl``'s records, streamed; a full pass over bytes whose sha256 is
    not ``sha256`` ends in :class:`StorageError` (``changed`` says what that means)."""
    digest = hashlib.sha256()
    for line in report.read_lines(MANIFEST):
        digest.update(line)
        if line.strip():
            yield json.loads(line)
    if digest.hexdigest() != sha256:
        raise StorageError(f"{report.uri_of(MANIFEST)} {changed}")
