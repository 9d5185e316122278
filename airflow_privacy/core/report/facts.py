"""The report's facts from one pass over the manifest, in memory that does not grow with it.

A manifest of a million records is gigabytes of JSON; the page and the
attestation need only what it adds up to. :class:`ReportFacts` reads records
one at a time (from a list, or lines streamed from ``manifest.jsonl`` whose
sha256 it takes on the way) and keeps:

* every count the page and the plain-language story show, the confidence
  histogram and the models seen: exact for any size;
* a bounded set of per-image rows, the ones a reviewer must look at first: see
  :data:`CATEGORIES`. At most ``max_rows`` are kept, chosen by (category,
  source key), so the same records give the same rows whatever order they
  come in; the page says how many are not shown (``manifest.jsonl`` has them);
* the first ``max_thumbnails`` releasable records by source, for thumbnails.

Whether a verified output was published is only known at the end (under
``all_or_nothing`` one failure anywhere withholds them all), so rows record
whether their output is releasable, and :attr:`ReportFacts.published` is
decided after the pass with the same rule as
:func:`~airflow_privacy.core.publish.plan_release`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from airflow_privacy.core.publish import POLICIES
from airflow_privacy.core.status import SKIPPED, Status

HISTOGRAM_BINS = 10
DEFAULT_MAX_ROWS = 500  # ~0.5 MB of page: readable, and a reviewer's working list
DEFAULT_MAX_THUMBNAILS = 200

#: Row categories, most urgent first: which rows a capped page keeps. Published
#: outputs that have a thumbnail rank between ``skipped`` and ``anonymized``.
CATEGORIES = (
    ("withheld", "quarantined or rejected"),
    ("flagged", "remediated, with dismissed candidates, or with residual detections"),
    ("skipped", "skipped (not images)"),
    ("anonymized", "verified, people hidden"),
    ("clear", "verified, no one found"),
)
_THUMBNAILED = 2.5  # the priority of a row whose output is shown as a thumbnail


@dataclass(slots=True)
class _Entry:
    """A heap entry ordered *backwards*, so the heap's top is the worst of those kept."""

    key: tuple[Any, ...]
    item: Any

    def __lt__(self, other: _Entry) -> bool:
        return self.key > other.key


@dataclass
class Smallest:
    """The ``limit`` items with the smallest keys seen so far, in O(``limit``) memory."""

    limit: int
    _heap: list[_Entry] = field(default_factory=list)

    def wants(self, prefix: tuple[Any, ...]) -> bool:
        """Whether an item whose key starts with ``prefix`` could still be kept.

        Lets the caller skip building an item (a row) that would be dropped at once.
        """
        if self.limit <= 0:
            return False
        return len(self._heap) < self.limit or prefix <= self._heap[0].key[:len(prefix)]

    def push(self, key: tuple[Any, ...], item: Any) -> None:
        if self.limit <= 0:
            return
        if len(self._heap) < self.limit:
            heapq.heappush(self._heap, _Entry(key, item))
        elif key < self._heap[0].key:
            heapq.heapreplace(self._heap, _Entry(key, item))

    def ordered(self) -> list[tuple[tuple[Any, ...], Any]]:
        """``(key, item)`` pairs, smallest key first."""
        return [(e.key, e.item) for e in sorted(self._heap, key=lambda e: e.key)]


class ReportFacts:
    """Everything the report shows, accumulated record by record (see the module doc).

    ``summary`` is ``summary.json``: it says whether and under which policy the
    run published. Feed records with :meth:`add` or manifest lines with
    :meth:`add_line`, then read the properties and :meth:`rows`.
    """

    def __init__(self, summary: dict[str, Any], *, max_rows: int = DEFAULT_MAX_ROWS,
                 max_thumbnails: int = DEFAULT_MAX_THUMBNAILS) -> None:
        if max_rows < 0:
            raise ValueError(f"max_rows must be >= 0, not {max_rows}")
        self.summary = summary
        self.max_rows = max_rows
        self.max_thumbnails = max(0, max_thumbnails)
        self.records = self.verified = self.quarantined = self.skipped = 0
        self.processed = 0  # records that are not skipped files: what all_or_nothing counts
        self.people = self.dismissed = 0
        self.releasable = self.releasable_unchanged = self.releasable_faces = 0
        self.rejected: Counter[str] = Counter()  # rejected inputs by error code
        self.categories: Counter[str] = Counter()
        self.histogram = [0] * HISTOGRAM_BINS
        self.candidates = False  # whether any record lists its candidates (newer manifests)
        self._models: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            "model": {}, "face_model": {}}
        self._rows = Smallest(max_rows)
        self._thumbs = Smallest(self.max_thumbnails)
        self._skipped = Smallest(max_rows)
        self._sha256 = hashlib.sha256()
        self._edges = [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]

    # -- feeding ------------------------------------------------------------------------------

    def add_line(self, line: bytes) -> None:
        """One line of ``manifest.jsonl`` as read: hashed as it is, parsed unless blank."""
        self._sha256.update(line)
        if line.strip():
            self.add(json.loads(line))

    def add_all(self, records: Iterable[dict[str, Any]]) -> ReportFacts:
        for record in records:
            self.add(record)
        return self

    def add(self, record: dict[str, Any]) -> None:
        """Count one record and keep its row if it is among the most urgent so far."""
        self.records += 1
        status, code = record.get("status"), _code(record)
        source = str(record.get("source"))
        verification = record.get("verification") or {}
        residuals = [x for x in verification.get("residuals") or [] if isinstance(x, dict)]
        dismissed = _dismissed(record)
        self.dismissed += dismissed or 0
        self.candidates = self.candidates or dismissed is not None
        if code not in SKIPPED:
            self.processed += 1
        for name, seen in self._models.items():
            value = record.get(name)
            if isinstance(value, dict):
                pair = (str(value.get("name")), str(value.get("sha256")))
                seen.setdefault(pair, {"name": value.get("name"), "sha256": value.get("sha256")})
        for detection in record.get("detections") or []:
            confidence = detection.get("confidence") if isinstance(detection, dict) else None
            if isinstance(confidence, int | float):
                index = bisect_right(self._edges, float(confidence)) - 1
                self.histogram[min(max(index, 0), HISTOGRAM_BINS - 1)] += 1
        eligible = False
        if status == Status.VERIFIED:
            self.verified += 1
            self.people += int(record.get("persons_detected") or 0)
            # plan_release's rule: a verified record with an output key and hash
            eligible = bool(record.get("output_sha256") and record.get("output_key"))
            if eligible:
                self.releasable += 1
                self.releasable_unchanged += record.get("pixels_unchanged") is True
                self.releasable_faces += sum(1 for x in residuals if x.get("kind") == "face")
        elif status == Status.QUARANTINED:
            self.quarantined += 1
        elif status == Status.ERROR and code not in SKIPPED:
            self.rejected[str(code)] += 1
        if code in SKIPPED:
            self.skipped += 1
            if self._skipped.wants((source,)):
                skipped = {"source": record.get("source"), "what": record.get("format")
                           or "unknown", "sha256": record.get("input_sha256")}
                self._skipped.push((source, _tiebreak(skipped)), skipped)
        rank = _rank(record, status, code, residuals, dismissed)
        self.categories[CATEGORIES[rank][0]] += 1
        if eligible and self._thumbs.wants((source,)):
            thumb = {k: record.get(k) for k in ("source", "output_key", "output_sha256",
                                                "width", "height", "regions")}
            row = _row(record, source, status, verification, dismissed, eligible, rank)
            self._thumbs.push((source, _tiebreak(thumb)), (thumb, rank, row))
        if self._rows.wants((rank, source)):
            row = _row(record, source, status, verification, dismissed, eligible, rank)
            self._rows.push((rank, source, _tiebreak(row)), row)

    # -- results ------------------------------------------------------------------------------

    @property
    def manifest_sha256(self) -> str:
        """The sha256 of the lines given to :meth:`add_line`: the manifest as it was read."""
        return self._sha256.hexdigest()

    @property
    def released(self) -> bool:
        """Whether the releasable outputs were published: the summary says so, under a policy.

        Nothing counts as published while the summary says publication has not
        happened (``published`` null) or released nothing; under ``all_or_nothing``
        only when every processed input was releasable, as
        :func:`~airflow_privacy.core.publish.plan_release` decides.
        """
        policy = self.summary.get("policy")
        if not self.summary.get("published") or policy not in POLICIES:
            return False
        return policy != "all_or_nothing" or self.releasable == self.processed

    @property
    def published(self) -> int:
        return self.releasable if self.released else 0

    @property
    def unchanged(self) -> int:
        """Published outputs that are their source's own pixels (no one in them)."""
        return self.releasable_unchanged if self.released else 0

    @property
    def faces_left(self) -> int:
        """Faces the independent check reported on what was published."""
        return self.releasable_faces if self.released else 0

    def models(self, name: str) -> list[dict[str, Any]]:
        """The distinct ``model`` or ``face_model`` values seen, sorted: what actually ran."""
        seen = self._models[name]
        return [seen[k] for k in sorted(seen)]

    def skipped_files(self) -> list[dict[str, Any]]:
        """The first ``max_rows`` skipped files by source (:attr:`skipped` counts them all)."""
        return [item for _, item in self._skipped.ordered()]

    def thumbnail_records(self) -> list[dict[str, Any]]:
        """The first ``max_thumbnails`` published records by source; none if nothing was."""
        return [thumb for _, (thumb, _, _) in self._thumbs.ordered()] if self.released else []

    def rows(self, thumbnails: bool = True) -> list[dict[str, Any]]:
        """At most ``max_rows`` rows, the most urgent first chosen, shown in source order.

        Kept rows and the rows of thumbnailed outputs compete by (priority, source):
        the categories' order, with thumbnailed outputs just after skipped files,
        so each thumbnail has its row once the more urgent ones have theirs. The
        result is exactly the first ``max_rows`` of all records in that order.
        ``thumbnails``: whether the page shows them (not without a release).
        """
        chosen: dict[tuple[str, str], tuple[tuple[Any, ...], dict[str, Any]]] = {}
        promote = thumbnails and self.released
        thumbed = {k[0] for k, _ in self._thumbs.ordered()} if promote else set()
        for key, row in self._rows.ordered():
            rank, source, tie = key
            priority = rank if rank <= 2 or source not in thumbed else _THUMBNAILED
            chosen[(source, tie)] = ((priority, source, tie), row)
        if promote:
            for (source, _), (_, rank, row) in self._thumbs.ordered():
                tie = _tiebreak(row)
                chosen.setdefault((source, tie), ((min(rank, _THUMBNAILED), source, tie), row))
        kept = sorted(chosen.values(), key=lambda pair: pair[0])[:self.max_rows]
        rows = [dict(row, shown=self._shown(row)) for _, row in kept]
        return sorted(rows, key=lambda r: (r["source"], _tiebreak(r)))

    def _shown(self, row: dict[str, Any]) -> str:
        if row["status"] != Status.VERIFIED:
            return row["status"]
        return "published" if row["releasable"] and self.released else "verified, not published"


def collect(records: Iterable[dict[str, Any]], summary: dict[str, Any], *,
            max_rows: int = DEFAULT_MAX_ROWS,
            max_thumbnails: int = DEFAULT_MAX_THUMBNAILS) -> ReportFacts:
    """:class:`ReportFacts` over records already in memory (the CLI's batch, tests)."""
    return ReportFacts(summary, max_rows=max_rows, max_thumbnails=max_thumbnails).add_all(records)


# -- one record -------------------------------------------------------------------------------


def _rank(record: dict[str, Any], status: Any, code: str | None,
          residuals: list[dict[str, Any]], dismissed: int | None) -> int:
    """The index of the record's category in :data:`CATEGORIES`."""
    if status == Status.QUARANTINED or (status == Status.ERROR and code not in SKIPPED):
        return 0
    rounds = (record.get("verification") or {}).get("remediation_rounds") or 0
    if rounds or dismissed or residuals:
        return 1
    if code in SKIPPED:
        return 2
    return 3 if int(record.get("persons_detected") or 0) > 0 else 4


def _row(record: dict[str, Any], source: str, status: Any, verification: dict[str, Any],
         dismissed: int | None, releasable: bool, rank: int) -> dict[str, Any]:
    """One table row's facts; whether it was published is decided in :meth:`ReportFacts.rows`."""
    retention = [v for v in verification.get("retention") or [] if isinstance(v, int | float)]
    return {
        "status": str(status), "source": source, "releasable": releasable,
        "category": CATEGORIES[rank][0],
        "persons": record.get("persons_detected"),
        "regions": len(record.get("regions") or []),
        "retention": f"{max(retention):.4f}" if retention else None,
        "residuals": len(verification.get("residuals") or []),
        "reason": _reason(record),
        "unchanged": record.get("pixels_unchanged") is True, "dismissed": dismissed,
    }


def _dismissed(record: dict[str, Any]) -> int | None:
    """Candidates dismissed as not a person; None for records that do not list candidates."""
    candidates = record.get("candidates")
    if not isinstance(candidates, list):
        return None
    return sum(1 for c in candidates if isinstance(c, dict) and c.get("decision") == "dismissed")


def _reason(record: dict[str, Any]) -> str:
    error = record.get("error") or {}
    if error:
        code, message = error.get("code"), error.get("message")
        return f"{code}: {message}" if message else str(code)
    rounds = (record.get("verification") or {}).get("remediation_rounds") or 0
    return f"remediated in {rounds} round{'s' if rounds != 1 else ''}" if rounds else ""


def _code(record: dict[str, Any]) -> str | None:
    return (record.get("error") or {}).get("code")


def _tiebreak(item: dict[str, Any]) -> str:
    """A total order among items of the same source (a manifest has none; a list might)."""
    return json.dumps(item, sort_keys=True, default=str)
