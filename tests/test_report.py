"""`bncompare report`: the page's content, its safety with hostile results, and the page in a real
browser (headless Chromium: no console error, no network request, figures that decode, a page
that fits a phone's width)."""

from __future__ import annotations

import base64
import html
import io
import re
import shutil
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser

import pytest
from results_fixtures import sweep_results
from typer.testing import CliRunner

from bncompare.aggregate import load
from bncompare.cli import app
from bncompare.config import load_runs
from bncompare.report import reconstruct
from bncompare.results import read_run, write_json

HOSTILE = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(2)>'


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted sweep (results_fixtures.sweep_results) and its page: built once, read by tests."""
    out = sweep_results(tmp_path_factory.mktemp("planted"))
    return out, report(out)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Hostile results and their page."""
    out = hostile_results(tmp_path_factory.mktemp("hostile"))
    return out, report(out)


def report(results, *args: str):
    """Run `bncompare report` as a user would; return (result, page text or None)."""
    out = results.parent / "page" / "report.html"
    result = CliRunner().invoke(app, ["report", str(results), "--out", str(out), *args])
    return result, (out.read_text(encoding="utf-8") if out.exists() else None)


def hostile_results(tmp_path):
    """The planted sweep, then its bn variant, run ids and params rewritten to hold HTML."""
    out = sweep_results(tmp_path)
    for metrics_file in out.glob("sweep/bn-*/metrics.json"):
        record = read_run(metrics_file.parent)
        data = record.metrics
        data["variant"] = HOSTILE
        data["run_id"] = HOSTILE + data["run_id"]
        data["params"]["model.init"] = ATTRIBUTE
        data["warnings"] = [f"lag {HOSTILE}"]
        data["environment"]["hostname"] = "<b>host</b>"
        write_json(metrics_file, data)
    # Fields outside the checked format may hold anything: a number where a list belongs.
    record = read_run(next(out.glob("sweep/no_bn-*")))
    write_json(record.path / "metrics.json", {**record.metrics, "warnings": 7})
    return out


class Tags(HTMLParser):
    """Every start tag and attribute of a page, as a browser's tokenizer sees them."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def svgs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)]


def test_the_page_says_what_was_compared_how_sure_and_how_to_reproduce_it(planted, tmp_path):
    out, (result, page) = planted
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and "1 experiment, 5 figures, 18 runs" in result.output
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    # What each variant sets, the condition axis and the seeds.
    assert "no_bn (baseline): model.batch_norm: false" in " ".join(text.split())
    assert "each at train.learning_rate = 0.01, 0.1, 50" in " ".join(text.split())
    # compare's rows in words (planted: bn is 0.05 better in every seed), in a table, in a figure.
    assert "At learning_rate=0.01: bn − no_bn: +0.0500, better in 3/3 seeds" in text
    assert "At learning_rate=50: bn − no_bn: no seed finished in both" in text
    assert "<th scope=\"col\">difference [95% CI]</th>" in page
    assert 'alt="sweep: paired difference by seed, mean and 95% t-interval' in page  # forest plot
    # plot's figures (curves for 3 metrics, the sweep), forest plot, summary, warnings.
    assert len(svgs(page)) == 5
    assert 'alt="sweep: validation accuracy against learning rate' in page
    assert "0.6500 ± 0.1000" in text  # summary: bn's final val accuracy at lr 0.01
    assert "6 runs diverged" in text
    # A config that expands to exactly these runs: its YAML on the page, checked here too.
    block = re.search(r"<pre>(name: .*?)</pre>", page, re.S).group(1)
    config = tmp_path / "again.yaml"
    config.write_text(html.unescape(block))
    assert {run.run_id for run in load_runs([config])} == {p.name for p in (out / "sweep").iterdir()}
    assert "bncompare run sweep.yaml --out" in text


def test_every_figure_is_an_inert_svg_image_and_nothing_loads_or_runs(hostile):
    _, (result, page) = hostile
    assert result.exit_code == 0, result.output
    parser = Tags()
    parser.feed(page)
    allowed = {"html", "head", "meta", "link", "title", "style", "body", "main", "header", "section",
               "nav", "h1", "h2", "h3", "p", "ul", "li", "strong", "code", "pre", "div", "dl", "dt",
               "dd", "table", "caption", "thead", "tbody", "tr", "th", "td", "figure", "img", "a"}
    assert {tag for tag, _ in parser.tags} <= allowed
    assert not [a for _, attrs in parser.tags for a in attrs if a.startswith("on")]
    for tag, attrs in parser.tags:
        for name in ("src", "href"):
            assert attrs.get(name) is None or attrs[name].startswith(("data:", "#")), (tag, attrs)
    policy = next(a["content"] for t, a in parser.tags if a.get("http-equiv") == "Content-Security-Policy")
    assert policy.startswith("default-src 'none'; img-src data:;")
    # Names from metrics.json are text on the page and in the figures (matplotlib escapes SVG).
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "<b>host" not in page
    for svg in svgs(page):
        root = ElementTree.parse(io.BytesIO(svg)).getroot()  # well-formed XML
        assert not [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] in ("script", "foreignObject")]


def test_no_config_is_shown_when_none_expands_to_exactly_the_runs(tmp_path):
    out = sweep_results(tmp_path)
    assert reconstruct(load(out).experiments[0])["sweep"] == {"train.learning_rate": [0.01, 0.1, 50.0]}
    # Not a full cross of variants and values (one condition gone): the page will point at each
    # run's own resolved config instead.
    for run_dir in (out / "sweep").glob("bn-lr0.1-*"):
        shutil.rmtree(run_dir)
    assert reconstruct(load(out).experiments[0]) is None


def test_bad_options_exit_2_and_write_nothing(tmp_path):
    out = sweep_results(tmp_path)
    folder = tmp_path / "page"
    folder.mkdir(exist_ok=True)
    result = CliRunner().invoke(app, ["report", str(out), "--out", str(folder)])
    assert result.exit_code == 2 and "is a directory" in result.output
    result, page = report(out, "--metric", "val_acc")
    assert result.exit_code == 2 and "--metric 'val_acc'" in result.output and page is None


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="needs Debian's chromium package (.ci/run installs it: apt-get install chromium)")
def test_the_page_in_headless_chromium(hostile, tmp_path):
    import headless
    from PIL import Image

    out, (result, _) = hostile
    assert result.exit_code == 0, result.output
    seen = headless.visit(out.parent / "page" / "report.html", tmp_path / "profile")
    assert seen.errors == []
    assert [url for url in seen.requests if not url.startswith(("file://", "data:"))] == []
    assert len(seen.images) == 5 and all(seen.images)  # every SVG decoded
    assert f"{HOSTILE} − no_bn: +0.0500, better in 3/3 seeds" in seen.text  # compare rows
    assert HOSTILE in seen.text and ATTRIBUTE in seen.text  # shown as text, never run
    for width, png in seen.screenshots.items():
        assert seen.page_widths[width] == width  # wide tables scroll in their box, not the page
        image = Image.open(io.BytesIO(png)).convert("L")
        assert image.size[0] == width
        low, high = image.getextrema()
        shades = sum(1 for count in image.histogram() if count)
        assert high - low > 100 and shades > 20  # text and figures, not a blank page
