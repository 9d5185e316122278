"""The CLI's batch holds a bounded number of records, whatever the number of inputs.

A real record is tens of KB (candidates, verification rounds); a batch that kept
them all until the end grew with its size. Here the flow is replaced by a cheap
one whose records carry a large payload, so the batch's own bookkeeping is what
is measured: going from a small batch to a large one, its peak traced memory
must grow by far less than the added records weigh, and the manifest it streams
must be byte for byte what ``write_manifest`` writes for the same records.
"""

from __future__ import annotations

import copy
import json
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from airflow_privacy.core import batch, flow
from airflow_privacy.core.images import sha256_bytes
from airflow_privacy.core.manifest import (
    MANIFEST,
    SUMMARY,
    ManifestFile,
    merge_by_source,
    summarize,
    write_manifest,
    write_manifest_stream,
)
from airflow_privacy.core.pipeline import Pipeline
from airflow_privacy.core.settings import RunSettings
from airflow_privacy.core.status import Status
from airflow_privacy.storage import StorageError, open_storage

SMALL, LARGE = 100, 1_000  # inputs: the small batch measures what does not depend on the size
VERIFIED_EVERY = 25  # the rest are rejected: nothing staged or copied, so the test stays fast
CANDIDATES = 50  # ~20 KB of JSON per record
OUTPUT = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))[1].tobytes()


def _payload(key: str) -> list[dict]:
    """What a real record lists: every candidate with its box, score and decision.

    Mostly text, so the test spends its time in the batch rather than parsing floats.
    """
    return [{"box": [i + 0.25, i + 0.5, i + 10.75, i + 20.125],
             "confidence": round(0.01 * (i % 100), 4),
             "decision": "dismissed" if i % 3 else "person",
             "why": f"{key} candidate {i}: " + "z" * 300}
            for i in range(CANDIDATES)]


def fake_process_key(pipeline, source, key, name, refused=None):
    """A cheap stand-in for the flow: the record every input starts with, a large payload."""
    state = flow.begin(pipeline, key, name, refused=refused)
    if refused is not None:
        return state.outcome()
    flow.load(state, source.read(key))
    state.record.update(candidates=_payload(key), width=8, height=8, format="JPEG")
    if int(Path(key).stem) % VERIFIED_EVERY:
        flow.fail(state, "decode_failed", "not a real image")
        return state.outcome()
    state.record.update(status=Status.VERIFIED, output_sha256=sha256_bytes(OUTPUT),
                        persons_detected=1,
                        verification={"residuals": [], "remediation_rounds": 0})
    return flow.ImageOutcome(state.record, OUTPUT)


@pytest.fixture
def tools(monkeypatch):
    monkeypatch.setattr(batch, "process_key", fake_process_key)
    return Pipeline(RunSettings())  # the models are never loaded: the flow is replaced


def _batch(root: Path, tools: Pipeline, inputs: int) -> tuple[batch.BatchResult, int]:
    """A batch over ``inputs`` tiny files and one skipped file; its peak traced memory."""
    (root / "source").mkdir(parents=True)
    for i in range(inputs):
        (root / "source" / f"{i:05d}.jpg").write_bytes(b"x%d" % i)
    (root / "source" / "notes.txt").write_text("not an image: a skipped record")
    source, release, report = (open_storage(str(root / n))
                               for n in ("source", "release", "report"))
    tracemalloc.start()
    try:
        result = batch.run_batch(source, release, report, tools, workers=2)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_batch_holds_a_bounded_number_of_records(tmp_path, tools):
    _, small = _batch(tmp_path / "small", tools, SMALL)  # also warms imports and caches
    result, large = _batch(tmp_path / "large", tools, LARGE)
    root = tmp_path / "large"
    records = list(result.records)
    record = len(json.dumps(records[1]))
    assert record > 20_000
    added = (LARGE - SMALL) * record
    assert large - small < added / 10, (
        f"peak {small / 1e6:.1f} MB at {SMALL} inputs, {large / 1e6:.1f} MB at {LARGE}: "
        f"the added {added / 1e6:.0f} MB of records are held")

    verified = LARGE // VERIFIED_EVERY
    assert result.summary["published"] == verified
    assert len(list((root / "release").iterdir())) == verified + 1  # and _SUCCESS
    assert not list((root / "report" / ".staging").rglob("*.jpg"))

    # the streamed manifest is byte for byte the one write_manifest writes for these records
    streamed = (root / "report" / MANIFEST).read_bytes()
    assert len(result.records) == len(records) == LARGE + 1
    assert [r["source"] for r in records] == sorted(r["source"] for r in records)
    assert result.records[1] == records[1] and records[1]["source"] == "00001.jpg"
    sha = write_manifest(open_storage(str(tmp_path / "reference")), records[::-1])
    assert (tmp_path / "reference" / MANIFEST).read_bytes() == streamed
    assert sha == result.summary["manifest_sha256"] == sha256_bytes(streamed)

    # the summary's totals are those summarize() gives over all the records
    expected = summarize(records)
    assert {k: result.summary[k] for k in expected} == expected
    assert expected["verified"] == verified and result.summary["ignored"] == 1
    stored = json.loads((root / "report" / SUMMARY).read_text())
    assert stored == json.loads(json.dumps(result.summary))  # settings hold tuples


def test_the_streamed_manifest_merges_by_source_and_refuses_an_order_it_cannot_keep(tmp_path):
    report = open_storage(str(tmp_path))
    processed = [{"source": s, "status": "error"} for s in ("a.jpg", "c.jpg", "é.jpg")]
    carried = [{"source": s, "status": "verified", "carried_from": "x"} for s in ("b.jpg", "d")]
    written = write_manifest_stream(report, merge_by_source(processed, carried))
    streamed = (tmp_path / MANIFEST).read_bytes()
    assert written.sha256 == write_manifest(report, carried + processed)
    assert (tmp_path / MANIFEST).read_bytes() == streamed
    assert written.totals.counts() == summarize(processed + carried)

    for wrong in ([processed[1], processed[0]], [processed[0], processed[0]]):
        (tmp_path / MANIFEST).unlink(missing_ok=True)
        with pytest.raises(RuntimeError, match="not sorted by source"):
            write_manifest_stream(report, wrong)
        assert not (tmp_path / MANIFEST).exists()  # nothing is stored from a broken stream


def test_the_batch_records_are_a_sequence_re_read_from_the_manifest(tmp_path):
    report = open_storage(str(tmp_path))
    records = [{"source": s, "status": "verified"} for s in ("a", "b", "c")]
    written = write_manifest_stream(report, records)
    lazy = ManifestFile(report, written.sha256, written.totals.by_status)
    assert len(lazy) == 3 and list(lazy) == records and lazy[1] == records[1]
    assert lazy[-1] == records[-1] and lazy[1:] == records[1:]
    assert list(reversed(lazy)) == records[::-1] and records[2] in lazy
    with pytest.raises(IndexError):
        lazy[3]
    (snapshot := copy.deepcopy(lazy))[0]["status"] = "changed"  # a copy is a list, to change
    assert snapshot[0]["status"] == "changed" and lazy[0]["status"] == "verified"

    write_manifest(report, records[:2])  # another run replaced the manifest
    with pytest.raises(StorageError, match="no longer the manifest"):
        list(lazy)
