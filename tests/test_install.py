"""The pinned install: requirements/lock-cpu.txt agrees with pyproject.toml, and the installs use it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock-cpu.txt"


def _lock_pins(text: str) -> dict[str, Version]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert m, f"not an exact pin in the lock: {line!r}"
            pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def _project_requirements(pyproject: dict, extra: str = "all") -> list[Requirement]:
    """The project's requirements with ``extra`` expanded (self-references like mlcm[ml,app] followed)."""
    project = pyproject["project"]
    name = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    out = [Requirement(r) for r in project["dependencies"]]
    todo, seen = [extra], set()
    while todo:
        e = todo.pop()
        if e in seen:
            continue
        seen.add(e)
        for r in map(Requirement, optional[e]):
            if canonicalize_name(r.name) == name:
                todo.extend(r.extras)
            else:
                out.append(r)
    return out


def disagreements(pyproject: dict, lock_text: str) -> list[str]:
    """Every requirement of pyproject [all] that the lock leaves out or pins outside its range."""
    pins = _lock_pins(lock_text)
    problems = []
    for req in _project_requirements(pyproject):
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name}: in pyproject.toml, not in the lock")
        elif not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{req.name}: lock pins {pin}, pyproject.toml asks {req.specifier}")
    return problems


def test_lock_agrees_with_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = LOCK.read_text()
    assert disagreements(pyproject, lock) == []
    pins = _lock_pins(lock)
    assert pins["torch"] == Version("2.13.0+cpu")  # the CPU build, as setup.sh installs first
    assert not [p for p in pins if p.startswith("nvidia-")]  # no CUDA runtime pulled in
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):  # the lock was compiled under today's constraints
            req = Requirement(line)
            assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), line


def test_disagreement_is_caught():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = LOCK.read_text()
    bumped = lock.replace("\nnumpy==", "\nnumpy==1.0.0\n# was numpy==", 1)
    assert any(p.startswith("numpy: lock pins 1.0.0") for p in disagreements(pyproject, bumped))
    pyproject["project"]["dependencies"].append("a-package-not-in-the-lock>=1")
    assert "a-package-not-in-the-lock: in pyproject.toml, not in the lock" in disagreements(pyproject, lock)


def test_setup_ci_and_conda_install_from_the_lock():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    lines = [ln.strip() for ln in setup.splitlines() if ln.strip().startswith("python -m pip")]
    assert lines == ["python -m pip install -q torch==2.13.0",
                     "python -m pip install -q -r requirements/lock-cpu.txt",
                     "python -m pip install -q --no-deps -e .",
                     "python -m pip check"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("python3 -m venv") < ci.index("source .venv/bin/activate") < ci.index("bash scripts/setup.sh")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert sorted(conda) == ["gpaw", "pip", "python=3.11"]  # nothing conda could resolve to other versions
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements/lock-cpu.txt" in pip_section and "-e ." in pip_section
