"""environment.yml must list exactly the dependencies of pyproject.toml (core + book + test extras)."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    assert m, req
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def _pyproject_reqs() -> dict[str, str]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(proj["dependencies"])
    for extra in ("book", "test"):
        reqs += proj["optional-dependencies"][extra]
    out: dict[str, str] = {}
    for r in reqs:
        name, spec = _norm(r)
        assert out.get(name, spec) == spec, f"{name} pinned differently across extras: {out[name]} vs {spec}"
        out[name] = spec
    return out


def _environment_reqs() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return dict(_norm(r) for r in pip if not r.startswith("-e"))


def test_environment_matches_pyproject():
    py, env = _pyproject_reqs(), _environment_reqs()
    missing = sorted(set(py) - set(env))
    extra = sorted(set(env) - set(py))
    differ = sorted(k for k in set(py) & set(env) if py[k] != env[k])
    assert not (missing or extra or differ), (
        f"missing in environment.yml: {missing}; extra: {extra}; different pins: {differ}"
    )


def test_torch_is_pinned_to_the_local_cpu_build():
    assert _pyproject_reqs()["torch"] == "==2.13.0"


def test_environment_pins_python_311():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
