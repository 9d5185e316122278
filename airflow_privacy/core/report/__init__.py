"""``report.html``: the run's manifest as one page a reviewer can open anywhere.

The manifest and summary are complete but not readable at a glance; this page
is. It is written beside them, after publication, and is a single
self-contained file (inline CSS and SVG, images as ``data:`` URIs, no script,
no external URL), so it can be mailed, archived, or opened from object storage
without reaching anything else. A Content-Security-Policy ``<meta>`` backs that
up: even a mistake in escaping could neither run a script nor fetch anything.

Three rules shape it:

* **Only published pixels are shown.** Thumbnails (:mod:`.thumbnails`) are made
  from the *release* objects of records that the publish policy released, and
  only when the object's sha256 is the verified ``output_sha256``. A source
  image, a quarantined output or a withheld output is never read, so a report
  cannot leak what the pipeline refused to publish.
* **Everything from the run is hostile text.** Keys are file names chosen by
  whoever filled the source folder; the page is rendered (:mod:`.render`) from
  ``templates/report.html.j2`` with Jinja2 autoescape on, and control/format
  characters (newlines, bidi overrides) are shown as visible escapes so a name
  cannot pretend to be another.
* **Same inputs, same bytes.** Rows are chosen and shown by source, nothing reads a
  clock (the run's start and end come in with its identity), and thumbnails
  are encoded deterministically, so a report can be diffed and hashed like the
  manifest.

**Any size, bounded page.** Everything is computed in one pass over the
records (:mod:`.facts`): ``manifest.jsonl`` is streamed line by line, so a
million-record manifest is reported in bounded memory. Totals, the story and
the histogram are exact; per-image rows are capped (``max_rows``), most urgent
first (quarantined or rejected, then remediated or with dismissed candidates),
and the page says how many are not shown: the manifest holds every record.

It opens with what happened to people in plain language (:mod:`.story`), then
the run's identity and provenance, then the technical evidence. An
``attestation.json`` beside it (:mod:`.attestation`) binds the hashes together
and can be HMAC-signed; both are kept per run (:mod:`.writer`).
"""

from airflow_privacy.core.report.attestation import verify_attestation
from airflow_privacy.core.report.facts import (
    DEFAULT_MAX_ROWS,
    HISTOGRAM_BINS,
    ReportFacts,
    collect,
)
from airflow_privacy.core.report.render import render_facts, render_report
from airflow_privacy.core.report.story import run_identity
from airflow_privacy.core.report.thumbnails import (
    REGION_COLOR,
    REMEDIATION_COLOR,
    THUMBNAIL_QUALITY,
)
from airflow_privacy.core.report.writer import (
    ATTESTATION,
    REPORT,
    write_facts,
    write_report,
    write_report_from,
)

__all__ = [
    "ATTESTATION",
    "DEFAULT_MAX_ROWS",
    "HISTOGRAM_BINS",
    "REGION_COLOR",
    "REMEDIATION_COLOR",
    "REPORT",
    "ReportFacts",
    "THUMBNAIL_QUALITY",
    "collect",
    "render_facts",
    "render_report",
    "run_identity",
    "verify_attestation",
    "write_facts",
    "write_report",
    "write_report_from",
]
