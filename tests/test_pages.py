"""Generated book pages and the table of contents stay in step with the code and the notebooks."""

from __future__ import annotations

import json

import nbformat
import yaml

from prunelab.book import build, pages
from prunelab.methods import available_methods
from prunelab.paths import REPO_ROOT


def test_toc_lists_exactly_the_notebooks():
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    files = [c["file"] for c in toc["chapters"]]
    chapters = [f.split("/")[-1] for f in files if f.startswith("book/chapters/")]
    assert chapters == build.list_notebooks()
    for f in files:
        if not f.startswith(("book/chapters/", "book/generated/")):
            assert (REPO_ROOT / f"{f}.md").exists(), f
    assert {f.split("/")[-1] + ".md" for f in files if f.startswith("book/generated/")} == set(pages.PAGES)


def test_methods_page_covers_every_method():
    text = pages.methods_page()
    for name in available_methods():
        assert f"### {name}\n" in text
    assert ":func:`" not in text and "``" not in text


def test_pages_from_a_build_dir(tmp_path):
    (tmp_path / "provenance").mkdir()
    (tmp_path / "notebooks").mkdir()
    rec = {
        "notebook": "01_x",
        "wall_time_s": 12.5,
        "started_utc": "2026-01-01T00:00:00+00:00",
        "device": {"cuda_available": False, "cpus": 2, "cpu": "test cpu"},
        "git": {"commit": "abc123", "dirty": False},
        "parameters": {"budgets": [64]},
        "injected_parameters": {},
        "packages": {"torch": "2.13.0"},
    }
    (tmp_path / "provenance" / "01_x.json").write_text(json.dumps(rec))
    nb = nbformat.v4.new_notebook()
    out = nbformat.v4.new_output(
        "display_data",
        data={"text/html": "<table><tr><td>replicates</td></tr></table>"},
        metadata={"scrapbook": {"name": "verdict_table", "mime_prefix": ""}},
    )
    nb.cells = [nbformat.v4.new_code_cell("glue(...)", outputs=[out])]
    nbformat.write(nb, tmp_path / "notebooks" / "01_x.ipynb")
    prov = pages.provenance_page(tmp_path)
    assert "| 01_x | 12.5 |" in prov and "test cpu" in prov and "| torch | 2.13.0 |" in prov
    paper = pages.paper_page(tmp_path)
    assert "<td>replicates</td>" in paper and "{doc}`../chapters/01_x`" in paper and "CHAIR_s" in paper
    # The glued table sits in the block that scrolls sideways (book/css/prunelab.css; checked in test_bookcheck).
    assert '<div class="prunelab-scroll">\n<table><tr><td>replicates</td></tr></table>\n</div>' in paper
    from prunelab.study.verdict import OUTCOMES

    assert all(f"**{o}**" in paper for o in OUTCOMES) and "setup check" in paper  # the legend names every outcome
    assert "## CHAIR text processing" in prov and "| 01_x | not recorded (here now: " in prov
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No notebook has been executed yet" in pages.provenance_page(empty)
    written = pages.write_pages(tmp_path / "out", tmp_path)
    assert sorted(p.name for p in written) == sorted(pages.PAGES)


def test_provenance_records_chair_text_path(tmp_path):
    """The provenance page says which CHAIR text path each chapter took, loudly when it is not the reference."""
    from prunelab.eval.textproc import path_record

    (tmp_path / "provenance").mkdir()
    base = {"wall_time_s": 1.0, "device": {"cuda_available": False}, "git": {}, "parameters": {}, "packages": {}}
    recs = {
        "02_chair": path_record("offline", "noun", ["punkt_tab", "averaged_perceptron_tagger_eng"]),
        "03_simple": path_record("punkt", "pos", []),
    }
    for name, rec in recs.items():
        (tmp_path / "provenance" / f"{name}.json").write_text(
            json.dumps({**base, "notebook": name, "chair_text_path": rec})
        )
    prov = pages.provenance_page(tmp_path)
    assert "| 02_chair | fallback | punkt_tab, averaged_perceptron_tagger_eng |" in prov
    assert "| 03_simple | reference |  |" in prov
    assert prov.count("**Not the reference CHAIR path**") == 1
    assert "**Not the reference CHAIR path** (02_chair): offline fallback" in prov


def test_build_records_chair_text_path():
    from prunelab.eval.textproc import auto_path

    assert build.chair_text_path() == auto_path()


def test_methods_page_has_the_model_family_table_and_full_docstrings():
    from prunelab.book.pages import methods_page
    from prunelab.methods import catalog

    page = methods_page()
    fam = page[page.index("## Model families") :]
    table = [ln for ln in fam.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    assert len(table) == len(catalog())  # one row per registered method
    assert any(ln.startswith("| VisionZip | runs | runs per tile | refuses: VisionZip reads") for ln in table)
    assert any(ln.startswith("| FastV | runs | runs on the packed run") for ln in table)
    assert "### Qwen2.5-VL (`prunelab.models.qwen2_5_vl`)" in fam and "### LLaVA-NeXT" in fam
    assert "Methods-spec §2.14:" in page and "1. rank patches" in page  # docstrings whole, not cut (issue 16)
    assert "----------" not in page  # numpydoc underlines become bold headings
