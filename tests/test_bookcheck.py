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
# A verdict-like table of 30 columns, raw HTML on a Markdown page as book/generated/paper_vs_study.md has it
# (about 2,500 px, far wider than the book's column): it must scroll inside its column.
WIDE_HTML = (
    "<table><tr>"
    + "".join(f"<th>outcome_{j:02d}</th>" for j in range(30))
    + "</tr><tr>"
    + "".join(f"<td>replicates_{j:02d}</td>" for j in range(30))
    + "</tr></table>"
)


# A DataFrame of 30 columns of 9-character numbers: about 2,700 px, far wider than the book's column.
WIDE_TABLE = (
    "pd.DataFrame([[f'{i * j:.6f}' for j in range(30)] for i in range(3)], columns=[f'col_{j}' for j in range(30)])"
)


def _tiny_notebook():
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "# Tiny chapter\n\nEuler: $e^{i\\pi} + 1 = 0$.\n\n"
            "```{glue:figure} tiny_fig\n:name: fig-tiny\n\nA tiny glued figure.\n```\n"
        ),
        # The chapter helper's glue_figure: glued and closed, so the figure is shown once (where it is referenced).
        nbformat.v4.new_code_cell(
            "import matplotlib.pyplot as plt\nimport ipywidgets as widgets\nimport pandas as pd\n"
            "from prunelab.study.chapter import glue_figure\n"
            "fig, ax = plt.subplots(figsize=(2, 1.5))\nax.plot([0, 1, 2], [0, 1, 4])\n"
            "glue_figure('tiny_fig', fig)"
        ),
        nbformat.v4.new_code_cell(WIDE_TABLE),
        nbformat.v4.new_code_cell(
            f"widgets.VBox([widgets.IntSlider(value={SLIDER_VALUE}, min=0, max=10, description='k'),\n"
            f"              widgets.Dropdown(options=['alpha', '{DROPDOWN_CHOICE}'], value='{DROPDOWN_CHOICE}', "
            "description='pick')])"
        ),
    ]
    return nb


def _defects_notebook():
    """The three defects issue 16 saw in the built book, made the way the chapters made them."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "# Defects\n\n```{glue:figure} dup_fig\n:name: fig-dup\n\nGlued, then shown again.\n```\n"
        ),
        # glue(display=False) on a figure left open: the inline backend shows it again at the end of the cell.
        nbformat.v4.new_code_cell(
            "import sys\nimport matplotlib.pyplot as plt\nfrom myst_nb import glue\nfrom tqdm.auto import tqdm\n"
            "from tqdm.std import tqdm as text_tqdm\nfig, ax = plt.subplots(figsize=(2, 1.5))\nax.plot([0, 1], [1, 0])\n"
            "glue('dup_fig', fig, display=False)"
        ),
        # The library's loops: disable=None is a widget bar in a kernel (tqdm.notebook), False a text bar.
        nbformat.v4.new_code_cell("for _ in tqdm(range(3), desc='widget bar', disable=None):\n    pass"),
        nbformat.v4.new_code_cell(
            "for _ in text_tqdm(range(3), desc='text bar', file=sys.stdout, disable=False):\n    pass"
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
    (src / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: tiny\n  - file: defects\n")
    from prunelab.book.pages import scrolling_html

    (src / "intro.md").write_text(INTRO_MD + "\n```{raw} html\n" + scrolling_html(WIDE_HTML) + "\n```\n")

    os.environ.pop("MPLBACKEND", None)  # an exported Agg backend would drop the figure (book-toolchain.md)
    import nbformat

    for name, nb in (("tiny", _tiny_notebook()), ("defects", _defects_notebook())):
        nbclient.NotebookClient(
            nb, timeout=120, kernel_name="python3", store_widget_state=True, resources={"metadata": {"path": str(src)}}
        ).execute()
        nbformat.write(nb, src / f"{name}.ipynb")
        assert "widgets" in nb.metadata, f"nbclient stored no widget state in {name}"

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
    # The defects page is read only by bad_results (as bad_defects.html): not a page of the good book.
    (html / "defects.html").rename(html / "defects.html.txt")
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
    (html / "bad_defects.html").write_text((html / "defects.html.txt").read_text())
    pages = [
        html / "bad_defects.html",
        # Without the book's stylesheet the wide raw table of a generated page runs past the column.
        _variant(html, "intro.html", "bad_nocss.html", lambda t: re.sub(r"<link[^>]*prunelab\.css[^>]*>", "", t)),
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
    # The wide table, the figure and the outputs were measured, and the figure was hashed.
    assert tiny.blocks_measured >= 3 and tiny.figures_hashed == 1
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


def test_wide_table_scrolls_only_with_the_book_css(bad_results):
    res = bad_results["bad_nocss.html"]
    wide = [p for p in res.problems if "wider than its column" in p]
    assert len(wide) == 1 and wide[0].startswith("table in section #tiny-book"), res.problems
    assert "outcome_00" in wide[0], res.problems


def test_glued_figure_left_open_is_shown_twice(bad_results):
    res = bad_results["bad_defects.html"]
    dup = [p for p in res.problems if "same figure is shown" in p]
    assert len(dup) == 1 and "2 times" in dup[0] and "#fig-dup" in dup[0], res.problems
    assert "img in code cell 1 of the page" in dup[0], res.problems


def test_output_defects_in_executed_notebooks(tiny_book):
    """The same three defects read from the executed notebooks, without a book build (chapter_view)."""
    from prunelab.book.chapter_view import output_defects

    src = tiny_book.parent.parent
    assert output_defects(json.loads((src / "tiny.ipynb").read_text())) == []
    found = output_defects(json.loads((src / "defects.ipynb").read_text()))
    assert len(found) == 3, found
    assert found[0].startswith("cell 2: progress-bar") and "widget bar" in found[0], found
    assert found[1].startswith("cell 3: progress-bar") and "text bar" in found[1], found
    assert found[2] == "cell 1: figure 'dup_fig' is glued and also displayed (close it: glue_figure)", found


def test_tqdm_bars_fail_widget_and_text(bad_results):
    res = bad_results["bad_defects.html"]
    bars = [p for p in res.problems if p.startswith("progress-bar output")]
    assert any("FloatProgressModel" in p for p in bars), res.problems
    assert any("text bar" in p and "%|" in p and "code cell 3 of the page" in p for p in bars), res.problems


def test_cli_exit_codes(tiny_book, chromium, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNELAB_CHROMIUM", chromium)
    assert bookcheck.main([str(tiny_book), "--screenshots", ""]) == 0
    out = capsys.readouterr().out
    assert "tiny.html" in out and "0 problems" in out
    assert bookcheck.main([str(tmp_path / "nothing")]) == 2
    assert "make book-html" in capsys.readouterr().err


# ----------------------------------------------------------------- synthetic pages, one defect each

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>body {{ margin: 0; }}
article.bd-article {{ width: 600px; }} td {{ white-space: nowrap; }}</style></head>
<body><article class="bd-article"><section id="s1">{body}</section></article></body></html>"""
WIDE = "<table><tr>" + "".join(f"<td>value_{j:02d}_abcdef</td>" for j in range(20)) + "</tr></table>"


def _png(path: Path | None, colour, *, text: str = "") -> str:
    """A 40x30 PNG of one colour: written to ``path`` (with a text chunk) or returned as a data URI."""
    import base64
    import io

    from PIL import Image, PngImagePlugin

    im = Image.new("RGB", (40, 30), colour)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", text or "synthetic")
    buf = io.BytesIO()
    im.save(buf, format="PNG", pnginfo=info)
    if path is None:
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    path.write_bytes(buf.getvalue())
    return path.name


SYNTHETIC = {
    # (a) progress bars
    "tqdm_text.html": '<div class="cell_output"><div class="output stderr"><pre>scoring: 100%|##########| 20/20 '
    "[00:01&lt;00:00, 15.2it/s]</pre></div></div>",
    "tqdm_slow.html": '<div class="cell_output"><div class="output stream"><pre>generate:  40%|####      | 2/5 '
    "[00:09&lt;00:13, 4.51s/run]</pre></div></div>",
    "tqdm_element.html": '<div class="cell_output"><div class="output text_html"><progress value="3" max="10">'
    "</progress></div></div>",
    "no_tqdm.html": '<div class="cell_output"><div class="output stream"><pre>kept 45% | erank 12.3 at T = 64 '
    "[3 of 5 claims], 8.2 s/image</pre></div></div>",
    # (b) wide blocks
    "wide_visible.html": f'<div class="cell_output"><div class="output text_html">{WIDE}</div></div>',
    "wide_clipped.html": f'<div class="cell_output"><div class="output text_html" style="overflow-x: hidden">'
    f"{WIDE}</div></div>",
    "wide_scrolls.html": f'<div class="cell_output"><div class="output text_html" style="overflow-x: auto">'
    f"{WIDE}</div></div>",
    "narrow.html": '<div class="cell_output"><div class="output text_html"><table><tr><td>1</td><td>2</td></tr>'
    "</table></div></div>",
}


@pytest.fixture(scope="module")
def synthetic_results(chromium, tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    red_file = _png(root / "red.png", (200, 0, 0), text="saved by savefig")
    red_uri, blue_uri = _png(None, (200, 0, 0), text="saved by glue"), _png(None, (0, 0, 200))
    pages = dict(SYNTHETIC)
    # (c) the same figure twice, once as a file and once inline (different PNG bytes, same pixels); two figures.
    pages["dup_figure.html"] = (
        f'<figure id="fig-a"><img src="{red_file}"><figcaption><span class="caption-number">Fig. 1 </span>'
        f'</figcaption></figure><div class="cell_output"><div class="output"><img src="{red_uri}"></div></div>'
    )
    pages["two_figures.html"] = f'<figure id="fig-a"><img src="{red_file}"></figure><img src="{blue_uri}">'
    for name, body in pages.items():
        (root / name).write_text(PAGE.format(body=body))
    results = bookcheck.check_pages(root, [root / n for n in pages], screenshots=None, chromium=chromium)
    return {r.page: r for r in results}


def _only(res, start: str) -> list[str]:
    assert all(p.startswith(start) or start in p for p in res.problems), res.problems
    return res.problems


@pytest.mark.parametrize("page", ["tqdm_text.html", "tqdm_slow.html", "tqdm_element.html"])
def test_progress_bar_fails(synthetic_results, page):
    res = synthetic_results[page]
    problems = _only(res, "progress-bar output (tqdm) in ")
    assert len(problems) >= 1 and all("section #s1" in p for p in problems), problems


def test_numbers_that_look_like_a_bar_pass(synthetic_results):
    assert synthetic_results["no_tqdm.html"].ok, synthetic_results["no_tqdm.html"].problems


def test_wide_table_without_scroll_bar_fails(synthetic_results):
    for page, by in (("wide_visible.html", "its column (600 px)"), ("wide_clipped.html", "its container div.output")):
        res = synthetic_results[page]
        assert len(res.problems) == 1, res.problems
        assert res.problems[0].startswith("table in section #s1") and by in res.problems[0], res.problems


def test_wide_table_that_scrolls_and_narrow_table_pass(synthetic_results):
    for page in ("wide_scrolls.html", "narrow.html"):
        res = synthetic_results[page]
        assert res.ok and res.blocks_measured >= 3, (page, res.problems)


def test_same_figure_twice_fails_and_two_figures_pass(synthetic_results):
    dup, two = synthetic_results["dup_figure.html"], synthetic_results["two_figures.html"]
    assert len(dup.problems) == 1 and "same figure is shown 2 times" in dup.problems[0], dup.problems
    assert "figure #fig-a (Fig. 1)" in dup.problems[0]
    assert two.ok and two.figures_hashed == 2, two.problems


# ----------------------------------------------------------------- no browser needed


def test_image_digest_compares_pixels_not_bytes(tmp_path):
    from prunelab.book.rendercheck import image_digest

    red_file = (tmp_path / _png(tmp_path / "red.png", (200, 0, 0), text="one")).as_uri()
    red_uri, blue_uri = _png(None, (200, 0, 0), text="two"), _png(None, (0, 0, 200))
    assert image_digest(red_file) == image_digest(red_uri) != image_digest(blue_uri)
    assert image_digest((tmp_path / "missing.png").as_uri()) is None
    assert image_digest("blob:null/1") is None


def test_chapter_view_folds_code_but_the_parameters():
    from prunelab.book.chapter_view import for_book, hide_code

    nb = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# t"},
            {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "n = 1"},
            {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": "n = 2"},
            {"cell_type": "code", "metadata": {}, "source": "run(n)"},
            {"cell_type": "code", "metadata": {"tags": ["remove-cell"]}, "source": "secret()"},
            {"cell_type": "code", "metadata": {"tags": ["hide-output"]}, "source": "plot()"},
        ]
    }
    folded = json.loads(for_book(json.dumps(nb).encode()))
    assert [c["metadata"].get("tags") for c in folded["cells"]] == [
        None,
        ["parameters"],
        ["injected-parameters"],
        ["hide-input"],
        ["remove-cell"],
        ["hide-output", "hide-input"],
    ]
    assert hide_code(folded) == 0  # idempotent: a second pass tags nothing


def test_book_css_makes_outputs_scroll():
    """The stylesheet is served and linked (the Chromium test of a wide table is test_wide_table_scrolls_...)."""
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())["sphinx"]["config"]
    assert "prunelab.css" in config["html_css_files"]
    css = [
        REPO_ROOT / d / "prunelab.css" for d in config["html_static_path"] if (REPO_ROOT / d / "prunelab.css").exists()
    ]
    assert len(css) == 1
    rules = re.findall(r"([^{}]+)\{([^}]*)\}", re.sub(r"/\*.*?\*/", "", css[0].read_text(), flags=re.S))
    scrolling = [sel for sel, body in rules if "overflow-x: auto" in body]
    assert any("div.output.text_html" in sel for sel in scrolling), rules


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
