"""The GitHub workflows run the project the way .ci/run does, with the project's own tool versions.

Python comes from pyproject.toml's requires-python, ruff/mypy/... from its dev extra (the project is
the only thing pip installs), system packages only from scripts/ci-system-packages.sh, and every
make target of .ci/run runs in ci.yml. Parsed from the workflow YAML, not grepped.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from support import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / ".github/workflows").glob("*.yml"))
CI = REPO_ROOT / ".github/workflows/ci.yml"
SYSTEM_PACKAGES = "scripts/ci-system-packages.sh"
PROJECT_TARGET = re.compile(r"^\.(\[[a-z0-9,_-]+\])?$")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _steps(path: Path) -> Iterator[tuple[str, list[dict]]]:
    for job_name, job in _load(path)["jobs"].items():
        yield job_name, job.get("steps", [])


def _commands(run: str) -> Iterator[list[str]]:
    """The shell words of each command of a ``run:`` script (lines, ``&&``/``;``/``|`` split)."""
    for line in run.replace("\\\n", " ").splitlines():
        for command in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(command, comments=True)
            if words:
                yield words


def _pip_install_targets(words: list[str]) -> list[str] | None:
    """What a ``pip install`` command installs (requirements, paths); None for other commands."""
    if "pip" not in [Path(w).name for w in words] or "install" not in words:
        return None
    arguments = words[words.index("install") + 1 :]
    targets, skip = [], False
    for word in arguments:
        if skip:
            skip = False
        elif word in ("-e", "--editable"):
            continue
        elif word in ("-r", "-c", "--requirement", "--constraint", "-i", "--index-url"):
            skip = True
            targets.append(word)
        elif not word.startswith("-"):
            targets.append(word)
    return targets


def _dev_extra() -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name for r in project["optional-dependencies"]["dev"]}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_python_comes_from_requires_python(path: Path) -> None:
    setups = [
        step
        for _, steps in _steps(path)
        for step in steps
        if str(step.get("uses", "")).startswith("actions/setup-python@")
    ]
    assert setups, f"{path.name} sets up no Python"
    for step in setups:
        inputs = step.get("with", {})
        assert "python-version" not in inputs, f"{path.name}: a Python version of its own"
        assert inputs.get("python-version-file") == "pyproject.toml", path.name


def test_requires_python_names_one_minor() -> None:
    """setup-python takes the newest Python that requires-python allows: it must be the only one."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    allowed = SpecifierSet(project["requires-python"])
    minors = [m for m in range(8, 20) if f"3.{m}.0" in allowed]
    assert len(minors) == 1, f"requires-python allows 3.{minors}: CI could run another Python"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_pip_installs_only_the_project_with_its_extras(path: Path) -> None:
    for job_name, steps in _steps(path):
        for step in steps:
            uses = str(step.get("uses", ""))
            assert not re.search(r"ruff|mypy|pre-commit", uses), f"{path.name}: {uses}"
            for words in _commands(step.get("run", "")):
                targets = _pip_install_targets(words)
                if targets is None:
                    continue
                assert targets, f"{path.name} {job_name}: pip install of nothing: {words}"
                for target in targets:
                    assert PROJECT_TARGET.match(target), (
                        f"{path.name} {job_name}: pip installs {target!r}; tools come from "
                        "pyproject.toml's extras (pip install -e '.[dev]')"
                    )


def test_the_dev_extra_brings_the_linters() -> None:
    assert {"ruff", "mypy", "import-linter"} <= _dev_extra()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_system_packages_come_only_from_the_ci_script(path: Path) -> None:
    for job_name, steps in _steps(path):
        runs_tests = False
        installed = False
        for step in steps:
            for words in _commands(step.get("run", "")):
                names = [Path(w).name for w in words]
                assert not {"apt-get", "apt", "dpkg"} & set(names), (
                    f"{path.name} {job_name}: {' '.join(words)}; add the package to "
                    f"{SYSTEM_PACKAGES} instead"
                )
                if SYSTEM_PACKAGES in words:
                    installed = True
                if words[:2] == ["make", "test"]:
                    runs_tests = True
                    assert installed, f"{path.name} {job_name}: make test before {SYSTEM_PACKAGES}"
        if runs_tests:
            assert installed


def test_ci_runs_every_make_target_of_ci_run() -> None:
    ci_run = REPO_ROOT / ".ci/run"
    wanted = [
        words[1] for words in _commands(ci_run.read_text()) if words[0] == "make" and len(words) > 1
    ]
    assert {"lint", "docs", "test"} <= set(wanted), f".ci/run runs make {wanted}"
    assert SYSTEM_PACKAGES in ci_run.read_text()
    ran = {
        words[1]
        for _, steps in _steps(CI)
        for step in steps
        for words in _commands(step.get("run", ""))
        if words[0] == "make" and len(words) > 1
    }
    assert set(wanted) <= ran, f"ci.yml does not run make {sorted(set(wanted) - ran)}"


def test_make_installs_the_dev_extra_that_the_lint_target_runs() -> None:
    """The workflows install with ``make venv``: the venv gets the dev extra, and lint uses it."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipes: dict[str, list[str]] = {}
    target = None
    for line in makefile.splitlines():
        if line.startswith("\t") and target:
            recipes[target].append(line.strip())
        elif match := re.match(r"^([^\s:#=]+(?:\s[^\s:#=]+)*):(?!=)", line):
            target = match.group(1)
            recipes[target] = []
        else:
            target = None
    installs = [shlex.split(c) for c in recipes["$(STAMP)"] if "pip" in c and "install" in c]
    assert any(".[dev]" in words for words in installs), recipes["$(STAMP)"]
    for tool in ("ruff", "mypy", "lint-imports"):
        assert any(c.startswith(f"$(BIN)/{tool}") for c in recipes["lint"]), recipes["lint"]
    ran = {
        words[1]
        for path in WORKFLOWS
        for _, steps in _steps(path)
        for step in steps
        for words in _commands(step.get("run", ""))
        if words[0] == "make" and len(words) > 1
    }
    assert "venv" in ran
