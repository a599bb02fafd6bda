"""``trainwatch analyze --html``: the page loaded in a real headless Chromium shows every run, logs no console error,
loads nothing, and shows a hostile run name as text.

The runs are real tiny Trainer runs (tests/sweep_runs.py) and a long log written by tensorboardX; the page is made by
the real CLI. Chromium is Debian's (``.ci/run`` installs it); without it these tests skip.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sweep_runs import VERDICTS, sweep_of_real_runs

from trainwatch.html_report import PLOT_WIDTH

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
HOSTILE = "<img src=x onerror=console.error(1)>"
"""A run folder's name: were it not escaped, the page would load an image and run a handler that logs an error."""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """The sweep of every verdict, and one more healthy run in a folder with a hostile name."""
    root = tmp_path_factory.mktemp("html") / "sweep"
    shutil.copytree(sweep_of_real_runs(tmp_path_factory), root)
    shutil.copytree(root / "healthy" / "runs", root / HOSTILE)
    return root


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainwatch", "analyze", *args], check=False, capture_output=True, text=True, timeout=180
    )


def load(page: Path, profile: Path) -> tuple[Page, list[str]]:
    """The page's DOM once Chromium has loaded it, and every console message it logged (errors, CSP violations)."""
    result = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri(),
        ],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr
    return Page(result.stdout), [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


class Page(HTMLParser):
    """The elements of a DOM as Chromium dumped it: each tag with its attributes, and the text of the table's runs."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.run_names: list[str] = []
        self._in_run_link = False
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._in_run_link = tag == "a" and (dict(attrs).get("href") or "").startswith("#run-")
        if self._in_run_link:
            self.run_names.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_run_link = self._in_run_link and tag != "a"

    def handle_data(self, data: str) -> None:
        if self._in_run_link:
            self.run_names[-1] += data

    def all(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


@needs_chromium
def test_the_console_capture_sees_an_error(tmp_path):
    """The check the other tests rely on: a page with a script error does log it."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><body><script>null.x</script></body></html>")
    _, console = load(page, tmp_path / "profile")
    assert any("Uncaught TypeError" in line for line in console), console


@needs_chromium
def test_a_sweep_page_shows_every_run_and_logs_nothing(sweep, tmp_path):
    page = tmp_path / "sweep.html"
    result = cli("--html", str(page), str(sweep))
    assert result.returncode == 1 and result.stderr == f"html: {page}\n"
    dom, console = load(page, tmp_path / "profile")
    assert console == []
    expected = {**VERDICTS, HOSTILE: "healthy"}
    rows = dom.all("tr", **{"class": "run-row"})
    assert len(rows) == len(expected) == len(dom.run_names)
    assert {name.split("/")[0]: row["data-verdict"] for name, row in zip(dom.run_names, rows)} == expected
    assert [row["data-verdict"] for row in rows][:4] == ["exploding", "flat", "overfitting", "unreadable"]
    # the hostile name is text, not an element: no image, no script, no handler anywhere
    assert not dom.all("img") and not dom.all("script") and not any("onerror" in a for _, a in dom.elements)
    assert any(name.startswith(HOSTILE + "/") for name in dom.run_names)
    # failures unfolded, each with its curves, the decision marked, and its fixes; healthy and not judged folded
    sections = dom.all("section", **{"class": "run failed"})
    assert len(sections) == 3 and len(dom.all("ol", **{"class": "fixes"})) == 3
    assert len(dom.all("details", **{"class": "run"})) == 3 and not [d for d in dom.all("details") if "open" in d]
    assert len(dom.all("svg")) == 6  # every readable run: 3 failures, 2 healthy, the not judged (its eval loss)
    text = page.read_text()
    assert "exploding decided (step 2)" in text and "exploding onset (step 1)" in text
    assert "overfitting decided (step 50)" in text and "overfitting onset (step 30)" in text
    # nothing to fetch: no address but the SVG namespace, and a policy that forbids loading anything
    assert set(re.findall(r"(?:https?:)?//[\w.-]+", text)) == {"http://www.w3.org"}
    assert "default-src 'none'" in text


@needs_chromium
def test_a_long_run_s_curves_are_thinned_to_the_plot_s_columns(tmp_path):
    """A 20 000-step log with a one-step spike and a NaN: at most two points per pixel column, the spike and the
    NaN still shown."""
    from tensorboardX import SummaryWriter

    run = tmp_path / "long"
    with SummaryWriter(str(run)) as writer:
        for step in range(1, 20_001):
            loss = 1000.0 if step == 12_345 else math.nan if step == 17_000 else 3.0 - step / 10_000
            writer.add_scalar("train/loss", loss, step)
    page = tmp_path / "long.html"
    result = cli("--html", str(page), str(run))
    assert result.returncode == 1, result.stderr  # the NaN: exploding (non_finite)
    dom, console = load(page, tmp_path / "profile")
    assert console == []
    (path,) = [p["d"] for p in dom.all("path") if p.get("stroke") == "#1f77b4"]  # the train loss
    points = re.findall(r"[\d.]+,[\d.]+", path)
    assert PLOT_WIDTH < len(points) <= 2 * PLOT_WIDTH
    assert path.count("M") == 2  # broken at the NaN
    assert ">1000<" in page.read_text()  # the spike is the panel's top
    assert "NaN/inf" in page.read_text()


def test_an_html_page_where_it_cannot_be_written_is_one_line_before_any_reading(sweep, tmp_path):
    page = tmp_path / "missing" / "page.html"
    result = cli("--html", str(page), str(sweep))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"trainwatch: error: --html {page}: directory {page.parent} does not exist\n"
