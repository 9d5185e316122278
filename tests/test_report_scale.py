"""The report at any size: one pass, exact counts, a bounded page.

Synthetic records (shaped like the pipeline's) stand in for a run: no model is
needed to check what the report adds up and which rows it keeps. The facts are
checked against brute-force answers computed here from the whole list, and
the publish rule against :func:`~airflow_privacy.core.publish.releasable`
itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from airflow_privacy.core.publish import releasable
from airflow_privacy.core.report import (
    ATTESTATION,
    REPORT,
    ReportFacts,
    collect,
    render_report,
    write_report,
    write_report_from,
)
from airflow_privacy.core.report.story import plain_summary
from airflow_privacy.storage import open_storage
from tests.test_report import parse, totals

SHA = "ab" * 32


def synthetic(i: int, rng: random.Random | None = None) -> dict:
    """Record ``i``: mostly verified, some quarantined, rejected, skipped, remediated."""
    pick = (rng.random() if rng else (i * 0.6180339887) % 1.0)
    source = f"d{i % 7}/{i:07d}.jpg"
    record = {
        "source": source, "output_key": source, "status": "verified", "output_sha256": SHA,
        "input_sha256": SHA, "width": 640, "height": 480, "format": "JPEG",
        "persons_detected": i % 4, "pixels_unchanged": i % 4 == 0,
        "detections": [{"box": [1.0, 2.0, 3.0, 4.0], "confidence": ((i * 37) % 100) / 100 + 0.005}]
        * (i % 4),
        "candidates": [{"decision": "dismissed"}] * (i % 13 == 0) + [{"decision": "kept"}],
        "regions": [{"box": [9.0, 18.0, 210.0, 420.0], "origin": "person"}] * (i % 4),
        "verification": {"passed": True, "residuals": [], "retention": [0.01 * (i % 5)],
                         "remediation_rounds": 1 if i % 17 == 0 else 0},
        "error": None, "model": {"name": "yolo11n-pose", "sha256": "11" * 32},
        "face_model": {"name": "centerface", "sha256": "22" * 32},
    }
    if pick < 0.03:
        record.update(status="quarantined", output_sha256=None,
                      error={"code": "verification_failed", "message": "a face"},
                      verification={"passed": False, "residuals": [{"kind": "face"}],
                                    "remediation_rounds": 2})
    elif pick < 0.05:
        record.update(status="error", output_sha256=None, persons_detected=None, detections=[],
                      regions=[], verification=None, model=None, face_model=None,
                      candidates=None,
                      error={"code": "undecodable" if pick < 0.04 else "too_large",
                             "message": "no"})
    elif pick < 0.06:
        record.update(status="error", output_sha256=None, persons_detected=None, detections=[],
                      regions=[], verification=None, model=None, face_model=None,
                      candidates=None, format="plain text",
                      error={"code": "unsupported_format", "message": "not an image"})
    elif pick < 0.07:  # verified, but the independent check left a face on it
        record["verification"] = {"passed": True, "residuals": [{"kind": "face"}],
                                  "retention": [0.02], "remediation_rounds": 0}
    return record


def summary_of(records: list[dict], policy: str = "publish_passing") -> dict:
    published = len(releasable(records, policy))
    return {"images": len(records), "policy": policy, "published": published,
            "verified": sum(r["status"] == "verified" for r in records),
            "settings": {"detection": {"confidence": 0.35}}}


def priority(record: dict, thumbed: set[str]) -> float:
    """The documented row order, from the whole record (independent of facts.py's code)."""
    status, code = record["status"], (record.get("error") or {}).get("code")
    skipped = code in ("unsupported_format", "hidden_file")
    verification = record.get("verification") or {}
    if status == "quarantined" or (status == "error" and not skipped):
        return 0
    if (verification.get("remediation_rounds") or verification.get("residuals")
            or any(c.get("decision") == "dismissed" for c in record.get("candidates") or [])):
        return 1
    if skipped:
        return 2
    if record["source"] in thumbed:
        return 2.5
    return 3 if (record.get("persons_detected") or 0) > 0 else 4


@pytest.mark.parametrize("max_rows", [120, 1000])
@pytest.mark.parametrize("policy", ["publish_passing", "all_or_nothing"])
def test_facts_equal_brute_force_answers_in_any_order(policy, max_rows):
    rng = random.Random(7)
    records = [synthetic(i, rng) for i in range(3000)]
    if policy == "all_or_nothing":  # make it release: every processed input verified
        released_run = [r for r in records if r["status"] == "verified"
                        or (r.get("error") or {}).get("code") == "unsupported_format"]
        cases = [(records, False), (released_run, True)]
    else:
        cases = [(records, True)]
    for run, released in cases:
        summary = summary_of(run, policy)
        facts = collect(run, summary, max_rows=max_rows, max_thumbnails=30)
        published = releasable(run, policy) if summary["published"] else []
        assert facts.released is released and facts.published == len(published)
        assert [t["source"] for t in facts.thumbnail_records()] == sorted(
            r["source"] for r in published)[:30]

        verified = [r for r in run if r["status"] == "verified"]
        counts = plain_summary(facts)["counts"]
        skipped = sum((r.get("error") or {}).get("code") == "unsupported_format" for r in run)
        assert counts == {
            "images": len(run) - skipped,
            "people_hidden": sum(r["persons_detected"] for r in verified),
            "dismissed": sum(c["decision"] == "dismissed" for r in run
                             for c in r.get("candidates") or []),
            "published": len(published),
            "unchanged": sum(r["pixels_unchanged"] for r in published),
            "withheld": len(run) - skipped - len(published),
            "faces_left": sum(x["kind"] == "face" for r in published
                              for x in r["verification"]["residuals"]),
            "skipped": skipped,
        }
        confidences = [d["confidence"] for r in run for d in r["detections"]]
        assert facts.histogram == np.histogram(confidences, bins=10, range=(0, 1))[0].tolist()

        thumbed = {t["source"] for t in facts.thumbnail_records()}
        expected = sorted(sorted(run, key=lambda r: (priority(r, thumbed), r["source"]))
                          [:max_rows], key=lambda r: r["source"])
        rows = facts.rows()
        assert [r["source"] for r in rows] == [r["source"] for r in expected]
        levels = Counter(priority(r, thumbed) for r in expected)
        if max_rows == 1000:  # every level is reached: urgent rows, thumbnails' rows, the rest
            assert {1, 2} <= set(levels) and levels[3] + levels[4] > 0
            assert len(thumbed) == (30 if released else 0)
            assert thumbed <= {r["source"] for r in rows} and (levels[2.5] > 0) is released
        else:  # the most urgent level alone fills a small cap
            assert set(levels) == {min(priority(r, thumbed) for r in run)}
        assert all(r["shown"] == ("published" if r["source"] in {p["source"] for p in published}
                                  else r["status"] if r["status"] != "verified"
                                  else "verified, not published") for r in rows)
        if not released:  # nothing published: no thumbnail rows are promoted
            assert not thumbed

        shuffled = run[:]
        random.Random(1).shuffle(shuffled)
        again = collect(shuffled, summary, max_rows=max_rows, max_thumbnails=30)
        assert again.rows() == rows and plain_summary(again) == plain_summary(facts)


def test_the_most_urgent_rows_win_and_the_page_says_what_it_leaves_out(tmp_path):
    records = [synthetic(i) for i in range(400)]
    summary = summary_of(records)
    urgent = [r for r in records if priority(r, set()) == 0]
    assert 10 < len(urgent) < 400
    dom = parse(render_report(records, summary, None, max_rows=10))
    rows = [n for n in dom.find_all("tr") if "data-status" in n.attrs]
    assert [r.find_all("td")[0].text() for r in rows] == sorted(r["source"] for r in urgent)[:10]
    note = dom.find_all("p", **{"class": "capped"})[0]
    assert note.attrs["data-rows-shown"] == "10" and note.attrs["data-rows-hidden"] == "390"
    assert "manifest.jsonl holds every record" in note.text()
    categories = {li.attrs["data-category"]: (int(li.attrs["data-images"]),
                                              int(li.attrs["data-shown"]))
                  for li in dom.find_all("li") if "data-category" in li.attrs}
    assert categories["withheld"] == (len(urgent), 10)
    assert sum(n for n, _ in categories.values()) == 400

    everything = parse(render_report(records, summary, None, max_rows=400))
    assert len([n for n in everything.find_all("tr") if "data-status" in n.attrs]) == 400
    assert everything.find_all("p", **{"class": "capped"}) == []
    with pytest.raises(ValueError, match="max_rows"):
        ReportFacts(summary, max_rows=-1)


def test_the_list_of_skipped_files_is_capped_too():
    records = [{"source": f"notes/{i:03d}.txt", "status": "error", "format": "plain text",
                "error": {"code": "unsupported_format", "message": "not an image"}}
               for i in reversed(range(30))]
    dom = parse(render_report(records, {"images": 30}, None, max_rows=10))
    listed = [li.attrs["data-skipped"] for li in dom.find_all("li") if "data-skipped" in li.attrs]
    assert listed == [f"notes/{i:03d}.txt" for i in range(10)]
    more = [p for p in dom.find_all("p") if "data-skipped-more" in p.attrs]
    assert more[0].attrs["data-skipped-more"] == "20" and "manifest.jsonl" in more[0].text()
    story = " ".join(p.text() for p in dom.find_all("p", **{"class": "story"}))
    assert "30 listed files skipped" in story and "the first 10 by name" in story


def write_manifest_lines(folder: Path, n: int) -> tuple[bytes, dict]:
    """``n`` synthetic records as ``manifest.jsonl`` and ``summary.json``; the sha256 too."""
    digest, counts = hashlib.sha256(), Counter()
    with (folder / "manifest.jsonl").open("wb") as out:
        for i in range(n):
            record = synthetic(i)
            counts[record["status"]] += 1
            counts["persons"] += record["persons_detected"] or 0
            if record["status"] == "verified":
                counts["people"] += record["persons_detected"]
            counts["releasable"] += bool(record["status"] == "verified"
                                         and record["output_sha256"])
            line = (json.dumps(record, sort_keys=True) + "\n").encode()
            digest.update(line)
            out.write(line)
    summary = {"images": n, "verified": counts["verified"], "quarantined": counts["quarantined"],
               "errors": counts["error"], "persons_detected": counts["persons"],
               "policy": "publish_passing", "published": counts["releasable"],
               "manifest_sha256": digest.hexdigest()}
    (folder / "summary.json").write_text(json.dumps(summary))
    return digest.hexdigest().encode(), {**summary, "people": counts["people"]}


def test_a_50000_record_manifest_gives_a_bounded_page_in_bounded_memory(tmp_path):
    n = 50_000
    sha, summary = write_manifest_lines(tmp_path, n)
    report = open_storage(str(tmp_path))
    release = open_storage(str(tmp_path / "release"))  # empty: thumbnails become notes
    manifest_bytes = (tmp_path / "manifest.jsonl").stat().st_size
    assert manifest_bytes > 40 * 2**20  # the whole manifest as Python objects: hundreds of MB

    tracemalloc.start()
    try:
        write_report_from(report, release)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB: the manifest was held in memory"

    page = (tmp_path / REPORT).read_bytes()
    assert len(page) < 2**20, len(page)  # ~0.3 MiB: 500 rows and 200 thumbnail notes
    dom = parse(page.decode())
    shown = totals(dom)
    assert shown["images"] == str(n) and shown["published"] == str(summary["published"])
    rows = [r for r in dom.find_all("tr") if "data-status" in r.attrs]
    assert len(rows) == 500
    assert {r.attrs["data-status"] for r in rows} <= {"quarantined", "error"}
    note = dom.find_all("p", **{"class": "capped"})[0]
    assert note.attrs["data-rows-hidden"] == str(n - 500)
    assert len(dom.find_all("figure")) == 200  # max_thumbnails, each a "not readable" note
    assert f"{summary['published'] - 200} more published images not shown" in page.decode()
    story = " ".join(p.text() for p in dom.find_all("p", **{"class": "story"}))
    assert f"{summary['published']} images published" in story
    assert f"; {summary['people']} people found and hidden" in story
    bars = sum(int(b.attrs["data-count"]) for b in dom.find_all("rect"))
    assert bars == sum(len(synthetic(i)["detections"]) for i in range(n))

    document = json.loads((tmp_path / ATTESTATION).read_text())
    assert document["claims"]["manifest_sha256"] == sha.decode()
    assert document["claims"]["outcome"]["published"] == summary["published"]
    assert document["claims"]["report_sha256"] == hashlib.sha256(page).hexdigest()

    # the CLI's path (records in memory) is the same code: the same page, byte for byte
    records = [synthetic(i) for i in range(n)]
    other = open_storage(str(tmp_path / "other"))
    (tmp_path / "other").mkdir(exist_ok=True)
    os.link(tmp_path / "manifest.jsonl", tmp_path / "other" / "manifest.jsonl")
    write_report(other, records, json.loads((tmp_path / "summary.json").read_text()), release)
    assert (tmp_path / "other" / REPORT).read_bytes() == page
