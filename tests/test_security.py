"""Secrets and privacy: credentials, image bytes and original names stay where they belong.

* Credentials come only from an Airflow connection or the standard AWS chain: no
  CLI option or operator argument takes one, and the package never builds a
  client from literal keys. A run with distinctive fake credentials (through the
  real operators and an ``AIRFLOW_CONN_*`` connection, and through the CLI with
  ``AWS_*`` variables) leaves neither the access key id nor the secret in any log
  line, XCom, manifest, summary, validation or report.
* Logs and XComs carry no image bytes (nor base64 of them); the report shows only
  published (anonymized) outputs.
* Pseudonymized output names (``core/naming.py``): keyed HMAC, flat, suffix kept;
  the release lists no original name; the key is never written anywhere; the
  name map goes only where asked.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from PIL import Image

from airflow_privacy.cli import build_parser, main
from airflow_privacy.core.naming import (
    COLLISION,
    MIN_KEY_BYTES,
    NamingError,
    Pseudonymizer,
    find_collisions,
    from_env,
    write_name_map,
)
from airflow_privacy.storage import open_storage
from tests.conftest import PROJECT, SAMPLES
from tests.s3_server import REGION, seeded_bucket

PACKAGE = PROJECT / "airflow_privacy"
KEY_ID = "AKIAPRIVACYLEAKCHECK7"
SECRET = "pR1v4cy/Leak+Check/Secret-0123456789abcdEF"
PSEUDONYM_KEY = "pseudonym-key-for-tests-9f8e7d6c5b4a"
PSEUDONYM = re.compile(r"^[0-9a-f]{32}\.(jpg|png|webp|tiff|bmp)$")
# JPEG, PNG, WebP, TIFF, GIF magic and the base64 of their first bytes
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n", b"RIFF", b"II*\x00", b"MM\x00*", b"GIF8")
IMAGE_BASE64 = ("/9j/", "iVBORw0KGgo", "UklGR", "SUkqAA", "TU0AKg", "R0lGOD")
LONG_BASE64 = re.compile(r"[A-Za-z0-9+/]{200,}={0,2}")


def secrets_in(text: str) -> list[str]:
    """Which of the secrets (raw or URL-encoded) occur in ``text``."""
    needles = {KEY_ID, SECRET, quote(SECRET, safe=""), PSEUDONYM_KEY}
    return sorted(n for n in needles if n in text)


def image_data_in(text: str) -> list[str]:
    raw = text.encode("utf-8", "surrogateescape")
    found = [repr(m) for m in IMAGE_MAGIC if m in raw]
    found += [m for m in IMAGE_BASE64 if m in text]
    found += [m.group(0)[:40] + "..." for m in LONG_BASE64.finditer(text)]
    return found


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


INPUTS = {
    "people/anna smith.jpg": (SAMPLES / "zidane.jpg").read_bytes(),
    "broken.jpg": b"<html>not an image</html>",
    "small/tiny-bob.png": (lambda b: (Image.new("RGB", (48, 32), (9, 99, 199)).save(b, "PNG"),
                                      b.getvalue())[1])(io.BytesIO()),
}
NAME_PARTS = ("anna", "smith", "people", "broken", "small", "tiny", "bob")


# -- where credentials may come from -----------------------------------------------------------


def test_no_cli_option_takes_a_credential_or_a_key_value():
    suspicious = re.compile(r"access|secret|password|token|credential|^key$")
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # noqa: SLF001
    options = {action.dest for action in run._actions}  # noqa: SLF001
    assert not [o for o in options if suspicious.search(o)]
    assert "pseudonymize_key_env" in options  # the *name* of a variable, not a key


def test_no_operator_argument_takes_a_credential():
    suspicious = re.compile(r"access_key|secret|password|token|credential|^key$")
    for path in sorted((PACKAGE / "operators").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                assert not [n for n in names if suspicious.search(n)], (path.name, names)


def test_the_package_never_builds_a_client_from_literal_credentials():
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for needle in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
            assert needle not in text, f"{path.relative_to(PROJECT)} mentions {needle}"


# -- the operators with a real Airflow connection ----------------------------------------------

# Every operator of the task group, executed in order in a fresh process as a worker runs
# them; every XCom (returned or pushed) is printed on one line.
OPERATORS = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("airflow_privacy").setLevel(logging.DEBUG)
from airflow_privacy.operators.anonymize import AnonymizePeopleOperator
from airflow_privacy.operators.detect import DetectPeopleOperator
from airflow_privacy.operators.publish import PublishReleaseOperator
from airflow_privacy.operators.shards import ListImageShardsOperator
from airflow_privacy.operators.validate import ValidateManifestOperator
from airflow_privacy.operators.verify import VerifyAnonymizationOperator
conn, source, work, report, release = sys.argv[1:6]

class TaskInstance:
    def xcom_push(self, key, value):
        print("XCOM " + json.dumps({key: value}), flush=True)

context = {"ti": TaskInstance()}

def run(operator):
    result = operator.execute(context)
    print("XCOM " + json.dumps({operator.task_id: result}), flush=True)
    return result

shards = run(ListImageShardsOperator(task_id="list_shards", source=source, work=work,
                                     shard_size=2, aws_conn_id=conn))
locations = dict(source=source, work=work, aws_conn_id=conn)
for shard in shards:
    run(DetectPeopleOperator(task_id="detect", shard=shard, **locations))
    run(AnonymizePeopleOperator(task_id="anonymize", shard=shard,
                                pseudonymize_variable="privacy_pseudonym_secret", **locations))
    run(VerifyAnonymizationOperator(task_id="verify", shard=shard, **locations))
validated = run(ValidateManifestOperator(task_id="validate", work=work, report=report,
                                         shards=shards, max_error_rate=0.5,
                                         policy="publish_passing", aws_conn_id=conn))
run(PublishReleaseOperator(task_id="publish", work=work, report=report, release=release,
                           policy="publish_passing", aws_conn_id=conn,
                           manifest_sha256=validated["manifest_sha256"]))
"""


def _clean_env(home: Path) -> dict[str, str]:
    """No AWS_* or AIRFLOW_* from the host: credentials can come from the connection only."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__UNIT_TEST_MODE="False",
               AWS_CONFIG_FILE=str(home / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
               AWS_EC2_METADATA_DISABLED="true", PYTHONUNBUFFERED="1")
    return env


def _objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


@pytest.fixture(scope="module")
def operator_run(models, s3_server, tmp_path_factory) -> dict[str, Any]:
    client, bucket = seeded_bucket(s3_server, "privacy-leak-check", INPUTS, "src")
    home = tmp_path_factory.mktemp("airflow-home")
    env = _clean_env(home)
    env["AIRFLOW_CONN_PRIVACY_LEAK_CHECK"] = json.dumps({
        "conn_type": "aws", "login": KEY_ID, "password": SECRET,
        "extra": {"endpoint_url": s3_server.endpoint_url, "region_name": REGION}})
    env["AIRFLOW_VAR_PRIVACY_PSEUDONYM_SECRET"] = PSEUDONYM_KEY
    uris = [f"s3://{bucket}/{p}" for p in ("src", "work", "report", "release")]
    done = subprocess.run([sys.executable, "-c", OPERATORS, "privacy_leak_check", *uris],
                          env=env, capture_output=True, text=True, timeout=600, cwd=PROJECT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    xcoms = [json.loads(line[5:]) for line in done.stdout.splitlines()
             if line.startswith("XCOM ")]
    return {"stdout": done.stdout, "stderr": done.stderr, "xcoms": xcoms,
            "objects": _objects(client, bucket, ""), "s3_log": s3_server.log_tail(5000)}


def test_the_operators_used_the_connection_and_published(operator_run):
    names = [next(iter(x)) for x in operator_run["xcoms"]]
    assert names[0] == "list_shards" and names[-1] == "publish"
    published = operator_run["xcoms"][-1]["publish"]
    assert published["published"] == 2 and published["images"] == 3


def test_no_credential_in_logs_xcoms_or_any_written_object(operator_run):
    logs = operator_run["stdout"] + operator_run["stderr"]
    assert "published 2 of 2" in logs and "shard 00000" in logs  # the task logs were seen
    assert "credentials retrieved from login and password" in logs  # from the connection
    assert secrets_in(operator_run["stdout"]) == []
    assert secrets_in(operator_run["stderr"]) == []
    assert secrets_in(json.dumps(operator_run["xcoms"])) == []
    for key, body in operator_run["objects"].items():
        if not key.startswith("src/"):
            assert secrets_in(body.decode("utf-8", "replace")) == [], key
    written = {k.rsplit("/", 1)[-1] for k in operator_run["objects"]}
    assert {"manifest.jsonl", "summary.json", "validation.json", "report.html"} <= written


def test_no_image_bytes_in_logs_or_xcoms(operator_run):
    assert image_data_in(operator_run["stdout"]) == []
    assert image_data_in(operator_run["stderr"]) == []
    assert image_data_in(json.dumps(operator_run["xcoms"])) == []
    for key, body in operator_run["objects"].items():
        if key.endswith((".jsonl", ".json")):
            assert image_data_in(body.decode("utf-8")) == [], key


def test_the_report_shows_only_published_outputs(operator_run):
    report = operator_run["objects"]["report/report.html"].decode("utf-8")
    assert "broken.jpg" in report  # the rejected input is listed, but never shown
    assert report.count("data:image/jpeg;base64,") == 2  # the two published outputs
    assert secrets_in(report) == []


def test_the_operators_release_lists_pseudonyms_only(operator_run):
    released = [k[len("release/"):] for k in operator_run["objects"] if k.startswith("release/")]
    assert "_SUCCESS" in released and len(released) == 3
    outputs = [k for k in released if k != "_SUCCESS"]
    assert all(PSEUDONYM.match(k) for k in outputs), outputs
    listing = " ".join(released).lower()
    assert not [part for part in NAME_PARTS if part in listing]
    marker = operator_run["objects"]["release/_SUCCESS"].decode()
    assert not [part for part in NAME_PARTS if part in marker.lower()]
    manifest = [json.loads(line) for line in
                operator_run["objects"]["report/manifest.jsonl"].decode().splitlines()]
    by_source = {r["source"]: r for r in manifest}  # the private report still links them
    assert sorted(by_source) == sorted(INPUTS)
    key = Pseudonymizer(PSEUDONYM_KEY)
    for source, record in by_source.items():
        assert record["output_key"] == key(source)
    assert sorted(outputs) == sorted(r["output_key"] for r in manifest
                                     if r["status"] == "verified")


# -- the CLI with the standard AWS chain ----------------------------------------------------------


def test_the_cli_keeps_credentials_and_the_pseudonym_key_out_of_everything(
    models, s3_server, tmp_path, monkeypatch, capsys, caplog
):
    client, bucket = seeded_bucket(s3_server, "privacy-cli-leak-check", INPUTS, "in")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                        "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
                        "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                        "PRIVACY_NAME_KEY": PSEUDONYM_KEY}.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="airflow_privacy")
    name_map = tmp_path / "private" / "names.json"
    argv = ["run", f"s3://{bucket}/in", f"s3://{bucket}/out", "--report", f"s3://{bucket}/report",
            "-q", "--pseudonymize-key-env", "PRIVACY_NAME_KEY", "--name-map", str(name_map)]
    assert secrets_in(" ".join(argv)) == []  # nothing secret on the command line
    assert main(argv) == 3  # broken.jpg is rejected
    out = capsys.readouterr()
    logs = "\n".join(record.getMessage() for record in caplog.records)
    assert "people/anna smith.jpg: verified" in logs  # the run's own log lines were captured
    for text in (out.out, out.err, logs):
        assert secrets_in(text) == [] and image_data_in(text) == []
    objects = _objects(client, bucket, "")
    for key in ("report/manifest.jsonl", "report/summary.json", "report/report.html"):
        assert secrets_in(objects[key].decode()) == [], key
    released = sorted(k[len("out/"):] for k in objects if k.startswith("out/"))
    assert "_SUCCESS" in released and len(released) == 3
    assert all(PSEUDONYM.match(k) for k in released if k != "_SUCCESS")
    assert not [p for p in NAME_PARTS if p in " ".join(released).lower()]
    document = json.loads(name_map.read_text())
    assert secrets_in(name_map.read_text()) == []
    assert document["key_id"] == Pseudonymizer(PSEUDONYM_KEY).key_id
    assert document["names"] == {k: Pseudonymizer(PSEUDONYM_KEY)(k) for k in INPUTS}


# -- pseudonyms ------------------------------------------------------------------------------------


def test_pseudonyms_are_keyed_flat_and_keep_the_suffix():
    key, other = Pseudonymizer(PSEUDONYM_KEY), Pseudonymizer(PSEUDONYM_KEY + "x")
    name = key("people/anna smith.jpg")
    assert PSEUDONYM.match(name) and name == key("people/anna smith.jpg")
    assert name != other("people/anna smith.jpg")  # another key, another name
    assert name != key("other/anna smith.jpg")  # the whole relative path counts
    assert key("a.JPEG").endswith(".jpg") and key("a.tif").endswith(".tiff")
    assert key("a.gif").endswith(".png")  # written as PNG
    assert "/" not in key("deep/ly/nested/file.png")


def test_a_short_or_missing_key_is_refused_and_the_key_never_shows():
    with pytest.raises(NamingError, match=f"at least {MIN_KEY_BYTES} bytes"):
        Pseudonymizer("short")
    with pytest.raises(NamingError, match="NO_SUCH_VARIABLE"):
        from_env("NO_SUCH_VARIABLE", {})
    with pytest.raises(NamingError) as info:
        from_env("WEAK", {"WEAK": "tooshort"})
    assert "tooshort" not in str(info.value)
    key = Pseudonymizer(PSEUDONYM_KEY)
    assert PSEUDONYM_KEY not in repr(key) + str(key) + json.dumps(key.describe())
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_collisions_between_output_names_are_found():
    from airflow_privacy.core.naming import output_key

    keys = ["x.gif", "x.png", "y.gif", "y.GIF", "z.jpg", "z.jpeg"]
    assert find_collisions(keys, output_key) == {"x.gif": "x.png", "y.gif": "y.png",
                                                 "y.GIF": "y.png"}
    key = Pseudonymizer(PSEUDONYM_KEY)
    assert find_collisions(keys, key) == {}
    assert COLLISION == "output_name_collision"


def test_cli_refuses_a_key_it_cannot_use_with_a_usage_error(tmp_path, monkeypatch, capsys):
    base = ["run", str(tmp_path), str(tmp_path / "out"), "--report", str(tmp_path / "r")]
    monkeypatch.delenv("PRIVACY_UNSET", raising=False)
    monkeypatch.setenv("PRIVACY_WEAK", "weak-key")
    for extra, message in (
        (["--pseudonymize-key-env", "PRIVACY_UNSET"], "PRIVACY_UNSET holds no"),
        (["--pseudonymize-key-env", "PRIVACY_WEAK"], "at least 16 bytes"),
        (["--name-map", str(tmp_path / "m.json")], "--name-map needs --pseudonymize-key-env"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(base + extra)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert message in error and "weak-key" not in error
    assert not (tmp_path / "out").exists()


def test_the_cli_publishes_pseudonyms_and_writes_the_map_only_where_asked(
    models, tmp_path, monkeypatch, capsys
):
    source = tmp_path / "src"
    for key, data in INPUTS.items():
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        (source / key).write_bytes(data)
    monkeypatch.setenv("PRIVACY_NAME_KEY", PSEUDONYM_KEY)
    release, report = tmp_path / "release", tmp_path / "report"
    argv = ["run", str(source), str(release), "--report", str(report), "-q",
            "--pseudonymize-key-env", "PRIVACY_NAME_KEY"]
    assert main(argv) == 3
    key = Pseudonymizer(PSEUDONYM_KEY)
    listing = sorted(p.relative_to(release).as_posix() for p in release.rglob("*"))
    assert listing == sorted(["_SUCCESS", key("people/anna smith.jpg"),
                              key("small/tiny-bob.png")])  # flat: no folder names either
    everything = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in everything if "names" in p.name]  # no map unless asked
    for path in everything:
        assert PSEUDONYM_KEY.encode() not in path.read_bytes(), path
    manifest = [json.loads(line) for line in (report / "manifest.jsonl").read_text().splitlines()]
    assert {r["source"]: r["output_key"] for r in manifest} == {k: key(k) for k in INPUTS}
    capsys.readouterr()

    # with --name-map, the map is written there, and only there
    shutil.rmtree(release)
    mapping = tmp_path / "vault" / "names.json"
    assert main([*argv, "--name-map", str(mapping)]) == 3
    document = json.loads(mapping.read_text())
    assert document["names"] == {k: key(k) for k in INPUTS}
    assert document["scheme"] == "hmac-sha256-128" and document["key_id"] == key.key_id
    assert [p for p in tmp_path.rglob("names.json")] == [mapping]


def test_the_name_map_location_must_name_a_file(tmp_path):
    key = Pseudonymizer(PSEUDONYM_KEY)
    records = [{"source": "a.jpg", "output_key": key("a.jpg")}]
    for bad in ("s3://bucket", f"{tmp_path}/"):
        with pytest.raises(NamingError):
            write_name_map(bad, records, key)
    uri = write_name_map(str(tmp_path / "m.json"), records, key)
    assert json.loads(Path(uri).read_text())["names"] == {"a.jpg": key("a.jpg")}


def test_the_stages_publish_pseudonyms_and_a_new_key_recomputes_the_names(pipeline, tmp_path):
    from airflow_privacy.core import stages

    source = tmp_path / "src"
    (source / "people").mkdir(parents=True)
    (source / "people" / "anna.png").write_bytes(INPUTS["small/tiny-bob.png"])
    stores = {n: open_storage(str(tmp_path / n)) for n in ("src", "work", "report", "release")}
    for secret in (PSEUDONYM_KEY, PSEUDONYM_KEY + "-rotated"):
        key = Pseudonymizer(secret)
        shards = stages.list_shards(stores["src"], 4, work=stores["work"])
        stages.detect_shard(pipeline, stores["src"], stores["work"], shards[0])
        stages.anonymize_shard(pipeline, stores["src"], stores["work"], shards[0], namer=key)
        stages.verify_shard(pipeline, stores["src"], stores["work"], shards[0])
        records, sha = stages.assemble_manifest(stores["work"], stores["report"], shards)
        assert records[0]["output_key"] == key("people/anna.png")
        stages.publish_release(stores["report"], stores["work"], stores["release"],
                               "publish_passing", manifest_sha256=sha, require_validation=False)
        assert (tmp_path / "release" / key("people/anna.png")).is_file()
    assert not [p for p in (tmp_path / "release").rglob("*") if "anna" in p.name]
