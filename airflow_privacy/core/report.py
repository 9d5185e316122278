"""``report.html``: the run's manifest as one page a reviewer can open anywhere.

The manifest and summary are complete but not readable at a glance; this page
is. It is written beside them, after publication, and is a single
self-contained file (inline CSS and SVG, images as ``data:`` URIs, no script,
no external URL), so it can be mailed, archived, or opened from object storage
without reaching anything else. A Content-Security-Policy ``<meta>`` backs that
up: even a mistake in escaping could neither run a script nor fetch anything.

Three rules shape it:

* **Only published pixels are shown.** Thumbnails are made from the *release*
  objects of records that the publish policy released, and only when the
  object's sha256 is the verified ``output_sha256``. A source image, a
  quarantined output or a withheld output is never read, so a report cannot
  leak what the pipeline refused to publish.
* **Everything from the run is hostile text.** Keys are file names chosen by
  whoever filled the source folder; every value goes through :func:`html.escape`,
  and control/format characters (newlines, bidi overrides) are shown as visible
  escapes so a name cannot pretend to be another.
* **Same inputs, same bytes.** Records are sorted by source, nothing reads a
  clock, and thumbnails are encoded deterministically, so a report can be
  diffed and hashed like the manifest.
"""

from __future__ import annotations

import base64
import html
import json
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.manifest import SUMMARY, VALIDATION, read_manifest
from airflow_privacy.core.publish import POLICIES, releasable
from airflow_privacy.storage import Storage, StorageError

REPORT = "report.html"
HISTOGRAM_BINS = 10
THUMBNAIL_QUALITY = 85
REGION_COLOR = (40, 40, 230)  # BGR: regions planned from detections
REMEDIATION_COLOR = (0, 160, 255)  # BGR: regions added by remediation
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def write_report(
    report: Storage,
    records: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    release: Storage,
    *,
    max_thumbnails: int = 200,
    thumbnail_size: int = 256,
) -> str:
    """Write ``report.html`` beside the manifest in ``report``; returns its URI.

    ``records`` and ``summary`` are what :mod:`~airflow_privacy.core.manifest`
    wrote. ``validation.json`` is read from ``report`` when present. Thumbnails
    (at most ``max_thumbnails``, longer side ``thumbnail_size``) come from
    ``release`` only. A thumbnail that cannot be made (object missing or
    changed, undecodable) is replaced by a note rather than failing the run:
    the report describes a release that already happened.
    """
    page = render_report(
        records, summary, release, validation=_read_validation(report),
        max_thumbnails=max_thumbnails, thumbnail_size=thumbnail_size,
    )
    report.write(REPORT, page.encode("utf-8"))
    return report.uri_of(REPORT)


def write_report_from(report: Storage, release: Storage, **options: Any) -> str:
    """:func:`write_report` from the ``manifest.jsonl`` and ``summary.json`` in ``report``.

    For callers that hold locations rather than records, such as the Airflow
    publish task, where the summary is only complete after publication.
    """
    summary = json.loads(report.read_text(SUMMARY)) if report.exists(SUMMARY) else {}
    return write_report(report, read_manifest(report), summary, release, **options)


def render_report(
    records: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    release: Storage,
    *,
    validation: dict[str, Any] | None = None,
    max_thumbnails: int = 200,
    thumbnail_size: int = 256,
) -> str:
    """The page as text; :func:`write_report` stores it. Split out for tests and previews."""
    if thumbnail_size < 16:
        raise ValueError(f"thumbnail_size must be >= 16, not {thumbnail_size}")
    ordered = sorted(records, key=lambda r: str(r.get("source")))
    published = _published(ordered, summary)
    sections = [
        _totals(ordered, summary),
        _outcome(ordered, summary, validation),
        _histogram(ordered, summary),
        _rows(ordered, published),
        _thumbnails(ordered, published, release, max(0, max_thumbnails), thumbnail_size),
    ]
    return _PAGE.format(csp=_CSP, css=_CSS, body="\n".join(sections))


# -- what was published -----------------------------------------------------------------------


def _published(records: Sequence[dict[str, Any]], summary: dict[str, Any]) -> set[str]:
    """Source keys whose outputs the publish step released.

    Recomputed with the publish step's own :func:`releasable` under the summary's
    policy (the summary has counts, not keys), so a withheld output (e.g. under
    ``all_or_nothing``) is never shown. Nothing counts as published while the
    summary says publication has not happened (``published`` is null).
    """
    policy = summary.get("policy")
    if not summary.get("published") or policy not in POLICIES:
        return set()
    return {str(r["source"]) for r in releasable(records, policy)}


# -- sections ---------------------------------------------------------------------------------


def _totals(records: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    models = _distinct(records, "model")
    faces = _distinct(records, "face_model")
    if not models:
        name = ((summary.get("settings") or {}).get("detection") or {}).get("model")
        models = [{"name": name, "sha256": None}] if name else []
    items = [
        ("images", "Images", summary.get("images", len(records))),
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
    rows = "\n".join(
        f'<div data-total="{key}"><dt>{_e(label)}</dt><dd>{_text(value)}</dd></div>'
        for key, label, value in items
    )
    return f'<section id="totals"><h2>Totals</h2><dl class="totals">\n{rows}\n</dl></section>'


def _outcome(
    records: Sequence[dict[str, Any]], summary: dict[str, Any], validation: dict[str, Any] | None
) -> str:
    """Per-image verification and the Great Expectations gate, each with a clear verdict."""
    images = len(records)
    verified = sum(1 for r in records if r.get("status") == "verified")
    failed = images - verified
    passed = failed == 0
    parts = [
        f'<p class="verdict {"pass" if passed else "fail"}" data-verification='
        f'"{"passed" if passed else "failed"}">Verification '
        f'{"passed" if passed else "failed"}: {verified} of {images} images verified'
        + (f", {failed} not (quarantined or rejected)" if failed else "")
        + "</p>"
    ]
    if validation is None:
        parts.append('<p class="verdict none" data-validation="absent">Quality gate: no '
                     f"{_e(VALIDATION)} beside the manifest</p>")
    else:
        parts.append(_validation(validation, summary))
    return f'<section id="outcome"><h2>Outcome</h2>\n{"".join(parts)}\n</section>'


def _validation(validation: dict[str, Any], summary: dict[str, Any]) -> str:
    if validation.get("unreadable"):
        return ('<p class="verdict fail" data-validation="unreadable">Quality gate: '
                f"{_e(VALIDATION)} is unreadable ({_e(validation['unreadable'])})</p>")
    ok = bool(validation.get("success"))
    stats = validation.get("statistics") or {}
    pinned = (validation.get("meta") or {}).get("manifest_sha256")
    expected = summary.get("manifest_sha256")
    same = pinned is not None and pinned == expected
    verdict = "passed" if ok and same else "failed"
    text = (f'<p class="verdict {"pass" if verdict == "passed" else "fail"}" '
            f'data-validation="{verdict}">Quality gate (Great Expectations) {verdict}: '
            f"{_text(stats.get('successful_expectations'))} of "
            f"{_text(stats.get('evaluated_expectations'))} expectations met")
    if not same:
        text += f"; it validated manifest {_text(pinned)}, not {_text(expected)}"
    text += "</p>"
    failures = [
        f"<li>{_e(_expectation_name(r))}{_e(_observed(r))}</li>"
        for r in validation.get("results") or []
        if isinstance(r, dict) and not r.get("success")
    ]
    if failures:
        text += '<ul class="failures">' + "".join(failures) + "</ul>"
    return text


def _histogram(records: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    """Detection confidences in equal bins over [0, 1], as inline SVG bars.

    Shows whether the run sat near its threshold (many detections just above
    it suggest others just below); the threshold is drawn as a line.
    """
    edges = [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    counts = [0] * HISTOGRAM_BINS
    for record in records:
        for detection in record.get("detections") or []:
            confidence = detection.get("confidence")
            if isinstance(confidence, int | float):
                index = min(max(bisect_right(edges, float(confidence)) - 1, 0), HISTOGRAM_BINS - 1)
                counts[index] += 1
    total = sum(counts)
    width, height, left, bottom, top = 560, 220, 40, 30, 20
    plot_h = height - bottom - top
    bar_w = (width - left - 10) / HISTOGRAM_BINS
    peak = max(counts) or 1
    shapes = [
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" '
        'class="axis"/>'
    ]
    for i, count in enumerate(counts):
        bar_h = round(plot_h * count / peak, 1)
        x = round(left + i * bar_w + 2, 1)
        y = round(height - bottom - bar_h, 1)
        label = f"{edges[i]:.1f}–{edges[i + 1]:.1f}"
        shapes.append(
            f'<rect class="bar" data-bin="{label}" data-count="{count}" x="{x}" y="{y}" '
            f'width="{round(bar_w - 4, 1)}" height="{bar_h}"><title>{label}: {count}</title></rect>'
            f'<text x="{round(x + (bar_w - 4) / 2, 1)}" y="{round(y - 4, 1)}" '
            f'class="count">{count}</text>'
            f'<text x="{x}" y="{height - bottom + 14}" class="tick">{edges[i]:.1f}</text>'
        )
    shapes.append(f'<text x="{width - 24}" y="{height - bottom + 14}" class="tick">1.0</text>')
    threshold = ((summary.get("settings") or {}).get("detection") or {}).get("confidence")
    if isinstance(threshold, int | float) and 0 <= threshold <= 1:
        tx = round(left + float(threshold) * (width - left - 10), 1)
        shapes.append(f'<line x1="{tx}" y1="{top - 10}" x2="{tx}" y2="{height - bottom}" '
                      f'class="threshold"><title>detection threshold {threshold}</title></line>')
    svg = (f'<svg class="histogram" role="img" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" data-total="{total}" aria-label="detection confidence '
           f'histogram">{"".join(shapes)}</svg>')
    return (f'<section id="confidences"><h2>Detection confidences</h2>'
            f"<p>{total} detections; the dashed line is the detection threshold.</p>"
            f"{svg}</section>")


def _rows(records: Sequence[dict[str, Any]], published: set[str]) -> str:
    head = ("<tr><th>Source</th><th>Status</th><th>Persons</th><th>Regions</th>"
            "<th>Retention max</th><th>Residuals</th><th>Reason</th></tr>")
    rows = []
    for record in records:
        status = str(record.get("status"))
        source = str(record.get("source"))
        verification = record.get("verification") or {}
        retention = [v for v in verification.get("retention") or [] if isinstance(v, int | float)]
        shown = status
        if status == "verified":
            shown = "published" if source in published else "verified, not published"
        rows.append(
            f'<tr class="record status-{_e(status)}" data-status="{_e(status)}">'
            f'<td class="source"><code>{_e(source)}</code></td>'
            f"<td>{_e(shown)}</td>"
            f'<td class="num">{_text(record.get("persons_detected"))}</td>'
            f'<td class="num">{len(record.get("regions") or [])}</td>'
            f'<td class="num">{_text(f"{max(retention):.4f}" if retention else None)}</td>'
            f'<td class="num">{len(verification.get("residuals") or [])}</td>'
            f"<td>{_e(_reason(record))}</td></tr>"
        )
    return (f'<section id="images"><h2>Images</h2><table class="records">'
            f"<thead>{head}</thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table></section>")


def _thumbnails(
    records: Sequence[dict[str, Any]],
    published: set[str],
    release: Storage,
    limit: int,
    size: int,
) -> str:
    chosen = [r for r in records if str(r.get("source")) in published]
    figures = []
    for record in chosen[:limit]:
        key = str(record.get("output_key") or record.get("source"))
        thumb = _thumbnail(release, record, key, size)
        caption = f"<figcaption><code>{_e(record.get('source'))}</code></figcaption>"
        if thumb.jpeg is None:
            figures.append(f'<figure class="thumb missing"><p>{_e(thumb.note)}</p>'
                           f"{caption}</figure>")
            continue
        uri = "data:image/jpeg;base64," + base64.b64encode(thumb.jpeg).decode("ascii")
        figures.append(
            f'<figure class="thumb"><img src="{uri}" width="{thumb.width}" '
            f'height="{thumb.height}" alt="published output of {_e(record.get("source"))}">'
            f"{caption}</figure>"
        )
    more = len(chosen) - len(figures)
    note = f"<p>{more} more published images not shown (limit {limit}).</p>" if more > 0 else ""
    return (
        '<section id="thumbnails"><h2>Published outputs</h2>'
        "<p>Downscaled from the release (never from a source), anonymized regions outlined: "
        '<span class="key region">detected</span> '
        '<span class="key remediation">remediation</span>.</p>'
        f'<div class="grid">{"".join(figures)}</div>{note}</section>'
    )


# -- thumbnails -------------------------------------------------------------------------------


@dataclass
class _Thumbnail:
    jpeg: bytes | None
    width: int = 0
    height: int = 0
    note: str = ""


def _thumbnail(release: Storage, record: dict[str, Any], key: str, size: int) -> _Thumbnail:
    """The published object, downscaled, with its regions outlined; never any other bytes.

    The object must be byte-for-byte the verified output (sha256), so a stale or
    replaced release object is not presented as this record's result.
    """
    try:
        data = release.read(key)
    except StorageError as exc:
        return _Thumbnail(None, note=f"not readable from the release: {exc}")
    if sha256_bytes(data) != record.get("output_sha256"):
        return _Thumbnail(None, note="the release object is not the verified output; not shown")
    full_w, full_h = record.get("width"), record.get("height")
    known = isinstance(full_w, int) and isinstance(full_h, int) and full_w > 0 and full_h > 0
    flag = _reduced_flag(max(full_w, full_h) if known else 0, size)
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        pixels = None
    if pixels is None:
        return _Thumbnail(None, note="the published output could not be decoded")
    if not known:
        full_h, full_w = pixels.shape[:2]
    scale = min(1.0, size / max(full_w, full_h))
    width, height = max(1, round(full_w * scale)), max(1, round(full_h * scale))
    if pixels.shape[1] != width or pixels.shape[0] != height:
        pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    else:
        pixels = pixels.copy()
    thickness = max(1, round(max(width, height) / 128))
    for region in record.get("regions") or []:
        box = region.get("box") or []
        if len(box) != 4:
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        color = REMEDIATION_COLOR if str(region.get("origin", "")).startswith(
            "remediation") else REGION_COLOR
        cv2.rectangle(
            pixels,
            (round(x1 * width / full_w), round(y1 * height / full_h)),
            (round(x2 * width / full_w) - 1, round(y2 * height / full_h) - 1),
            color, thickness,
        )
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY])
    if not ok:
        return _Thumbnail(None, note="the thumbnail could not be encoded")
    return _Thumbnail(encoded.tobytes(), width, height)


def _reduced_flag(longer_side: int, size: int) -> int:
    """Decode JPEGs at 1/2, 1/4 or 1/8 scale when that still covers ``size``: far cheaper."""
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if longer_side // factor >= size:
            return flag
    return cv2.IMREAD_COLOR


# -- helpers ----------------------------------------------------------------------------------


def _read_validation(report: Storage) -> dict[str, Any] | None:
    """``validation.json`` if present; a broken one is reported, not fatal."""
    if not report.exists(VALIDATION):
        return None
    try:
        document = json.loads(report.read_text(VALIDATION))
    except (StorageError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"unreadable": f"{type(exc).__name__}: {exc}"}
    return document if isinstance(document, dict) else {"unreadable": "not a JSON object"}


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


def _reason(record: dict[str, Any]) -> str:
    error = record.get("error") or {}
    if error:
        code, message = error.get("code"), error.get("message")
        return f"{code}: {message}" if message else str(code)
    rounds = (record.get("verification") or {}).get("remediation_rounds") or 0
    return f"remediated in {rounds} round{'s' if rounds != 1 else ''}" if rounds else ""


def _distinct(records: Sequence[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        value = record.get(field)
        if isinstance(value, dict):
            seen.setdefault((str(value.get("name")), str(value.get("sha256"))), value)
    return [seen[k] for k in sorted(seen)]


def _models_text(models: Sequence[dict[str, Any]]) -> str:
    return "; ".join(f"{m.get('name')} (sha256 {m.get('sha256') or 'unknown'})" for m in models)


def _or_pending(value: Any) -> Any:
    return "not published yet" if value is None else value


def _text(value: Any) -> str:
    return "—" if value is None else _e(value)


def _e(value: Any) -> str:
    """Escape for HTML text and attributes; control and format characters made visible.

    A newline, a bidi override (U+202E), a zero-width or a no-break space in a
    file name would otherwise hide what the name really is; each is shown as an
    escape (``\\n``, ``\\u202e``) on a highlighted background.
    """
    text = str(value)
    if text.isprintable():
        return html.escape(text, quote=True)
    return "".join(
        html.escape(char, quote=True) if char.isprintable()
        else f'<span class="ctl">{_control(char)}</span>'
        for char in text
    )


def _control(char: str) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in named:
        return named[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else (
        f"\\U{code:08x}")


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d232b;background:#fff}
h1{font-size:22px;margin:0 0 12px}h2{font-size:17px;margin:24px 0 8px}
dl.totals{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:6px 16px}
dl.totals div{border:1px solid #dde2e8;border-radius:4px;padding:4px 8px}
dt{font-size:12px;color:#5a6572}dd{margin:0;font-weight:600;overflow-wrap:anywhere}
.verdict{padding:6px 10px;border-radius:4px;font-weight:600}
.pass{background:#e3f5e6;color:#125b22}.fail{background:#fde6e6;color:#8a1616}
.none{background:#eef0f3;color:#3b4652}
table.records{border-collapse:collapse;width:100%}
.records th,.records td{border-bottom:1px solid #e3e7ec;padding:3px 6px;text-align:left;
vertical-align:top}
.records td.source{overflow-wrap:anywhere;max-width:420px}.num{text-align:right}
tr.status-quarantined{background:#fff5e0}tr.status-error{background:#fdecec}
.ctl{background:#ffe08a;color:#5b4300;border-radius:2px;padding:0 1px}
svg.histogram .bar{fill:#4a78b5}svg.histogram .axis{stroke:#333}
svg.histogram .threshold{stroke:#c0392b;stroke-dasharray:4 3}
svg.histogram text{font-size:11px;fill:#333}svg.histogram .count{text-anchor:middle}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure.thumb{margin:0;max-width:260px}figure.thumb img{display:block;border:1px solid #ccd}
figcaption{font-size:12px;overflow-wrap:anywhere}
figure.missing p{width:240px;height:120px;background:#eef0f3;padding:8px;margin:0}
.key{padding:0 4px;border:2px solid}.key.region{border-color:#e62828}
.key.remediation{border-color:#ffa000}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>airflow-privacy run report</title>
<style>{css}</style>
</head>
<body>
<h1>airflow-privacy run report</h1>
{body}
</body>
</html>
"""

__all__ = ["REPORT", "render_report", "write_report", "write_report_from"]
