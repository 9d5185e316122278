"""The manifest's quality gate, as a Great Expectations suite over a pandas DataFrame.

Nothing is published unless the manifest says the run is complete and clean:
one record per listed input, no residual person or face on anything to be
published, nothing both to be published and quarantined, a sha256 and stripped
metadata for every verified output, every failure explained, and failures
within the configured rate (none at all under the ``all_or_nothing`` policy).
GE (rather than a few asserts) gives a standard, reviewable result document:
it is written beside the manifest as ``validation.json``, pinned to the
manifest's sha256, and the publish stage refuses to run without a successful one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

from airflow_privacy.core.manifest import VALIDATION
from airflow_privacy.core.status import Status
from airflow_privacy.exceptions import ManifestValidationError
from airflow_privacy.storage import Storage

VERIFIED = f'status=="{Status.VERIFIED.value}"'
NOT_VERIFIED = f'status!="{Status.VERIFIED.value}"'
# Plain strings, not members, in what GE serializes into validation.json.
STATUSES = [status.value for status in Status]
COLUMNS = ["source", "status", "output_sha256", "residuals", "verification_passed",
           "error_code", "explanation", "quarantine", "metadata_stripped"]


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


def manifest_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per record, with the few flattened columns the expectations need."""
    rows = []
    for r in records:
        verification = r.get("verification") or {}
        error = r.get("error") or {}
        rows.append({
            "source": r.get("source"),
            "status": r.get("status"),
            "output_sha256": r.get("output_sha256"),
            "residuals": len(verification.get("residuals") or []),
            "verification_passed": bool(verification.get("passed")),
            "error_code": error.get("code"),
            "explanation": r.get("quarantine") or error.get("message"),
            "quarantine": r.get("quarantine"),
            "metadata_stripped": r.get("metadata_stripped") is True,
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def build_suite(
    inputs: Sequence[str], max_error_rate: float, policy: str | None = None
) -> gx.ExpectationSuite:
    """The expectations; each carries a description that names it in failure messages.

    Under ``policy="all_or_nothing"`` one failed input withholds the whole release,
    so the error-rate bound is zero whatever ``max_error_rate`` says.
    """
    if not 0.0 <= max_error_rate <= 1.0:
        raise ValueError(f"max_error_rate {max_error_rate} is not in [0, 1]")
    if policy == "all_or_nothing":
        max_error_rate = 0.0
        bound = "every input is verified (policy all_or_nothing; error rate bound 0%)"
    else:
        bound = f"at most {max_error_rate:.0%} of inputs fail (error rate bound)"
    suite = gx.ExpectationSuite(name="airflow_privacy_manifest")
    for expectation in (
        gxe.ExpectTableRowCountToEqual(
            value=len(inputs), description="one record per listed input (record count)"),
        gxe.ExpectColumnValuesToBeUnique(
            column="source", description="no input has more than one record"),
        gxe.ExpectColumnValuesToBeInSet(
            column="source", value_set=sorted(inputs),
            description="every record belongs to a listed input"),
        gxe.ExpectColumnValuesToBeInSet(
            column="status", value_set=STATUSES,
            description="every record has a known status"),
        gxe.ExpectColumnValuesToBeBetween(
            column="residuals", max_value=0, row_condition=VERIFIED, condition_parser="pandas",
            description="zero residual persons/faces on records to be published"),
        gxe.ExpectColumnValuesToBeInSet(
            column="verification_passed", value_set=[True], row_condition=VERIFIED,
            condition_parser="pandas", description="every verified record passed verification"),
        gxe.ExpectColumnValuesToMatchRegex(
            column="output_sha256", regex=r"^[0-9a-f]{64}$", row_condition=VERIFIED,
            condition_parser="pandas",
            description="verified outputs have a well-formed output_sha256"),
        gxe.ExpectColumnValuesToNotBeNull(
            column="output_sha256", row_condition=VERIFIED, condition_parser="pandas",
            description="verified outputs have a well-formed output_sha256"),
        gxe.ExpectColumnValuesToBeNull(
            column="quarantine", row_condition=VERIFIED, condition_parser="pandas",
            description="no image is both to be published and quarantined"),
        gxe.ExpectColumnValuesToBeInSet(
            column="metadata_stripped", value_set=[True], row_condition=VERIFIED,
            condition_parser="pandas", description="verified outputs carry no metadata"),
        gxe.ExpectColumnValuesToNotBeNull(
            column="error_code", row_condition=NOT_VERIFIED, condition_parser="pandas",
            description="every failed record has an error code"),
        gxe.ExpectColumnValuesToNotBeNull(
            column="explanation", row_condition=NOT_VERIFIED, condition_parser="pandas",
            description="every failed record has a quarantine path or a reason"),
        gxe.ExpectColumnValuesToBeInSet(
            column="status", value_set=[Status.VERIFIED.value], mostly=1.0 - max_error_rate,
            description=bound),
    ):
        suite.add_expectation(expectation)
    return suite


def validate_manifest(
    records: Sequence[dict[str, Any]],
    inputs: Sequence[str],
    *,
    report: Storage | None = None,
    max_error_rate: float = 0.0,
    manifest_sha256: str | None = None,
    raise_on_failure: bool = True,
    policy: str | None = None,
) -> ManifestValidation:
    """Validate ``records`` against the listed ``inputs``; write ``report/validation.json``.

    Raises :class:`ManifestValidationError` on failure unless ``raise_on_failure``
    is false. The result's ``meta`` pins ``manifest_sha256`` for the publish gate.
    ``policy="all_or_nothing"`` tightens the error-rate bound to zero.
    """
    frame = manifest_frame(records)
    context = gx.get_context(mode="ephemeral")
    _quiet(context)
    batch = (
        context.data_sources.add_pandas("manifest")
        .add_dataframe_asset("records")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    result = batch.validate(build_suite(inputs, max_error_rate, policy))
    result.meta = {**(result.meta or {}), "manifest_sha256": manifest_sha256,
                   "max_error_rate": max_error_rate, "inputs": len(inputs), "policy": policy}
    path = None
    if report is not None:
        document = result.to_json_dict()
        report.write_text(VALIDATION, json.dumps(document, indent=2, sort_keys=True) + "\n")
        path = report.uri_of(VALIDATION)
    failed = [_describe(r, frame) for r in result.results if not r.success]
    outcome = ManifestValidation(bool(result.success), len(result.results), failed, path)
    if failed and raise_on_failure:
        raise ManifestValidationError(failed, path)
    return outcome


def _describe(result: Any, frame: pd.DataFrame) -> str:
    """One line per failed expectation: what it demands and what was observed."""
    config = result.expectation_config
    observed = result.result or {}
    if "observed_value" in observed:
        seen = f"observed {observed['observed_value']}"
    else:
        rows = observed.get("partial_unexpected_index_list") or []
        sources = [str(frame["source"].iloc[i]) for i in rows[:5] if i < len(frame)]
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
