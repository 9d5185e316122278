"""``report.html``: right numbers, only published pixels, hostile names inert, renders.

One real batch (the sample images plus hostile file names) feeds every test;
the page is parsed with the standard library's HTML parser, so what is checked
is what a browser's DOM would hold, not substrings of the markup.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from airflow_privacy.core.report import REPORT, render_report, write_report, write_report_from
from airflow_privacy.storage import open_storage
from tests.conftest import SAMPLES

SCRIPT_NAME = "<script>alert(1)</script>.jpg"  # a real image: "/" makes it a nested key
ATTR_NAME = '"><img src=x onerror=alert(1)>.png'  # not an image: an error record
CONTROL_NAME = "quote\"and'\nnew\u202eline.jpg"  # newline and a bidi override
ORIGINALS = {"bus.jpg": "bus.jpg", "zidane.jpg": "zidane.jpg", SCRIPT_NAME: "zidane.jpg"}
JUNK = b"<script>alert('junk source bytes')</script>"

TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "section", "dl", "div",
        "dt", "dd", "p", "ul", "li", "svg", "line", "rect", "text", "table", "thead", "tbody",
        "tr", "th", "td", "code", "span", "figure", "img", "figcaption"}
VOID = {"meta", "img", "br", "hr", "link", "input"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs, self.children = tag, attrs, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        return [
            n for n in self.iter()
            if (tag is None or n.tag == tag)
            and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]


class TreeBuilder(HTMLParser):
    """A minimal DOM from :mod:`html.parser`; enough to read what a browser would."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return
        raise AssertionError(f"stray </{tag}>")

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(page: str) -> Node:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


@pytest.fixture(scope="module")
def run(pipeline, tmp_path_factory):
    """A real batch over the samples and hostile names, with a GE validation and the report."""
    from airflow_privacy.core.batch import run_batch
    from airflow_privacy.core.expectations import validate_manifest

    root = tmp_path_factory.mktemp("report")
    source = root / "source"
    for name, original in ORIGINALS.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / original, source / name)
    (source / ATTR_NAME).write_bytes(JUNK)
    (source / CONTROL_NAME).write_bytes(JUNK)
    storages = {name: open_storage(str(root / name)) for name in ("source", "release", "report")}
    result = run_batch(storages["source"], storages["release"], storages["report"], pipeline)
    validate_manifest(result.records, [r["source"] for r in result.records],
                      report=storages["report"], max_error_rate=1.0,
                      manifest_sha256=result.summary["manifest_sha256"])
    uri = write_report(storages["report"], result.records, result.summary, storages["release"])
    page = Path(uri).read_text(encoding="utf-8")
    return {"root": root, "records": result.records, "summary": result.summary,
            "page": page, "dom": parse(page), "uri": uri, **storages}


def totals(dom: Node) -> dict[str, str]:
    return {n.attrs["data-total"]: n.find_all("dd")[0].text()
            for n in dom.find_all("div") if "data-total" in n.attrs}


def thumbnails(dom: Node) -> list[Node]:
    return dom.find_all("img")


def decode_data_uri(src: str) -> tuple[bytes, np.ndarray]:
    prefix = "data:image/jpeg;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src[len(prefix):], validate=True)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert pixels is not None
    return data, pixels


def test_the_batch_is_what_the_tests_assume(run):
    statuses = {r["source"]: r["status"] for r in run["records"]}
    assert statuses == {"bus.jpg": "verified", "zidane.jpg": "verified", SCRIPT_NAME: "verified",
                        ATTR_NAME: "error", CONTROL_NAME: "error"}
    assert run["summary"]["published"] == 3
    assert run["uri"] == run["report"].uri_of(REPORT)


def test_totals_match_the_summary(run):
    shown, summary = totals(run["dom"]), run["summary"]
    for key in ("images", "published", "verified", "quarantined", "errors", "withheld",
                "persons_detected", "residual_detections", "policy", "settings_key",
                "manifest_sha256"):
        assert shown[key] == str(summary[key]), key
    model = next(r["model"] for r in run["records"] if r.get("model"))
    face = next(r["face_model"] for r in run["records"] if r.get("face_model"))
    assert model["name"] in shown["model"] and model["sha256"] in shown["model"]
    assert face["name"] in shown["face_model"] and face["sha256"] in shown["face_model"]


def test_one_row_per_record_in_source_order(run):
    rows = [n for n in run["dom"].find_all("tr") if "data-status" in n.attrs]
    records = sorted(run["records"], key=lambda r: r["source"])
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        cells = row.find_all("td")
        assert row.attrs["data-status"] == record["status"]
        assert cells[2].text() == str(record["persons_detected"])
        assert cells[3].text() == str(len(record["regions"]))
        assert cells[5].text() == str(len((record["verification"] or {}).get("residuals", [])))
        if record["status"] == "verified":
            retention = max(record["verification"]["retention"])
            assert cells[1].text() == "published" and cells[4].text() == f"{retention:.4f}"
        else:
            assert record["error"]["code"] in cells[6].text()
    by_source = {r.find_all("td")[0].text(): r for r in rows}
    assert SCRIPT_NAME in by_source and ATTR_NAME in by_source  # text, not markup
    assert "quote\"and'\\nnew\\u202eline.jpg" in by_source  # control characters made visible


def test_histogram_counts_every_detection(run):
    bars = run["dom"].find_all("rect")
    confidences = [d["confidence"] for r in run["records"] for d in r["detections"]]
    counts = [int(bar.attrs["data-count"]) for bar in bars]
    assert len(bars) == 10 and sum(counts) == len(confidences) > 0
    expected, _ = np.histogram(confidences, bins=10, range=(0.0, 1.0))
    assert counts == expected.tolist()


def test_thumbnails_show_only_published_anonymized_pixels(run):
    images = thumbnails(run["dom"])
    published = sorted((r for r in run["records"] if r["status"] == "verified"),
                       key=lambda r: r["source"])
    assert len(images) == run["summary"]["published"] == len(published)
    sources = [(run["root"] / "source" / r["source"]).read_bytes() for r in run["records"]]
    for img, record in zip(images, published, strict=True):
        data, thumb = decode_data_uri(img.attrs["src"])
        assert not any(data in s or s in data for s in sources)
        h, w = thumb.shape[:2]
        assert (w, h) == (int(img.attrs["width"]), int(img.attrs["height"]))
        assert max(w, h) == 256
        released = cv2.imdecode(np.frombuffer(run["release"].read(record["output_key"]),
                                              np.uint8), cv2.IMREAD_COLOR)
        original = cv2.imread(str(SAMPLES / ORIGINALS[record["source"]]))
        inside = region_interiors(record, w, h)
        as_published = mean_abs_diff(thumb, downscale(released, w, h), inside)
        as_original = mean_abs_diff(thumb, downscale(original, w, h), inside)
        assert as_published < 4, (record["source"], as_published)
        assert as_original > 4 * as_published and as_original > 8, (record["source"], as_original)
        outline = outline_mask(record, w, h)
        red = thumb[outline][:, 2].astype(int) - thumb[outline][:, :2].max(axis=1)
        assert np.median(red) > 50  # the regions are outlined (red/orange)


def region_interiors(record, w, h, margin=5):
    mask = np.zeros((h, w), bool)
    for region in record["regions"]:
        x1, y1, x2, y2 = region["box"]
        sx, sy = w / record["width"], h / record["height"]
        mask[int(y1 * sy) + margin:int(y2 * sy) - margin,
             int(x1 * sx) + margin:int(x2 * sx) - margin] = True
    for region in record["regions"]:  # not the outlines of overlapping regions either
        mask &= ~outline_mask({**record, "regions": [region]}, w, h, grow=3)
    assert mask.sum() > 500
    return mask


def outline_mask(record, w, h, grow=0):
    mask = np.zeros((h, w), np.uint8)
    for region in record["regions"]:
        x1, y1, x2, y2 = region["box"]
        sx, sy = w / record["width"], h / record["height"]
        cv2.rectangle(mask, (round(x1 * sx), round(y1 * sy)),
                      (round(x2 * sx) - 1, round(y2 * sy) - 1), 1, 2 + 2 * grow)
    return mask.astype(bool)


def downscale(pixels, w, h):
    return cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA)


def mean_abs_diff(a, b, mask):
    return float(np.abs(a.astype(int) - b.astype(int))[mask].mean())


def test_quarantined_withheld_and_changed_outputs_are_never_shown(run):
    records = copy.deepcopy(run["records"])
    summary = dict(run["summary"])
    zidane = next(r for r in records if r["source"] == "zidane.jpg")
    zidane.update(status="quarantined", error={"code": "verification_failed", "message": "x"})
    summary["published"] = 2  # zidane.jpg's object is still in the release (stale)
    dom = parse(render_report(records, summary, run["release"]))
    captions = [f.find_all("figcaption")[0].text() for f in dom.find_all("figure")]
    assert captions == [SCRIPT_NAME, "bus.jpg"]
    assert len(thumbnails(dom)) == 2

    nothing = {**run["summary"], "policy": "all_or_nothing", "published": 0, "withheld": 3}
    assert thumbnails(parse(render_report(run["records"], nothing, run["release"]))) == []
    pending = {**run["summary"], "published": None, "withheld": None, "policy": None}
    dom = parse(render_report(run["records"], pending, run["release"]))
    assert thumbnails(dom) == [] and totals(dom)["published"] == "not published yet"

    changed = copy.deepcopy(run["records"])
    next(r for r in changed if r["source"] == "bus.jpg")["output_sha256"] = "0" * 64
    dom = parse(render_report(changed, run["summary"], run["release"]))
    assert len(thumbnails(dom)) == 2
    assert "not the verified output" in dom.find_all("figure", **{"class": "thumb missing"})[0]\
        .text()


def test_thumbnails_are_capped(run):
    dom = parse(render_report(run["records"], run["summary"], run["release"], max_thumbnails=1))
    assert len(thumbnails(dom)) == 1
    assert "2 more published images not shown" in dom.find_all("section", id="thumbnails")[0]\
        .text()


def test_hostile_names_stay_text(run):
    page, dom = run["page"], run["dom"]
    assert "<script" not in page.lower()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    for node in dom.iter():
        if node.tag == "#document":
            continue
        assert node.tag in TAGS, node.tag
        assert not any(name.startswith("on") for name in node.attrs), node.attrs
    for img in thumbnails(dom):
        assert set(img.attrs) == {"src", "width", "height", "alt"}
        assert img.attrs["src"].startswith("data:image/jpeg;base64,")
    assert any(img.attrs["alt"] == f"published output of {SCRIPT_NAME}"
               for img in thumbnails(dom))
    controls = [n.text() for n in dom.find_all("span", **{"class": "ctl"})]
    assert "\\n" in controls and "\\u202e" in controls
    assert "\n" not in "".join(n.text() for n in dom.find_all("code"))


def test_self_contained(run):
    page, dom = run["page"], run["dom"]
    assert not any(s in page for s in ("http://", "https://", "url(", "@import", "//cdn"))
    csp = [m.attrs["content"] for m in dom.find_all("meta")
           if m.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "script-src" not in csp[0]
    assert base64.b64encode(JUNK).decode() not in page and "junk source bytes" not in page


def test_same_inputs_same_bytes(run, tmp_path):
    other = open_storage(str(tmp_path))
    shutil.copy(run["root"] / "report" / "validation.json", tmp_path / "validation.json")
    write_report(other, run["records"], run["summary"], run["release"])
    assert (tmp_path / REPORT).read_bytes() == Path(run["uri"]).read_bytes()
    shuffled = list(reversed(run["records"]))
    validation = json.loads((tmp_path / "validation.json").read_text())
    assert render_report(shuffled, run["summary"], run["release"], validation=validation) \
        == render_report(run["records"], run["summary"], run["release"], validation=validation)
    assert Path(write_report_from(run["report"], run["release"])).read_text() == run["page"]


def test_validation_outcome(run, tmp_path):
    dom = run["dom"]
    verdicts = {n.attrs["data-verification"] for n in dom.find_all("p")
                if "data-verification" in n.attrs}
    assert verdicts == {"failed"}  # two inputs were rejected
    assert [n.attrs["data-validation"] for n in dom.find_all("p")
            if "data-validation" in n.attrs] == ["passed"]  # max_error_rate=1.0 tolerates them

    bare = open_storage(str(tmp_path))
    dom = parse(Path(write_report(bare, run["records"], run["summary"], run["release"]))
                .read_text())
    assert [n.attrs["data-validation"] for n in dom.find_all("p")
            if "data-validation" in n.attrs] == ["absent"]

    validation = json.loads(run["report"].read_text("validation.json"))
    validation["meta"]["manifest_sha256"] = "f" * 64
    dom = parse(render_report(run["records"], run["summary"], run["release"],
                              validation=validation))
    gate = [n for n in dom.find_all("p") if "data-validation" in n.attrs][0]
    assert gate.attrs["data-validation"] == "failed" and "validated manifest" in gate.text()


def test_renders_in_headless_chromium(run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    screenshot = tmp_path / "report.png"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={screenshot}", "--window-size=1200,2000", Path(run["uri"]).as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert screenshot.exists(), "chromium wrote no screenshot"
    pixels = cv2.imread(str(screenshot))
    assert pixels is not None and pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 20  # text, bars and thumbnails, not a blank page
    # the thumbnails are drawn: some area far from white/grey text colours
    saturation = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV)[..., 1]
    assert (saturation > 80).mean() > 0.01


def test_sparse_records_and_an_empty_run_render(tmp_path):
    """Records of inputs that never decoded carry few fields; the page must still render."""
    release = open_storage(str(tmp_path / "release"))
    unsafe = {"source": "../escape.jpg", "status": "error", "input_sha256": None,
              "error": {"code": "unsafe_path", "message": "leaves the root"},
              "output_key": "../escape.jpg", "quarantine": None}
    dom = parse(render_report([unsafe], {"images": 1, "errors": 1}, release))
    assert [n.attrs["data-status"] for n in dom.find_all("tr") if "data-status" in n.attrs] \
        == ["error"]
    assert sum(int(b.attrs["data-count"]) for b in dom.find_all("rect")) == 0
    dom = parse(render_report([], {}, release))
    assert totals(dom)["images"] == "0" and thumbnails(dom) == []
