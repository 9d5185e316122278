"""The CLI: exit codes and the output layout."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_privacy.cli import main
from tests.conftest import SAMPLES


def test_all_published_exits_0_and_mirrors_the_layout(models, tmp_path):
    source = tmp_path / "src"
    (source / "day 1" / "cam-ä").mkdir(parents=True)
    shutil.copy(SAMPLES / "bus.jpg", source / "day 1" / "cam-ä" / "bus.jpg")
    shutil.copy(SAMPLES / "zidane.jpg", source / "zidane.jpg")
    (source / "notes.txt").write_text("not an image, ignored")
    release, report = tmp_path / "release", tmp_path / "report"

    assert main(["run", str(source), str(release), "--report", str(report), "-q"]) == 0

    published = sorted(p.relative_to(release).as_posix() for p in release.rglob("*") if p.is_file())
    assert published == ["_SUCCESS", "day 1/cam-ä/bus.jpg", "zidane.jpg"]
    records = [json.loads(line) for line in (report / "manifest.jsonl").read_text().splitlines()]
    # every listed file has a record: the text file too, skipped, saying what it is
    assert [r["source"] for r in records] == ["day 1/cam-ä/bus.jpg", "notes.txt", "zidane.jpg"]
    assert records[1]["error"]["code"] == "unsupported_format"
    assert "plain text" in records[1]["error"]["message"]
    summary = json.loads((report / "summary.json").read_text())
    assert summary["images"] == 3 and summary["published"] == 2 and summary["ignored"] == 1
    assert summary["persons_detected"] >= 6
    assert summary["residual_detections"] == 0
    marker = json.loads((release / "_SUCCESS").read_text())
    assert marker["published"] == 2
    untouched = (source / "day 1" / "cam-ä" / "bus.jpg").read_bytes()
    assert untouched == (SAMPLES / "bus.jpg").read_bytes()


def test_a_bad_file_is_quarantined_and_exits_3(models, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(SAMPLES / "zidane.jpg", source / "zidane.jpg")
    (source / "broken.jpg").write_bytes(b"<html>this is a web page</html>")
    release, report = tmp_path / "release", tmp_path / "report"

    assert main(["run", str(source), str(release), "--report", str(report), "-q"]) == 3

    assert (release / "zidane.jpg").exists()
    assert not (release / "broken.jpg").exists()
    assert not (report / "quarantine" / "broken.jpg").exists()  # data minimisation: hash only
    records = {json.loads(line)["source"]: json.loads(line)
               for line in (report / "manifest.jsonl").read_text().splitlines()}
    assert records["broken.jpg"]["status"] == "error"
    assert records["broken.jpg"]["error"]["code"] and records["broken.jpg"]["input_sha256"]
    assert records["zidane.jpg"]["status"] == "verified"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["errors"] == 1 and summary["published"] == 1


def test_all_or_nothing_publishes_nothing_when_one_fails(models, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(SAMPLES / "zidane.jpg", source / "zidane.jpg")
    (source / "empty.png").write_bytes(b"")
    release, report = tmp_path / "release", tmp_path / "report"
    code = main(["run", str(source), str(release), "--report", str(report), "-q",
                 "--policy", "all_or_nothing"])
    assert code == 3
    assert not release.exists() or not any(release.iterdir())
    assert json.loads((report / "summary.json").read_text())["withheld"] == 1


@pytest.mark.parametrize(
    "args",
    [
        ["run", "a", "b"],  # --report missing
        ["run", "a", "b", "--report", "r", "--method", "swirl"],
        ["run", "a", "b", "--report", "r", "--conf", "0.2", "--verify-conf", "0.5"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2


def test_missing_model_names_the_fetch_command(tmp_path, capsys):
    code = main(["run", str(tmp_path), str(tmp_path / "o"), "--report", str(tmp_path / "r"),
                 "--model", "no-such-model.pt"])
    assert code == 1
    assert "airflow-privacy models fetch" in capsys.readouterr().err


def test_installed_entry_point(models, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(SAMPLES / "zidane.jpg", source / "zidane.jpg")
    script = Path(sys.executable).parent / "airflow-privacy"
    done = subprocess.run(
        [str(script), "run", str(source), str(tmp_path / "out"), "--report", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "1 published" in done.stdout
    assert "--report DIR" in subprocess.run([str(script), "run", "--help"], capture_output=True,
                                            text=True).stdout
