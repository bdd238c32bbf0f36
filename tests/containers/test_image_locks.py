"""Every image's lock holds what its code imports, and its Dockerfile copies the code it runs.

Static, without building: from each image's entry points, follow the project's imports (module
level and inside functions, as the component functions import) through the packages the image
ships, collect the third-party modules they import, and find the distribution of each in the
project's environment. Each must be pinned in the image's lock. SQLAlchemy URLs in the code
(``postgresql+psycopg://``) name a driver the dialect imports at run time; it counts as imported.
Imports the code runs without are the ``ignore_imports`` of the import-linter contracts.
The built serving and monitoring images are also checked by importing their entry points inside
them (test_serving_image.py, test_monitoring_image.py); the components image (CUDA torch, about
7 GB) is checked here only.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from support import REPO_ROOT

FIRST_PARTY = ("garbage", "components", "pipelines", "serving", "monitoring", "cli")
SQLALCHEMY_DRIVER = re.compile(r"\b(?:postgresql|mysql|sqlite)\+(\w+)://")
#: Distributions that install a module under another distribution's name.
ALSO_PROVIDED_BY = {"onnxruntime": ("onnxruntime-gpu",)}


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str
    lock: str
    entry_points: tuple[str, ...]


IMAGES = [
    Image("serving", "serving/Dockerfile", "serving/requirements-cpu.txt", ("serving.__main__",)),
    Image(
        "serving-gpu", "serving/Dockerfile", "serving/requirements-gpu.txt", ("serving.__main__",)
    ),
    Image(
        "monitoring",
        "monitoring/Dockerfile",
        "monitoring/requirements.txt",
        ("monitoring.__main__",),
    ),
    Image(
        "components",
        "components/Dockerfile",
        "components/requirements.txt",
        (
            "cli.app",
            *sorted(
                f"components.{p.parent.name}.component"
                for p in (REPO_ROOT / "components").glob("*/component.py")
            ),
        ),
    ),
]


def module_file(module: str) -> Path | None:
    """The source file of a first-party module, or None when there is none."""
    base = REPO_ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def optional_imports() -> set[tuple[str, str]]:
    """``(module, imported)`` pairs the code runs without: the import-linter contract that keeps
    the core, serving and monitoring free of the heavy stack lists them in ``ignore_imports``
    (``garbage.core.model_uri -> mlflow``: MLflow URIs fail with one line where it is missing)."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    pairs = set()
    for contract in config["tool"]["importlinter"]["contracts"]:
        for rule in contract.get("ignore_imports", []):
            importer, _, imported = rule.partition("->")
            pairs.add((importer.strip(), imported.strip()))
    return pairs


def imports_of(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports anywhere (absolute names; relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # may be submodules
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found |= set(SQLALCHEMY_DRIVER.findall(node.value))
    return found


def closure(entry_points: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """``(first-party modules reached, third-party top-level modules they import)``."""
    seen: set[str] = set()
    third_party: set[str] = set()
    optional = optional_imports()
    todo = list(entry_points)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = module_file(module)
        if path is None:
            continue  # a name imported from a module, not a module
        seen.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        todo += parents
        for name in imports_of(path, module):
            top = name.split(".")[0]
            if (module, top) in optional:
                continue
            if top in FIRST_PARTY:
                todo.append(name)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    return seen, third_party


def pinned(lock: Path) -> set[str]:
    """Distribution names (normalised) pinned in a lock file."""
    names = set()
    for line in lock.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            names.add(normalise(line.split("==")[0].split("[")[0]))
    return names


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def copied_packages(dockerfile: Path) -> set[str]:
    """First-party folders (``garbage/core``, ``serving``) the Dockerfile copies."""
    copied = set()
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            copied |= {p.rstrip("/") for p in parts[1:-1] if p.split("/")[0] in FIRST_PARTY}
    return copied


def _ships(module: str, copied: set[str]) -> bool:
    path = module_file(module)
    assert path is not None
    relative = path.relative_to(REPO_ROOT).as_posix()
    return any(relative == c or relative.startswith(c + "/") for c in copied)


def lock_problems(image: Image, lock: Path) -> list[str]:
    """What the image's code imports that ``lock`` does not pin (or nothing installed provides)."""
    _, third_party = closure(image.entry_points)
    distributions = packages_distributions()
    locked = pinned(lock)
    problems = []
    for module in sorted(third_party):
        owners = [*distributions.get(module, ()), *ALSO_PROVIDED_BY.get(module, ())]
        if not owners:
            problems.append(f"{module}: no installed distribution provides it")
        elif not any(normalise(owner) in locked for owner in owners):
            problems.append(f"{module} (from {', '.join(sorted(set(owners)))}): not in the lock")
    return problems


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.name)
def test_the_lock_pins_every_distribution_the_code_imports(image: Image) -> None:
    problems = lock_problems(image, REPO_ROOT / image.lock)
    assert not problems, (
        f"{image.name}: {image.lock}: {problems}; add what is missing to the image's requirements "
        "and run scripts/lock-requirements.sh"
    )


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.name)
def test_the_dockerfile_copies_every_module_the_entry_points_reach(image: Image) -> None:
    modules, _ = closure(image.entry_points)
    copied = copied_packages(REPO_ROOT / image.dockerfile)
    absent = sorted(m for m in modules if not _ships(m, copied))
    assert not absent, f"{image.name}: {image.dockerfile} does not copy {absent}"


def test_the_closure_sees_imports_inside_functions_and_sqlalchemy_drivers() -> None:
    modules, third_party = closure(("components.train_model.component",))
    assert "garbage.training.steps" in modules  # imported inside the component function
    assert "torch" in third_party
    _, monitoring = closure(("monitoring.__main__",))
    assert "psycopg" in monitoring and "torch" not in monitoring
    _, serving = closure(("serving.__main__",))
    assert "kserve" in serving and "mlflow" not in serving  # optional, see optional_imports()


def test_a_lock_without_a_needed_distribution_is_caught(tmp_path: Path) -> None:
    monitoring = next(i for i in IMAGES if i.name == "monitoring")
    lock = REPO_ROOT / monitoring.lock
    stripped = tmp_path / "requirements.txt"
    stripped.write_text(
        "\n".join(line for line in lock.read_text().splitlines() if "psycopg" not in line)
    )
    assert lock_problems(monitoring, lock) == []
    assert lock_problems(monitoring, stripped) == ["psycopg (from psycopg): not in the lock"]
