"""What happened to people, in plain language, and which run it happened in.

The person who signs a release reads this first: counts of people found and
hidden, candidates dismissed, images published unchanged, images withheld and
*why*, files skipped, and faces the independent check left behind. The
technical evidence (verification, gate, per-image rows) follows on the page.

A run's identity (DAG, run id, logical date, start/end, who or what
triggered it) is a plain dict made by the driver: the Airflow operators take
it from the task context, the CLI from the process. Core code never reads a
clock or Airflow for it, so a report is still reproducible from its inputs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from airflow_privacy.core.inputs import SKIPPED
from airflow_privacy.core.publish import POLICIES, releasable
from airflow_privacy.core.status import Status

RUN_FIELDS = ("driver", "dag_id", "run_id", "logical_date", "started", "ended", "triggered_by",
              "run_type", "task_id", "try_number")


def run_identity(**fields: Any) -> dict[str, Any]:
    """The run's identity as JSON-ready values; datetimes become ISO 8601 text."""
    out: dict[str, Any] = {}
    for name in RUN_FIELDS:
        value = fields.get(name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif value is not None and not isinstance(value, int | float | bool | str):
            value = str(getattr(value, "value", value))  # enums (run type, trigger type)
        out[name] = value
    return out


def run_folder(run: dict[str, Any] | None) -> str | None:
    """A storage-safe folder name for the run (``runs/<this>/``), or None without a run id."""
    run_id = (run or {}).get("run_id")
    if not run_id:
        return None
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(run_id)).strip(".-") or None


def plain_summary(records: Sequence[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """The sentences at the top of the report, and the lists they refer to."""
    policy = summary.get("policy")
    published = ({str(r["source"]) for r in releasable(records, policy)}
                 if summary.get("published") and policy in POLICIES else set())
    verified = [r for r in records if r.get("status") == Status.VERIFIED]
    skipped = [r for r in records if _code(r) in SKIPPED]
    rejected = [r for r in records if r.get("status") == Status.ERROR and _code(r) not in SKIPPED]
    quarantined = [r for r in records if r.get("status") == Status.QUARANTINED]
    withheld_by_policy = [r for r in verified if str(r.get("source")) not in published]
    people = sum(int(r.get("persons_detected") or 0) for r in verified)
    dismissed = sum(1 for r in records for c in r.get("candidates") or []
                    if isinstance(c, dict) and c.get("decision") == "dismissed")
    unchanged = sum(1 for r in verified if r.get("pixels_unchanged") is True
                    and str(r.get("source")) in published)
    faces_left = sum(1 for r in records if str(r.get("source")) in published
                     for x in (r.get("verification") or {}).get("residuals") or []
                     if isinstance(x, dict) and x.get("kind") == "face")
    reasons: Counter[str] = Counter()
    if quarantined:
        reasons["a person was still visible after anonymizing, so it was not published"] = len(
            quarantined)
    for record in rejected:
        reasons[f"the file could not be processed ({_code(record)})"] += 1
    if withheld_by_policy:
        reasons[f"the {policy} policy withholds every image when any one fails"] += len(
            withheld_by_policy)
    held = len(quarantined) + len(rejected) + len(withheld_by_policy)
    pending = summary.get("published") is None
    sentences = [
        f"{len(records) - len(skipped)} images; {people} "
        f"{'person' if people == 1 else 'people'} found and hidden; {dismissed} "
        f"candidate{'s' if dismissed != 1 else ''} dismissed as not a person.",
        "Nothing was published yet." if pending else
        f"{len(published)} image{'s' if len(published) != 1 else ''} published, {unchanged} of "
        "them unchanged (no one in them).",
        f"{held} image{'s' if held != 1 else ''} withheld"
        + (": " + "; ".join(f"{n} because {why}" for why, n in reasons.most_common()) + "."
           if reasons else "."),
        f"{faces_left} face{'s' if faces_left != 1 else ''} left by the independent check "
        "on what was published.",
    ]
    if skipped:
        sentences.append(f"{len(skipped)} listed file{'s' if len(skipped) != 1 else ''} "
                         "skipped (not images this pipeline reads); listed below.")
    return {
        "sentences": sentences,
        "skipped": [{"source": r.get("source"), "what": r.get("format") or "unknown",
                     "sha256": r.get("input_sha256")} for r in skipped],
        "counts": {"images": len(records) - len(skipped), "people_hidden": people,
                   "dismissed": dismissed, "published": len(published), "unchanged": unchanged,
                   "withheld": held, "faces_left": faces_left, "skipped": len(skipped)},
    }


def _code(record: dict[str, Any]) -> str | None:
    return (record.get("error") or {}).get("code")
