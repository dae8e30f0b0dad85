"""The reader's-eye book check (:mod:`prunelab.book.bookcheck`) on a tiny book built here with the project's
``_config.yml``: a Markdown page with maths and an executed notebook with a glued matplotlib figure and saved
ipywidgets state (an IntSlider and a Dropdown). The checker must pass it in headless Chromium, and must fail copies
of its pages that load a script from another host, lose MathJax, lose the widget manager or point at a missing
image. Skipped, with the reason, only when Chromium is absent and cannot be installed from Debian's registry."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prunelab.book import bookcheck
from prunelab.errors import AssetError
from prunelab.paths import REPO_ROOT

pytestmark = pytest.mark.browser

INTRO_MD = r"""# Tiny book

Inline maths $x^2 + y^2$ and a display:

$$
\int_0^1 x^2 \, dx = \frac{1}{3}
$$
"""

SLIDER_VALUE, DROPDOWN_CHOICE = 7, "beta"


def _tiny_notebook():
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "# Tiny chapter\n\nEuler: $e^{i\\pi} + 1 = 0$.\n\n"
            "```{glue:figure} tiny_fig\n:name: fig-tiny\n\nA tiny glued figure.\n```\n"
        ),
        nbformat.v4.new_code_cell(
            "import matplotlib.pyplot as plt\nimport ipywidgets as widgets\nfrom myst_nb import glue\n"
            "fig, ax = plt.subplots(figsize=(2, 1.5))\nax.plot([0, 1, 2], [0, 1, 4])\n"
            "glue('tiny_fig', fig, display=False)"
        ),
        nbformat.v4.new_code_cell(
            f"widgets.VBox([widgets.IntSlider(value={SLIDER_VALUE}, min=0, max=10, description='k'),\n"
            f"              widgets.Dropdown(options=['alpha', '{DROPDOWN_CHOICE}'], value='{DROPDOWN_CHOICE}', "
            "description='pick')])"
        ),
    ]
    return nb


@pytest.fixture(scope="module")
def chromium():
    try:
        return bookcheck.ensure_chromium(install=True)
    except AssetError as err:
        pytest.skip(f"headless Chromium unavailable and not installable: {err}")


@pytest.fixture(scope="module")
def vendored_js():
    """book/vendor (MathJax, require.js, widget manager) as `make js` leaves it."""
    from prunelab.book import book_assets

    if book_assets.check():
        res = subprocess.run(["make", "js"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        if res.returncode != 0 or book_assets.check():
            pytest.fail(
                f"book/vendor is incomplete ({book_assets.check()}) and `make js` failed: "
                f"{(res.stderr or res.stdout).strip()[-300:]}"
            )
    return REPO_ROOT / "book" / "vendor"


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory, vendored_js):
    """A two-page Jupyter Book 1 site built (offline, -W -n) with the project's own _config.yml."""
    import nbclient

    src = tmp_path_factory.mktemp("tinybook")
    config_text = (REPO_ROOT / "_config.yml").read_text()
    (src / "_config.yml").write_text(config_text)
    config = yaml.safe_load(config_text)
    # The static folders and bibliography the config names, at the same relative paths.
    for rel in config["sphinx"]["config"].get("html_static_path", []):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).symlink_to(REPO_ROOT / rel, target_is_directory=True)
    for rel in config.get("bibtex_bibfiles", []):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / rel, src / rel)
    (src / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: tiny\n")
    (src / "intro.md").write_text(INTRO_MD)

    os.environ.pop("MPLBACKEND", None)  # an exported Agg backend would drop the figure (book-toolchain.md)
    nb = _tiny_notebook()
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", store_widget_state=True, resources={"metadata": {"path": str(src)}}
    ).execute()
    import nbformat

    nbformat.write(nb, src / "tiny.ipynb")
    assert "widgets" in nb.metadata, "nbclient stored no widget state"

    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [
        str(jb) if jb.exists() else "jupyter-book",
        "build",
        str(src),
        "--path-output",
        str(src),
        "-W",
        "-n",
        "--keep-going",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    html = src / "_build" / "html"
    assert (html / "tiny.html").exists()
    return html


@pytest.fixture(scope="module")
def good_results(tiny_book, chromium, tmp_path_factory):
    shots = tmp_path_factory.mktemp("shots") / "screenshots"
    results = bookcheck.check_pages(tiny_book, screenshots=shots, chromium=chromium)
    return {r.page: r for r in results}, shots


def _variant(html: Path, page: str, name: str, edit) -> Path:
    text = (html / page).read_text()
    new = edit(text)
    assert new != text, f"edit for {name} changed nothing"
    out = html / name
    out.write_text(new)
    return out


@pytest.fixture(scope="module")
def bad_results(tiny_book, chromium):
    html = tiny_book
    pages = [
        _variant(
            html,
            "intro.html",
            "bad_external.html",
            lambda t: t.replace("</head>", '<script src="https://example.com/x.js"></script></head>', 1),
        ),
        _variant(
            html,
            "intro.html",
            "bad_nomathjax.html",
            lambda t: re.sub(r'<script[^>]*src="[^"]*mathjax/tex-mml-chtml\.js[^"]*"[^>]*></script>', "", t),
        ),
        _variant(
            html,
            "tiny.html",
            "bad_nowidgets.html",
            lambda t: re.sub(r'<script[^>]*src="[^"]*html-manager/embed-amd\.js[^"]*"[^>]*></script>', "", t),
        ),
        _variant(
            html,
            "tiny.html",
            "bad_image.html",
            lambda t: re.sub(r'(<img[^>]*src=")[^"]+(")', r"\1_images/missing.png\2", t, count=1),
        ),
    ]
    try:
        results = bookcheck.check_pages(html, pages, screenshots=None, chromium=chromium)
    finally:
        for p in pages:
            p.unlink()
    return {r.page: r for r in results}


def test_tiny_book_passes(good_results):
    results, _ = good_results
    assert set(results) >= {"index.html", "intro.html", "tiny.html"}
    for res in results.values():
        assert res.ok, f"{res.page}: {res.problems}"
        assert res.external == []
    intro, tiny = results["intro.html"], results["tiny.html"]
    assert intro.requests > 0, "no request recorded: the page did not load its scripts"
    assert intro.maths >= 2 and intro.typeset == intro.maths
    assert tiny.maths >= 1 and tiny.typeset == tiny.maths
    assert tiny.images >= 1
    assert tiny.widget_views == tiny.widgets_rendered == 1
    # The slider's readout and the drop-down's selection match the saved state.
    assert tiny.state_checked == 2
    assert results["index.html"].redirect == "intro.html"


def test_screenshots_and_report(good_results):
    results, shots = good_results
    pngs = sorted(p.name for p in shots.glob("*.png"))
    assert pngs == ["intro.png", "tiny.png"]
    for name in pngs:
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((shots / "report.json").read_text())
    assert {p["page"] for p in report["pages"]} == set(results)
    assert all(p["ok"] for p in report["pages"])


def test_external_request_fails_naming_the_host(bad_results):
    res = bad_results["bad_external.html"]
    assert not res.ok
    assert res.external == ["https://example.com/x.js"]
    assert any("external request to example.com" in p for p in res.problems), res.problems


def test_missing_mathjax_fails(bad_results):
    res = bad_results["bad_nomathjax.html"]
    assert res.maths >= 2 and res.typeset == 0
    assert any("MathJax did not load" in p for p in res.problems), res.problems


def test_missing_widget_manager_fails(bad_results):
    res = bad_results["bad_nowidgets.html"]
    assert res.widget_views == 1 and res.widgets_rendered == 0
    assert any("not rendered by the widget manager" in p for p in res.problems), res.problems


def test_missing_image_fails(bad_results):
    res = bad_results["bad_image.html"]
    assert any("image not rendered" in p and "missing.png" in p for p in res.problems), res.problems
    assert any("local file failed to load" in p and "missing.png" in p for p in res.problems), res.problems


def test_cli_exit_codes(tiny_book, chromium, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CHROMIUM", chromium)
    assert bookcheck.main([str(tiny_book), "--screenshots", ""]) == 0
    out = capsys.readouterr().out
    assert "tiny.html" in out and "0 problems" in out
    assert bookcheck.main([str(tmp_path / "nothing")]) == 2
    assert "make book-html" in capsys.readouterr().err


# ----------------------------------------------------------------- no browser needed


def test_is_local_url():
    for url in (
        "file:///x/y.js",
        "data:image/png;base64,AA",
        "blob:null/1",
        "about:blank",
        "http://127.0.0.1:8000/a",
        "http://localhost/b",
    ):
        assert bookcheck.is_local_url(url), url
    for url in ("https://example.com/x.js", "http://cdn.jsdelivr.net/npm/mathjax", "//unpkg.com/thebe"):
        assert not bookcheck.is_local_url(url), url


def test_list_pages_skips_static_and_utility_pages(tmp_path):
    for rel in (
        "index.html",
        "book/intro.html",
        "book/chapters/a.html",
        "_static/x.html",
        "_sources/y.html",
        "genindex.html",
        "search.html",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("<html></html>")
    got = [p.relative_to(tmp_path).as_posix() for p in bookcheck.list_pages(tmp_path)]
    assert got == ["index.html", "book/chapters/a.html", "book/intro.html"]


def test_readout_matching():
    match = bookcheck._readout_matches
    assert match({"model": "IntSliderModel", "value": 7}, ["7"])
    assert not match({"model": "IntSliderModel", "value": 7}, ["8"])
    assert match({"model": "FloatSliderModel", "value": 0.25, "format": ".2f"}, ["0.25"])
    assert not match({"model": "FloatSliderModel", "value": 0.25, "format": ".2f"}, ["0.30"])
    assert match({"model": "IntRangeSliderModel", "value": [2, 5]}, ["2 – 5"])
    assert match({"model": "SelectionSliderModel", "index": 1, "labels": ["a", "b"]}, ["b"])
