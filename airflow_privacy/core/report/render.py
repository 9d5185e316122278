"""The report's facts as plain data, rendered through one autoescaping Jinja2 template.

Python decides *what* the page says (totals, verdicts, histogram geometry,
which outputs were published); ``templates/report.html.j2`` decides how it
looks. Every value reaches the page through Jinja2's autoescape, so escaping
is the default rather than something each line must remember; the only
markup built from run data is the ``ctl`` highlight for control characters,
and that is assembled by the template from pieces :func:`visible` returns.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

import jinja2

from airflow_privacy.core.manifest import MANIFEST, VALIDATION
from airflow_privacy.core.report.facts import (
    CATEGORIES,
    DEFAULT_MAX_ROWS,
    DEFAULT_MAX_THUMBNAILS,
    HISTOGRAM_BINS,
    ReportFacts,
    collect,
)
from airflow_privacy.core.report.story import plain_summary
from airflow_privacy.core.report.thumbnails import thumbnail
from airflow_privacy.storage import Storage

TEMPLATE = "report.html.j2"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}  # control characters shown by name


def render_report(
    records: Iterable[dict[str, Any]],
    summary: dict[str, Any],
    release: Storage | None,
    *,
    validation: dict[str, Any] | None = None,
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
    thumbnail_size: int = 256,
    max_rows: int = DEFAULT_MAX_ROWS,
    run: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> str:
    """The page for records in memory, as text; :func:`render_facts` does the work.

    ``run``: the run's identity (:func:`~.story.run_identity`); ``provenance``:
    versions, model pins, settings, retention and hashes, shown as technical evidence.
    ``max_rows`` and ``max_thumbnails`` bound the page: see :mod:`.facts`.
    """
    check_thumbnail_size(thumbnail_size)
    facts = collect(records, summary, max_rows=max_rows, max_thumbnails=max_thumbnails)
    return render_facts(facts, release, validation=validation, thumbnail_size=thumbnail_size,
                        run=run, provenance=provenance)


def render_facts(
    facts: ReportFacts,
    release: Storage | None,
    *,
    validation: dict[str, Any] | None = None,
    thumbnail_size: int = 256,
    run: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    story: dict[str, Any] | None = None,
) -> str:
    """The page from one pass's :class:`~.facts.ReportFacts`; its size does not grow with them.

    ``story``: :func:`~.story.plain_summary` of ``facts`` when the caller already has it.
    """
    check_thumbnail_size(thumbnail_size)
    summary = facts.summary
    rows = facts.rows(thumbnails=release is not None)
    context = {  # plain data only: every bit of markup is the template's
        "story": story if story is not None else plain_summary(facts),
        "run": [{"key": k, "value": v} for k, v in (run or {}).items() if v is not None],
        "provenance": [{"key": k, "value": _as_text(v)} for k, v in (provenance or {}).items()],
        "totals": _totals(facts),
        "verification": _verification(facts),
        "validation_file": VALIDATION,
        "validation": None if validation is None else _validation(validation, summary),
        "histogram": _histogram(facts),
        "rows": rows,
        "capped": _capped(facts, rows),
        "manifest_file": MANIFEST,
        "candidates": facts.candidates,
        "thumbnails": _thumbnails(facts, release, thumbnail_size),
    }
    return _environment().get_template(TEMPLATE).render(context)


def check_thumbnail_size(size: int) -> None:
    """Fail before a long pass over the manifest, not after it."""
    if size < 16:
        raise ValueError(f"thumbnail_size must be >= 16, not {size}")


@cache
def _environment() -> jinja2.Environment:
    """One environment per process: autoescape always on, whatever the template's name."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt field fails loudly, never renders blank
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,  # see the template
    )
    environment.filters.update(visible=visible, plain=plain)
    return environment


# -- sections ---------------------------------------------------------------------------------


def _totals(facts: ReportFacts) -> list[dict[str, Any]]:
    """The summary's counts and provenance; the models actually used come from the records."""
    summary = facts.summary
    models = facts.models("model")
    faces = facts.models("face_model")
    if not models:
        name = ((summary.get("settings") or {}).get("detection") or {}).get("model")
        models = [{"name": name, "sha256": None}] if name else []
    items = [
        ("images", "Images", summary.get("images", facts.records)),
        ("published", "Published", _or_pending(summary.get("published"))),
        ("verified", "Verified", summary.get("verified")),
        ("quarantined", "Quarantined", summary.get("quarantined")),
        ("errors", "Rejected (errors)", summary.get("errors")),
        ("withheld", "Withheld", _or_pending(summary.get("withheld"))),
        ("ignored", "Ignored (not images)", summary.get("ignored")),
        ("persons_detected", "Persons detected", summary.get("persons_detected")),
        ("residual_detections", "Residual detections", summary.get("residual_detections")),
        ("remediated", "Remediated", summary.get("remediated")),
        ("policy", "Publish policy", summary.get("policy")),
        ("settings_key", "Settings key", summary.get("settings_key")),
        ("manifest_sha256", "Manifest sha256", summary.get("manifest_sha256")),
        ("model", "Person model", _models_text(models)),
        ("face_model", "Face model", _models_text(faces) if faces else "none"),
        ("release", "Release", summary.get("release")),
        ("elapsed_s", "Elapsed (s)", summary.get("elapsed_s")),
    ]
    return [{"key": key, "label": label, "value": value} for key, label, value in items]


def _verification(facts: ReportFacts) -> dict[str, Any]:
    """Per-image verification as one verdict: every image must be verified to pass."""
    failed = facts.records - facts.verified
    return {"images": facts.records, "verified": facts.verified, "failed": failed,
            "passed": not failed}


def _validation(validation: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The Great Expectations gate; it passes only if it validated *this* manifest."""
    if validation.get("unreadable"):
        return {"unreadable": validation["unreadable"]}
    stats = validation.get("statistics") or {}
    pinned = (validation.get("meta") or {}).get("manifest_sha256")
    expected = summary.get("manifest_sha256")
    same = pinned is not None and pinned == expected
    return {
        "unreadable": None,
        "verdict": "passed" if validation.get("success") and same else "failed",
        "successful": stats.get("successful_expectations"),
        "evaluated": stats.get("evaluated_expectations"),
        "same": same, "pinned": pinned, "expected": expected,
        "failures": [
            {"name": _expectation_name(r), "observed": _observed(r)}
            for r in validation.get("results") or []
            if isinstance(r, dict) and not r.get("success")
        ],
    }


def _histogram(facts: ReportFacts) -> dict[str, Any]:
    """Detection confidences in equal bins over [0, 1]: the geometry of the SVG bars.

    Shows whether the run sat near its threshold (many detections just above
    it suggest others just below); the threshold is drawn as a line.
    """
    edges = [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    counts = facts.histogram
    width, height, left, bottom, top = 560, 220, 40, 30, 20
    plot_h = height - bottom - top
    bar_w = (width - left - 10) / HISTOGRAM_BINS
    peak = max(counts) or 1
    bars = []
    for i, count in enumerate(counts):
        bar_h = round(plot_h * count / peak, 1)
        x = round(left + i * bar_w + 2, 1)
        y = round(height - bottom - bar_h, 1)
        bars.append({
            "label": f"{edges[i]:.1f}–{edges[i + 1]:.1f}", "tick": f"{edges[i]:.1f}",
            "count": count, "x": x, "y": y, "width": round(bar_w - 4, 1), "height": bar_h,
            "count_x": round(x + (bar_w - 4) / 2, 1), "count_y": round(y - 4, 1),
        })
    threshold = ((facts.summary.get("settings") or {}).get("detection") or {}).get("confidence")
    line = None
    if isinstance(threshold, int | float) and 0 <= threshold <= 1:
        line = {"x": round(left + float(threshold) * (width - left - 10), 1), "value": threshold}
    return {"total": sum(counts), "bars": bars, "threshold": line, "width": width,
            "height": height, "left": left, "top": top, "base": height - bottom}


def _capped(facts: ReportFacts, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the rows leave out, per category, when there are more images than ``max_rows``."""
    hidden = facts.records - len(rows)
    if hidden <= 0:
        return None
    shown = Counter(row["category"] for row in rows)
    return {"shown": len(rows), "hidden": hidden, "images": facts.records,
            "limit": facts.max_rows,
            "categories": [{"key": key, "label": label, "images": facts.categories[key],
                            "shown": shown[key]} for key, label in CATEGORIES
                           if facts.categories[key]]}


def _thumbnails(facts: ReportFacts, release: Storage | None, size: int) -> dict[str, Any]:
    """Figures for the first ``max_thumbnails`` published records, in source order."""
    chosen = facts.thumbnail_records() if release is not None else []  # None: not published
    figures = []
    for record in chosen:
        key = str(record.get("output_key") or record.get("source"))
        thumb = thumbnail(release, record, key, size)
        figures.append({"source": record.get("source"), "uri": thumb.data_uri, "note": thumb.note,
                        "width": thumb.width, "height": thumb.height})
    more = facts.published - len(figures) if release is not None else 0
    return {"figures": figures, "more": more, "limit": facts.max_thumbnails}


# -- helpers ----------------------------------------------------------------------------------


def _expectation_name(result: dict[str, Any]) -> str:
    config = result.get("expectation_config") or {}
    return str(config.get("description") or config.get("type") or "expectation")


def _observed(result: dict[str, Any]) -> str:
    observed = result.get("result") or {}
    if "observed_value" in observed:
        return f": observed {observed['observed_value']}"
    if "unexpected_count" in observed:
        return f": {observed['unexpected_count']} unexpected"
    return ""


def _models_text(models: Sequence[dict[str, Any]]) -> str:
    return "; ".join(f"{m.get('name')} (sha256 {m.get('sha256') or 'unknown'})" for m in models)


def _as_text(value: Any) -> Any:
    """Nested provenance (versions, settings) as compact JSON text, scalars as they are."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def _or_pending(value: Any) -> Any:
    return "not published yet" if value is None else value


# -- control characters -----------------------------------------------------------------------


def visible(value: Any) -> list[tuple[bool, str]]:
    """``str(value)`` as runs of ``(is_control, text)`` for the template's ``show`` macro.

    A newline, a bidi override (U+202E), a zero-width or a no-break space in a
    file name would otherwise hide what the name really is; each becomes an
    escape (``\\n``, ``\\u202e``) that the template highlights. Only text is
    returned: the template escapes it and adds the ``<span class="ctl">``.
    """
    text = str(value)
    if text.isprintable():
        return [(False, text)]
    runs: list[tuple[bool, str]] = []
    for char in text:
        if not char.isprintable():
            runs.append((True, _control(char)))
        elif runs and not runs[-1][0]:
            runs[-1] = (False, runs[-1][1] + char)
        else:
            runs.append((False, char))
    return runs


def plain(value: Any) -> str:
    """:func:`visible` for attributes, where no highlight can be placed: escapes as text."""
    return "".join(text for _, text in visible(value))


def _control(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else (
        f"\\U{code:08x}")
