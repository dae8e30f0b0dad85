"""Check the built book as a reader sees it: ``python -m prunelab.book.bookcheck [_build/html] [--screenshots DIR]``.

Every content page of the built HTML book is opened from disk (``file://``, as a reader opening ``index.html``
would) in headless Chromium, driven by Playwright's Python client. Playwright is pointed at the system's Debian
``chromium`` binary (``executable_path``), so it never downloads a browser of its own and works offline. For each
page the check asserts that

* **no request leaves the machine**: every request the page makes is recorded; one to a host other than
  ``file:``/``data:``/``blob:``/``about:`` or ``localhost``/``127.0.0.1`` is a failure naming the host (and is aborted
  before it is sent), and so is a local file that fails to load (a missing script, font or image);
* **maths is typeset**: after ``MathJax.startup.promise`` resolves, every Sphinx maths node (``.math``) holds an
  ``mjx-container`` and none holds a MathJax error (``mjx-merror``);
* **figures are present**: every ``<img>`` has decoded (``naturalWidth > 0``) and every ``<figure>`` holds an image;
* **the widgets' saved state is visible**: when the page embeds ipywidgets state
  (``application/vnd.jupyter.widget-state+json``), every widget view was rendered by the HTML widget manager into
  real widget DOM (a ``.widget-subarea`` holding ``.jupyter-widgets`` elements, not the plain-text fallback), and the
  sliders and drop-downs in each view show the values stored in the state (slider readouts, selected options);
* no uncaught JavaScript error was raised;
* **the rendering is clean** (:mod:`prunelab.book.rendercheck`): no tqdm progress bar in an output, no table or
  output block wider than its column without a horizontal scroll bar, no figure shown twice (same image data).

One full-page PNG screenshot per checked page is written to the screenshots folder (default
``_build/screenshots/``), with ``report.json`` holding the per-page results. The CLI prints a table and exits 1
with one line per problem when any page fails.

Which JavaScript the pages load, and why it must be served locally, is described in
``shared/docs/book-toolchain.md`` (beside the repository) and :mod:`prunelab.book.book_assets`. The widget DOM classes checked here
(``widget-subarea`` inserted before each ``widget-view+json`` script, ``widget-readout``, ``select``) are the ones
``@jupyter-widgets/html-manager`` 1.0.x (``src/embed.ts``, ``renderWidgets``) and the ipywidgets 8 controls create.

Chromium itself comes from Debian's registry: :func:`ensure_chromium` finds it or, with ``install=True`` and root,
runs ``apt-get install -y chromium`` (``make browser`` / ``python -m prunelab.book.bookcheck --install-browser``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from prunelab.book.rendercheck import RENDER_INSPECT, judge_rendering
from prunelab.errors import AssetError
from prunelab.paths import REPO_ROOT, atomic_dir, atomic_write

DEFAULT_HTML = REPO_ROOT / "_build" / "html"
DEFAULT_SCREENSHOTS = REPO_ROOT / "_build" / "screenshots"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEBIAN_PACKAGE = "chromium"
# Sphinx's utility pages (index of terms, search form) hold no content of the book.
UTILITY_PAGES = ("genindex.html", "search.html", "py-modindex.html")
LOCAL_SCHEMES = ("file", "data", "blob", "about", "chrome", "devtools")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
# Uncaught JavaScript errors that are known and harmless; any other one fails the page.
# Jupyter Book 1 runs sphinx-thebe's setup twice, so each page carries its inline config script
# (`const THEBE_JS_URL = ...`) twice and the second copy throws; thebe is disabled (launch_buttons.thebe: false),
# the first copy already defined the same values, and nothing is loaded from THEBE_JS_URL.
HARMLESS_JS_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)
VIEWPORT = {"width": 1280, "height": 900}
# Full-page screenshots of very long chapters are cut at this height (pixels) to keep the artifacts small.
MAX_SCREENSHOT_HEIGHT = 16000


# --------------------------------------------------------------------------------------------------- Chromium


def find_chromium() -> str | None:
    """Path of a Chromium binary: ``$PRUNELAB_CHROMIUM`` if set, else the first of :data:`CHROMIUM_NAMES` on PATH."""
    env = os.environ.get("PRUNELAB_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium(*, install: bool = False) -> str:
    """Return the Chromium binary, installing Debian's ``chromium`` first when ``install`` and it is missing.

    Idempotent: nothing is run when Chromium is already on PATH. Installing needs ``apt-get`` and root (the build
    machines run as root); otherwise :class:`AssetError` says how to install it by hand.
    """
    found = find_chromium()
    if found or not install:
        if found:
            return found
        raise AssetError(
            f"Chromium not found (looked for {', '.join(CHROMIUM_NAMES)} and $PRUNELAB_CHROMIUM); "
            f"run `make browser` or `apt-get install -y {DEBIAN_PACKAGE}`"
        )
    if shutil.which("apt-get") is None:
        raise AssetError(
            f"Chromium not found and apt-get is missing; install the {DEBIAN_PACKAGE} browser yourself "
            f"or set PRUNELAB_CHROMIUM to its binary"
        )
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise AssetError(
            f"Chromium not found; install it as root: `apt-get install -y {DEBIAN_PACKAGE}` "
            f"(or set PRUNELAB_CHROMIUM to a Chromium binary)"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", DEBIAN_PACKAGE]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        # A fresh machine has no package lists yet: refresh once, then retry.
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env, check=False)
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    found = find_chromium()
    if res.returncode != 0 or not found:
        tail = (res.stderr or res.stdout).strip().splitlines()
        raise AssetError(
            f"`{' '.join(cmd)}` failed ({tail[-1] if tail else 'no output'}); install Chromium by hand "
            f"or set PRUNELAB_CHROMIUM to its binary"
        )
    return found


# --------------------------------------------------------------------------------------------------- results


@dataclass
class PageResult:
    """What the browser saw on one page; ``ok`` when ``problems`` is empty."""

    page: str  # path relative to the HTML root
    requests: int = 0  # all requests the page made (local ones included)
    external: list[str] = field(default_factory=list)  # URLs to non-local hosts (aborted)
    maths: int = 0  # Sphinx maths nodes
    typeset: int = 0  # ... of which hold an mjx-container
    images: int = 0  # <img> elements
    widget_views: int = 0  # widget-view+json scripts
    widgets_rendered: int = 0  # ... rendered into widget DOM
    state_checked: int = 0  # slider/drop-down values compared with the saved state
    blocks_measured: int = 0  # tables, <pre> and output blocks whose width was compared with their column
    figures_hashed: int = 0  # images whose decoded data was compared for duplicates
    redirect: str = ""  # target of a meta-refresh page (index.html)
    screenshot: str = ""
    ignored_js_errors: int = 0  # occurrences of HARMLESS_JS_ERRORS
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def is_local_url(url: str) -> bool:
    """True for URLs that never leave the machine (file/data/blob/about, or localhost over http)."""
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return (parts.hostname or "") in LOCAL_HOSTS


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.hostname or parts.scheme or url


def _short(url: str, n: int = 100) -> str:
    return url if len(url) <= n else url[: n - 3] + "..."


# --------------------------------------------------------------------------------------------------- pages


def list_pages(root: Path) -> list[Path]:
    """Content pages of a built book: every ``*.html`` outside ``_``-folders, except Sphinx's utility pages."""
    root = Path(root)
    pages = []
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root)
        if any(part.startswith(("_", ".")) for part in rel.parts[:-1]):
            continue
        if rel.as_posix() in UTILITY_PAGES:
            continue
        pages.append(path)
    # index.html first, then the rest in path order.
    pages.sort(key=lambda p: (p.relative_to(root).as_posix() != "index.html", p.relative_to(root).as_posix()))
    return pages


def _meta_refresh_target(path: Path) -> str | None:
    """Target of a bare ``<meta http-equiv="Refresh" content="0; url=...">`` page (JB1's ``index.html``)."""
    text = path.read_text(errors="replace")[:2000]
    if len(text) > 1000 or "http-equiv" not in text.lower():
        return None
    m = re.search(r'content\s*=\s*"\s*\d+\s*;\s*url\s*=\s*([^"]+)"', text, flags=re.IGNORECASE)
    return m.group(1).strip() if m else None


_MATHJAX_WAIT = """async () => {
  const hasMath = document.querySelector('.math') !== null;
  const hasScript = [...document.scripts].some(s => /mathjax/i.test(s.src || ''));
  if (!hasScript && !(window.MathJax && window.MathJax.startup)) return {loaded: false, hasMath};
  if (!window.MathJax || !window.MathJax.startup) {
    // MathJax is deferred and starts after the load event; give it a moment before judging.
    for (let i = 0; i < 50 && !(window.MathJax && window.MathJax.startup); i++) await new Promise(r => setTimeout(r, 100));
  }
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    await window.MathJax.startup.promise;
    return {loaded: true, hasMath};
  }
  return {loaded: false, hasMath};
}"""

_WIDGETS_RENDERED = """() => [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')].every(s => {
  const prev = s.previousElementSibling;
  return prev && prev.classList.contains('widget-subarea') && prev.querySelector('.jupyter-widgets');
})"""

_IMAGES_SETTLED = """async () => {
  for (const img of document.images) { if (img.loading === 'lazy') img.loading = 'eager'; }
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline && [...document.images].some(i => !i.complete)) await new Promise(r => setTimeout(r, 100));
  return [...document.images].filter(i => !i.complete).length;
}"""

# Collects everything the Python side judges, in one pass over the DOM.
_INSPECT = r"""() => {
  const out = {maths: 0, typeset: 0, merror: 0, raw: [], images: [], figures_without_image: [],
               views: [], state_embedded: false, state_error: null};
  for (const m of document.querySelectorAll('.math')) {
    out.maths += 1;
    if (m.querySelector('mjx-container')) out.typeset += 1; else out.raw.push(m.textContent.trim().slice(0, 60));
    if (m.querySelector('mjx-merror')) out.merror += 1;
  }
  for (const img of document.images) {
    out.images.push({src: img.currentSrc || img.src || '', w: img.naturalWidth, h: img.naturalHeight,
                     alt: img.alt || ''});
  }
  for (const fig of document.querySelectorAll('figure')) {
    if (!fig.querySelector('img, svg, canvas, object, video')) out.figures_without_image.push(fig.id || fig.textContent.trim().slice(0, 60));
  }
  // Saved widget state (model id -> {model_name, state}).
  let models = {};
  const stateTag = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]');
  if (stateTag) {
    out.state_embedded = true;
    try { models = JSON.parse(stateTag.textContent).state || {}; } catch (e) { out.state_error = String(e); }
  }
  const refs = (value, acc) => {
    if (typeof value === 'string') { if (value.startsWith('IPY_MODEL_')) acc.push(value.slice(10)); }
    else if (Array.isArray(value)) value.forEach(v => refs(v, acc));
    else if (value && typeof value === 'object') Object.values(value).forEach(v => refs(v, acc));
    return acc;
  };
  for (const script of document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')) {
    let id = null;
    try { id = JSON.parse(script.textContent).model_id; } catch (e) {}
    const prev = script.previousElementSibling;
    const area = prev && prev.classList.contains('widget-subarea') ? prev : null;
    const rect = area ? area.getBoundingClientRect() : null;
    const view = {model_id: id, in_state: !!(id && models[id]), rendered: !!(area && area.querySelector('.jupyter-widgets')),
                  width: rect ? rect.width : 0, height: rect ? rect.height : 0, expected: [], shown: {readouts: [], selects: []}};
    if (area) {
      view.shown.readouts = [...area.querySelectorAll('.widget-readout')].map(e => e.textContent.trim());
      view.shown.selects = [...area.querySelectorAll('select')].flatMap(s => [...s.selectedOptions].map(o => o.textContent.trim()));
    }
    // Walk the models this view displays (children, and any other IPY_MODEL_ reference).
    const seen = new Set(); const todo = id ? [id] : [];
    while (todo.length) {
      const mid = todo.pop();
      if (seen.has(mid) || !models[mid]) continue;
      seen.add(mid);
      const st = models[mid].state || {};
      const name = models[mid].model_name || st._model_name || '';
      if (/^(IntSlider|FloatSlider|IntRangeSlider|FloatRangeSlider|SelectionSlider)Model$/.test(name) && st.readout !== false) {
        view.expected.push({kind: 'readout', model: name, id: mid, value: st.value, index: st.index,
                            labels: st._options_labels || null, format: st.readout_format || null});
      }
      if (/^(Dropdown|Select)Model$/.test(name) && st.index !== null && st.index !== undefined) {
        view.expected.push({kind: 'select', model: name, id: mid, label: (st._options_labels || [])[st.index]});
      }
      refs(st, []).forEach(r => todo.push(r));
    }
    out.views.push(view);
  }
  return out;
}"""


def _decimals(fmt: str | None) -> int:
    """Digits after the point of a d3-style readout format such as ``.2f`` (default 2)."""
    m = re.search(r"\.(\d+)", fmt or ".2f")
    return int(m.group(1)) if m else 2


def _readout_matches(exp: dict, shown: list[str]) -> bool:
    value, model = exp.get("value"), exp.get("model", "")
    if model == "SelectionSliderModel":
        labels = exp.get("labels") or []
        idx = exp.get("index")
        want = [labels[idx]] if isinstance(idx, int) and 0 <= idx < len(labels) else []
        return any(w in shown for w in want)
    if model.startswith("Int"):
        want = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        return all(any(w in s.replace("\u2009", "").replace(",", "") for s in shown) for w in want)
    # Float sliders: compare numerically at the readout's precision.
    tol = 0.51 * 10 ** (-_decimals(exp.get("format"))) + 1e-9
    nums = []
    for s in shown:
        for tok in s.replace("\u2013", " ").replace("-", " -").split():
            try:
                nums.append(float(tok))
            except ValueError:
                pass
    vals = value if isinstance(value, list) else [value]
    return all(isinstance(v, (int, float)) and any(abs(n - v) <= tol for n in nums) for v in vals)


def _judge(result: PageResult, seen: dict, mathjax: dict, pending_images: int) -> None:
    p = result.problems
    result.maths, result.typeset = seen["maths"], seen["typeset"]
    if seen["maths"]:
        if not mathjax.get("loaded"):
            p.append(f"{seen['maths']} maths node(s) but MathJax did not load (raw TeX shown, e.g. {seen['raw'][:1]})")
        elif seen["typeset"] < seen["maths"]:
            p.append(
                f"{seen['maths'] - seen['typeset']} of {seen['maths']} maths node(s) not typeset "
                f"(e.g. {seen['raw'][:2]})"
            )
        if seen["merror"]:
            p.append(f"{seen['merror']} maths node(s) show a MathJax error")
    result.images = len(seen["images"])
    if pending_images:
        p.append(f"{pending_images} image(s) still loading after 10 s")
    for img in seen["images"]:
        if not img["w"]:
            p.append(f"image not rendered (naturalWidth 0): {_short(img['src'])}")
    for fig in seen["figures_without_image"]:
        p.append(f"figure without an image: {fig!r}")
    views = seen["views"]
    result.widget_views = len(views)
    result.widgets_rendered = sum(1 for v in views if v["rendered"])
    if seen["state_error"]:
        p.append(f"embedded widget state is not valid JSON: {seen['state_error']}")
    if seen["state_embedded"] and not views:
        p.append("page embeds widget state but shows no widget view (text fallback instead of widgets?)")
    for v in views:
        tag = f"widget view {str(v['model_id'])[:8]}"
        if not v["in_state"]:
            p.append(f"{tag}: model not in the embedded widget state (widgets were not stored when executing)")
        if not v["rendered"]:
            p.append(f"{tag}: not rendered by the widget manager (no .jupyter-widgets DOM)")
            continue
        if v["height"] <= 0 or v["width"] <= 0:
            p.append(f"{tag}: rendered with zero size")
        for exp in v["expected"]:
            result.state_checked += 1
            if exp["kind"] == "select":
                if exp["label"] not in v["shown"]["selects"]:
                    p.append(
                        f"{tag}: {exp['model']} should show saved choice {exp['label']!r}, "
                        f"shows {v['shown']['selects']}"
                    )
            elif not _readout_matches(exp, v["shown"]["readouts"]):
                p.append(
                    f"{tag}: {exp['model']} should show saved value {exp.get('value')!r}, "
                    f"readouts {v['shown']['readouts']}"
                )


def _screenshot_name(rel: str) -> str:
    return rel.removesuffix(".html").replace("/", "__") + ".png"


def check_pages(
    root: Path,
    pages: list[Path] | None = None,
    *,
    screenshots: Path | None = None,
    chromium: str | None = None,
    timeout_s: float = 30.0,
    log=None,
) -> list[PageResult]:
    """Open each page in headless Chromium and judge it; return one :class:`PageResult` per page.

    ``pages`` defaults to :func:`list_pages`. With ``screenshots``, one full-page PNG per page is written there
    (the folder is replaced atomically, with ``report.json``). Raises :class:`AssetError` when the book or
    Chromium is missing.
    """
    root = Path(root).resolve()
    if not (root / "index.html").exists() and not pages:
        raise AssetError(f"{root} holds no built book (no index.html); run `make book-html` first")
    pages = [Path(p).resolve() for p in (pages if pages is not None else list_pages(root))]
    if not pages:
        raise AssetError(f"no HTML pages under {root}; run `make book-html` first")
    chromium = chromium or ensure_chromium(install=False)
    try:
        from playwright.sync_api import Error as PlaywrightError, sync_playwright
    except ImportError as err:
        raise AssetError(f"the Python package playwright is missing ({err}); run `pip install -e .[book]`") from err

    results: list[PageResult] = []
    shots: dict[str, bytes] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            for path in pages:
                rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
                res = PageResult(page=rel)
                t0 = time.perf_counter()
                target = _meta_refresh_target(path)
                if target is not None:
                    res.redirect = target
                    if not (path.parent / target.split("#")[0]).exists():
                        res.problems.append(f"redirects to {target}, which does not exist")
                    res.seconds = time.perf_counter() - t0
                    results.append(res)
                    if log:
                        log(res)
                    continue
                context = browser.new_context(viewport=VIEWPORT)
                page = context.new_page()
                page.set_default_timeout(timeout_s * 1000)
                requests: list[str] = []
                failed: list[str] = []
                js_errors: list[str] = []
                page.on("request", lambda r, acc=requests: acc.append(r.url))
                page.on("requestfailed", lambda r, acc=failed: acc.append(f"{r.url} ({r.failure})"))
                page.on("pageerror", lambda e, acc=js_errors: acc.append(str(e).splitlines()[0] if str(e) else repr(e)))
                # Nothing may leave the machine: abort (and so never send) any request to another host.
                context.route(lambda url: not is_local_url(url), lambda route: route.abort("blockedbyclient"))
                try:
                    page.goto(path.as_uri(), wait_until="load")
                    mathjax = page.evaluate(_MATHJAX_WAIT)
                    try:
                        page.wait_for_function(_WIDGETS_RENDERED, timeout=min(timeout_s, 20) * 1000)
                    except PlaywrightError:
                        pass  # judged below, view by view
                    pending = page.evaluate(_IMAGES_SETTLED)
                    page.wait_for_timeout(200)  # let the last layout pass settle before measuring
                    seen = page.evaluate(_INSPECT)
                    _judge(res, seen, mathjax, pending)
                    problems, counts = judge_rendering(page.evaluate(RENDER_INSPECT))
                    res.problems += problems
                    res.blocks_measured, res.figures_hashed = counts["blocks_measured"], counts["figures_hashed"]
                    if screenshots is not None:
                        height = page.evaluate("() => document.documentElement.scrollHeight")
                        if height > MAX_SCREENSHOT_HEIGHT:
                            shots[rel] = page.screenshot(
                                full_page=True,
                                clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": MAX_SCREENSHOT_HEIGHT},
                            )
                        else:
                            shots[rel] = page.screenshot(full_page=True)
                except PlaywrightError as err:
                    res.problems.append(f"browser error: {str(err).strip().splitlines()[0]}")
                finally:
                    context.close()
                res.requests = len(requests)
                res.external = [u for u in requests if not is_local_url(u)]
                for url in res.external:
                    res.problems.append(f"external request to {_host(url)}: {_short(url)}")
                for item in failed:
                    if is_local_url(item.split(" ", 1)[0]):
                        res.problems.append(f"local file failed to load: {_short(item, 160)}")
                for msg in js_errors:
                    if any(known in msg for known in HARMLESS_JS_ERRORS):
                        res.ignored_js_errors += 1
                        continue
                    res.problems.append(f"JavaScript error: {_short(msg, 160)}")
                res.seconds = round(time.perf_counter() - t0, 2)
                results.append(res)
                if log:
                    log(res)
        finally:
            browser.close()

    if screenshots is not None:
        screenshots = Path(screenshots)
        with atomic_dir(screenshots) as tmp:
            for res in results:
                if res.page in shots:
                    name = _screenshot_name(res.page)
                    with atomic_write(tmp / name) as fh:
                        fh.write(shots[res.page])
                    res.screenshot = str(screenshots / name)
            report = [dict(asdict(r), ok=r.ok) for r in results]
            with atomic_write(tmp / "report.json", "w") as fh:
                json.dump({"root": str(root), "chromium": chromium, "pages": report}, fh, indent=1)
            # Build artifacts: readable like the rest of _build (mkdtemp/mkstemp create them private).
            tmp.chmod(0o755)
            for f in tmp.iterdir():
                f.chmod(0o644)
    return results


# --------------------------------------------------------------------------------------------------- CLI


def format_table(results: list[PageResult]) -> str:
    cols = ("page", "ok", "requests", "external", "maths", "images", "widgets", "state", "s")
    rows = []
    for r in results:
        rows.append(
            (
                r.page + (f" -> {r.redirect}" if r.redirect else ""),
                "ok" if r.ok else "FAIL",
                str(r.requests),
                str(len(r.external)),
                f"{r.typeset}/{r.maths}",
                str(r.images),
                f"{r.widgets_rendered}/{r.widget_views}",
                str(r.state_checked),
                f"{r.seconds:.1f}",
            )
        )
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]

    def line(vals) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()

    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunelab.book.bookcheck", description=__doc__.splitlines()[0])
    ap.add_argument("html", nargs="?", default=str(DEFAULT_HTML), help="built book folder (default _build/html)")
    ap.add_argument(
        "--screenshots",
        default=str(DEFAULT_SCREENSHOTS),
        help="folder for one PNG per page and report.json (default _build/screenshots); '' for none",
    )
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per page step (default 30)")
    ap.add_argument(
        "--install-browser",
        action="store_true",
        help=f"install Debian's {DEBIAN_PACKAGE} if no Chromium is found (needs root), then exit",
    )
    args = ap.parse_args(argv)
    try:
        if args.install_browser:
            print(f"chromium: {ensure_chromium(install=True)}")
            return 0
        results = check_pages(
            Path(args.html), screenshots=Path(args.screenshots) if args.screenshots else None, timeout_s=args.timeout
        )
    except AssetError as err:
        print(f"bookcheck: {err}", file=sys.stderr)
        return 2
    print(format_table(results))
    shots = [r.screenshot for r in results if r.screenshot]
    if shots:
        print(f"screenshots: {len(shots)} in {Path(shots[0]).parent}")
    bad = [(r.page, prob) for r in results for prob in r.problems]
    for page, prob in bad:
        print(f"FAIL {page}: {prob}")
    total = sum(r.requests for r in results)
    external = sum(len(r.external) for r in results)
    print(f"{len(results)} pages checked, {total} requests ({external} external), {len(bad)} problems", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
