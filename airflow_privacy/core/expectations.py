"""The manifest's quality gate: a Great Expectations suite, run in bounded memory.

Nothing is published unless the manifest says the run is complete and clean:
one record per listed input, no residual person or face on anything to be
published, nothing both to be published and quarantined, a sha256 and stripped
metadata for every verified output, every failure explained, and failures
within the configured rate (none at all under the ``all_or_nothing`` policy).
GE (rather than a few asserts) gives a standard, reviewable result document:
it is written beside the manifest as ``validation.json``, pinned to the
manifest's sha256, and the publish stage refuses to run without a successful one.

A run may have millions of records, so the gate never holds them: the
per-record expectations run on batches of :data:`BATCH_SIZE` flattened rows
(the manifest is sorted by source, and so is the listing, so whether a record
is listed or repeated is decided by walking both side by side), and the
whole-run expectations (the record count, the failure rate) run on a small
frame of totals gathered on the way. Every failure names examples.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

from airflow_privacy.core.manifest import VALIDATION
from airflow_privacy.core.status import SKIPPED, Status
from airflow_privacy.exceptions import ManifestValidationError
from airflow_privacy.storage import Storage

VERIFIED = f'status=="{Status.VERIFIED.value}"'
NOT_VERIFIED = f'status!="{Status.VERIFIED.value}"'
# Plain strings, not members, in what GE serializes into validation.json.
STATUSES = [status.value for status in Status]
COLUMNS = ["source", "status", "output_sha256", "residuals", "verification_passed",
           "error_code", "explanation", "quarantine", "metadata_stripped", "listed", "first"]
BATCH_SIZE = 100_000  # rows per GE batch: ~100 MB of flattened rows at most
EXAMPLES = 5


@dataclass
class ManifestValidation:
    """A small summary of the validation, fit for an XCom."""

    success: bool
    evaluated: int
    failed: list[str] = field(default_factory=list)
    path: str | None = None

    def to_xcom(self) -> dict[str, Any]:
        return {"success": self.success, "evaluated": self.evaluated, "failed": self.failed,
                "path": self.path}


def _row(r: dict[str, Any]) -> dict[str, Any]:
    """The few flattened columns the expectations need, from one record."""
    verification = r.get("verification") or {}
    error = r.get("error") or {}
    return {
        "source": r.get("source"),
        "status": r.get("status"),
        "output_sha256": r.get("output_sha256"),
        "residuals": len(verification.get("residuals") or []),
        "verification_passed": bool(verification.get("passed")),
        "error_code": error.get("code"),
        "explanation": r.get("quarantine") or error.get("message"),
        "quarantine": r.get("quarantine"),
        "metadata_stripped": r.get("metadata_stripped") is True,
    }


def manifest_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per record (``listed``/``first`` left true: see :class:`_Walk`)."""
    rows = [{**_row(r), "listed": True, "first": True} for r in records]
    return pd.DataFrame(rows, columns=COLUMNS)


def record_suite() -> gx.ExpectationSuite:
    """The per-record expectations, run on every batch; descriptions name them in messages."""
    suite = gx.ExpectationSuite(name="airflow_privacy_manifest")
    pandas = {"condition_parser": "pandas"}
    for expectation in (
        gxe.ExpectColumnValuesToBeInSet(
            column="first", value_set=[True],
            description="no input has more than one record"),
        gxe.ExpectColumnValuesToBeInSet(
            column="listed", value_set=[True],
            description="every record belongs to a listed input"),
        gxe.ExpectColumnValuesToBeInSet(
            column="status", value_set=STATUSES,
            description="every record has a known status"),
        gxe.ExpectColumnValuesToBeBetween(
            column="residuals", max_value=0, row_condition=VERIFIED, **pandas,
            description="zero residual persons/faces on records to be published"),
        gxe.ExpectColumnValuesToBeInSet(
            column="verification_passed", value_set=[True], row_condition=VERIFIED, **pandas,
            description="every verified record passed verification"),
        gxe.ExpectColumnValuesToMatchRegex(
            column="output_sha256", regex=r"^[0-9a-f]{64}$", row_condition=VERIFIED, **pandas,
            description="verified outputs have a well-formed output_sha256"),
        gxe.ExpectColumnValuesToNotBeNull(
            column="output_sha256", row_condition=VERIFIED, **pandas,
            description="verified outputs have a well-formed output_sha256"),
        gxe.ExpectColumnValuesToBeNull(
            column="quarantine", row_condition=VERIFIED, **pandas,
            description="no image is both to be published and quarantined"),
        gxe.ExpectColumnValuesToBeInSet(
            column="metadata_stripped", value_set=[True], row_condition=VERIFIED, **pandas,
            description="verified outputs carry no metadata"),
        gxe.ExpectColumnValuesToNotBeNull(
            column="error_code", row_condition=NOT_VERIFIED, **pandas,
            description="every failed record has an error code"),
        gxe.ExpectColumnValuesToNotBeNull(
            column="explanation", row_condition=NOT_VERIFIED, **pandas,
            description="every failed record has a quarantine path or a reason"),
    ):
        suite.add_expectation(expectation)
    return suite


def totals_suite(max_error_rate: float, policy: str | None = None) -> gx.ExpectationSuite:
    """The whole-run expectations, over the totals frame (:meth:`_Walk.frame`).

    Under ``policy="all_or_nothing"`` one failed input withholds the whole release,
    so the error-rate bound is zero whatever ``max_error_rate`` says. Listed files
    that are not images (recorded, never processed) are no failures.
    """
    if not 0.0 <= max_error_rate <= 1.0:
        raise ValueError(f"max_error_rate {max_error_rate} is not in [0, 1]")
    if policy == "all_or_nothing":
        max_error_rate = 0.0
        bound = "every input is verified (policy all_or_nothing; error rate bound 0%)"
    else:
        bound = f"at most {max_error_rate:.0%} of inputs fail (error rate bound)"
    suite = gx.ExpectationSuite(name="airflow_privacy_manifest_totals")
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
        column="unrecorded", min_value=0, max_value=0,  # extra records: "listed", "first"
        description="one record per listed input (record count)"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
        column="failure_rate", min_value=0.0, max_value=max_error_rate, description=bound))
    return suite


class _Walk:
    """The sorted records beside the sorted listing: listed? repeated? and the run's totals."""

    def __init__(self, inputs: Iterator[str]) -> None:
        self._inputs, self._next = inputs, next(inputs, None)
        self.inputs = 0 if self._next is None else 1
        self.records = self.processed = self.failed = 0
        self.missing: list[str] = []
        self.unrecorded = 0
        self.failures: list[str] = []
        self._last: str | None = None
        self._listed = False

    def row(self, record: dict[str, Any]) -> dict[str, Any]:
        row = _row(record)
        source = str(row["source"])
        row["first"] = source != self._last
        while self._next is not None and self._next < source:
            self._missed(self._next)
            self._advance()
        if row["first"]:
            self._listed = self._next == source
            if self._listed:
                self._advance()
        row["listed"] = self._listed  # a repeat is "not first", not also "not listed"
        self._last, self.records = source, self.records + 1
        if row["error_code"] not in SKIPPED:
            self.processed += 1
            if row["status"] != Status.VERIFIED.value:
                self.failed += 1
                if len(self.failures) < EXAMPLES:
                    self.failures.append(source)
        return row

    def _advance(self) -> None:
        self._next = next(self._inputs, None)
        self.inputs += self._next is not None

    def _missed(self, key: str) -> None:
        self.unrecorded += 1
        if len(self.missing) < EXAMPLES:
            self.missing.append(key)

    def finish(self) -> None:
        while self._next is not None:
            self._missed(self._next)
            self._advance()

    def frame(self) -> pd.DataFrame:
        rate = self.failed / self.processed if self.processed else 0.0
        count = f"{self.records} records for {self.inputs} listed inputs"
        if self.missing:
            count += f"; no record for {', '.join(self.missing)}"
        failed = (f"{self.failed} of {self.processed} processed inputs failed ({rate:.1%})"
                  + (f": {', '.join(self.failures)}" if self.failures else ""))
        return pd.DataFrame([{"source": count, "unrecorded": self.unrecorded,
                              "failure_rate": None},
                             {"source": failed, "unrecorded": None, "failure_rate": rate}],
                            columns=["source", "unrecorded", "failure_rate"])


def _batches(records: Iterable[dict[str, Any]], walk: _Walk, size: int) -> Iterator[pd.DataFrame]:
    rows: list[dict[str, Any]] = []
    for record in records:
        rows.append(walk.row(record))
        if len(rows) >= size:
            yield pd.DataFrame(rows, columns=COLUMNS)
            rows = []
    if rows or not walk.records:
        yield pd.DataFrame(rows, columns=COLUMNS)


def validate_manifest(
    records: Iterable[dict[str, Any]],
    inputs: Iterable[str],
    *,
    report: Storage | None = None,
    max_error_rate: float = 0.0,
    manifest_sha256: str | None = None,
    raise_on_failure: bool = True,
    policy: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> ManifestValidation:
    """Validate ``records`` against the listed ``inputs``; write ``report/validation.json``.

    ``records`` and ``inputs`` may be iterators of any length, sorted by source
    (the manifest and the shard files are); lists are sorted here. Raises
    :class:`ManifestValidationError` on failure unless ``raise_on_failure`` is
    false. The result's ``meta`` pins ``manifest_sha256`` for the publish gate.
    ``policy="all_or_nothing"`` tightens the error-rate bound to zero.
    """
    if isinstance(records, list | tuple):
        records = sorted(records, key=lambda r: str(r.get("source")))
    if isinstance(inputs, list | tuple | set | frozenset):
        inputs = sorted(inputs)
    if not 0.0 <= max_error_rate <= 1.0:  # before any work
        raise ValueError(f"max_error_rate {max_error_rate} is not in [0, 1]")
    context = gx.get_context(mode="ephemeral")
    _quiet(context)
    definition = (context.data_sources.add_pandas("manifest").add_dataframe_asset("records")
                  .add_batch_definition_whole_dataframe("all"))
    walk, suite = _Walk(iter(inputs)), record_suite()
    merged: list[dict[str, Any]] = []
    failed: dict[int, tuple[str, int]] = {}  # expectation index -> (first message, count)
    batches = 0
    for frame in _batches(records, walk, batch_size):
        result = definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
        batches += 1
        for i, outcome in enumerate(result.results):
            _merge(merged, i, outcome.to_json_dict())
            if not outcome.success:
                count = int((outcome.result or {}).get("unexpected_count") or 0)
                message, seen = failed.get(i, (_describe(outcome, frame), 0))
                failed[i] = (message, seen + count)
    walk.finish()
    totals = walk.frame()
    result = definition.get_batch(batch_parameters={"dataframe": totals}).validate(
        totals_suite(max_error_rate, policy))
    messages = [_recount(message, count) for message, count in failed.values()]
    messages += [_describe(r, totals) for r in result.results if not r.success]
    merged += [r.to_json_dict() for r in result.results]
    document = _document(merged, not messages, {
        "manifest_sha256": manifest_sha256, "max_error_rate": max_error_rate,
        "inputs": walk.inputs, "records": walk.records, "policy": policy,
        "batches": batches, "batch_size": batch_size})
    path = None
    if report is not None:
        report.write_text(VALIDATION, json.dumps(document, indent=2, sort_keys=True) + "\n")
        path = report.uri_of(VALIDATION)
    outcome = ManifestValidation(not messages, len(merged), messages, path)
    if messages and raise_on_failure:
        raise ManifestValidationError(messages, path)
    return outcome


def _merge(merged: list[dict[str, Any]], index: int, result: dict[str, Any]) -> None:
    """Keep one result per expectation: the first failing batch's, counts summed over all."""
    if index == len(merged):
        merged.append(result)
        return
    kept = merged[index]
    for name in ("element_count", "unexpected_count", "missing_count"):
        if name in (result.get("result") or {}) and name in (kept.get("result") or {}):
            kept["result"][name] += result["result"][name]
    if kept.get("success") and not result.get("success"):
        result["result"] = {**result.get("result", {}),
                            **{k: v for k, v in kept.get("result", {}).items()
                               if k in ("element_count", "unexpected_count", "missing_count")}}
        merged[index] = result


def _document(results: list[dict[str, Any]], success: bool,
              meta: dict[str, Any]) -> dict[str, Any]:
    """GE's validation result layout (success, results, statistics, meta) over all batches."""
    good = sum(1 for r in results if r.get("success"))
    return {
        "success": success, "results": results, "meta": meta,
        "suite_name": "airflow_privacy_manifest",
        "statistics": {"evaluated_expectations": len(results),
                       "successful_expectations": good,
                       "unsuccessful_expectations": len(results) - good,
                       "success_percent": 100.0 * good / len(results) if results else None},
    }


def _recount(message: str, count: int) -> str:
    """A batch's failure line with the count over every batch."""
    head, sep, tail = message.rpartition(", ")
    number, space, rest = tail.partition(" ")
    return f"{head}{sep}{count}{space}{rest}" if number.isdigit() else message


def _describe(result: Any, frame: pd.DataFrame) -> str:
    """One line per failed expectation: what it demands and what was observed."""
    config = result.expectation_config
    observed = result.result or {}
    if "observed_value" in observed:
        seen = f"observed {observed['observed_value']}"
    else:
        rows = observed.get("partial_unexpected_index_list") or []
        sources = [str(frame["source"].iloc[i]) for i in rows[:EXAMPLES] if i < len(frame)]
        seen = f"{observed.get('unexpected_count')} unexpected"
        if sources:
            seen += f" (e.g. {', '.join(sources)})"
    if result.exception_info and result.exception_info.get("raised_exception"):
        seen = f"raised {result.exception_info.get('exception_message')}"
    column = config.kwargs.get("column")
    target = f" on {column}" if column else ""
    return f"{config.description or config.type}: {config.type}{target}, {seen}"


def _quiet(context: Any) -> None:
    """No tqdm progress bars in task logs."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False)
