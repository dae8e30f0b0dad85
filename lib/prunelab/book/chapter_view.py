"""What a published chapter shows of its code: every code cell folded behind a toggle but the parameters.

:func:`prunelab.book.build.publish` passes each executed notebook through :func:`for_book` on its way into
``book/chapters/``: every code cell gets the Jupyter Book cell tag ``hide-input`` (myst-nb renders its source
collapsed, behind a "Show code cell source" toggle, and its outputs open) except the cells a reader needs to see to
rerun the chapter: the one tagged ``parameters`` (the defaults) and papermill's ``injected-parameters`` (the values
this run used). Cells already tagged to hide or remove their source keep their tags. The executed copy in
``_build/notebooks/`` is left as papermill wrote it, so changing this rule never re-executes a notebook.

:func:`output_defects` reads an executed notebook for what :mod:`prunelab.book.rendercheck` finds on the built
page, without a book build: tqdm bars (text or widget) and a figure both glued and displayed (``glue(...,
display=False)`` on a figure left open: the inline backend shows it again at the end of the cell, and the
``{glue:figure}`` directive shows it where the prose refers to it; ``prunelab.study.chapter.glue_figure`` closes it).
"""

from __future__ import annotations

import json
import re

from prunelab.book.rendercheck import TQDM_TEXT

HIDE_TAG = "hide-input"
SHOWN_TAGS = frozenset({"parameters", "injected-parameters"})
# Tags that already hide (or drop) the source: adding hide-input to them would change nothing or conflict.
SOURCE_TAGS = frozenset({"hide-input", "hide-cell", "remove-input", "remove-cell"})


def hide_code(nb: dict) -> int:
    """Tag every code cell of ``nb`` (notebook JSON, changed in place) ``hide-input`` unless it is a parameters
    cell or already hides its source; returns how many cells were tagged."""
    n = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if SHOWN_TAGS.intersection(tags) or SOURCE_TAGS.intersection(tags):
            continue
        tags.append(HIDE_TAG)
        n += 1
    return n


def for_book(data: bytes) -> bytes:
    """The executed notebook ``data`` (``.ipynb`` bytes) as the book shows it (:func:`hide_code`), written the way
    nbformat writes notebooks (one-space indent, UTF-8, final newline)."""
    nb = json.loads(data)
    hide_code(nb)
    return (json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n").encode()


GLUE_PREFIX = "application/papermill.record/"


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def output_defects(nb: dict) -> list[str]:
    """One line per cell showing a progress bar, and per figure both glued and displayed, in an executed notebook
    (JSON); empty when clean."""
    found: list[str] = []
    state = nb.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    models = state.get("state", {}) if isinstance(state, dict) else {}
    progress_ids = {k for k, m in models.items() if m.get("model_name") in ("FloatProgressModel", "IntProgressModel")}
    glued, shown = {}, []
    for i, cell in enumerate(nb.get("cells", [])):
        bar = False  # one line per cell: a text bar is often several stream outputs
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            texts = [_text(out.get("text"))] + [_text(data.get("text/plain"))] + [_text(data.get("text/html"))]
            m = next((TQDM_TEXT.search(t) for t in texts if TQDM_TEXT.search(t)), None)
            if m and not bar:
                bar = True
                found.append(
                    f"cell {i}: progress-bar output (tqdm) {m.string[max(0, m.start() - 20) : m.end() + 10]!r}"
                )
            view = data.get("application/vnd.jupyter.widget-view+json", {})
            if view and not bar and _holds_progress(view.get("model_id"), models, progress_ids):
                bar = True
                found.append(f"cell {i}: progress-bar widget (tqdm.notebook) {str(view.get('model_id'))[:8]}")
            for key, value in data.items():
                if key.startswith(GLUE_PREFIX + "image/"):
                    glued[_text(value)] = out.get("metadata", {}).get("scrapbook", {}).get("name", "?")
                elif key.startswith("image/"):
                    shown.append((i, _text(value)))
    for i, image in shown:
        if image in glued:
            found.append(f"cell {i}: figure {glued[image]!r} is glued and also displayed (close it: glue_figure)")
    return found


def _holds_progress(model_id, models: dict, progress_ids: set) -> bool:
    """Whether the widget ``model_id`` is, or displays, a progress model (tqdm.notebook's HBox holds one)."""
    todo, seen = [model_id], set()
    while todo:
        mid = todo.pop()
        if mid in progress_ids:
            return True
        if mid in seen or mid not in models:
            continue
        seen.add(mid)
        todo += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(models[mid].get("state", {})))
    return False
