"""The chapter helper (prunelab.study.chapter) and the chapters' use of it (issue 17: one helper for setup, figure
glue, number formats, the model's generation limit and the verdict glue)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from prunelab.book import build, pages  # noqa: E402
from prunelab.errors import AssetError, UnknownNameError  # noqa: E402
from prunelab.models import toyllava  # noqa: E402
from prunelab.study import chapter  # noqa: E402
from prunelab.study.verdict import Claim, VerdictError, check, verdict_table  # noqa: E402

NOTEBOOKS = build.list_notebooks()
FINDING_CHAPTERS = [n for n in NOTEBOOKS if not n.startswith("00")]


def _code(name: str) -> list[str]:
    nb = json.loads((build.NOTEBOOKS_DIR / f"{name}.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


# --------------------------------------------------------------------------------------------------------------
# The chapters


def test_the_finding_chapters_are_01_to_04():
    assert FINDING_CHAPTERS == [
        "01_erank_shortfall",
        "02_chair_hallucination",
        "03_simple_vs_complex",
        "04_adaptive_pruning",
    ]


@pytest.mark.parametrize("name", FINDING_CHAPTERS)
def test_every_finding_chapter_glues_its_verdict_through_the_helper(name):
    """The "paper vs this study" page lists only the tables glued as ``verdict_table``: a chapter that shows its
    verdict without gluing it is missing from that page."""
    code = "\n".join(_code(name))
    assert len(re.findall(r"\bglue_verdict\(", code)) == 1, f"{name}: glue its verdict once with glue_verdict(table)"
    assert not re.search(r"""glue\(\s*["']verdict_table""", code), f"{name}: glues verdict_table by hand"
    assert "style_verdict(" not in code, f"{name}: shows a verdict table outside glue_verdict"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_chapter_sets_up_through_the_helper_and_copies_nothing(name):
    cells = _code(name)
    assert re.search(r"^P = setup\(", cells[1], re.M), f"{name}: the cell after parameters must call setup(...)"
    code = "\n".join(cells)
    for copy in (
        "def glue_figure",
        "def glue_fig",
        "def fmt",
        "def fmt_ci",
        "def sign_word",
        "validate(",
        "plots.set_theme()",
        "disable_progress_bar()",
        "TrainConfig",
    ):
        assert copy not in code, f"{name}: {copy!r} is the chapter helper's job (prunelab.study.chapter)"
    if name != "00_toy_world_and_model":  # the chapter about the trainer reads its records
        assert "prunelab.train" not in code, f"{name}: a study chapter imports the trainer"


def test_the_pages_collect_the_name_the_helper_glues():
    assert pages.VERDICT_GLUE == chapter.VERDICT_GLUE == "verdict_table"


# --------------------------------------------------------------------------------------------------------------
# The generation limit


def test_generation_limit_of_the_embedded_model_is_its_recorded_evaluation_limit():
    from prunelab.train.toydata import TrainConfig  # the value the chapters used before, from the trainer

    record = json.loads((toyllava.default_dir() / "eval.json").read_text())["config"]["max_new_tokens"]
    p = SimpleNamespace(model="toyllava", model_path=toyllava.default_dir(), max_new_tokens=None)
    assert chapter.generation_limit(p) == record == TrainConfig().max_new_tokens == 144


def test_generation_limit_given_wins_and_other_models_use_the_chair_protocol(tmp_path):
    assert chapter.generation_limit(SimpleNamespace(model="toyllava", model_path=None, max_new_tokens=32)) == 32
    assert (
        chapter.generation_limit(SimpleNamespace(model=str(tmp_path), model_path=tmp_path, max_new_tokens=None)) == 512
    )


def test_generation_limit_without_a_record_fails_in_one_line(tmp_path):
    with pytest.raises(AssetError, match=r"eval.json is missing .*pass max_new_tokens explicitly") as e:
        toyllava.generation_limit(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "eval.json").write_text(json.dumps({"config": {"max_new_tokens": 0}}))
    with pytest.raises(AssetError, match="max_new_tokens=0, not a positive integer"):
        toyllava.generation_limit(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# Setup


def test_setup_passes_one_image_set_as_a_list_and_refuses_a_list_where_one_is_run(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    p = chapter.setup(image_set="toyworld:test", budgets=[64], seed=0, device="cpu")
    assert p.image_sets == ["toyworld:test"] and p.budgets == [64] and p.device == "cpu"
    with pytest.raises(UnknownNameError, match="runs one image set"):
        chapter.setup(image_set=["toyworld:test", "photos"], device="cpu")
    p = chapter.setup(image_set=["toyworld:test", "photos"], many_sets=True, device="cpu")
    assert p.image_sets == ["toyworld:test", "photos"]


def test_setup_still_fails_up_front_on_a_bad_value(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with pytest.raises(UnknownNameError, match="seed must be a non-negative integer"):
        chapter.setup(image_set="toyworld:test", seed=-1, device="cpu")


def test_setup_takes_a_chapters_own_validator(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = {}

    def check(**kw):
        seen.update(kw)
        return "checked"

    assert chapter.setup(check=check, image_set="photos", seed=3) == "checked"
    assert seen == {"image_sets": ["photos"], "seed": 3}


def test_setup_puts_torch_on_the_builds_thread_count(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        chapter.setup(device="cpu")
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "two")
        with pytest.raises(UnknownNameError, match="OMP_NUM_THREADS='two' is not a positive integer"):
            chapter.setup(device="cpu")
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------------------
# Glue and formats


@pytest.fixture
def glued(monkeypatch):
    out = []
    monkeypatch.setattr(chapter, "glue", lambda name, obj, display=True: out.append((name, obj, display)))
    return out


def test_glue_figure_glues_without_display_and_closes(glued):
    fig = plt.figure()
    chapter.glue_figure("fig_x", fig)
    assert glued == [("fig_x", fig, False)] and not plt.fignum_exists(fig.number)


def test_glue_verdict_shows_and_glues_the_styled_table(glued):
    table = verdict_table([Claim("c", "paper says", "rule", [check("x", 1.0, ">", 0.0)])])
    chapter.glue_verdict(table)
    ((name, styler, display),) = glued
    assert name == "verdict_table" and display is True
    assert styler.data.equals(table) and "replicates" in styler.to_html()
    with pytest.raises(VerdictError, match="pass verdict_table"):
        chapter.glue_verdict(pd.DataFrame())


def test_number_formats():
    nan = float("nan")
    assert chapter.fmt(1.25) == "1.2" and chapter.fmt(3, "{:+.1f}") == "+3.0"
    assert chapter.fmt(nan) == chapter.fmt(None) == chapter.fmt("7") == "n/a"
    assert chapter.fmt_ci(-0.04, 2.26) == "[-0.0, +2.3]" and chapter.fmt_ci(nan, 1.0) == "n/a"
    assert chapter.fmt_ci(None, 1.0) == "n/a"
    assert [chapter.sign_word(x, "up", "down") for x in (2.0, -1, 0.0, nan)] == ["up", "down", "no different", "n/a"]
