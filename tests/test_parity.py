"""One flow, two drivers: the CLI (fused) and the Airflow stages (``dag.test()``) agree.

The same inputs go through ``airflow-privacy run`` and through the example
folder DAG (detect, anonymize and verify as separate mapped tasks, records
carried between them in the work location). Their manifests must be equal
field by field, apart from timings and locations, and the published bytes
identical (the CLI's release, the DAG's verified outputs awaiting publication):
a person hidden, a person-free photo published untouched, a rejected input, a
remediated one and an output-name collision included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from airflow_privacy.cli import main
from tests.airflow_env import DAGS, run_dag_test
from tests.conftest import COCO, SAMPLES

PERSON_FREE = "000000000025.jpg"  # giraffes: weak "person" candidates are dismissed
REMEDIATED = "000000000510.jpg"  # verification finds and confirms someone detection missed
LOCATIONS = ("timings_ms", "quarantine")


def _inputs(source: Path) -> None:
    source.mkdir()
    shutil.copy(SAMPLES / "bus.jpg", source / "bus.jpg")
    shutil.copy(COCO / "images" / PERSON_FREE, source / "food.jpg")
    shutil.copy(COCO / "images" / REMEDIATED, source / "remediated.jpg")
    (source / "broken.jpg").write_bytes(b"<html>not an image</html>")
    (source / "notes.txt").write_text("not an image: recorded as skipped, never read as one")
    small = cv2.imread(str(COCO / "images" / PERSON_FREE))[::4, ::4]
    cv2.imwrite(str(source / "pic.png"), small)
    # A GIF is published as PNG, so pic.gif would take pic.png's name: refused, by both drivers.
    Image.fromarray(cv2.cvtColor(small[::-1], cv2.COLOR_BGR2RGB)).save(source / "pic.gif")


def _manifest(report: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in (report / "manifest.jsonl").read_text().splitlines()]
    return {r["source"]: {k: v for k, v in r.items() if k not in LOCATIONS} for r in records}


def _published(release: Path) -> dict[str, bytes]:
    return {p.relative_to(release).as_posix(): p.read_bytes()
            for p in release.rglob("*") if p.is_file() and p.name != "_SUCCESS"}


@pytest.fixture(scope="module")
def both_runs(airflow_home, models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    source = root / "source"
    _inputs(source)
    cli_release, cli_report = root / "cli-release", root / "cli-report"
    code = main(["run", str(source), str(cli_release), "--report", str(cli_report), "-q"])
    assert code == 3  # something was rejected
    output = root / "dag"
    run = run_dag_test(airflow_home, DAGS / "example_anonymize_folder.py",
                       "example_anonymize_folder",
                       {"source": str(source), "output": str(output), "policy": "publish_passing"})
    # Two of six inputs rejected is over the gate's 10 % error bound, so the DAG stops at the
    # gate and publishes nothing; the verified outputs wait in the run's staging area.
    assert run["tasks"]["anonymize_people.validate_manifest[-1]"] == "failed", run["log"][-4000:]
    verify_tasks = [state for task, state in run["tasks"].items() if ".verify[" in task]
    assert verify_tasks and set(verify_tasks) == {"success"}
    (staging,) = (output / "work").glob("*/staging")
    return {"cli_release": cli_release, "cli_report": cli_report,
            "dag_staging": staging, "dag_report": output / "report"}


def test_the_manifests_are_equal_field_by_field(both_runs):
    cli, dag = _manifest(both_runs["cli_report"]), _manifest(both_runs["dag_report"])
    assert sorted(cli) == sorted(dag) == sorted(
        ["broken.jpg", "bus.jpg", "food.jpg", "notes.txt", "pic.gif", "pic.png",
         "remediated.jpg"])
    for source in cli:
        assert cli[source] == dag[source], source


def test_the_published_bytes_are_identical(both_runs):
    cli, dag = _published(both_runs["cli_release"]), _published(both_runs["dag_staging"])
    assert sorted(cli) == sorted(dag) == ["bus.jpg", "food.jpg", "pic.png", "remediated.jpg"]
    assert cli == dag


def test_the_cases_are_the_ones_named(both_runs):
    """Each input exercises what the parity claim is about, in both drivers alike."""
    records = _manifest(both_runs["cli_report"])
    assert records["broken.jpg"]["error"]["code"] == "not_an_image"
    assert records["pic.gif"]["error"]["code"] == "output_name_collision"
    assert records["notes.txt"]["error"]["code"] == "unsupported_format"
    assert records["food.jpg"]["pixels_unchanged"] is True
    assert any(c["decision"] == "dismissed" for c in records["food.jpg"]["candidates"])
    assert records["bus.jpg"]["persons_detected"] >= 4
    assert records["remediated.jpg"]["verification"]["remediation_rounds"] >= 1
    original = (COCO / "images" / PERSON_FREE).read_bytes()
    published = (both_runs["cli_release"] / "food.jpg").read_bytes()
    decoded = [cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR)
               for d in (original, published)]
    assert np.array_equal(*decoded)  # pixel-identical, not re-encoded
    assert len(published) < len(original)  # the metadata is gone


def test_both_drivers_judge_collisions_on_the_names_that_will_be_published(tmp_path):
    """``x.gif`` is published as ``x.png``: a collision under plain names, none under
    pseudonyms; the Airflow listing decides it as the CLI does, from one function."""
    from airflow_privacy.core.inputs import listing
    from airflow_privacy.core.naming import Pseudonymizer
    from airflow_privacy.core.shards import list_shards
    from airflow_privacy.storage import open_storage

    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    source = open_storage(str(tmp_path))
    namer = Pseudonymizer(b"a key of at least sixteen bytes")
    assert set(listing(source)[1]) == {"x.gif"}
    assert [s.get("refused") for s in list_shards(source, 10)] == [
        {"x.gif": list(listing(source)[1]["x.gif"])}]
    assert listing(source, namer)[1] == {}
    assert [s.get("refused") for s in list_shards(source, 10, namer=namer)] == [None]
