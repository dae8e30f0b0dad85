"""Execute the study's notebooks with papermill: ``python -m prunelab.book.build notebooks [options]``.

Jupyter Book 1 does not inject papermill parameters (jupyter-book issue 424), so the book is built in two
steps (book-toolchain.md): this module executes every ``notebooks/*.ipynb`` into ``_build/notebooks/`` with
parameters injected into the cell tagged ``parameters`` and publishes the executed copies into
``book/chapters/`` (git-ignored), which ``_toc.yml`` lists; ``jupyter-book build`` then renders them with
``execute_notebooks: "off"``.

For each notebook it

* computes an input key: SHA-256 of the notebook bytes, the injected parameters, the ``lib/prunelab`` sources
  and the committed ``data/`` files; a notebook whose key matches its provenance record (and whose executed copy
  exists) is skipped, so a second ``make book`` is fast;
* executes it (cell timeout raised from nbclient's default; ipywidget state stored in the notebook metadata so
  the static page shows the widgets; ``MPLBACKEND`` removed from the kernel's environment because an exported
  ``Agg`` backend silently drops inline figures);
* writes the executed notebook atomically (a failed run leaves ``<name>.failed.ipynb`` next to it, for
  debugging, and never replaces the last good copy); the copy published to ``book/chapters/`` has every code cell
  but the parameters folded behind a toggle (:mod:`prunelab.book.chapter_view`);
* writes ``_build/provenance/<name>.json``: parameters (defaults and injected), package versions, host/device,
  CHAIR text path (reference or offline fallback), wall time, git commit, input key.

Notebooks run in parallel in a process pool (``--jobs``), the longest first (``metadata.prunelab.expected_s``),
each kernel with its share of the CPU threads (:func:`kernel_threads`). Any failure makes the command exit 1 and
name the failing notebooks.

``--smoke`` runs every notebook with its own tiny parameters, declared in the notebook metadata as
``metadata.prunelab.smoke_parameters`` (the same ones ``tests/test_notebooks.py`` uses), into ``_build/smoke/``;
smoke runs are never published to the book.

Parameter files (``--params-file``) are YAML: either a flat mapping applied to every selected notebook (only the
parameters a notebook declares are injected into it), or a mapping whose keys are notebook names, plus an
optional ``"*"`` section shared by all::

    "*": {device: cuda, seed: 0}
    01_erank_shortfall: {n_images: 500, image_set: "coco:/data/coco/val2014"}

The notebooks share one parameter vocabulary (:data:`prunelab.study.params.VOCABULARY`: ``model``, ``image_set``,
``n_images``, ``methods``, ``budgets``, ``seed``, ``device``, ``max_new_tokens``, ``results_dir``). Before anything
runs, the build checks those values (:func:`prunelab.study.params.check_values`: one line naming the parameter and the
fix; bad YAML likewise), says which notebooks do not take a given parameter (they run with their own default),
and skips, with a line saying so, a chapter about the embedded ToyLLaVA (``metadata.prunelab.toy_only``) when
``model`` names another model. ``-p budgets=64,128`` (a string to YAML) is read as ``[64, 128]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelab.book.chapter_view import for_book
from prunelab.errors import PrunelabError, UnknownNameError
from prunelab.models import loader
from prunelab.paths import REPO_ROOT, atomic_write
from prunelab.study import params as P

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
BUILD_DIR = REPO_ROOT / "_build"
CHAPTERS_DIR = REPO_ROOT / "book" / "chapters"
DEFAULT_CELL_TIMEOUT = 1800  # seconds per cell (nbclient/JB1 default of 30 s is far too short for a model run)
KERNEL_START_TIMEOUT = 120
# Packages whose versions go into provenance (missing ones are recorded as null).
PROVENANCE_PACKAGES = (
    "prunelab",
    "torch",
    "transformers",
    "numpy",
    "scipy",
    "pandas",
    "scikit-image",
    "matplotlib",
    "seaborn",
    "ipywidgets",
    "papermill",
    "nbclient",
    "ipykernel",
    "jupyter-book",
    "myst-nb",
    "sphinx",
    "nltk",
    "onnx",
)


class BuildError(PrunelabError, RuntimeError):
    """A notebook failed to execute (the message names it and where its partial output is)."""


# --------------------------------------------------------------------------------------------------------------
# Discovery, parameters, hashing


def list_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[str]:
    """Names (file stems) of the study's notebooks, sorted."""
    return sorted(p.stem for p in Path(notebooks_dir).glob("*.ipynb") if not p.name.startswith("."))


def select_notebooks(only: list[str] | None, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[str]:
    """The notebooks to run: all, or those named in ``only`` (a stem, a file name or a unique stem prefix)."""
    names = list_notebooks(notebooks_dir)
    if not only:
        return names
    chosen: list[str] = []
    for want in only:
        stem = Path(want).stem
        hits = [n for n in names if n == stem] or [n for n in names if n.startswith(stem)]
        if len(hits) != 1:
            raise UnknownNameError(
                f"--only {want!r} matches {len(hits)} notebooks; use one of: {', '.join(names) or '(none found)'}"
            )
        if hits[0] not in chosen:
            chosen.append(hits[0])
    return chosen


def declared_parameters(path: Path) -> dict[str, Any]:
    """Default values of the notebook's ``parameters`` cell (evaluated as Python literals where possible)."""
    import papermill

    out: dict[str, Any] = {}
    for name, info in papermill.inspect_notebook(str(path)).items():
        text = info.get("default")
        try:
            import ast

            out[name] = ast.literal_eval(text) if text is not None else None
        except (ValueError, SyntaxError):
            out[name] = text  # an expression such as `None if x else y`: recorded as written
    return out


def smoke_parameters(path: Path) -> dict[str, Any]:
    """The tiny parameters a notebook declares for smoke runs (``metadata.prunelab.smoke_parameters``)."""
    nb = json.loads(Path(path).read_text())
    return dict(nb.get("metadata", {}).get("prunelab", {}).get("smoke_parameters", {}))


def toy_only(path: Path) -> bool:
    """Whether the notebook describes the embedded ToyLLaVA only (``metadata.prunelab.toy_only``): the build skips
    it when ``model`` names another model."""
    nb = json.loads(Path(path).read_text())
    return bool(nb.get("metadata", {}).get("prunelab", {}).get("toy_only", False))


def expected_seconds(path: Path) -> float:
    """The notebook's measured run time with its default parameters on the 2-core reference machine
    (``metadata.prunelab.expected_s``; 0 if not declared). Only used to start the longest notebooks first."""
    nb = json.loads(Path(path).read_text())
    return float(nb.get("metadata", {}).get("prunelab", {}).get("expected_s", 0) or 0)


@contextlib.contextmanager
def kernel_threads(n_workers: int, cpus: int | None = None):
    """With ``n_workers`` kernels side by side, give each ``cpus // n_workers`` BLAS/OpenMP threads (at least one)
    through ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, unless the caller set them: two kernels with two threads each
    on two cores spin-wait for each other (``prunelab.device.cpu_threads`` explains the 10-20x slowdown)."""
    cpus = cpus or os.cpu_count() or 1
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in names}
    if n_workers > 1:
        for k in names:
            os.environ.setdefault(k, str(max(1, cpus // n_workers)))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _yaml_problem(err) -> str:
    """The first line of a YAML error, with its position: enough to find the typo."""
    mark = getattr(err, "problem_mark", None)
    what = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else what


def parse_cli_params(items: list[str]) -> dict[str, Any]:
    """``["model=/x", "budgets=[64, 128]"]`` -> ``{"model": "/x", "budgets": [64, 128]}`` (values read as YAML;
    ``budgets=64,128`` is a string here and becomes ``[64, 128]`` in :func:`plan`)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise UnknownNameError(f"bad parameter {item!r}; write -p name=value, e.g. -p budgets='[64, 128]'")
        try:
            out[name.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as err:
            raise UnknownNameError(
                f"-p {item!r} is not a YAML value ({_yaml_problem(err)}); fix the value (wrap text "
                "in double quotes inside single ones, write lists as -p budgets='[64, 128]')"
            ) from None
    return out


def load_params_file(path: str | os.PathLike | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """Read a YAML parameter file into ``{notebook: {param: value}}`` for ``names`` (see module docstring)."""
    if path is None:
        return {n: {} for n in names}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UnknownNameError(f"parameter file {p} does not exist; pass an existing YAML file to --params-file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise UnknownNameError(f"parameter file {p} is not valid YAML ({_yaml_problem(err)}); fix it there") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UnknownNameError(
            f"parameter file {p} cannot be read ({type(err).__name__}); pass a UTF-8 YAML file"
        ) from None
    if not isinstance(data, dict):
        raise UnknownNameError(f"parameter file {p} must hold a YAML mapping, got {type(data).__name__}")
    known = set(list_notebooks())
    per_notebook = all(k == "*" or k in known for k in data) and any(isinstance(v, dict) for v in data.values())
    out: dict[str, dict[str, Any]] = {}
    for n in names:
        if per_notebook:
            merged = dict(data.get("*") or {})
            merged.update(data.get(n) or {})
        else:
            merged = dict(data)
        out[n] = merged
    return out


def _sha_files(h: hashlib._Hash, root: Path, pattern: str) -> None:
    if not root.exists():
        return
    for f in sorted(p for p in root.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(root)).encode())
        h.update(b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")


def source_hash(lib_dir: Path = REPO_ROOT / "lib" / "prunelab", data_dir: Path = REPO_ROOT / "data") -> str:
    """SHA-256 over the library sources and the committed data files (what a notebook's results depend on)."""
    h = hashlib.sha256()
    _sha_files(h, Path(lib_dir), "*.py")
    _sha_files(h, Path(data_dir), "*")
    return h.hexdigest()


def input_key(notebook_path: Path, parameters: dict[str, Any], src_hash: str, smoke: bool = False) -> str:
    """The cache key of one execution: notebook bytes + injected parameters + library/data hash + mode."""
    h = hashlib.sha256()
    h.update(Path(notebook_path).read_bytes())
    h.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    h.update(src_hash.encode())
    h.update(b"smoke" if smoke else b"full")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Provenance


def package_versions(names=PROVENANCE_PACKAGES) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def chair_text_path() -> dict[str, Any] | None:
    """The CHAIR text path ``auto`` takes on this host (:func:`prunelab.eval.textproc.auto_path`), for provenance."""
    try:
        from prunelab.eval.textproc import auto_path

        return auto_path()
    except ImportError:  # pragma: no cover - nltk is a hard dependency
        return None


def device_info() -> dict[str, Any]:
    """Host and accelerator description (no torch import if torch is absent)."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    try:
        import torch

        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover - torch is a hard dependency
        info["cuda_available"] = None
    return info


def git_commit(repo: Path = REPO_ROOT) -> dict[str, Any]:
    def run(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20)

    try:
        rev = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", "lib", "notebooks", "data")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if rev.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


# --------------------------------------------------------------------------------------------------------------
# Execution


@dataclass
class Job:
    name: str
    input_path: Path
    output_dir: Path
    provenance_dir: Path
    parameters: dict[str, Any]
    key: str
    smoke: bool = False
    timeout: int = DEFAULT_CELL_TIMEOUT
    publish_dir: Path | None = None
    cwd: Path | None = None
    notes: list[str] = field(default_factory=list)  # said before anything runs: parameters it cannot take
    skip: str = ""  # why the notebook is not run at all (a toy-only chapter for another model)


@dataclass
class Outcome:
    name: str
    status: str  # executed | up-to-date | failed | skipped
    seconds: float = 0.0
    output: Path | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _clean_kernel_env() -> None:
    # The kernel inherits this process's environment: an exported non-inline backend drops figures.
    os.environ.pop("MPLBACKEND", None)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silences a debugger warning in stderr


def _last_error(nb_path: Path) -> str:
    """A one-line summary of the first error output in an executed notebook."""
    with contextlib.suppress(Exception):
        nb = json.loads(nb_path.read_text())
        for i, cell in enumerate(nb.get("cells", [])):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    return f"cell {i}: {out.get('ename')}: {str(out.get('evalue')).splitlines()[0] if out.get('evalue') else ''}"
    return ""


def execute_job(job: Job) -> Outcome:
    """Execute one notebook (in this process); never raises for a notebook failure, returns ``failed``."""
    import papermill

    _clean_kernel_env()
    out_path = job.output_dir / f"{job.name}.ipynb"
    failed_path = job.output_dir / f"{job.name}.failed.ipynb"
    job.output_dir.mkdir(parents=True, exist_ok=True)
    # Unique per process and call: two builds of one notebook (two shells, two --jobs pools) must not write into
    # one file and then move each other's output into place.
    tmp = job.output_dir / f".{job.name}.{os.getpid()}-{secrets.token_hex(4)}.running.ipynb"
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.UTC)
    try:
        papermill.execute_notebook(
            str(job.input_path),
            str(tmp),
            parameters=job.parameters,
            kernel_name="python3",
            progress_bar=False,
            request_save_on_cell_execute=False,
            start_timeout=KERNEL_START_TIMEOUT,
            execution_timeout=job.timeout,
            cwd=str(job.cwd or job.input_path.parent),
        )
    except Exception as err:  # papermill raises PapermillExecutionError with the cell's traceback
        seconds = time.perf_counter() - t0
        summary = ""
        if tmp.exists():
            summary = _last_error(tmp)
            os.replace(tmp, failed_path)
        msg = summary or f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        return Outcome(job.name, "failed", seconds, failed_path if failed_path.exists() else None, msg)
    except BaseException:  # interrupted: leave no stray temporary copy behind
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    seconds = time.perf_counter() - t0
    os.replace(tmp, out_path)  # same directory: atomic
    with contextlib.suppress(FileNotFoundError):
        failed_path.unlink()
    record = {
        "notebook": job.name,
        "source": str(job.input_path.relative_to(REPO_ROOT))
        if job.input_path.is_relative_to(REPO_ROOT)
        else str(job.input_path),
        "executed": str(out_path.relative_to(REPO_ROOT)) if out_path.is_relative_to(REPO_ROOT) else str(out_path),
        "smoke": job.smoke,
        "parameters": {**declared_parameters(job.input_path), **job.parameters},
        "injected_parameters": job.parameters,
        "input_key": job.key,
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_time_s": round(seconds, 2),
        "git": git_commit(),
        "packages": package_versions(),
        "device": device_info(),
        "chair_text_path": chair_text_path(),
    }
    with atomic_write(job.provenance_dir / f"{job.name}.json", "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True, default=str)
        fh.write("\n")
    if job.publish_dir is not None:
        publish(out_path, job.publish_dir)
    return Outcome(job.name, "executed", seconds, out_path)


def publish(executed: Path, publish_dir: Path) -> Path:
    """Copy an executed notebook into the book's chapter folder (atomically, only if it differs), its code cells
    folded behind a toggle but the parameters (:func:`prunelab.book.chapter_view.for_book`)."""
    dest = Path(publish_dir) / executed.name
    data = for_book(executed.read_bytes())
    if not dest.exists() or dest.read_bytes() != data:
        with atomic_write(dest, "wb") as fh:
            fh.write(data)
    return dest


def is_up_to_date(job: Job) -> bool:
    prov = job.provenance_dir / f"{job.name}.json"
    if not prov.exists() or not (job.output_dir / f"{job.name}.ipynb").exists():
        return False
    try:
        return json.loads(prov.read_text()).get("input_key") == job.key
    except json.JSONDecodeError:
        return False


def plan(
    names: list[str],
    *,
    params: dict[str, dict[str, Any]] | None = None,
    smoke: bool = False,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    build_dir: Path = BUILD_DIR,
    chapters_dir: Path | None = CHAPTERS_DIR,
    timeout: int = DEFAULT_CELL_TIMEOUT,
) -> list[Job]:
    """One :class:`Job` per notebook with its effective injected parameters and input key.

    Only parameters the notebook declares are injected; a parameter that no selected notebook declares is an
    error (a typo would otherwise be silently ignored), one that only some declare is noted on the others
    (``Job.notes``, logged by :func:`run` before anything executes). A toy-only notebook (:func:`toy_only`) given
    a ``model`` that is not ToyLLaVA is planned as skipped (``Job.skip``). The values of the shared vocabulary
    (:func:`prunelab.study.params.check_values`) are checked here, before any notebook runs; ``budgets``/``methods``
    given as one comma-separated string are split into lists.
    """
    params = params or {}
    src = source_hash()
    root = Path(build_dir) / ("smoke" if smoke else "")
    jobs, unused, defaults = [], None, {}
    for name in names:
        path = Path(notebooks_dir) / f"{name}.ipynb"
        declared = defaults[name] = declared_parameters(path)
        given = dict(smoke_parameters(path) if smoke else {})
        given.update(params.get(name, {}))
        given = {k: P.split_list(k, v) for k, v in given.items()}
        injected = {k: v for k, v in given.items() if k in declared}
        missing = set(given) - set(declared)
        unused = missing if unused is None else unused & missing
        notes, skip = [], ""
        if toy_only(path) and "model" in injected and not loader.is_toy_model(injected["model"]):
            skip = (
                f"skipped: it describes the embedded ToyLLaVA only, and model={injected['model']!r} is not a "
                "ToyLLaVA model (its last published copy, if any, is kept)"
            )
        if missing:
            notes.append(f"does not take {', '.join(sorted(missing))}; it runs with its own default(s) for those")
        jobs.append(
            Job(
                name=name,
                input_path=path,
                output_dir=root / "notebooks",
                provenance_dir=root / "provenance",
                parameters=injected,
                key=input_key(path, injected, src, smoke),
                smoke=smoke,
                timeout=timeout,
                publish_dir=None if smoke else chapters_dir,
                notes=notes,
                skip=skip,
            )
        )
    if unused:
        raise UnknownNameError(
            f"parameter(s) {', '.join(sorted(unused))} are declared by none of {', '.join(names)}; "
            "check the names against each notebook's `parameters` cell"
        )
    for job in jobs:
        if job.skip:
            continue
        try:
            P.check_values(job.parameters, defaults[job.name])
        except PrunelabError as err:
            raise type(err)(f"{job.name}: {err}") from None
    return jobs


def execution_order(jobs: list[Job], n_jobs: int) -> list[Job]:
    """The order jobs are submitted in: as given for one worker; longest first (:func:`expected_seconds`, ties in
    the given order) for several, so the pool does not end waiting on one heavy notebook started last."""
    if n_jobs <= 1:
        return list(jobs)
    return sorted(jobs, key=lambda j: -expected_seconds(j.input_path))


def run(jobs: list[Job], *, n_jobs: int = 1, force: bool = False, log=print) -> list[Outcome]:
    """Execute the jobs that are not up to date (all with ``force``), ``n_jobs`` at a time."""
    outcomes: list[Outcome] = []
    todo = []
    for job in jobs:
        for note in job.notes if not job.skip else []:
            log(f"[build] {job.name}: {note}")
    for job in jobs:
        if job.skip:
            outcomes.append(Outcome(job.name, "skipped", 0.0, None, job.skip))
            log(f"[build] {job.name}: {job.skip}")
        elif not force and is_up_to_date(job):
            if job.publish_dir is not None:
                publish(job.output_dir / f"{job.name}.ipynb", job.publish_dir)
            outcomes.append(Outcome(job.name, "up-to-date", 0.0, job.output_dir / f"{job.name}.ipynb"))
            log(f"[build] {job.name}: up to date (inputs unchanged)")
        else:
            todo.append(job)
    if not todo:
        return outcomes
    todo = execution_order(todo, n_jobs)
    log(
        f"[build] executing {len(todo)} notebook(s) with {min(n_jobs, len(todo))} worker(s): {', '.join(j.name for j in todo)}"
    )
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=len(todo), desc="notebooks", unit="nb") if tqdm else None

    def report(o: Outcome):
        outcomes.append(o)
        if bar:
            bar.update(1)
        if o.status == "executed":
            log(f"[build] {o.name}: executed in {o.seconds:.1f} s -> {o.output}")
        else:
            log(f"[build] {o.name}: FAILED after {o.seconds:.1f} s: {o.error} (partial output: {o.output})")

    if n_jobs <= 1 or len(todo) == 1:
        for job in todo:
            report(execute_job(job))
    else:
        import multiprocessing as mp

        # spawn: workers must not inherit a half-initialised torch/BLAS state from the parent.
        workers = min(n_jobs, len(todo))
        with (
            kernel_threads(workers),
            cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool,
        ):
            futures = {pool.submit(execute_job, job): job for job in todo}
            for fut in cf.as_completed(futures):
                try:
                    report(fut.result())
                except Exception as err:  # a crashed worker, not a failed cell
                    report(Outcome(futures[fut].name, "failed", 0.0, None, f"{type(err).__name__}: {err}"))
    if bar:
        bar.close()
    return outcomes


def sync_chapters(names: list[str], chapters_dir: Path = CHAPTERS_DIR) -> None:
    """Remove published chapters whose source notebook no longer exists."""
    if not Path(chapters_dir).exists():
        return
    keep = set(names)
    for f in Path(chapters_dir).glob("*.ipynb"):
        if f.stem not in keep:
            f.unlink()


# --------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunelab.book.build", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    nb = sub.add_parser("notebooks", help="execute notebooks/*.ipynb with papermill into _build/notebooks")
    nb.add_argument("--only", action="append", metavar="NAME", help="run only this notebook (repeatable)")
    nb.add_argument("--jobs", type=int, default=1, help="notebooks executed in parallel (default 1)")
    nb.add_argument("--params-file", metavar="YAML", help="parameters to inject (see module docstring)")
    nb.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="inject one parameter into every selected notebook that declares it (YAML value; repeatable; "
        "overrides --params-file; notebooks that do not declare it are named)",
    )
    nb.add_argument(
        "--smoke", action="store_true", help="tiny parameters from each notebook's metadata; output in _build/smoke"
    )
    nb.add_argument("--force", action="store_true", help="execute even if inputs are unchanged")
    nb.add_argument("--timeout", type=int, default=DEFAULT_CELL_TIMEOUT, help="seconds per cell (default %(default)s)")
    args = ap.parse_args(argv)

    try:
        names = select_notebooks(args.only)
        if not names:
            print(f"[build] no notebooks found in {NOTEBOOKS_DIR}", file=sys.stderr)
            return 1
        params = load_params_file(args.params_file, names)
        for name, extra in parse_cli_params(args.param).items():
            for nb_name in names:
                params.setdefault(nb_name, {})[name] = extra
        jobs = plan(names, params=params, smoke=args.smoke, timeout=args.timeout)
        if not args.smoke and not args.only:
            sync_chapters(list_notebooks())
        outcomes = run(jobs, n_jobs=max(1, args.jobs), force=args.force)
    except PrunelabError as err:
        print(f"[build] {err}", file=sys.stderr)
        return 1
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        for o in failed:
            print(f"[build] FAILED notebook {o.name}: {o.error}; see {o.output}", file=sys.stderr)
        return 1
    skipped = sum(o.status == "skipped" for o in outcomes)
    print(f"[build] {len(outcomes) - skipped} notebook(s) ready" + (f", {skipped} skipped" if skipped else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
