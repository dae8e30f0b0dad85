"""The rendering checks of :mod:`prunelab.book.bookcheck` (issue 16, "Rendering"): what a reader should never see.

Run in the same Chromium pass as the other checks, on the page's content column (``article.bd-article`` in
sphinx-book-theme; ``main``, ``article`` or ``<body>`` on other pages), at the check's viewport (1280 x 900):

* **progress bars**: a cell output (or glued output) whose text is a tqdm bar (``45%|####  | 9/20``, the
  ``[00:01<00:02, 8.2it/s]`` timing block, a rate such as ``?it/s]`` or ``1.5s/img]``), a ``<progress>`` element or
  an ipywidgets progress bar (``.progress-bar``), and any saved widget view that displays a ``FloatProgressModel`` /
  ``IntProgressModel`` (what ``tqdm.notebook`` creates);
* **wide blocks without a scroll bar**: a table, ``<pre>`` or output block whose content reaches past the right edge
  of the nearest ancestor that clips it (``overflow-x: hidden``/``clip``) or of the content column itself, with no
  horizontally scrolling (``overflow-x: auto``/``scroll``) ancestor in between; only the innermost offender of a
  nest is named;
* **duplicated figures**: two ``<img>`` elements of the column showing the same picture. Each image is decoded
  (``data:`` URIs and local files; Pillow, else the raw bytes for SVG) and its pixels hashed, so one figure saved
  twice with different PNG metadata still counts as the same one. Images under 16 px (icons) are ignored.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

MIN_FIGURE_PX = 16
# tqdm's text: a bar (``45%|``), the ``[elapsed<remaining`` block, or a rate (``?it/s]``, ``1.5s/img]``). Written so
# that Python's re and JavaScript's RegExp read it alike: the page check and chapter_view.output_defects share it.
TQDM_TEXT = re.compile(
    r"\d+%\||\[\d\d:\d\d(?::\d\d)?<(?:\d\d:\d\d(?::\d\d)?|\?)|(?:\?|\d(?:\.\d+)?)\s*[A-Za-z]+/s\]|\d(?:\.\d+)?s/[A-Za-z]+\]"
)
PROGRESS_MODELS = ("FloatProgressModel", "IntProgressModel")

RENDER_INSPECT = (
    r"""() => {
  const root = document.querySelector('article.bd-article') || document.querySelector('main, [role="main"], article')
               || document.body;
  const out = {column: root === document.body ? 'body' : root.tagName.toLowerCase() + (root.className ? '.' +
               root.className.trim().split(/\s+/)[0] : ''), column_width: root.clientWidth,
               progress: [], overflow: [], images: [], blocks: 0};
  const cells = [...root.querySelectorAll('div.cell')];
  const describe = (el) => {
    let name = el.tagName.toLowerCase() + (el.id ? '#' + el.id : '');
    const cls = [...el.classList].filter(c => c !== 'docutils' && c !== 'container').slice(0, 2);
    if (cls.length) name += '.' + cls.join('.');
    const fig = el.closest('figure');
    if (fig) {
      const num = fig.querySelector('.caption-number');
      name += ' in figure' + (fig.id ? ' #' + fig.id : '') + (num ? ' (' + num.textContent.trim() + ')' : '');
    }
    const cell = el.closest('div.cell');
    if (cell && !fig) name += ' in code cell ' + (cells.indexOf(cell) + 1) + ' of the page';
    const sec = el.closest('section[id]');
    if (sec) name += ' in section #' + sec.id;
    const text = (el.innerText || el.textContent || '').replace(/\s+/g, ' ').trim().slice(0, 50);
    if (text && !fig) name += ' "' + text + '"';
    return name;
  };
  const shown = (el) => el.getClientRects().length > 0;
  const bars = [new RegExp("""
    + json.dumps(TQDM_TEXT.pattern)
    + r""")];  // rendercheck.TQDM_TEXT
  const outputs = [...root.querySelectorAll('div.output, div.cell_output')]
    .filter(el => !el.parentElement.closest('div.output, div.cell_output'));
  for (const el of outputs) {
    const text = el.innerText || '';  // what is shown: not the widget views' JSON scripts
    for (const re of bars) {
      const m = re.exec(text);
      if (m) {
        const at = Math.max(0, m.index - 30);
        out.progress.push({where: describe(el), text: text.slice(at, m.index + 30).replace(/\s+/g, ' ').trim()});
        break;
      }
    }
  }
  for (const el of root.querySelectorAll('progress, .jupyter-widgets .progress-bar')) {
    out.progress.push({where: describe(el), text: '<' + el.tagName.toLowerCase() + '> progress bar'});
  }
  // Saved widget views that display a progress model (tqdm.notebook's bar), rendered or not.
  let models = {};
  const stateTag = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]');
  if (stateTag) { try { models = JSON.parse(stateTag.textContent).state || {}; } catch (e) {} }
  const refs = (v, acc) => {
    if (typeof v === 'string') { if (v.startsWith('IPY_MODEL_')) acc.push(v.slice(10)); }
    else if (Array.isArray(v)) v.forEach(x => refs(x, acc));
    else if (v && typeof v === 'object') Object.values(v).forEach(x => refs(x, acc));
    return acc;
  };
  for (const script of document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')) {
    let id = null;
    try { id = JSON.parse(script.textContent).model_id; } catch (e) {}
    const seen = new Set(); const todo = id ? [id] : [];
    while (todo.length) {
      const mid = todo.pop();
      if (seen.has(mid) || !models[mid]) continue;
      seen.add(mid);
      const name = models[mid].model_name || (models[mid].state || {})._model_name || '';
      if (/^(Float|Int)ProgressModel$/.test(name)) {
        out.progress.push({where: 'widget view ' + String(id).slice(0, 8) + ' in ' + describe(script.parentElement),
                           text: name});
        break;
      }
      refs(models[mid].state || {}, []).forEach(r => todo.push(r));
    }
  }
  // Wide blocks: the right edge of the content versus the first clipping ancestor (or the column).
  const scrolls = (ox) => ox === 'auto' || ox === 'scroll';
  const clips = (ox) => ox === 'hidden' || ox === 'clip';
  const bad = [];
  const blocks = [...root.querySelectorAll('table, pre, div.output, div.cell_output')].filter(shown);
  out.blocks = blocks.length;
  for (const el of blocks) {
    const r = el.getBoundingClientRect();
    const ox = getComputedStyle(el).overflowX;
    if (scrolls(ox)) continue;
    const right = clips(ox) ? r.right : Math.max(r.right, r.left + el.scrollWidth);
    let verdict = null;
    if (clips(ox) && el.scrollWidth > el.clientWidth + 1) verdict = {by: 'itself', limit: el.clientWidth, width: el.scrollWidth};
    for (let p = el.parentElement; p && !verdict; p = p.parentElement) {
      const pox = getComputedStyle(p).overflowX;
      if (scrolls(pox)) break;
      const pr = p.getBoundingClientRect();
      const inner = pr.left + p.clientLeft + p.clientWidth;
      if ((clips(pox) || p === root) && right > inner + 1) {
        verdict = {by: p === root ? 'column' : describe(p).split(' ')[0], limit: Math.round(p.clientWidth),
                   width: Math.round(right - pr.left - p.clientLeft)};
      }
      if (clips(pox) || p === root) break;
    }
    if (verdict) bad.push({el, where: describe(el), ...verdict});
  }
  for (const b of bad) {
    if (bad.some(o => o !== b && b.el.contains(o.el))) continue;  // the innermost offender names the problem
    out.overflow.push({where: b.where, by: b.by, limit: b.limit, width: b.width});
  }
  for (const img of root.querySelectorAll('img')) {
    if (img.naturalWidth < """
    + str(MIN_FIGURE_PX)
    + r""" || img.naturalHeight < """
    + str(MIN_FIGURE_PX)
    + r""") continue;
    out.images.push({src: img.currentSrc || img.src || '', where: describe(img)});
  }
  return out;
}"""
)


def _image_bytes(src: str) -> bytes | None:
    """The bytes behind an ``<img>`` source: a ``data:`` URI decoded, a ``file:`` URL read; ``None`` otherwise."""
    parts = urlsplit(src)
    if parts.scheme == "data":
        head, _, payload = src[5:].partition(",")
        return base64.b64decode(payload) if head.endswith(";base64") else unquote(payload).encode()
    if parts.scheme == "file":
        path = Path(url2pathname(parts.path))
        return path.read_bytes() if path.is_file() else None
    return None


def image_digest(src: str) -> str | None:
    """SHA-256 of an image's decoded pixels (mode, size and RGBA data), or of its bytes when Pillow cannot decode it
    (SVG); ``None`` when the source cannot be read from here (a ``blob:`` URL, a missing file)."""
    data = _image_bytes(src)
    if data is None:
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            rgba = im.convert("RGBA")
            return hashlib.sha256(f"{rgba.size}".encode() + rgba.tobytes()).hexdigest()
    except Exception:  # not a raster image Pillow reads: compare the bytes
        return hashlib.sha256(data).hexdigest()


def judge_rendering(seen: dict) -> tuple[list[str], dict]:
    """Problems (one line each, naming the element) and counters from :data:`RENDER_INSPECT`'s result."""
    problems: list[str] = []
    for item in seen["progress"]:
        problems.append(f"progress-bar output (tqdm) in {item['where']}: {item['text']!r}")
    for item in seen["overflow"]:
        what = "its column" if item["by"] == "column" else f"its container {item['by']}"
        problems.append(
            f"{item['where']} is {item['width']} px wide, wider than {what} ({item['limit']} px), "
            "and nothing scrolls it (overflow-x is not auto/scroll)"
        )
    groups: dict[str, list[str]] = {}
    for img in seen["images"]:
        digest = image_digest(img["src"])
        if digest is not None:
            groups.setdefault(digest, []).append(img["where"])
    for digest, where in groups.items():
        if len(where) > 1:
            problems.append(
                f"the same figure is shown {len(where)} times (identical image data, sha256 {digest[:12]}): "
                + "; ".join(where)
            )
    counts = {"blocks_measured": seen["blocks"], "figures_hashed": sum(len(w) for w in groups.values())}
    return problems, counts
