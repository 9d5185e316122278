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
from datetime import datetime
from typing import Any

from airflow_privacy.core.report.facts import ReportFacts

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


def plain_summary(facts: ReportFacts) -> dict[str, Any]:
    """The sentences at the top of the report, and the lists they refer to.

    From :class:`~.facts.ReportFacts`, so the story is the same counts for ten
    images or a million; only the list of skipped files is capped (``max_rows``).
    """
    policy = facts.summary.get("policy")
    people, dismissed, published = facts.people, facts.dismissed, facts.published
    rejected = sum(facts.rejected.values())
    withheld_by_policy = facts.verified - published
    reasons: list[tuple[int, str]] = []
    if facts.quarantined:
        reasons.append((facts.quarantined, "a person was still visible after anonymizing, so it "
                        "was not published"))
    for code, n in sorted(facts.rejected.items(), key=lambda item: (-item[1], item[0])):
        reasons.append((n, f"the file could not be processed ({code})"))
    if withheld_by_policy:
        reasons.append((withheld_by_policy,
                        f"the {policy} policy withholds every image when any one fails"))
    reasons.sort(key=lambda reason: -reason[0])  # stable: ties keep the order above
    held = facts.quarantined + rejected + withheld_by_policy
    pending = facts.summary.get("published") is None
    skipped = facts.skipped
    faces_left = facts.faces_left
    sentences = [
        f"{facts.records - skipped} images; {people} "
        f"{'person' if people == 1 else 'people'} found and hidden; {dismissed} "
        f"candidate{'s' if dismissed != 1 else ''} dismissed as not a person.",
        "Nothing was published yet." if pending else
        f"{published} image{'s' if published != 1 else ''} published, {facts.unchanged} of "
        "them unchanged (no one in them).",
        f"{held} image{'s' if held != 1 else ''} withheld"
        + (": " + "; ".join(f"{n} because {why}" for n, why in reasons) + "."
           if reasons else "."),
        f"{faces_left} face{'s' if faces_left != 1 else ''} left by the independent check "
        "on what was published.",
    ]
    listed = facts.skipped_files()
    if skipped:
        sentences.append(f"{skipped} listed file{'s' if skipped != 1 else ''} "
                         "skipped (not images this pipeline reads); listed below"
                         + (f" (the first {len(listed)} by name)." if len(listed) < skipped
                            else "."))
    return {
        "sentences": sentences,
        "skipped": listed,
        "skipped_more": skipped - len(listed),
        "counts": {"images": facts.records - skipped, "people_hidden": people,
                   "dismissed": dismissed, "published": published, "unchanged": facts.unchanged,
                   "withheld": held, "faces_left": faces_left, "skipped": skipped},
    }
