"""Book pages generated from the code and the runs: ``python -m prunelab.book.pages [--out book/generated]``.

Written before ``jupyter-book build`` (``make book-html``) into ``book/generated/`` (git-ignored), so they can never
drift from what was run:

* ``methods.md`` — every registered method: family, stage, order/position policy, feature space, the paper and
  repository file it follows (from :func:`prunelab.methods.catalog`) and the first paragraph of its docstring;
* ``paper_vs_study.md`` — for each finding chapter, the verdict table the executed notebook glued under the name
  ``verdict_table`` (the paper's number or direction next to this run's), plus the paper's own CHAIR table from
  ``data/paper_results.csv`` as the reference column;
* ``provenance.md`` — per executed notebook: parameters, wall time, device, git commit, CHAIR text path, package
  versions (from ``_build/provenance/*.json``, written by :mod:`prunelab.book.build`).
"""

from __future__ import annotations

import argparse
import html
import inspect
import json
import re
from pathlib import Path

import pandas as pd

from prunelab.eval.textproc import auto_path
from prunelab.paths import REPO_ROOT, atomic_write
from prunelab.study.verdict import VERDICT_GLUE, outcome_legend

OUT_DIR = REPO_ROOT / "book" / "generated"
BUILD_DIR = REPO_ROOT / "_build"


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(rows: list[dict], cols: list[str]) -> list[str]:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_md_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return out


def _myst(text: str) -> str:
    """Sphinx roles mean nothing on a MyST page: keep the name as code."""
    text = re.sub(r":(?:func|class|meth|mod|data|attr):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`").replace("$", "\\$")


def _doc_markdown(obj) -> list[str]:
    """The whole docstring as Markdown paragraphs, bullet lists kept (continuation lines joined to their item)."""
    out = []
    for para in (inspect.getdoc(obj) or "").split("\n\n"):
        lines = para.splitlines()
        section = len(lines) >= 2 and set(lines[1].strip()) == {"-"}  # a numpydoc heading ("Parameters")
        if section:
            out += [f"**{lines[0].strip()}**", ""]
            lines = lines[2:]
        items: list[str] = []
        for line in lines:
            bullet = line.lstrip().startswith(("* ", "- ")) or re.match(r"\s*\d+\. ", line)
            starts = bullet or (section and not line.startswith(" "))
            if starts or not items:
                items.append(("* " if section and not bullet else "") + line.strip())
            else:
                items[-1] += " " + line.strip()
        if items:
            out += [_myst(" ".join(i.split())) for i in items] + [""]
    return out


def model_families_section(cat) -> list[str]:
    """Which method runs on which model family, and what each family's adapter reads (its module docstring)."""
    import importlib

    from prunelab.methods import get_pruner
    from prunelab.models.families import ADAPTED_FAMILIES, FAMILY_NAMES, family_support

    rows = []
    for name in cat["method"]:
        sup = family_support(get_pruner(name))
        rows.append({"method": name, **{FAMILY_NAMES[f]: v for f, v in sup.items()}})
    lines = [
        "## Model families",
        "",
        "Each family has its own adapter (`prunelab.models.families.make_adapter` picks it from the checkpoint's "
        "`model_type`); a method a family cannot serve refuses up front in one line naming why.",
        "",
        *_md_table(rows, ["method", *FAMILY_NAMES.values()]),
        "",
    ]
    for fam, (mod, _cls) in ADAPTED_FAMILIES.items():
        lines += [f"### {FAMILY_NAMES[fam]} (`{mod}`)", "", *_doc_markdown(importlib.import_module(mod))]
    return lines


def methods_page() -> str:
    from prunelab.methods import catalog, get_pruner

    cat = catalog()
    lines = [
        "# The methods",
        "",
        "Every pruning method of the study is one registered class of `prunelab.methods` (one file per family). "
        "This page is generated from the code: the table from the classes' declared policies, the notes from "
        "their docstrings, which cite the paper and the file of the official repository each implementation "
        "follows. *[RECONSTRUCTION]* marks methods or choices for which no official code exists; their open "
        "choices are parameters with documented defaults.",
        "",
        "*Stage*: `pre_llm` methods choose tokens from the vision tower's outputs before the language model; "
        "`in_llm` methods drop tokens inside the decoder. *Order*: how kept tokens are ordered for the language "
        "model. *Positions*: `contiguous` renumbers kept tokens, `original` keeps their original position ids. "
        "*Features*: the space in which diversity is measured.",
        "",
    ]
    cols = ["method", "family", "stage", "adaptive", "order", "positions", "features"]
    lines += _md_table(cat.to_dict("records"), cols)
    lines += [""]
    lines += model_families_section(cat)
    for fam in dict.fromkeys(cat["family"]):
        lines += [f"## {fam.capitalize()} methods", ""]
        for name in cat.loc[cat["family"] == fam, "method"]:
            p = get_pruner(name)
            lines += [
                f"### {name}",
                "",
                f"**Source.** {_md_cell(p.source)}",
                "",
                *_doc_markdown(type(p)),
                f"Defaults: `{_md_cell(repr(p)) if len(repr(p)) < 300 else name}`",
                "",
            ]
    return "\n".join(lines) + "\n"


SCROLL_CLASS = "prunelab-scroll"


def scrolling_html(fragment: str) -> str:
    """``fragment`` (a glued table's HTML) in a block that scrolls sideways when it is wider than the page column
    (``div.prunelab-scroll`` in ``book/css/prunelab.css``); raw HTML on a Markdown page has no output block around it
    that would (cell outputs scroll by the theme's ``div.cell_output .output`` rule)."""
    return f'<div class="{SCROLL_CLASS}">\n{fragment}\n</div>'


def _glued_html(nb_path: Path, name: str) -> str | None:
    nb = json.loads(nb_path.read_text())
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("metadata", {}).get("scrapbook", {}).get("name") == name:
                data = out.get("data", {})
                if "text/html" in data:
                    return "".join(data["text/html"])
                if "text/plain" in data:
                    return "<pre>" + html.escape("".join(data["text/plain"])) + "</pre>"
    return None


def paper_page(build_dir: Path = BUILD_DIR) -> str:
    from prunelab.study.verdict import paper_results

    lines = [
        "# Paper vs this study",
        "",
        "Each finding chapter ends with a verdict table computed from its run: the paper's number or direction, "
        "this run's effects with their 95% CIs (each beside the paper's effect on the same scale where the paper "
        "gives one), the outcome, the images that would resolve an open claim (assuming the CI shrinks as "
        "1/√n), and the rule. They are collected here. The paper's numbers are a reference column only: they "
        "were measured on LLaVA-1.5-7B with CLIP and COCO, ours on the models and images named in each chapter.",
        "",
        "Outcomes: " + outcome_legend(),
        "",
    ]
    found = 0
    for nb_path in sorted((build_dir / "notebooks").glob("[0-9]*.ipynb")):
        if nb_path.name.endswith(".failed.ipynb"):
            continue
        table = _glued_html(nb_path, VERDICT_GLUE)
        if table is None:
            continue
        found += 1
        lines += [
            f"## {nb_path.stem.replace('_', ' ')}",
            "",
            f"From {{doc}}`../chapters/{nb_path.stem}`.",
            "",
            "```{raw} html",
            scrolling_html(table),
            "```",
            "",
        ]
    if not found:
        lines += ["*No executed chapter has glued a verdict table yet; run `make book`.*", ""]
    df = paper_results()
    chair = df[df["table"] == "chair"]
    if len(chair):
        wide = chair.pivot_table(
            index=["visual_tokens", "method"], columns="metric", values="value", sort=False
        ).reset_index()
        lines += [
            "## The paper's CHAIR table (reference)",
            "",
            "Transcribed from the paper (`data/paper_results.csv`, table `chair`; LLaVA-1.5-7B, COCO).",
            "",
        ]
        lines += _md_table(wide.to_dict("records"), [str(c) for c in wide.columns])
        lines += [""]
    return "\n".join(lines) + "\n"


def provenance_page(build_dir: Path = BUILD_DIR) -> str:
    lines = [
        "# Provenance",
        "",
        "How each chapter of this build was produced (from `_build/provenance/`, written by "
        "`python -m prunelab.book.build notebooks`). A chapter is re-executed only when its notebook, its "
        "parameters, the library or the committed data change.",
        "",
    ]
    recs = [json.loads(p.read_text()) for p in sorted((build_dir / "provenance").glob("*.json"))]
    if not recs:
        return "\n".join(lines + ["*No notebook has been executed yet; run `make book`.*", ""])
    rows = []
    for r in recs:
        dev = r.get("device", {})
        device = (
            "GPU " + ", ".join(dev.get("gpus", []))
            if dev.get("cuda_available")
            else f"CPU ({dev.get('cpus', '?')} cores, {dev.get('cpu', '?')})"
        )
        rows.append(
            {
                "notebook": r["notebook"],
                "wall time (s)": r.get("wall_time_s"),
                "started (UTC)": r.get("started_utc"),
                "device": device,
                "commit": str(r.get("git", {}).get("commit", ""))[:10]
                + (" (dirty)" if r.get("git", {}).get("dirty") else ""),
            }
        )
    lines += _md_table(rows, list(rows[0]))
    lines += ["", *chair_path_section(recs), "## Parameters", ""]
    for r in recs:
        inj = r.get("injected_parameters", {})
        lines += [
            f"**{r['notebook']}** — injected: `{json.dumps(inj) if inj else 'none (defaults)'}`",
            "",
            "```json",
            json.dumps(r.get("parameters", {}), indent=1, sort_keys=True, default=str),
            "```",
            "",
        ]
    pk = recs[-1].get("packages", {})
    lines += ["## Package versions", ""] + _md_table(
        [{"package": k, "version": v} for k, v in pk.items()], ["package", "version"]
    )
    return "\n".join(lines) + "\n"


def chair_path_section(recs: list[dict]) -> list[str]:
    """Which CHAIR text path each chapter's run took (recorded by :mod:`prunelab.book.build`); a bold warning when any
    is not OPERA's reference path. Records written before the path was recorded say so."""
    rows, notes = [], {}
    for r in recs:
        rec = r.get("chair_text_path")
        if isinstance(rec, dict):
            path, note = rec.get("text_path", "unknown"), rec.get("text_path_note", "")
        else:
            now = auto_path()
            path, note = f"not recorded (here now: {now['text_path']})", now["text_path_note"]
        rows.append(
            {
                "notebook": r["notebook"],
                "CHAIR text path": path,
                "missing NLTK data": ", ".join(rec.get("missing_nltk_data", [])) if isinstance(rec, dict) else "",
            }
        )
        if path != "reference":
            notes.setdefault(note, []).append(r["notebook"])
    intro = (
        "CHAIR's reference (OPERA's `chair.py`) tokenises with NLTK's trained Punkt model and lemmatises with "
        "POS tags from NLTK's perceptron tagger. Neither data package can be fetched by this project's asset "
        "step (no verified offline copy exists; see `prunelab.eval.textproc`); without them CHAIR runs on the "
        "offline fallback (every word lemmatised as a noun), which changes the mentions of 6.6% of OPERA's "
        "6,000 logged captions."
    )
    lines = ["## CHAIR text processing", "", intro, ""]
    lines += _md_table(rows, list(rows[0]))
    lines.append("")
    for note, nbs in notes.items():
        lines += [f"**Not the reference CHAIR path** ({', '.join(nbs)}): {_md_cell(note or 'path not recorded')}.", ""]
    return lines


def benchmarks_page(results_dir: Path = REPO_ROOT / "data" / "results") -> str:
    """The paper's Table 1 layout: this study's lmms-eval runs when their result files are under
    ``data/results/lmms/``, else the toy world's POPE from the committed calibration runs; the paper's tables after."""
    from prunelab.study import benchmark_table as B

    lines = [
        "# The benchmark table",
        "",
        "The paper's main tables give nine standard benchmarks per method and budget, and `Avg. retention %`: the "
        "mean over the benchmarks of value / unpruned value (this formula reproduces the paper's `Average%` column "
        "to 0.1 on 20 of its 21 LLaVA-1.5 rows; DivPrune at 128 differs, 96.1 against the printed 97.2). Runs of "
        '`--model prunelab` under lmms-eval (README, "Scaling out") write result files; put them under '
        "`data/results/lmms/` and rebuild this page.",
        "",
        "## This study",
        "",
    ]
    lmms = B.read_lmms_results(results_dir / "lmms") if (results_dir / "lmms").is_dir() else None
    if lmms is not None and len(lmms):
        for model, g in lmms.groupby("model", sort=True):
            lines += [f"### `{model}` (lmms-eval)", "", *_html_block(B.table1(g))]
        if lmms.attrs.get("skipped"):
            lines += [f"Tasks without a column here: {', '.join(lmms.attrs['skipped'])}.", ""]
    else:
        found = sorted(f for f in results_dir.glob("calibration-*.csv") if not f.stem.endswith("-spearman"))
        lines += [
            "No lmms-eval run of the nine benchmarks is committed (they need the benchmarks' data and a GPU). In "
            "their place, the toy world's POPE F1 of the committed calibration runs (`prunelab.study.calibration`), "
            "in the same layout:",
            "",
        ]
        for f in found:
            lines += [f"### `{f.name}`", "", *_html_block(B.table1(B.calibration_rows(pd.read_csv(f), f.stem)))]
        if not found:
            lines += ["*No calibration run is committed either.*", ""]
    lines += ["## The paper's tables (reference)", ""]
    for model in ("llava-1.5-7b", "llava-next-7b", "qwen2.5-vl-7b"):
        t = B.paper_table(model)
        if len(t):
            lines += [f"### {model}", "", *_html_block(B.table1(t))]
    return "\n".join(lines) + "\n"


def _html_block(df) -> list[str]:
    """A table as a scrolling raw-HTML block (one decimal; missing values as a dash)."""
    table = df.to_html(index=False, float_format=lambda v: f"{v:.1f}", na_rep="–", border=0)
    return ["```{raw} html", scrolling_html(table), "```", ""]


PAGES = {
    "methods.md": methods_page,
    "paper_vs_study.md": paper_page,
    "benchmarks.md": benchmarks_page,
    "provenance.md": provenance_page,
}


def write_pages(out_dir: Path = OUT_DIR, build_dir: Path = BUILD_DIR) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in PAGES.items():
        text = fn() if fn is methods_page else fn(Path(build_dir))
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            with atomic_write(path, "w") as fh:
                fh.write(text)
        written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunelab.book.pages", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT_DIR))
    ap.add_argument("--build-dir", default=str(BUILD_DIR))
    a = ap.parse_args(argv)
    for p in write_pages(Path(a.out), Path(a.build_dir)):
        print(f"[pages] {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
